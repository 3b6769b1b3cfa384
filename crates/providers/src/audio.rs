//! Small audio helpers: a WAV header for raw uploads, G.711 μ-law encoding and a streaming
//! PCM16 resampler so synthesised audio reaches the caller in exactly the format it asked for.

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{AudioEncoding, OutputEncoding};

/// Wrap raw samples in a RIFF/WAV header (servers that sniff containers cannot read raw audio).
pub(crate) fn wav_wrap(encoding: AudioEncoding, sample_rate: u32, channels: u16, data: &[u8]) -> Bytes {
    let (format_tag, bits): (u16, u16) = match encoding {
        AudioEncoding::Mulaw => (7, 8),
        AudioEncoding::Alaw => (6, 8),
        _ => (1, 16),
    };
    let block_align = channels * bits / 8;
    let byte_rate = sample_rate * u32::from(block_align);
    // Non-PCM formats carry the (empty) extension size field: an 18-byte fmt chunk.
    let fmt_len: u32 = if format_tag == 1 { 16 } else { 18 };
    let data_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = BytesMut::with_capacity(data.len() + 46);
    out.put_slice(b"RIFF");
    out.put_u32_le(4 + (8 + fmt_len) + 8 + data_len);
    out.put_slice(b"WAVEfmt ");
    out.put_u32_le(fmt_len);
    out.put_u16_le(format_tag);
    out.put_u16_le(channels);
    out.put_u32_le(sample_rate);
    out.put_u32_le(byte_rate);
    out.put_u16_le(block_align);
    out.put_u16_le(bits);
    if fmt_len == 18 {
        out.put_u16_le(0);
    }
    out.put_slice(b"data");
    out.put_u32_le(data_len);
    out.put_slice(data);
    out.freeze()
}

/// G.711 μ-law encoding of one linear sample.
pub(crate) fn linear_to_mulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (31 - (s as u32).leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// G.711 μ-law decoding (tests check the encoder with it).
#[cfg(test)]
pub(crate) fn mulaw_to_linear(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = (b >> 4) & 0x07;
    let mantissa = b & 0x0F;
    let magnitude = (((i32::from(mantissa) << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// Converts a stream of PCM16 LE mono bytes at `in_rate` into `encoding` at `out_rate`,
/// chunk by chunk. Downsampling runs a windowed-sinc low-pass first so speech does not alias.
#[derive(Debug)]
pub(crate) struct Transcoder {
    encoding: OutputEncoding,
    step: f64,
    taps: Vec<f32>,
    history: Vec<f32>,
    prev: f32,
    pos: f64,
    odd_byte: Option<u8>,
}

impl Transcoder {
    pub(crate) fn new(in_rate: u32, out_rate: u32, encoding: OutputEncoding) -> Self {
        let ratio = f64::from(out_rate) / f64::from(in_rate);
        let taps = if ratio < 1.0 { low_pass(0.45 * ratio, 31) } else { Vec::new() };
        Self {
            encoding,
            step: f64::from(in_rate) / f64::from(out_rate),
            history: vec![0.0; taps.len().saturating_sub(1)],
            taps,
            prev: 0.0,
            pos: 1.0,
            odd_byte: None,
        }
    }

    /// Is this a no-op (same rate, PCM16 out)? Then only sample alignment is kept.
    fn passthrough(&self) -> bool {
        self.step == 1.0 && self.encoding == OutputEncoding::Pcm16
    }

    /// Convert the next chunk. Output always holds whole samples.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut bytes = Vec::with_capacity(chunk.len() + 1);
        if let Some(b) = self.odd_byte.take() {
            bytes.push(b);
        }
        bytes.extend_from_slice(chunk);
        if bytes.len() % 2 == 1 {
            self.odd_byte = bytes.pop();
        }
        if self.passthrough() {
            return Bytes::from(bytes);
        }
        let input: Vec<f32> = bytes.chunks_exact(2).map(|p| f32::from(i16::from_le_bytes([p[0], p[1]]))).collect();
        let filtered = if self.taps.is_empty() { input } else { self.filter(&input) };
        let n = filtered.len();
        let mut out = BytesMut::with_capacity((n as f64 / self.step) as usize * 2 + 4);
        // Sample i of `filtered` sits at position i + 1; `prev` (last of the previous chunk) at 0.
        let at = |i: usize| if i == 0 { self.prev } else { filtered[i - 1] };
        while self.pos <= n as f64 {
            let i = self.pos.floor() as usize;
            let frac = (self.pos - i as f64) as f32;
            let value = if i >= n { at(i) } else { at(i) * (1.0 - frac) + at(i + 1) * frac };
            let sample = value.round().clamp(-32768.0, 32767.0) as i16;
            match self.encoding {
                OutputEncoding::Pcm16 => out.put_i16_le(sample),
                OutputEncoding::Mulaw => out.put_u8(linear_to_mulaw(sample)),
            }
            self.pos += self.step;
        }
        if n > 0 {
            self.prev = filtered[n - 1];
        }
        self.pos -= n as f64;
        out.freeze()
    }

    fn filter(&mut self, input: &[f32]) -> Vec<f32> {
        let k = self.taps.len();
        let mut buf = std::mem::take(&mut self.history);
        buf.extend_from_slice(input);
        let out = (0..input.len()).map(|i| self.taps.iter().zip(&buf[i..i + k]).map(|(t, x)| t * x).sum()).collect();
        self.history = buf[buf.len() - (k - 1)..].to_vec();
        out
    }
}

/// Hamming-windowed sinc low-pass; `cutoff` in cycles per input sample.
fn low_pass(cutoff: f64, len: usize) -> Vec<f32> {
    let m = (len - 1) as f64 / 2.0;
    let mut taps: Vec<f64> = (0..len)
        .map(|n| {
            let x = n as f64 - m;
            let sinc = if x == 0.0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            let window = 0.54 - 0.46 * (2.0 * std::f64::consts::PI * n as f64 / (len - 1) as f64).cos();
            sinc * window
        })
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= sum);
    taps.into_iter().map(|t| t as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, freq: f64, samples: usize) -> Vec<u8> {
        (0..samples)
            .flat_map(|i| {
                let v = (8000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16;
                v.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn wav_header_is_valid() {
        let wav = wav_wrap(AudioEncoding::Mulaw, 8000, 1, &[0xff; 80]);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[4..8].try_into().unwrap()) as usize, wav.len() - 8);
        assert_eq!(u16::from_le_bytes([wav[20], wav[21]]), 7);
        assert_eq!(&wav[38..42], b"data");
        let pcm = wav_wrap(AudioEncoding::Pcm16, 16000, 2, &[0; 64]);
        assert_eq!(u32::from_le_bytes(pcm[28..32].try_into().unwrap()), 64000);
        assert_eq!(pcm.len(), 44 + 64);
    }

    #[test]
    fn mulaw_round_trips_within_quantisation() {
        for s in [-32000i16, -1000, -1, 0, 1, 100, 1000, 8000, 32000] {
            let back = mulaw_to_linear(linear_to_mulaw(s));
            let err = (i32::from(back) - i32::from(s)).abs();
            assert!(err <= (i32::from(s).abs() / 16).max(8), "{s} -> {back}");
        }
        assert_eq!(linear_to_mulaw(0), 0xff);
    }

    #[test]
    fn resamples_24k_to_8k_with_right_length_in_any_chunking() {
        let input = tone(24_000, 440.0, 24_000);
        let mut whole = Transcoder::new(24_000, 8_000, OutputEncoding::Pcm16);
        let a = whole.push(&input);
        let mut split = Transcoder::new(24_000, 8_000, OutputEncoding::Pcm16);
        let mut b = Vec::new();
        for c in input.chunks(777) {
            b.extend_from_slice(&split.push(c));
        }
        assert!((a.len() / 2).abs_diff(8000) <= 2, "{}", a.len());
        assert_eq!(a.as_ref(), b.as_slice());
        // The tone survives: peak amplitude stays near 8000.
        let peak = b.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]]).unsigned_abs()).max().unwrap();
        assert!((7000..=8500).contains(&peak), "peak {peak}");
    }

    #[test]
    fn downsampling_removes_content_above_new_nyquist() {
        let input = tone(24_000, 7_000.0, 24_000);
        let mut t = Transcoder::new(24_000, 8_000, OutputEncoding::Pcm16);
        let out = t.push(&input);
        let peak = out.chunks_exact(2).skip(50).map(|p| i16::from_le_bytes([p[0], p[1]]).unsigned_abs()).max().unwrap();
        assert!(peak < 2500, "7 kHz leaked through at {peak}");
    }

    #[test]
    fn mulaw_output_is_one_byte_per_sample() {
        let mut t = Transcoder::new(8_000, 8_000, OutputEncoding::Mulaw);
        let out = t.push(&tone(8_000, 440.0, 801)[..1601]);
        assert_eq!(out.len(), 800);
    }
}
