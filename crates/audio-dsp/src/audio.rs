//! Decoded audio and the limits applied to outside input.

use serde::{Deserialize, Serialize};

use crate::{DspError, Encoding};

/// Sample rates this crate accepts, in Hz.
pub const SUPPORTED_RATES: [u32; 4] = [8000, 16000, 24000, 48000];

/// Returns `Ok(rate)` when `rate` is one of [`SUPPORTED_RATES`].
pub fn check_rate(rate: u32) -> Result<u32, DspError> {
    if SUPPORTED_RATES.contains(&rate) { Ok(rate) } else { Err(DspError::UnsupportedSampleRate(rate)) }
}

/// `y` (in sample units) as a 16-bit sample: rounded half away from zero as `f32::round`
/// does, saturating at the `i16` range, NaN as 0. Without `round`'s libm call (`roundf`, a
/// function call per sample on x86-64's baseline, which has no rounding instruction): the
/// truncating, saturating cast of `y ± 0.5`.
#[inline]
pub(crate) fn round_to_i16(y: f32) -> i16 {
    (y + 0.5f32.copysign(y)) as i16
}

/// Bounds applied while decoding outside bytes. Exceeding `max_bytes` or `max_seconds` is
/// [`DspError::is_resource_exhausted`]; a channel count above `max_channels` is invalid input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest accepted payload, in bytes. Default 100 MiB.
    pub max_bytes: u64,
    /// Longest accepted audio, in seconds. Default 3 hours.
    pub max_seconds: f64,
    /// Most channels accepted (each channel is one party). Default 2.
    pub max_channels: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 100 * 1024 * 1024, max_seconds: 3.0 * 3600.0, max_channels: 2 }
    }
}

impl Limits {
    /// Rejects a payload larger than `max_bytes`; call it before buffering a body.
    pub fn check_bytes(&self, len: u64) -> Result<(), DspError> {
        if len > self.max_bytes {
            return Err(DspError::TooLarge { bytes: len, max: self.max_bytes });
        }
        Ok(())
    }

    /// Rejects a duration above `max_seconds`.
    pub fn check_seconds(&self, seconds: f64) -> Result<(), DspError> {
        if seconds > self.max_seconds {
            return Err(DspError::TooLong { seconds, max: self.max_seconds });
        }
        Ok(())
    }

    /// Rejects zero channels or more than `max_channels`.
    pub fn check_channels(&self, channels: u32) -> Result<(), DspError> {
        if channels == 0 || channels > self.max_channels {
            return Err(DspError::UnsupportedChannels { got: channels, max: self.max_channels });
        }
        Ok(())
    }
}

/// Audio decoded to linear 16-bit samples, one vector per channel (party).
///
/// Samples are kept as `i16` (not `f32`): it is the native resolution of every supported
/// codec, halves memory, and is what both voice-activity detectors take.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    /// Sample rate in Hz, one of [`SUPPORTED_RATES`].
    pub sample_rate: u32,
    /// One vector of samples per channel, all the same length.
    pub channels: Vec<Vec<i16>>,
    /// The encoding the bytes were in (decides the clipping reference).
    pub encoding: Encoding,
}

impl DecodedAudio {
    /// Builds audio from per-channel sample vectors (checks rate and equal lengths).
    pub fn new(sample_rate: u32, channels: Vec<Vec<i16>>, encoding: Encoding) -> Result<Self, DspError> {
        check_rate(sample_rate)?;
        if channels.is_empty() {
            return Err(DspError::UnsupportedChannels { got: 0, max: 0 });
        }
        let len = channels[0].len();
        if channels.iter().any(|c| c.len() != len) {
            return Err(DspError::InvalidConfig("channels differ in length"));
        }
        Ok(Self { sample_rate, channels, encoding })
    }

    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Duration in seconds.
    pub fn duration_seconds(&self) -> f64 {
        self.frames() as f64 / f64::from(self.sample_rate)
    }
}

/// Splits interleaved encoded bytes into per-channel sample vectors. `bytes` must be a whole
/// number of frames; allocation is bounded by `bytes.len()`.
pub(crate) fn deinterleave(encoding: Encoding, channels: usize, bytes: &[u8]) -> Vec<Vec<i16>> {
    let bps = encoding.bytes_per_sample();
    let block = bps * channels;
    let frames = bytes.len() / block;
    if channels == 1 {
        return vec![crate::codec::decode(encoding, &bytes[..frames * block])];
    }
    let mut out: Vec<Vec<i16>> = (0..channels).map(|_| Vec::with_capacity(frames)).collect();
    for frame in bytes.chunks_exact(block) {
        for (ch, sample) in out.iter_mut().zip(frame.chunks_exact(bps)) {
            let s = match encoding {
                Encoding::Pcm16 => i16::from_le_bytes([sample[0], sample[1]]),
                Encoding::Mulaw => crate::codec::mulaw_decode(sample[0]),
                Encoding::Alaw => crate::codec::alaw_decode(sample[0]),
            };
            ch.push(s);
        }
    }
    out
}
