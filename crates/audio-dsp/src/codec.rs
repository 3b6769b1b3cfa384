//! G.711 μ-law and A-law (ITU-T G.711, bit-exact with the ITU/Sun reference code) and
//! little-endian PCM16.
//!
//! Decoding uses 256-entry tables built at compile time; encoding is a short segment search
//! (cheaper than a 64 KiB table in cache for 20 ms frames). Linear values are 16-bit two's
//! complement: μ-law decodes to ±32124, A-law to ±32256.

use serde::{Deserialize, Serialize};

use crate::DspError;

/// Sample encoding of audio bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Signed 16-bit little-endian linear PCM.
    Pcm16,
    /// G.711 μ-law, one byte per sample.
    Mulaw,
    /// G.711 A-law, one byte per sample.
    Alaw,
}

impl Encoding {
    /// Bytes per sample of one channel.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Self::Pcm16 => 2,
            Self::Mulaw | Self::Alaw => 1,
        }
    }

    /// Largest magnitude a decoded sample of this encoding can reach; used as the clipping
    /// reference (a μ-law stream clips at 32124, not at 32767).
    pub const fn full_scale(self) -> i16 {
        match self {
            Self::Pcm16 => i16::MAX,
            Self::Mulaw => 32124,
            Self::Alaw => 32256,
        }
    }

    /// Short lowercase name (`pcm16`, `mulaw`, `alaw`), e.g. for metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pcm16 => "pcm16",
            Self::Mulaw => "mulaw",
            Self::Alaw => "alaw",
        }
    }
}

const BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159;
const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

const fn search(val: i32, table: &[i32; 8]) -> usize {
    let mut i = 0;
    while i < 8 {
        if val <= table[i] {
            return i;
        }
        i += 1;
    }
    8
}

const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let mut t = (((u & 0x0F) as i32) << 3) + BIAS;
    t <<= ((u & 0x70) >> 4) as i32;
    (if u & 0x80 != 0 { BIAS - t } else { t - BIAS }) as i16
}

const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw { alaw_to_linear(i as u8) } else { ulaw_to_linear(i as u8) };
        i += 1;
    }
    table
}

static ULAW_TABLE: [i16; 256] = build_table(false);
static ALAW_TABLE: [i16; 256] = build_table(true);

const fn magnitudes(table: [i16; 256]) -> [u16; 256] {
    let mut out = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = table[i].unsigned_abs();
        i += 1;
    }
    out
}

static ULAW_MAGNITUDE: [u16; 256] = magnitudes(build_table(false));

/// The magnitude of one μ-law byte's sample, `|mulaw_decode(byte)|` (0..=32124): one table
/// read, for sums over a frame (a live call's loudness, 160 bytes every 20 ms).
#[inline]
pub fn mulaw_magnitude(byte: u8) -> u16 {
    ULAW_MAGNITUDE[byte as usize]
}

/// Decodes one μ-law byte to a linear sample.
#[inline]
pub fn mulaw_decode(byte: u8) -> i16 {
    ULAW_TABLE[byte as usize]
}

/// Decodes one A-law byte to a linear sample.
#[inline]
pub fn alaw_decode(byte: u8) -> i16 {
    ALAW_TABLE[byte as usize]
}

/// Encodes a linear sample to μ-law (G.711; magnitudes above 32635 saturate).
#[inline]
pub fn mulaw_encode(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 2;
    let mask: i32 = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    if pcm > ULAW_CLIP {
        pcm = ULAW_CLIP;
    }
    pcm += BIAS >> 2;
    let seg = search(pcm, &SEG_UEND);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let uval = ((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0x0F);
    (uval ^ mask) as u8
}

/// Encodes a linear sample to A-law (G.711).
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 3;
    let mask: i32 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = search(pcm, &SEG_AEND);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mut aval = (seg as i32) << 4;
    if seg < 2 {
        aval |= (pcm >> 1) & 0x0F;
    } else {
        aval |= (pcm >> seg) & 0x0F;
    }
    (aval ^ mask) as u8
}

/// Checks that `bytes` is a whole number of samples of `encoding` and returns the count.
pub fn sample_count(encoding: Encoding, bytes: &[u8]) -> Result<usize, DspError> {
    let bps = encoding.bytes_per_sample();
    if !bytes.len().is_multiple_of(bps) {
        return Err(DspError::PartialFrame { len: bytes.len(), block: bps });
    }
    Ok(bytes.len() / bps)
}

/// Appends the samples of `bytes` (mono, interleaving is the caller's business) to `out`.
///
/// A trailing odd byte of PCM16 is ignored; use [`sample_count`] first to reject it.
/// Never allocates beyond `bytes.len()` samples.
pub fn decode_into(encoding: Encoding, bytes: &[u8], out: &mut Vec<i16>) {
    match encoding {
        Encoding::Pcm16 => out.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]))),
        Encoding::Mulaw => out.extend(bytes.iter().map(|&b| ULAW_TABLE[b as usize])),
        Encoding::Alaw => out.extend(bytes.iter().map(|&b| ALAW_TABLE[b as usize])),
    }
}

/// Decodes `bytes` to a new vector of linear samples (see [`decode_into`]).
pub fn decode(encoding: Encoding, bytes: &[u8]) -> Vec<i16> {
    let mut out = Vec::with_capacity(bytes.len() / encoding.bytes_per_sample());
    decode_into(encoding, bytes, &mut out);
    out
}

/// Appends the encoding of `samples` to `out`.
pub fn encode_into(encoding: Encoding, samples: &[i16], out: &mut Vec<u8>) {
    match encoding {
        Encoding::Pcm16 => {
            out.reserve(samples.len() * 2);
            for s in samples {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
        Encoding::Mulaw => out.extend(samples.iter().map(|&s| mulaw_encode(s))),
        Encoding::Alaw => out.extend(samples.iter().map(|&s| alaw_encode(s))),
    }
}

/// Encodes `samples` to a new byte vector (see [`encode_into`]).
pub fn encode(encoding: Encoding, samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * encoding.bytes_per_sample());
    encode_into(encoding, samples, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_magnitudes_are_the_decoded_samples_absolute_values() {
        for byte in 0..=255u8 {
            assert_eq!(mulaw_magnitude(byte), mulaw_decode(byte).unsigned_abs(), "{byte:#04x}");
        }
        assert_eq!((mulaw_magnitude(0x00), mulaw_magnitude(0x80), mulaw_magnitude(0xFF)), (32124, 32124, 0));
    }

    #[test]
    fn reference_values() {
        // Values from the ITU-T G.711 tables / Sun reference implementation.
        assert_eq!(mulaw_decode(0x00), -32124);
        assert_eq!(mulaw_decode(0x80), 32124);
        assert_eq!(mulaw_decode(0xFF), 0);
        assert_eq!(mulaw_decode(0x7F), 0);
        assert_eq!(mulaw_decode(0xFE), 8);
        assert_eq!(mulaw_decode(0x7E), -8);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(mulaw_encode(0), 0xFF);
        assert_eq!(mulaw_encode(i16::MAX), 0x80);
        assert_eq!(mulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(mulaw_encode(1000), 0xCE);
        assert_eq!(alaw_encode(1000), 0xFA);
    }

    #[test]
    fn every_code_round_trips() {
        for b in 0..=255u8 {
            let expected_mu = if b == 0x7F { 0xFF } else { b }; // μ-law has a negative zero
            assert_eq!(mulaw_encode(mulaw_decode(b)), expected_mu, "mulaw {b:#04x}");
            assert_eq!(alaw_encode(alaw_decode(b)), b, "alaw {b:#04x}");
        }
    }

    #[test]
    fn pcm16_round_trip_and_partial_frames() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN, 12345];
        let bytes = encode(Encoding::Pcm16, &samples);
        assert_eq!(bytes.len(), 12);
        assert_eq!(decode(Encoding::Pcm16, &bytes), samples);
        assert!(sample_count(Encoding::Pcm16, &bytes[..11]).is_err());
        assert_eq!(sample_count(Encoding::Mulaw, &bytes[..11]), Ok(11));
    }
}
