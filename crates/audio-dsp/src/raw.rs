//! Headerless audio with a declared format.

use serde::{Deserialize, Serialize};

use crate::audio::{check_rate, deinterleave};
use crate::{DecodedAudio, DspError, Encoding, Limits};

/// The declared format of headerless audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawFormat {
    /// Sample encoding.
    pub encoding: Encoding,
    /// Sample rate in Hz (8000, 16000, 24000 or 48000).
    pub sample_rate: u32,
    /// Interleaved channel count.
    pub channels: u32,
}

impl RawFormat {
    /// Telephone audio: μ-law, 8 kHz, mono.
    pub const TELEPHONE: Self = Self { encoding: Encoding::Mulaw, sample_rate: 8000, channels: 1 };

    /// Checks rate and channels against `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), DspError> {
        check_rate(self.sample_rate)?;
        limits.check_channels(self.channels)
    }

    /// Bytes per interleaved sample frame.
    pub fn block_len(&self) -> usize {
        self.encoding.bytes_per_sample() * self.channels as usize
    }
}

/// Decodes headerless interleaved audio. The length must be a whole number of frames.
pub fn decode_raw(bytes: &[u8], format: RawFormat, limits: &Limits) -> Result<DecodedAudio, DspError> {
    limits.check_bytes(bytes.len() as u64)?;
    format.validate(limits)?;
    let block = format.block_len();
    if bytes.is_empty() {
        return Err(DspError::Empty);
    }
    if !bytes.len().is_multiple_of(block) {
        return Err(DspError::PartialFrame { len: bytes.len(), block });
    }
    let frames = bytes.len() / block;
    limits.check_seconds(frames as f64 / f64::from(format.sample_rate))?;
    Ok(DecodedAudio {
        sample_rate: format.sample_rate,
        channels: deinterleave(format.encoding, format.channels as usize, bytes),
        encoding: format.encoding,
    })
}

/// Decodes a WAV file when the bytes start with a RIFF/WAVE header, otherwise treats them as
/// raw audio in `fallback` (the upload route's "WAV or raw μ-law" contract).
pub fn decode_auto(bytes: &[u8], fallback: RawFormat, limits: &Limits) -> Result<DecodedAudio, DspError> {
    if bytes.len() >= 4 && (&bytes[0..4] == b"RIFF" || &bytes[0..4] == b"RF64") {
        crate::wav::decode_wav(bytes, limits)
    } else {
        decode_raw(bytes, fallback, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_interleaved_stereo() {
        let bytes = [0u8, 1, 2, 3, 4, 5, 6, 7];
        let f = RawFormat { encoding: Encoding::Pcm16, sample_rate: 16000, channels: 2 };
        let d = decode_raw(&bytes, f, &Limits::default()).unwrap();
        assert_eq!(d.channels, vec![vec![0x0100, 0x0504], vec![0x0302, 0x0706]]);
        assert!(matches!(
            decode_raw(&bytes[..6], f, &Limits::default()),
            Err(DspError::PartialFrame { len: 6, block: 4 })
        ));
    }

    #[test]
    fn rejects_declared_nonsense() {
        let l = Limits::default();
        let mut f = RawFormat::TELEPHONE;
        f.sample_rate = 11025;
        assert!(decode_raw(&[0xFF; 10], f, &l).is_err());
        f = RawFormat::TELEPHONE;
        f.channels = 0;
        assert!(decode_raw(&[0xFF; 10], f, &l).is_err());
        assert_eq!(decode_raw(&[], RawFormat::TELEPHONE, &l), Err(DspError::Empty));
        let d = decode_auto(&[0xFF; 80], RawFormat::TELEPHONE, &l).unwrap();
        assert_eq!(d.channels[0], vec![0i16; 80]);
        let tiny = Limits { max_seconds: 0.001, ..l };
        assert!(decode_raw(&[0xFF; 80], RawFormat::TELEPHONE, &tiny).unwrap_err().is_resource_exhausted());
    }
}
