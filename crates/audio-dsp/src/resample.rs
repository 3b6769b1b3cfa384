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

/// Taps on each side of [`upsample_2x`]'s half-band filter (its odd phase has `2 * HALF_TAPS`).
const HALF_TAPS: usize = 20;

/// The Kaiser window's β for [`upsample_2x`]'s filter.
const HALF_BAND_BETA: f64 = 9.0;

/// Input samples [`upsample_2x`] converts at a time (its scratch stays a few kilobytes).
const UPSAMPLE_BLOCK: usize = 1024;

/// The odd phase of a Kaiser-windowed half-band low-pass at the doubled rate: `c[i]` weighs
/// the input samples `i` and `i + 1` away from the output sample between two inputs, scaled so
/// the taps sum to one (a constant stays that constant).
fn half_band() -> &'static [f32; HALF_TAPS] {
    static TAPS: std::sync::LazyLock<[f32; HALF_TAPS]> = std::sync::LazyLock::new(|| {
        // The modified Bessel function of the first kind, order zero (Kaiser's window).
        let i0 = |x: f64| {
            let (mut sum, mut term, mut k) = (1.0f64, 1.0f64, 1.0f64);
            while term > 1e-12 * sum {
                term *= (x / 2.0) * (x / 2.0) / (k * k);
                sum += term;
                k += 1.0;
            }
            sum
        };
        let mut c = [0f64; HALF_TAPS];
        for (i, c) in c.iter_mut().enumerate() {
            let j = (2 * i + 1) as f64;
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            let edge = j / (2 * HALF_TAPS) as f64;
            let window = i0(HALF_BAND_BETA * (1.0 - edge * edge).max(0.0).sqrt()) / i0(HALF_BAND_BETA);
            *c = 2.0 * sign / (std::f64::consts::PI * j) * window;
        }
        let sum: f64 = 2.0 * c.iter().sum::<f64>();
        c.map(|c| (c / sum) as f32)
    });
    &TAPS
}

/// Doubles a mono clip's sample rate (8 → 16 kHz for transcription) with a linear-phase
/// half-band filter: every second output sample is the input sample itself, the ones between
/// are the filter's 40 taps on the input around them. Flat within 0.001 dB up to 3.4 kHz,
/// images of the input's band attenuated by at least 88 dB from 4.6 kHz (the upper edge of
/// telephone speech and its image); zeros are taken before and after the clip, so the output
/// is time-aligned with the input and has exactly twice its samples. Less than half the time
/// of [`resample`]'s FFT resampler for the same clip (122 against 307 µs for a 3.8 s
/// utterance, `benches/dsp.rs`), which is why live utterances take this path; recordings keep
/// the FFT resampler.
pub fn upsample_2x(samples: &[i16]) -> Vec<i16> {
    /// Outputs computed together, their sums kept in registers across the taps.
    const LANES: usize = 8;
    let taps = half_band();
    let mut out = vec![0i16; samples.len() * 2];
    // A block's input with `HALF_TAPS` samples of context each side, and its in-between outputs.
    let mut x = Vec::with_capacity(UPSAMPLE_BLOCK + 2 * HALF_TAPS);
    let mut odd = vec![0f32; UPSAMPLE_BLOCK];
    for (b, (block, pairs)) in samples.chunks(UPSAMPLE_BLOCK).zip(out.chunks_mut(2 * UPSAMPLE_BLOCK)).enumerate() {
        let n = block.len();
        let first = b * UPSAMPLE_BLOCK;
        let lo = first.saturating_sub(HALF_TAPS);
        let hi = (first + n + HALF_TAPS).min(samples.len());
        x.clear();
        x.resize(HALF_TAPS - (first - lo), 0.0);
        x.extend(samples[lo..hi].iter().map(|&s| f32::from(s)));
        x.resize(n + 2 * HALF_TAPS, 0.0);
        // Output `m + ½` weighs input `m - i` and `m + 1 + i` by `taps[i]`, summed from the
        // nearest tap out (the same order for every output, whichever loop computes it).
        let whole = n - n % LANES;
        for (m, sums) in (0..whole).step_by(LANES).zip(odd.chunks_exact_mut(LANES)) {
            // The group's whole window, so every index below is checked once, here.
            let window: &[f32; LANES + 2 * HALF_TAPS] =
                x[m..m + LANES + 2 * HALF_TAPS].try_into().expect("the group's window");
            let mut acc = [0f32; LANES];
            for (i, &c) in taps.iter().enumerate() {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a += c * (window[HALF_TAPS - i + j] + window[HALF_TAPS + 1 + i + j]);
                }
            }
            sums.copy_from_slice(&acc);
        }
        for (m, sum) in odd.iter_mut().enumerate().take(n).skip(whole) {
            *sum = taps
                .iter()
                .enumerate()
                .fold(0.0, |a, (i, &c)| a + c * (x[HALF_TAPS - i + m] + x[HALF_TAPS + 1 + i + m]));
        }
        for ((pair, &s), &between) in pairs.chunks_exact_mut(2).zip(block).zip(&odd) {
            pair[0] = s;
            pair[1] = round_to_i16(between);
        }
    }
    out
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

    /// The part of `x` at `freq` Hz (sample rate `rate`), as an amplitude.
    fn amplitude_at(x: &[i16], rate: u32, freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
        let (re, im) = x.iter().enumerate().fold((0.0, 0.0), |(re, im), (n, &s)| {
            (re + f64::from(s) * (w * n as f64).cos(), im + f64::from(s) * (w * n as f64).sin())
        });
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn upsampling_keeps_each_input_sample_and_doubles_the_length() {
        assert!(upsample_2x(&[]).is_empty());
        assert_eq!(upsample_2x(&[1000]).len(), 2);
        for len in [1usize, 2, 39, 40, 41, 1023, 1024, 1025, 3000] {
            let input: Vec<i16> = (0..len).map(|i| ((i * 7919) % 20000) as i16 - 10000).collect();
            let out = upsample_2x(&input);
            assert_eq!(out.len(), 2 * len);
            assert!(out.iter().step_by(2).eq(input.iter()), "len {len}");
        }
        // A constant stays that constant away from the clip's ends (the taps sum to one).
        let out = upsample_2x(&[1234; 400]);
        assert!(out[100..700].iter().all(|&s| s == 1234), "{:?}", &out[100..110]);
    }

    /// The grouped sums give exactly what the filter's plain definition gives, output by output
    /// (the same taps, in the same order), across block edges and group tails.
    #[test]
    fn upsampling_is_the_filter_output_by_output() {
        let taps = half_band();
        for len in [1usize, 9, 1030, 2500] {
            let input: Vec<i16> = (0..len).map(|i| (((i * 7919 + 13) % 40000) as i32 - 20000) as i16).collect();
            let at = |k: isize| usize::try_from(k).ok().and_then(|k| input.get(k)).map_or(0.0, |&s| f32::from(s));
            let plain: Vec<i16> = (0..len)
                .flat_map(|m| {
                    let m = m as isize;
                    let between = taps
                        .iter()
                        .enumerate()
                        .fold(0.0f32, |a, (i, &c)| a + c * (at(m - i as isize) + at(m + 1 + i as isize)));
                    [input[m as usize], round_to_i16(between)]
                })
                .collect();
            assert_eq!(upsample_2x(&input), plain, "len {len}");
        }
    }

    #[test]
    fn upsampling_passes_speech_and_removes_its_images() {
        for freq in [300.0, 1000.0, 2500.0, 3400.0] {
            let input = tone(8000, freq, 1.0);
            let out = upsample_2x(&input);
            let expected = tone(16000, freq, 1.0);
            // Away from the ends, the tone as if sampled at 16 kHz (the input's own rounding
            // to whole numbers is most of what is left).
            let err: Vec<i16> = out[1000..15000].iter().zip(&expected[1000..15000]).map(|(a, b)| a - b).collect();
            assert!(rms(&err) < 2.0, "{freq} Hz: error {}", rms(&err));
            // Its image at 8 kHz - f, attenuated by at least 80 dB from the tone's 10,000.
            let image = amplitude_at(&out[1000..15000], 16000, 8000.0 - freq);
            assert!(image < 10000.0 * 1e-4, "{freq} Hz: image {image}");
        }
    }

    #[test]
    fn upsampling_agrees_with_the_fft_resampler_in_the_speech_band() {
        let input: Vec<i16> = tone(8000, 440.0, 1.0)
            .iter()
            .zip(tone(8000, 1270.0, 1.0))
            .zip(tone(8000, 2930.0, 1.0))
            .map(|((a, b), c)| a / 3 + b / 3 + c / 3)
            .collect();
        let ours = upsample_2x(&input);
        let fft = resample(&input, 8000, 16000).unwrap();
        assert_eq!(ours.len(), fft.len());
        let err: Vec<i16> = ours[200..15800].iter().zip(&fft[200..15800]).map(|(a, b)| a - b).collect();
        assert!(rms(&err) < 0.001 * rms(&fft[200..15800]), "difference {} of {}", rms(&err), rms(&fft));
    }

    proptest::proptest! {
        /// Any clip: twice as long, every input sample kept in place, nothing panics (loud
        /// clips saturate in between).
        #[test]
        fn upsampling_any_clip(input in proptest::collection::vec(proptest::num::i16::ANY, 0..2500)) {
            let out = upsample_2x(&input);
            proptest::prop_assert_eq!(out.len(), 2 * input.len());
            proptest::prop_assert!(out.iter().step_by(2).eq(input.iter()));
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
