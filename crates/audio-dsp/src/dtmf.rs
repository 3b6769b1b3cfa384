//! DTMF (touch-tone) detection with the Goertzel algorithm.
//!
//! Blocks of 25.6 ms (205 samples at 8 kHz, scaled for other rates) advance by half a block.
//! A block holds a digit when one row and one column tone stand out: enough level, most of
//! the block's energy in the two tones (speech spreads its energy over many harmonics),
//! each tone well above the others of its group, and twist within limits. A digit is
//! reported after two consecutive blocks agree (≈ 38 ms, ITU Q.24 asks for ≥ 40 ms tones).

use serde::{Deserialize, Serialize};

const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [['1', '2', '3', 'A'], ['4', '5', '6', 'B'], ['7', '8', '9', 'C'], ['*', '0', '#', 'D']];

/// Detection thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DtmfConfig {
    /// Minimum level of each tone, dBFS (RMS of that sinusoid relative to full scale).
    pub min_tone_dbfs: f64,
    /// Share of the block's energy that must lie in the two tones (0..1).
    pub min_purity: f64,
    /// Normal twist: how far the column (high) tone may be below the row tone, dB.
    pub max_normal_twist_db: f64,
    /// Reverse twist: how far the column tone may be above the row tone, dB.
    pub max_reverse_twist_db: f64,
    /// How far each tone must exceed the next strongest tone of its group, dB.
    pub min_peak_ratio_db: f64,
}

impl Default for DtmfConfig {
    fn default() -> Self {
        Self {
            min_tone_dbfs: -36.0,
            min_purity: 0.75,
            max_normal_twist_db: 8.0,
            max_reverse_twist_db: 4.0,
            min_peak_ratio_db: 8.0,
        }
    }
}

/// A DTMF event, times in seconds from the start of the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DtmfEvent {
    /// A digit was confirmed (reported ≈ 40 ms after it began).
    Detected {
        /// `0-9`, `*`, `#` or `A-D`.
        digit: char,
        /// Estimated start of the tone.
        start: f64,
    },
    /// The digit's tone stopped.
    Finished {
        /// The digit.
        digit: char,
        /// Estimated start of the tone.
        start: f64,
        /// Estimated end of the tone.
        end: f64,
    },
}

/// A detected digit with its bounds, as reported in recording analysis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DtmfDigit {
    /// `0-9`, `*`, `#` or `A-D`.
    pub digit: char,
    /// Start of the tone, seconds.
    pub start: f64,
    /// End of the tone, seconds.
    pub end: f64,
}

/// Streaming Goertzel DTMF detector for one mono channel.
///
/// Each sample goes through the eight Goertzel filters once, as it arrives: the filters run
/// over each hop (half a block) and keep the hop's value at each frequency, and a block's value
/// is its two hops' (and, where the block is one sample longer than two hops, that sample's),
/// each turned by the phase of its place in the block. That is the block's DFT at the eight
/// frequencies, as a Goertzel run over the whole block gives it, with half the work: blocks
/// overlap by half, so a run per block took every sample twice.
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    config: DtmfConfig,
    rate: f64,
    block: usize,
    hop: usize,
    /// `block − 2 × hop` (0 or 1): the sample before the block's two hops.
    lead: usize,
    /// `cos ω`, `sin ω` of each filter: the recurrence's coefficient (`2 cos ω`), and the hop's
    /// value from its last two states.
    cos: [f32; 8],
    sin: [f32; 8],
    /// `e^{jω·hop}`: the older hop's place in the block, relative to the newer hop.
    older: [(f32, f32); 8],
    /// `e^{jω·(block − 1)}`: the leading sample's place.
    leading: [(f32, f32); 8],
    /// The current hop so far: the recurrences' last two states, its energy, its last sample.
    s1: [f32; 8],
    s2: [f32; 8],
    energy: f32,
    last: f32,
    since_hop: usize,
    /// The last two whole hops (older, newer), and the last sample of the hop before them.
    hops: [Hop; 2],
    before: f32,
    /// Samples consumed so far.
    samples: u64,
    /// Candidate digit, start sample of its first block and number of consecutive blocks.
    run: Option<(char, u64, u32)>,
    /// Confirmed digit, start sample of its first block, end sample of its last block.
    active: Option<(char, u64, u64)>,
    min_energy: f32,
    min_tone_power: f32,
}

/// One hop's value at each frequency (`Σ x[n]·e^{jω(hop−1−n)}`, real and imaginary parts), its
/// energy and its last sample.
#[derive(Debug, Clone, Copy, Default)]
struct Hop {
    re: [f32; 8],
    im: [f32; 8],
    energy: f32,
    last: f32,
}

impl DtmfDetector {
    /// A detector for audio at `rate` Hz.
    pub fn new(rate: u32, config: DtmfConfig) -> Self {
        let block = ((f64::from(rate) * 205.0 / 8000.0).round() as usize).max(16);
        let hop = block / 2;
        let (mut cos, mut sin) = ([0f32; 8], [0f32; 8]);
        let (mut older, mut leading) = ([(0f32, 0f32); 8], [(0f32, 0f32); 8]);
        for (k, f) in ROWS.iter().chain(COLS.iter()).enumerate() {
            let w = 2.0 * std::f64::consts::PI * f / f64::from(rate);
            (cos[k], sin[k]) = (w.cos() as f32, w.sin() as f32);
            let at = |n: usize| ((w * n as f64).cos() as f32, (w * n as f64).sin() as f32);
            older[k] = at(hop);
            leading[k] = at(block - 1);
        }
        // Tone power (mean square of a sinusoid) for the level threshold.
        let min_tone_power = 10f64.powf(config.min_tone_dbfs / 10.0) as f32;
        Self {
            config,
            rate: f64::from(rate),
            block,
            hop,
            lead: block - 2 * hop,
            cos,
            sin,
            older,
            leading,
            s1: [0.0; 8],
            s2: [0.0; 8],
            energy: 0.0,
            last: 0.0,
            since_hop: 0,
            hops: [Hop::default(); 2],
            before: 0.0,
            samples: 0,
            run: None,
            active: None,
            min_energy: 2.0 * min_tone_power * block as f32,
            min_tone_power,
        }
    }

    /// True while a confirmed digit is sounding.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Feeds samples; events go to `on_event`.
    pub fn push(&mut self, samples: &[i16], mut on_event: impl FnMut(DtmfEvent)) {
        let mut rest = samples;
        while !rest.is_empty() {
            // A run of samples up to the next hop, through the filters in one loop.
            let n = rest.len().min(self.hop - self.since_hop);
            let (run, tail) = rest.split_at(n);
            self.filter(run);
            rest = tail;
            self.samples += n as u64;
            self.since_hop += n;
            if self.since_hop == self.hop {
                self.end_hop();
                if self.samples >= self.block as u64 {
                    let digit = self.analyse_block();
                    self.advance(digit, &mut on_event);
                }
            }
        }
    }

    /// Eight independent Goertzel recurrences advanced together: the inner loop has no
    /// dependency chain between filters, so it pipelines (and vectorises).
    fn filter(&mut self, run: &[i16]) {
        let c = self.cos.map(|cos| 2.0 * cos);
        let (mut s1, mut s2, mut energy) = (self.s1, self.s2, self.energy);
        for &sample in run {
            let x = f32::from(sample) / 32768.0;
            energy += x * x;
            for k in 0..8 {
                let s0 = x + c[k] * s1[k] - s2[k];
                s2[k] = s1[k];
                s1[k] = s0;
            }
            self.last = x;
        }
        (self.s1, self.s2, self.energy) = (s1, s2, energy);
    }

    /// Closes the current hop: its value at each frequency, `s1 − e^{−jω}·s2`.
    fn end_hop(&mut self) {
        let mut hop = Hop { energy: self.energy, last: self.last, ..Hop::default() };
        for k in 0..8 {
            hop.re[k] = self.s1[k] - self.cos[k] * self.s2[k];
            hop.im[k] = self.sin[k] * self.s2[k];
        }
        self.before = self.hops[0].last;
        self.hops = [self.hops[1], hop];
        (self.s1, self.s2, self.energy, self.since_hop) = ([0.0; 8], [0.0; 8], 0.0, 0);
    }

    /// The block ending now: its energy and its power at each frequency (`|X(ω)|²`, as a
    /// Goertzel run over the block gives it).
    fn block_powers(&self) -> (f32, [f32; 8]) {
        let [old, new] = &self.hops;
        let lead = if self.lead == 1 { self.before } else { 0.0 };
        let energy = lead * lead + old.energy + new.energy;
        let power = std::array::from_fn(|k| {
            let (ar, ai) = self.older[k];
            let (br, bi) = self.leading[k];
            let re = new.re[k] + ar * old.re[k] - ai * old.im[k] + br * lead;
            let im = new.im[k] + ar * old.im[k] + ai * old.re[k] + bi * lead;
            re * re + im * im
        });
        (energy, power)
    }

    /// Ends the input, closing a sounding digit.
    pub fn finish(&mut self, mut on_event: impl FnMut(DtmfEvent)) {
        if let Some((digit, first, last)) = self.active.take() {
            on_event(DtmfEvent::Finished { digit, start: self.tone_start(first), end: self.tone_end(last) });
        }
        self.run = None;
    }

    // A block only passes the purity test when the tone fills most of it, so the first and
    // last detecting blocks bound the tone closely (within a few ms on the fixtures).
    fn tone_start(&self, first: u64) -> f64 {
        first as f64 / self.rate
    }

    fn tone_end(&self, last: u64) -> f64 {
        last as f64 / self.rate
    }

    fn advance(&mut self, digit: Option<char>, on_event: &mut impl FnMut(DtmfEvent)) {
        let end = self.samples;
        let k = end - self.block as u64;
        if let Some((d, first, _)) = self.active {
            if digit == Some(d) {
                self.active = Some((d, first, end));
                return;
            }
            self.finish(&mut *on_event);
        }
        match (digit, self.run) {
            (Some(d), Some((rd, first, n))) if d == rd => {
                if n + 1 >= 2 {
                    self.active = Some((d, first, end));
                    self.run = None;
                    on_event(DtmfEvent::Detected { digit: d, start: self.tone_start(first) });
                } else {
                    self.run = Some((d, first, n + 1));
                }
            }
            (Some(d), _) => self.run = Some((d, k, 1)),
            (None, _) => self.run = None,
        }
    }

    fn analyse_block(&self) -> Option<char> {
        let (energy, power) = self.block_powers();
        self.decide(energy, power)
    }

    /// The digit a block of `energy` with `power` at the eight frequencies holds, if any.
    fn decide(&self, energy: f32, power: [f32; 8]) -> Option<char> {
        if energy < self.min_energy {
            return None;
        }
        let n = self.block as f32;
        // Share of block energy at each frequency (1.0 for a pure tone).
        let frac = power.map(|p| 2.0 * p / (n * energy));
        let best = |g: &[f32]| {
            let mut idx = 0;
            for i in 1..4 {
                if g[i] > g[idx] {
                    idx = i;
                }
            }
            let second = (0..4).filter(|&i| i != idx).map(|i| g[i]).fold(0f32, f32::max);
            (idx, g[idx], second)
        };
        let (r, fr, r2) = best(&frac[..4]);
        let (c, fc, c2) = best(&frac[4..]);
        let cfg = &self.config;
        if f64::from(fr + fc) < cfg.min_purity {
            return None;
        }
        let mean_power = energy / n;
        if fr * mean_power < self.min_tone_power || fc * mean_power < self.min_tone_power {
            return None;
        }
        let twist_db = 10.0 * f64::from(fc / fr).log10();
        if twist_db < -cfg.max_normal_twist_db || twist_db > cfg.max_reverse_twist_db {
            return None;
        }
        let peak = 10f32.powf((cfg.min_peak_ratio_db / 10.0) as f32);
        if fr < peak * r2 || fc < peak * c2 {
            return None;
        }
        Some(KEYS[r][c])
    }
}

/// Detects all digits in a mono clip.
pub fn detect_dtmf(samples: &[i16], rate: u32, config: DtmfConfig) -> Vec<DtmfDigit> {
    let mut det = DtmfDetector::new(rate, config);
    let mut out = Vec::new();
    let mut on = |e: DtmfEvent| {
        if let DtmfEvent::Finished { digit, start, end } = e {
            out.push(DtmfDigit { digit, start, end });
        }
    };
    det.push(samples, &mut on);
    det.finish(&mut on);
    out
}

/// Frequencies (row, column) of a DTMF key, for generating test tones.
pub fn key_frequencies(digit: char) -> Option<(f64, f64)> {
    for (r, row) in KEYS.iter().enumerate() {
        for (c, &k) in row.iter().enumerate() {
            if k == digit.to_ascii_uppercase() {
                return Some((ROWS[r], COLS[c]));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A block's energy and powers as the detector computed them before it kept each hop's
    /// value: a Goertzel run over the whole block.
    fn block_goertzel(det: &DtmfDetector, block: &[f32]) -> (f32, [f32; 8]) {
        let energy: f32 = block.iter().map(|x| x * x).sum();
        let c = det.cos.map(|cos| 2.0 * cos);
        let (mut s1, mut s2) = ([0f32; 8], [0f32; 8]);
        for &x in block {
            for k in 0..8 {
                let s0 = x + c[k] * s1[k] - s2[k];
                s2[k] = s1[k];
                s1[k] = s0;
            }
        }
        let mut power = [0f32; 8];
        for k in 0..8 {
            power[k] = s1[k] * s1[k] + s2[k] * s2[k] - c[k] * s1[k] * s2[k];
        }
        (energy, power)
    }

    /// The detector as it was, fed one sample at a time, each block run through the filters
    /// whole (every sample twice): the reference.
    fn per_sample(
        det: &mut DtmfDetector,
        history: &mut Vec<f32>,
        samples: &[i16],
        on_event: &mut impl FnMut(DtmfEvent),
    ) {
        for &s in samples {
            history.push(f32::from(s) / 32768.0);
            det.samples += 1;
            if det.samples.is_multiple_of(det.hop as u64) && history.len() >= det.block {
                let (energy, power) = block_goertzel(det, &history[history.len() - det.block..]);
                let digit = det.decide(energy, power);
                det.advance(digit, on_event);
            }
        }
    }

    fn events(rate: u32, samples: &[i16], cuts: &[usize], reference: bool) -> Vec<DtmfEvent> {
        let mut det = DtmfDetector::new(rate, DtmfConfig::default());
        let mut history = Vec::new();
        let mut out = Vec::new();
        let mut on = |e: DtmfEvent| out.push(e);
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&samples.len())) {
            let end = cut.clamp(at, samples.len());
            if reference {
                per_sample(&mut det, &mut history, &samples[at..end], &mut on);
            } else {
                det.push(&samples[at..end], &mut on);
            }
            at = end;
        }
        det.finish(&mut on);
        out
    }

    /// Each block's energy and powers from its hops equal a Goertzel run over the block (to
    /// float rounding), at rates whose block is two hops and two hops and a sample, for
    /// tones, noise and silence, wherever the runs are cut.
    #[test]
    fn block_powers_from_hops_are_the_blocks_goertzel() {
        for rate in [8000u32, 11_025, 16_000] {
            let mut samples: Vec<i16> = crate::synth::dtmf_tone(rate, '5', -10.0, 0.2);
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            samples.extend((0..rate / 5).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 20_001) as i16 - 10_000
            }));
            samples.extend(std::iter::repeat_n(0i16, 500));
            samples.extend(crate::synth::dtmf_tone(rate, 'D', -30.0, 0.1));
            let mut det = DtmfDetector::new(rate, DtmfConfig::default());
            let mut history = Vec::new();
            let mut blocks = 0;
            for chunk in samples.chunks(37) {
                for &s in chunk {
                    history.push(f32::from(s) / 32768.0);
                }
                // Fed in odd runs; the hop boundaries fall inside them.
                let before = det.samples;
                let mut start = 0;
                while start < chunk.len() {
                    let n = (chunk.len() - start).min(det.hop - det.since_hop);
                    det.push(&chunk[start..start + n], |_| {});
                    start += n;
                    let seen = before + start as u64;
                    if seen.is_multiple_of(det.hop as u64) && seen >= det.block as u64 {
                        let (e, p) = det.block_powers();
                        let at = seen as usize;
                        let (want_e, want_p) = block_goertzel(&det, &history[at - det.block..at]);
                        let scale = want_e.max(1e-6);
                        assert!((e - want_e).abs() <= 1e-4 * scale, "{rate} {at}: energy {e} against {want_e}");
                        for k in 0..8 {
                            // Relative to the block's energy: a frequency with nothing in it
                            // is near zero in both.
                            let tol = 2e-3 * scale * det.block as f32 + 1e-7;
                            assert!((p[k] - want_p[k]).abs() <= tol, "{rate} {at} {k}: {} against {}", p[k], want_p[k]);
                        }
                        blocks += 1;
                    }
                }
            }
            assert!(blocks > 20, "{rate}: {blocks} blocks");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Digits between noise, cut into runs anywhere: the same events, at the same times, as
        /// sample by sample.
        #[test]
        fn runs_detect_what_samples_detect(
            rate in prop::sample::select(vec![8000u32, 16_000]),
            digits in prop::collection::vec(prop::sample::select(vec!['1', '5', '9', '#', 'A']), 1..4),
            noise_seed in any::<u64>(),
            mut cuts in prop::collection::vec(0usize..20_000, 0..40),
        ) {
            let mut samples = Vec::new();
            let mut x = noise_seed | 1;
            for d in digits {
                for _ in 0..rate / 20 {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    samples.push((x % 2001) as i16 - 1000);
                }
                samples.extend(crate::synth::dtmf_tone(rate, d, -10.0, 0.08));
            }
            cuts.sort_unstable();
            let want = events(rate, &samples, &cuts, true);
            prop_assert!(!want.is_empty());
            prop_assert_eq!(events(rate, &samples, &cuts, false), want);
        }
    }
}
