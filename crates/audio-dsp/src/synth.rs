//! Deterministic test signals: tones, seeded white noise, DTMF, mixing at a chosen SNR.
//!
//! Used by this crate's tests and benchmarks, and handy for the service's own tests; it is
//! not meant for production audio.

/// Small seeded PRNG (SplitMix64): the same seed gives the same noise on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// RMS value for a level in dBFS, with this crate's convention that 0 dBFS is an RMS of
/// 32768 (so a full-scale sine is -3 dBFS).
pub fn dbfs_to_rms(dbfs: f64) -> f64 {
    32768.0 * 10f64.powf(dbfs / 20.0)
}

fn clamp16(x: f64) -> i16 {
    x.round().clamp(-32768.0, 32767.0) as i16
}

/// `secs` of silence.
pub fn silence(rate: u32, secs: f64) -> Vec<i16> {
    vec![0; (f64::from(rate) * secs).round() as usize]
}

/// A sine of `freq` Hz whose RMS is `rms_dbfs`.
pub fn tone(rate: u32, freq: f64, rms_dbfs: f64, secs: f64) -> Vec<i16> {
    let amp = dbfs_to_rms(rms_dbfs) * std::f64::consts::SQRT_2;
    let n = (f64::from(rate) * secs).round() as usize;
    (0..n).map(|i| clamp16(amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())).collect()
}

/// Gaussian white noise with RMS `rms_dbfs`.
pub fn white_noise(rate: u32, secs: f64, rms_dbfs: f64, seed: u64) -> Vec<i16> {
    let mut rng = Rng::new(seed);
    let sigma = dbfs_to_rms(rms_dbfs);
    let n = (f64::from(rate) * secs).round() as usize;
    (0..n).map(|_| clamp16(rng.gaussian() * sigma)).collect()
}

/// A DTMF key: both tones at `tone_dbfs` RMS each.
pub fn dtmf_tone(rate: u32, digit: char, tone_dbfs: f64, secs: f64) -> Vec<i16> {
    let Some((r, c)) = crate::dtmf::key_frequencies(digit) else {
        return silence(rate, secs);
    };
    let a = tone(rate, r, tone_dbfs, secs);
    let b = tone(rate, c, tone_dbfs, secs);
    a.iter().zip(&b).map(|(&x, &y)| clamp16(f64::from(x) + f64::from(y))).collect()
}

/// Adds `src` into `dst` starting at sample `offset`, growing `dst` if needed.
pub fn add_at(dst: &mut Vec<i16>, src: &[i16], offset: usize) {
    if dst.len() < offset + src.len() {
        dst.resize(offset + src.len(), 0);
    }
    for (d, &s) in dst[offset..].iter_mut().zip(src) {
        *d = clamp16(f64::from(*d) + f64::from(s));
    }
}

/// Mean power (mean square) of `x`.
pub fn power(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64
}

/// Adds seeded Gaussian white noise to `clean` so that `signal_power / noise_power` is
/// `snr_db` (pass the clean signal's power over its active part, e.g. speech frames).
pub fn add_noise_at_snr(clean: &[i16], snr_db: f64, signal_power: f64, seed: u64) -> Vec<i16> {
    let sigma = (signal_power / 10f64.powf(snr_db / 10.0)).sqrt();
    let mut rng = Rng::new(seed);
    clean.iter().map(|&s| clamp16(f64::from(s) + rng.gaussian() * sigma)).collect()
}
