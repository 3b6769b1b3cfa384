//! A light streaming transcoder for synthesised speech: PCM16 at any rate in, PCM16 or G.711 at
//! any rate out, chunk by chunk (a chunk may end mid-sample). Linear interpolation, after a
//! windowed-sinc low-pass when downsampling so speech does not alias. No rubato: it serves the
//! providers' arbitrary output rates and needs no feature.

use crate::Encoding;
use crate::codec::{alaw_encode, mulaw_encode};

/// Converts a stream of PCM16 LE mono bytes at `in_rate` into `encoding` at `out_rate`,
/// chunk by chunk. Downsampling runs a windowed-sinc low-pass first so speech does not alias.
#[derive(Debug)]
pub struct Transcoder {
    encoding: Encoding,
    step: f64,
    taps: Vec<f32>,
    history: Vec<f32>,
    prev: f32,
    pos: f64,
    odd_byte: Option<u8>,
}

impl Transcoder {
    /// A transcoder from PCM16 at `in_rate` to `encoding` (PCM16, μ-law or A-law) at `out_rate`.
    pub fn new(in_rate: u32, out_rate: u32, encoding: Encoding) -> Self {
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
        self.step == 1.0 && self.encoding == Encoding::Pcm16
    }

    /// Convert the next chunk. Output always holds whole samples.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(chunk.len() + 1);
        if let Some(b) = self.odd_byte.take() {
            bytes.push(b);
        }
        bytes.extend_from_slice(chunk);
        if bytes.len() % 2 == 1 {
            self.odd_byte = bytes.pop();
        }
        if self.passthrough() {
            return bytes;
        }
        let input: Vec<f32> = bytes.chunks_exact(2).map(|p| f32::from(i16::from_le_bytes([p[0], p[1]]))).collect();
        let filtered = if self.taps.is_empty() { input } else { self.filter(&input) };
        let n = filtered.len();
        let mut out = Vec::with_capacity((n as f64 / self.step) as usize * 2 + 4);
        // Sample i of `filtered` sits at position i + 1; `prev` (last of the previous chunk) at 0.
        let at = |i: usize| if i == 0 { self.prev } else { filtered[i - 1] };
        while self.pos <= n as f64 {
            let i = self.pos.floor() as usize;
            let frac = (self.pos - i as f64) as f32;
            let value = if i >= n { at(i) } else { at(i) * (1.0 - frac) + at(i + 1) * frac };
            let sample = crate::audio::round_to_i16(value);
            match self.encoding {
                Encoding::Pcm16 => out.extend_from_slice(&sample.to_le_bytes()),
                Encoding::Mulaw => out.push(mulaw_encode(sample)),
                Encoding::Alaw => out.push(alaw_encode(sample)),
            }
            self.pos += self.step;
        }
        if n > 0 {
            self.prev = filtered[n - 1];
        }
        self.pos -= n as f64;
        out
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
    fn resamples_24k_to_8k_with_right_length_in_any_chunking() {
        let input = tone(24_000, 440.0, 24_000);
        let mut whole = Transcoder::new(24_000, 8_000, Encoding::Pcm16);
        let a = whole.push(&input);
        let mut split = Transcoder::new(24_000, 8_000, Encoding::Pcm16);
        let mut b = Vec::new();
        for c in input.chunks(777) {
            b.extend_from_slice(&split.push(c));
        }
        assert!((a.len() / 2).abs_diff(8000) <= 2, "{}", a.len());
        assert_eq!(a, b);
        // The tone survives: peak amplitude stays near 8000.
        let peak = b.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]]).unsigned_abs()).max().unwrap();
        assert!((7000..=8500).contains(&peak), "peak {peak}");
    }

    #[test]
    fn downsampling_removes_content_above_new_nyquist() {
        let input = tone(24_000, 7_000.0, 24_000);
        let mut t = Transcoder::new(24_000, 8_000, Encoding::Pcm16);
        let out = t.push(&input);
        let peak = out.chunks_exact(2).skip(50).map(|p| i16::from_le_bytes([p[0], p[1]]).unsigned_abs()).max().unwrap();
        assert!(peak < 2500, "7 kHz leaked through at {peak}");
    }

    #[test]
    fn mulaw_output_is_one_byte_per_sample() {
        let mut t = Transcoder::new(8_000, 8_000, Encoding::Mulaw);
        let out = t.push(&tone(8_000, 440.0, 801)[..1601]);
        assert_eq!(out.len(), 800);
    }
}
