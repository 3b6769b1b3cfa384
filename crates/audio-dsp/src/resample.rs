//! Sample-rate conversion between the supported rates, with rubato's synchronous FFT
//! resampler (fixed ratio, high quality, allocation-free once built).

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::DspError;
use crate::audio::{check_rate, round_to_i16};

const SCALE: f32 = 32768.0;

#[inline]
fn to_i16(x: f32) -> i16 {
    round_to_i16(x * SCALE)
}

/// Input samples per step of the offline resampler.
const OFFLINE_CHUNK: usize = 1024;

thread_local! {
    /// The offline resampler this thread used last, with its rates: building one (its filter
    /// and FFT plans) is about a tenth of resampling an utterance, so a thread converting one
    /// utterance after another keeps it and resets it instead.
    static OFFLINE: std::cell::RefCell<Option<(u32, u32, Fft<f32>)>> = const { std::cell::RefCell::new(None) };
}

/// This thread's offline resampler for `from` → `to`, reset, or a new one.
fn offline(from: u32, to: u32) -> Result<Fft<f32>, DspError> {
    // Taken out of the cell, so a conversion started inside another's sink builds its own.
    match OFFLINE.with(|cell| cell.borrow_mut().take()) {
        Some((f, t, mut resampler)) if (f, t) == (from, to) => {
            resampler.reset();
            Ok(resampler)
        }
        _ => Fft::<f32>::new(from as usize, to as usize, OFFLINE_CHUNK, 1, FixedSync::Input)
            .map_err(|_| DspError::Resample),
    }
}

/// Resamples a whole mono clip from `from` Hz to `to` Hz. The resampler's start-up delay is
/// trimmed, so the output is time-aligned with the input and has
/// `ceil(len * to / from)` samples. Returns a copy when the rates are equal.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Result<Vec<i16>, DspError> {
    let mut out = Vec::with_capacity((samples.len() as u64 * u64::from(to)).div_ceil(u64::from(from.max(1))) as usize);
    resample_each(samples, from, to, |block| out.extend_from_slice(block))?;
    Ok(out)
}

/// [`resample`], appending the output to `out` as little-endian PCM16 bytes, with no copy of
/// the clip at either rate.
pub fn resample_to_pcm16le(samples: &[i16], from: u32, to: u32, out: &mut Vec<u8>) -> Result<(), DspError> {
    resample_each(samples, from, to, |block| out.extend(block.iter().flat_map(|s| s.to_le_bytes())))
}

/// [`resample`], handing the output to `sink` block by block, in order, instead of collecting
/// it: besides what `sink` keeps, it holds a few kilobytes however long the clip is.
pub fn resample_each(samples: &[i16], from: u32, to: u32, mut sink: impl FnMut(&[i16])) -> Result<(), DspError> {
    check_rate(from)?;
    check_rate(to)?;
    if from == to {
        sink(samples);
        return Ok(());
    }
    if samples.is_empty() {
        return Ok(());
    }
    let mut resampler = offline(from, to)?;
    let expected = (samples.len() as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize;
    let mut input = vec![0f32; resampler.input_frames_max()];
    let mut output = vec![0f32; resampler.output_frames_max()];
    let mut block = Vec::with_capacity(output.len());
    let mut skip = resampler.output_delay();
    let mut emitted = 0;
    let mut at = 0;
    // Whole chunks, then the last partial one padded with zeros, then zeros until the delay
    // has been flushed: what rubato's `process_all` does, a chunk at a time.
    while emitted < expected {
        let need = resampler.input_frames_next();
        let take = need.min(samples.len() - at);
        for (x, &s) in input[..take].iter_mut().zip(&samples[at..at + take]) {
            *x = f32::from(s) / SCALE;
        }
        input[take..need].fill(0.0);
        at += take;
        let chunk = SequentialSlice::new(&input[..need], 1, need).map_err(|_| DspError::Resample)?;
        let frames = output.len();
        let mut out = SequentialSlice::new_mut(&mut output[..], 1, frames).map_err(|_| DspError::Resample)?;
        let (_, produced) = resampler.process_into_buffer(&chunk, &mut out, None).map_err(|_| DspError::Resample)?;
        let fresh = &output[..produced];
        let trimmed = skip.min(fresh.len());
        skip -= trimmed;
        let fresh = &fresh[trimmed..];
        let keep = fresh.len().min(expected - emitted);
        block.clear();
        block.extend(fresh[..keep].iter().map(|&x| to_i16(x)));
        sink(&block);
        emitted += keep;
    }
    OFFLINE.with(|cell| *cell.borrow_mut() = Some((from, to, resampler)));
    Ok(())
}

/// Streaming mono resampler for live audio: push any number of samples, get the resampled
/// samples appended to a caller-owned vector. Works in 10 ms input chunks; after
/// construction it allocates nothing. Output lags input by [`StreamResampler::delay`]
/// output samples.
pub struct StreamResampler {
    inner: Fft<f32>,
    pending: Vec<f32>,
    chunk: usize,
    out_buf: Vec<f32>,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler").field("chunk", &self.chunk).finish_non_exhaustive()
    }
}

impl StreamResampler {
    /// Builds a resampler from `from` Hz to `to` Hz (both supported rates, not equal).
    pub fn new(from: u32, to: u32) -> Result<Self, DspError> {
        check_rate(from)?;
        check_rate(to)?;
        if from == to {
            return Err(DspError::InvalidConfig("resampling to the same rate"));
        }
        let chunk = (from / 100) as usize;
        let inner =
            Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input).map_err(|_| DspError::Resample)?;
        let out_buf = vec![0.0; inner.output_frames_max()];
        Ok(Self { inner, pending: Vec::with_capacity(chunk), chunk, out_buf })
    }

    /// Latency in output samples.
    pub fn delay(&self) -> usize {
        self.inner.output_delay()
    }

    /// Resamples `input`, appending whatever output is ready to `out`.
    pub fn push(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<(), DspError> {
        let mut rest = input;
        while !rest.is_empty() {
            let take = (self.chunk - self.pending.len()).min(rest.len());
            self.pending.extend(rest[..take].iter().map(|&s| f32::from(s) / SCALE));
            rest = &rest[take..];
            if self.pending.len() == self.chunk {
                let input = SequentialSlice::new(&self.pending[..], 1, self.chunk).map_err(|_| DspError::Resample)?;
                let frames = self.out_buf.len();
                let mut output =
                    SequentialSlice::new_mut(&mut self.out_buf[..], 1, frames).map_err(|_| DspError::Resample)?;
                let (_, produced) =
                    self.inner.process_into_buffer(&input, &mut output, None).map_err(|_| DspError::Resample)?;
                out.extend(self.out_buf[..produced].iter().map(|&x| to_i16(x)));
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Approximate heap bytes held (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        // rubato's FFT plans and overlap buffers scale with the chunk sizes.
        (self.pending.capacity() + self.out_buf.capacity()) * 4 + 16 * (self.chunk * 4) + 4096
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_round_half_away_from_zero_and_saturate() {
        for (x, want) in [
            (0.0f32, 0i16),
            (0.4 / SCALE, 0),
            (0.5 / SCALE, 1),
            (-0.5 / SCALE, -1),
            (1.49 / SCALE, 1),
            (-2.5 / SCALE, -3),
            (1.5, i16::MAX),
            (-1.5, i16::MIN),
            (f32::NAN, 0),
        ] {
            assert_eq!(to_i16(x), want, "{x}");
        }
        // The same as rounding with `f32::round` and clamping, over a sweep of the range.
        // Quarter steps (exact ties included) and a step that lands between them.
        for i in -140_000..140_000 {
            let x = if i % 3 == 0 { i as f32 / 4.0 / SCALE + 1e-7 } else { i as f32 / 4.0 / SCALE };
            assert_eq!(to_i16(x), (x * SCALE).round().clamp(-32768.0, 32767.0) as i16, "{x}");
        }
    }

    use super::*;

    fn tone(rate: u32, freq: f64, secs: f64) -> Vec<i16> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| (10000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn offline_preserves_length_level_and_phase() {
        for (from, to) in [(8000, 16000), (16000, 8000), (48000, 8000), (24000, 16000)] {
            let input = tone(from, 440.0, 1.0);
            let out = resample(&input, from, to).unwrap();
            let expected = tone(to, 440.0, 1.0);
            assert!(out.len().abs_diff(expected.len()) <= 1, "{from}->{to} len {}", out.len());
            let mid = &out[to as usize / 4..to as usize * 3 / 4];
            let exp_mid = &expected[to as usize / 4..to as usize * 3 / 4];
            assert!((rms(mid) - rms(exp_mid)).abs() < 100.0, "{from}->{to} level");
            // Time-aligned to within a fraction of an output sample: a 440 Hz tone shifted
            // by half a sample at 8 kHz differs by ~17% RMS, one sample by ~34%.
            let err: Vec<i16> = mid.iter().zip(exp_mid).map(|(a, b)| a - b).collect();
            assert!(rms(&err) < 0.2 * rms(exp_mid), "{from}->{to} err {}", rms(&err));
        }
        assert!(resample(&[1, 2], 8000, 11025).is_err());
    }

    #[test]
    fn a_kept_resampler_converts_as_a_new_one() {
        let clip = |n: usize, a: usize, m: usize| -> Vec<i16> {
            (0..n).map(|i| ((i * a) % m) as i16 - (m / 2) as i16).collect()
        };
        let probe = clip(300, 31, 2000);
        // A clip whose conversion ends with some of it still in the resampler's state (found by
        // search: few lengths do), which a kept resampler must not carry into the next clip.
        let before = clip(1861, 7919, 20000);
        OFFLINE.with(|cell| cell.borrow_mut().take());
        let fresh = resample(&probe, 8000, 16000).unwrap();
        assert_eq!(resample(&before, 8000, 16000).unwrap().len(), 2 * 1861);
        assert_eq!(resample(&probe, 8000, 16000).unwrap(), fresh, "after another clip");
        // Another rate pair in between replaces the kept one; back at 8 → 16 kHz, the same.
        assert_eq!(resample(&before, 16000, 8000).unwrap().len(), 931);
        assert_eq!(resample(&probe, 8000, 16000).unwrap(), fresh, "after another rate pair");
    }

    /// The chunked resampler gives rubato's `process_all` output exactly, at every length
    /// around the chunk boundaries.
    #[test]
    fn chunked_matches_process_all() {
        for (from, to) in [(8000u32, 16000u32), (48000, 16000), (16000, 8000), (24000, 16000)] {
            for len in [1usize, 7, 1023, 1024, 1025, 2048, 5000, 16000] {
                let input = tone(from, 440.0, len as f64 / f64::from(from) + 1e-9);
                let input = &input[..len.min(input.len())];
                let reference = {
                    let x: Vec<f32> = input.iter().map(|&s| f32::from(s) / SCALE).collect();
                    let mut r =
                        Fft::<f32>::new(from as usize, to as usize, OFFLINE_CHUNK, 1, FixedSync::Input).unwrap();
                    let a = SequentialSlice::new(&x[..], 1, x.len()).unwrap();
                    r.process_all(&a, x.len(), None).unwrap().take_data().into_iter().map(to_i16).collect::<Vec<_>>()
                };
                assert_eq!(resample(input, from, to).unwrap(), reference, "{from}->{to} len {len}");
            }
        }
    }

    #[test]
    fn streaming_matches_rate() {
        let mut r = StreamResampler::new(8000, 16000).unwrap();
        let input = tone(8000, 300.0, 1.0);
        let mut out = Vec::new();
        for chunk in input.chunks(160) {
            r.push(chunk, &mut out).unwrap();
        }
        assert_eq!(out.len(), 16000);
        let tail = &out[4000..];
        assert!((rms(tail) - 10000.0 / 2f64.sqrt()).abs() < 200.0);
    }
}
