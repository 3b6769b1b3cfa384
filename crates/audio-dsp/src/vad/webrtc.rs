//! The WebRTC GMM voice-activity detector, vendored from earshot 0.1.0 (BSD-3-Clause,
//! © 2011 The WebRTC project authors, © 2024 pyke.io; licence text in this crate's
//! `LICENSE-earshot`).
//!
//! Why vendored: earshot 0.1 does 16-bit arithmetic with plain `+`/`-`/`*` where the C
//! original relies on two's-complement wrap-around. Release builds wrap, but any build with
//! overflow checks (every debug and test build) panics on some noisy input, and a panic on
//! outside audio is not acceptable here. This copy uses explicit wrapping operations at
//! those points, so it is bit-identical to earshot 0.1 in release builds (checked by a
//! differential test) and never panics. Other changes: state lives inline instead of in ~20
//! small heap boxes, the detector's own hangover is removed (the crate's segmenter does the
//! smoothing), the 48 kHz path is dropped (the crate resamples with rubato instead), and
//! 10/20 ms frames at 16 kHz are downsampled to 10/20 ms at 8 kHz (earshot 0.1 zero-pads
//! them to 30 ms).

const NUM_GAUSSIANS: usize = 2;
const SPECTRUM_WEIGHT: [i16; 6] = [6, 8, 10, 12, 14, 16];
const NOISE_UPDATE: i16 = 655; // Q15
const SPEECH_UPDATE: i16 = 6554; // Q15
const BACK_ETA: i16 = 154; // Q8
const MINIMUM_DIFFERENCE: [i16; 6] = [544, 544, 576, 576, 576, 576]; // Q5
const MAXIMUM_SPEECH: [i16; 6] = [11392, 11392, 11520, 11520, 11520, 11520]; // Q7
const MIN_STD: i16 = 384;
const MIN_ENERGY: i16 = 10;

// The WRTC model of earshot 0.1 (the original WebRTC model).
const NOISE_WEIGHTS: [[i16; 6]; NUM_GAUSSIANS] = [[34, 62, 72, 66, 53, 25], [94, 66, 56, 62, 75, 103]];
const SPEECH_WEIGHTS: [[i16; 6]; NUM_GAUSSIANS] = [[48, 82, 45, 87, 50, 47], [80, 46, 83, 41, 78, 81]];
const NOISE_MEANS: [[i16; 6]; NUM_GAUSSIANS] =
    [[6738, 4892, 7065, 6715, 6771, 3369], [7646, 3863, 7820, 7266, 5020, 4362]];
const SPEECH_MEANS: [[i16; 6]; NUM_GAUSSIANS] =
    [[8306, 10085, 10078, 11823, 11843, 6309], [9473, 9571, 10879, 7581, 8180, 7483]];
const NOISE_STDS: [[i16; 6]; NUM_GAUSSIANS] = [[378, 1064, 493, 582, 688, 593], [474, 697, 475, 688, 421, 455]];
const SPEECH_STDS: [[i16; 6]; NUM_GAUSSIANS] = [[555, 505, 567, 524, 585, 1231], [509, 828, 492, 1540, 1079, 850]];
const MINIMUM_MEAN: [i16; NUM_GAUSSIANS] = [640, 768];
const MAXIMUM_NOISE: [i16; 6] = [9216, 9088, 8960, 8832, 8704, 8576];
const FEATURES_OFFSET_VECTOR: [i16; 6] = [368, 368, 272, 176, 176, 176];

/// Local and global thresholds for 10/20/30 ms frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    pub local: [i16; 3],
    pub global: [i16; 3],
}

#[derive(Debug, Clone)]
pub(crate) struct WebRtcVad {
    downsampling_filter_states: [i32; 2],
    noise_means: [[i16; 6]; NUM_GAUSSIANS],
    speech_means: [[i16; 6]; NUM_GAUSSIANS],
    noise_stds: [[i16; 6]; NUM_GAUSSIANS],
    speech_stds: [[i16; 6]; NUM_GAUSSIANS],
    frame_counter: usize,
    age_vector: [i16; 16 * 6],
    low_value_vector: [i16; 16 * 6],
    mean_value: [i16; 6],
    upper_state: [i16; 5],
    lower_state: [i16; 5],
    hp_filter_state: [i16; 4],
    thresholds: Thresholds,
    feature_vector: [i16; 6],
    total_power: i16,
}

#[inline]
fn div_i32_i16(a: i32, b: i16) -> i32 {
    a.checked_div(i32::from(b)).unwrap_or(i32::MAX)
}

#[inline]
fn size_in_bits(n: i32) -> u8 {
    32 - n.leading_zeros() as u8
}

#[inline]
fn norm_i32(a: i32) -> i8 {
    if a != 0 { (if a < 0 { !a } else { a }).leading_zeros() as i8 - 1 } else { 0 }
}

#[inline]
fn norm_u32(a: u32) -> u8 {
    if a != 0 { a.leading_zeros() as u8 } else { 0 }
}

fn weighted_average(
    data: &mut [[i16; 6]; NUM_GAUSSIANS],
    channel: usize,
    offset: i16,
    weights: &[[i16; 6]; NUM_GAUSSIANS],
) -> i32 {
    let mut avg = 0i32;
    for g in 0..NUM_GAUSSIANS {
        data[g][channel] = data[g][channel].wrapping_add(offset);
        avg = avg.wrapping_add(i32::from(data[g][channel]) * i32::from(weights[g][channel]));
    }
    avg
}

/// `1/std` in Q10 as the WebRTC code computes it (a division; tabulated below).
const fn inv_std(std: i16) -> i16 {
    let tmp32 = 131072 + (std >> 1) as i32; // never i32::MIN, so only std == 0 cannot divide
    (if std == 0 { i32::MAX } else { tmp32 / std as i32 }) as i16
}

/// [`inv_std`] for the standard deviations the model holds in practice (they start at most
/// at 1540 and updates cap them at [`MIN_STD`]), saving a division per Gaussian and frame.
static INV_STD: [i16; 2048] = {
    let mut t = [0i16; 2048];
    let mut i = 0;
    while i < t.len() {
        t[i] = inv_std(i as i16);
        i += 1;
    }
    t
};

/// Probability of `input` under a normal distribution (Q20) and the delta used for model
/// updates (Q11). See the WebRTC source for the Q-domain derivation.
fn gaussian_probability(input: i16, mean: i16, std: i16) -> (i32, i16) {
    const COMP_VAR: i32 = 22005;
    const LOG2_EXP: i32 = 5909;
    let inv_std = usize::try_from(std).ok().and_then(|i| INV_STD.get(i)).map_or_else(|| inv_std(std), |&v| v);
    let tmp16 = inv_std >> 2;
    let inv_std2 = ((i32::from(tmp16) * i32::from(tmp16)) >> 2) as i16;
    let tmp16 = (input << 3).wrapping_sub(mean);
    let delta = ((i32::from(inv_std2) * i32::from(tmp16)) >> 10) as i16;
    let tmp32 = (i32::from(delta) * i32::from(tmp16)) >> 9;
    let exp_value = if tmp32 < COMP_VAR {
        let mut tmp16 = (LOG2_EXP.wrapping_mul(tmp32) >> 12).wrapping_neg() as i16;
        let exp_value = 0x0400 | (tmp16 & 0x03FF);
        tmp16 ^= 0xFFFFu16 as i16;
        tmp16 >>= 10;
        tmp16 = tmp16.wrapping_add(1);
        exp_value.wrapping_shr(tmp16 as u32)
    } else {
        0
    };
    (i32::from(inv_std) * i32::from(exp_value), delta)
}

fn find_minimum(vad: &mut WebRtcVad, feature_value: i16, channel: usize) -> i16 {
    let offset = channel << 4;
    let age: &mut [i16; 16] = (&mut vad.age_vector[offset..offset + 16]).try_into().expect("16 ages");
    let smallest: &mut [i16; 16] = (&mut vad.low_value_vector[offset..offset + 16]).try_into().expect("16 values");
    if age.contains(&100) {
        for i in 0..16 {
            if age[i] != 100 {
                age[i] = age[i].wrapping_add(1);
            } else {
                smallest.copy_within(i + 1.., i);
                age.copy_within(i + 1.., i);
                age[15] = 101;
                smallest[15] = 10000;
            }
        }
    } else {
        // The common case (no value expires this frame): every value gets one frame older.
        for a in age.iter_mut() {
            *a = a.wrapping_add(1);
        }
    }
    // Insertion point among the 16 smallest values (same comparisons as the original).
    if let Some(position) = smallest.iter().position(|&v| feature_value < v) {
        smallest.copy_within(position..15, position + 1);
        age.copy_within(position..15, position + 1);
        smallest[position] = feature_value;
        age[position] = 1;
    }
    let frame_counter = vad.frame_counter;
    let current_median = if frame_counter > 2 {
        smallest[2]
    } else if frame_counter > 0 {
        smallest[0]
    } else {
        1600
    };
    const SMOOTHING_DOWN: i16 = 6553;
    const SMOOTHING_UP: i16 = 32439;
    let mean = &mut vad.mean_value[channel];
    let alpha = if frame_counter > 0 { if current_median < *mean { SMOOTHING_DOWN } else { SMOOTHING_UP } } else { 0 };
    let smoothed = (i32::from(alpha + 1) * i32::from(*mean))
        .wrapping_add(i32::from(i16::MAX - alpha) * i32::from(current_median))
        .wrapping_add(16384);
    *mean = (smoothed >> 15) as i16;
    *mean
}

fn downsample_2x(inv: &[i16], out: &mut [i16], filter_state: &mut [i32; 2]) {
    const UPPER_COEFFICIENT: i32 = 5243;
    const LOWER_COEFFICIENT: i32 = 1392;
    let mut tmpd1 = filter_state[0];
    let mut tmpd2 = filter_state[1];
    for (n, o) in out.iter_mut().enumerate().take(inv.len() >> 1) {
        let a = i32::from(inv[n * 2]);
        let tmpw1 = ((tmpd1 >> 1) + ((UPPER_COEFFICIENT * a) >> 14)) as i16;
        tmpd1 = a - ((UPPER_COEFFICIENT * i32::from(tmpw1)) >> 12);
        let b = i32::from(inv[n * 2 + 1]);
        let tmpw2 = ((tmpd2 >> 1) + ((LOWER_COEFFICIENT * b) >> 14)) as i16;
        *o = tmpw1.saturating_add(tmpw2);
        tmpd2 = b - ((LOWER_COEFFICIENT * i32::from(tmpw2)) >> 12);
    }
    filter_state[0] = tmpd1;
    filter_state[1] = tmpd2;
}

const HIGHPASS_COEFFICIENT: i32 = 20972;
const LOWPASS_COEFFICIENT: i32 = 5571;

/// One all-pass filter of a split filter, run one input sample at a time. Equivalent to the
/// WebRTC `AllPassFilter` loop: `y = (s + c·x) >> 16`, `s' = 2·((x << 14) - c·y)`, written as
/// `s' = (x << 15) - 2c·y` (the same value modulo 2^32, one multiplication fewer on the
/// sample-to-sample dependency chain). Between frames only `s >> 16` is kept, as in WebRTC.
#[derive(Clone, Copy)]
struct AllPass {
    state: i32,
    c: i32,
}

impl AllPass {
    #[inline(always)]
    fn new(state: i16, c: i32) -> Self {
        Self { state: i32::from(state) << 16, c }
    }

    #[inline(always)]
    fn step(&mut self, x: i16) -> i16 {
        let x = i32::from(x);
        let y = self.state.wrapping_add(self.c * x) >> 16;
        self.state = (x << 15).wrapping_sub(2 * self.c * y);
        y as i16
    }

    #[inline(always)]
    fn saved(self) -> i16 {
        (self.state >> 16) as i16
    }
}

/// The WebRTC split filter (a QMF pair of all-pass filters on the even and odd samples),
/// one pair of input samples at a time: returns (high band, low band).
#[derive(Clone, Copy)]
struct Split {
    upper: AllPass,
    lower: AllPass,
}

impl Split {
    #[inline(always)]
    fn new(upper: i16, lower: i16) -> Self {
        Self { upper: AllPass::new(upper, HIGHPASS_COEFFICIENT), lower: AllPass::new(lower, LOWPASS_COEFFICIENT) }
    }

    #[inline(always)]
    fn step(&mut self, even: i16, odd: i16) -> (i16, i16) {
        let u = self.upper.step(even);
        let l = self.lower.step(odd);
        (u.wrapping_sub(l), l.wrapping_add(u))
    }

    #[inline(always)]
    fn save(self, upper: &mut i16, lower: &mut i16) {
        *upper = self.upper.saved();
        *lower = self.lower.saved();
    }
}

/// The WebRTC high-pass filter (80 Hz) of the lowest band, one sample at a time.
#[inline(always)]
fn highpass_step(x: i16, state: &mut [i16; 4]) -> i16 {
    const COEFFS_ZERO: [i32; 3] = [6631, -13262, 6631];
    const COEFFS_POLE: [i32; 2] = [-7756, 5620];
    let mut t = COEFFS_ZERO[0] * i32::from(x);
    t += COEFFS_ZERO[1] * i32::from(state[0]);
    t += COEFFS_ZERO[2] * i32::from(state[1]);
    state[1] = state[0];
    state[0] = x;
    t -= COEFFS_POLE[0] * i32::from(state[2]);
    t -= COEFFS_POLE[1] * i32::from(state[3]);
    state[3] = state[2];
    state[2] = (t >> 14) as i16;
    state[2]
}

/// Maximum frame length at 8 kHz (30 ms).
const MAX_FRAME: usize = 240;

/// The six sub-bands of one frame the features are computed from, each at its own rate,
/// zero-padded to a multiple of 8 samples.
struct Bands {
    /// 3-4 kHz (from the 2-4 kHz band), frame/4 samples.
    b3000: [i16; 64],
    /// 2-3 kHz, frame/4 samples.
    b2000: [i16; 64],
    /// 1-2 kHz, frame/4 samples.
    b1000: [i16; 64],
    /// 500-1000 Hz, frame/8 samples.
    b500: [i16; 32],
    /// 250-500 Hz, frame/16 samples.
    b250: [i16; 16],
    /// 80-250 Hz (high-passed), frame/16 samples.
    b80: [i16; 16],
}

/// Runs the WebRTC filter bank (split 0-4 kHz into 0-2 / 2-4, each again into halves, the
/// 0-1 kHz band into 0-500 / 500-1000, that into 0-250 / 250-500, and high-passes 0-250)
/// over one frame whose length is a multiple of 16. All stages advance together, 16 input
/// samples per iteration, so the independent filters' dependency chains overlap instead
/// of running one filter after another; every filter sees exactly the samples, in the order
/// and with the arithmetic of the stage-by-stage WebRTC code.
fn filter_bank(inv: &[i16], upper: &mut [i16; 5], lower: &mut [i16; 5], hp_state: &mut [i16; 4], out: &mut Bands) {
    let mut s0 = Split::new(upper[0], lower[0]);
    let mut s1 = Split::new(upper[1], lower[1]);
    let mut s2 = Split::new(upper[2], lower[2]);
    let mut s3 = Split::new(upper[3], lower[3]);
    let mut s4 = Split::new(upper[4], lower[4]);
    let mut hp = *hp_state;
    // Two passes, each with few enough filter states to stay in registers. First levels 1
    // and 2: 8 input samples -> 2 samples of each of the four 1 kHz wide bands.
    let mut b0_1000 = [0i16; MAX_FRAME / 4];
    let n = inv.len().min(MAX_FRAME);
    for ((((x, b3000), b2000), b1000), b0) in inv[..n]
        .chunks_exact(8)
        .zip(out.b3000.chunks_exact_mut(2))
        .zip(out.b2000.chunks_exact_mut(2))
        .zip(out.b1000.chunks_exact_mut(2))
        .zip(b0_1000.chunks_exact_mut(2))
    {
        let mut h1 = [0i16; 4];
        let mut l1 = [0i16; 4];
        for i in 0..4 {
            (h1[i], l1[i]) = s0.step(x[2 * i], x[2 * i + 1]);
        }
        for j in 0..2 {
            (b3000[j], b2000[j]) = s1.step(h1[2 * j], h1[2 * j + 1]);
            (b1000[j], b0[j]) = s2.step(l1[2 * j], l1[2 * j + 1]);
        }
    }
    // Then levels 3 and 4 and the high-pass: 4 samples of 0-1 kHz -> 2 of 500-1000 Hz,
    // 1 of 250-500 Hz and 1 of 80-250 Hz.
    for (((x, b500), b250), b80) in b0_1000[..n / 4]
        .chunks_exact(4)
        .zip(out.b500.chunks_exact_mut(2))
        .zip(out.b250.iter_mut())
        .zip(out.b80.iter_mut())
    {
        let mut l3 = [0i16; 2];
        for k in 0..2 {
            (b500[k], l3[k]) = s3.step(x[2 * k], x[2 * k + 1]);
        }
        let (h, l) = s4.step(l3[0], l3[1]);
        *b250 = h;
        *b80 = highpass_step(l, &mut hp);
    }
    s0.save(&mut upper[0], &mut lower[0]);
    s1.save(&mut upper[1], &mut lower[1]);
    s2.save(&mut upper[2], &mut lower[2]);
    s3.save(&mut upper[3], &mut lower[3]);
    s4.save(&mut upper[4], &mut lower[4]);
    *hp_state = hp;
}

/// Energy of the first `len` samples of `band` (the rest are zeros, which change neither
/// the maximum nor the sum) and its scaling, as WebRTC's `WebRtcSpl_Energy`. Working on the
/// whole fixed-size array lets both loops unroll and vectorise.
fn energy<const N: usize>(band: &[i16; N], len: usize) -> (i32, u8) {
    let n_bits = size_in_bits(len as i32);
    let (mut max, mut min) = (0i16, 0i16);
    for &x in band {
        max = max.max(x);
        min = min.min(x);
    }
    let smax = i32::from(max).max(-i32::from(min));
    let t = norm_i32(smax.wrapping_mul(smax)) as u8;
    let scaling = if smax != 0 && t <= n_bits { n_bits - t } else { 0 };
    let e = band.iter().fold(0i32, |acc, &x| acc.wrapping_add((i32::from(x) * i32::from(x)) >> scaling));
    (e, scaling)
}

fn log_of_energy<const N: usize>(band: &[i16; N], len: usize, offset: i16, total_energy: &mut i16) -> i16 {
    const LOG_CONST: i16 = 24660;
    let (e, scaling) = energy(band, len);
    let mut energy = e as u32;
    let mut scaling_factor = scaling as i8;
    if energy == 0 {
        return offset;
    }
    let normalizing_rshifts = 17 - norm_u32(energy) as i8;
    let mut log2_energy: i16 = 14336;
    scaling_factor += normalizing_rshifts;
    if normalizing_rshifts < 0 {
        energy <<= -normalizing_rshifts;
    } else {
        energy >>= normalizing_rshifts;
    }
    log2_energy = log2_energy.wrapping_add(((energy & 0x0000_3FFF) >> 4) as i16);
    let mut log_energy = (((i32::from(LOG_CONST) * i32::from(log2_energy)) >> 19)
        + ((i32::from(scaling_factor) * i32::from(LOG_CONST)) >> 9)) as i16;
    if log_energy < 0 {
        log_energy = 0;
    }
    log_energy = log_energy.wrapping_add(offset);
    if *total_energy <= MIN_ENERGY {
        if scaling_factor >= 0 {
            *total_energy += MIN_ENERGY + 1;
        } else {
            *total_energy = total_energy.wrapping_add((energy >> -scaling_factor) as i16);
        }
    }
    log_energy
}

impl WebRtcVad {
    pub(crate) fn new(thresholds: Thresholds) -> Self {
        let mut v = Self {
            downsampling_filter_states: [0; 2],
            noise_means: NOISE_MEANS,
            speech_means: SPEECH_MEANS,
            noise_stds: NOISE_STDS,
            speech_stds: SPEECH_STDS,
            frame_counter: 0,
            age_vector: [0; 96],
            low_value_vector: [10000; 96],
            mean_value: [1600; 6],
            upper_state: [0; 5],
            lower_state: [0; 5],
            hp_filter_state: [0; 4],
            thresholds,
            feature_vector: [0; 6],
            total_power: 0,
        };
        v.reset();
        v
    }

    pub(crate) fn reset(&mut self) {
        *self = Self {
            downsampling_filter_states: [0; 2],
            noise_means: NOISE_MEANS,
            speech_means: SPEECH_MEANS,
            noise_stds: NOISE_STDS,
            speech_stds: SPEECH_STDS,
            frame_counter: 0,
            age_vector: [0; 96],
            low_value_vector: [10000; 96],
            mean_value: [1600; 6],
            upper_state: [0; 5],
            lower_state: [0; 5],
            hp_filter_state: [0; 4],
            thresholds: self.thresholds,
            feature_vector: [0; 6],
            total_power: 0,
        };
    }

    /// 16 kHz frame of 160, 320 or 480 samples; `None` for other lengths.
    pub(crate) fn predict_16khz(&mut self, frame: &[i16]) -> Option<bool> {
        if ![160, 320, 480].contains(&frame.len()) {
            return None;
        }
        let mut out = [0i16; 240];
        let n = frame.len() / 2;
        downsample_2x(frame, &mut out[..n], &mut self.downsampling_filter_states);
        self.predict_8khz(&out[..n])
    }

    /// 8 kHz frame of 80, 160 or 240 samples; `None` for other lengths.
    pub(crate) fn predict_8khz(&mut self, frame: &[i16]) -> Option<bool> {
        let idx = match frame.len() {
            80 => 0,
            160 => 1,
            240 => 2,
            _ => return None,
        };
        self.total_power = self.calculate_features(frame);
        Some(self.gmm(idx))
    }

    fn calculate_features(&mut self, inv: &[i16]) -> i16 {
        let mut bands =
            Bands { b3000: [0; 64], b2000: [0; 64], b1000: [0; 64], b500: [0; 32], b250: [0; 16], b80: [0; 16] };
        debug_assert!(inv.len() <= MAX_FRAME && inv.len().is_multiple_of(16));
        filter_bank(inv, &mut self.upper_state, &mut self.lower_state, &mut self.hp_filter_state, &mut bands);
        let n = inv.len();
        let mut total = 0i16;
        let f = &mut self.feature_vector;
        f[5] = log_of_energy(&bands.b3000, n / 4, FEATURES_OFFSET_VECTOR[5], &mut total);
        f[4] = log_of_energy(&bands.b2000, n / 4, FEATURES_OFFSET_VECTOR[4], &mut total);
        f[3] = log_of_energy(&bands.b1000, n / 4, FEATURES_OFFSET_VECTOR[3], &mut total);
        f[2] = log_of_energy(&bands.b500, n / 8, FEATURES_OFFSET_VECTOR[2], &mut total);
        f[1] = log_of_energy(&bands.b250, n / 16, FEATURES_OFFSET_VECTOR[1], &mut total);
        f[0] = log_of_energy(&bands.b80, n / 16, FEATURES_OFFSET_VECTOR[0], &mut total);
        total
    }

    #[allow(clippy::needless_range_loop)] // indices follow the C original
    fn gmm(&mut self, idx: usize) -> bool {
        let individual_test = self.thresholds.local[idx];
        let total_test = self.thresholds.global[idx];
        let mut delta_noise = [[0i16; 6]; NUM_GAUSSIANS];
        let mut delta_speech = [[0i16; 6]; NUM_GAUSSIANS];
        let mut noise_probability = [0i32; NUM_GAUSSIANS];
        let mut speech_probability = [0i32; NUM_GAUSSIANS];
        let mut sum_llr = 0i32;
        let mut ngprvec = [[0i16; 6]; NUM_GAUSSIANS];
        let mut sgprvec = [[0i16; 6]; NUM_GAUSSIANS];
        let mut vadflag = false;
        if self.total_power <= MIN_ENERGY {
            return false;
        }
        for channel in 0..6 {
            let mut h0_test = 0i32;
            let mut h1_test = 0i32;
            for g in 0..NUM_GAUSSIANS {
                let (p, d) = gaussian_probability(
                    self.feature_vector[channel],
                    self.noise_means[g][channel],
                    self.noise_stds[g][channel],
                );
                delta_noise[g][channel] = d;
                noise_probability[g] = i32::from(NOISE_WEIGHTS[g][channel]).wrapping_mul(p);
                h0_test = h0_test.wrapping_add(noise_probability[g]);
                let (p, d) = gaussian_probability(
                    self.feature_vector[channel],
                    self.speech_means[g][channel],
                    self.speech_stds[g][channel],
                );
                delta_speech[g][channel] = d;
                speech_probability[g] = i32::from(SPEECH_WEIGHTS[g][channel]).wrapping_mul(p);
                h1_test = h1_test.wrapping_add(speech_probability[g]);
            }
            let shifts_h0 = if h0_test == 0 { 31 } else { norm_i32(h0_test) };
            let shifts_h1 = if h1_test == 0 { 31 } else { norm_i32(h1_test) };
            let llr = shifts_h0 - shifts_h1;
            sum_llr += i32::from(llr) * i32::from(SPECTRUM_WEIGHT[channel]);
            if i16::from(llr) * 4 > individual_test {
                vadflag = true;
            }
            let h0 = (h0_test >> 12) as i16;
            if h0 > 0 {
                let t = (noise_probability[0] & 0xFFFF_F000u32 as i32) << 2;
                ngprvec[0][channel] = div_i32_i16(t, h0) as i16;
                ngprvec[1][channel] = 16384i16.wrapping_sub(ngprvec[0][channel]);
            } else {
                ngprvec[0][channel] = 16384;
            }
            let h1 = (h1_test >> 12) as i16;
            if h1 > 0 {
                let t = (speech_probability[0] & 0xFFFF_F000u32 as i32) << 2;
                sgprvec[0][channel] = div_i32_i16(t, h1) as i16;
                sgprvec[1][channel] = 16384i16.wrapping_sub(sgprvec[0][channel]);
            }
        }
        vadflag |= sum_llr >= i32::from(total_test);

        let mut maxspe: i16 = 12800;
        for channel in 0..6 {
            let feature_minimum = find_minimum(self, self.feature_vector[channel], channel);
            let noise_global_mean = weighted_average(&mut self.noise_means, channel, 0, &NOISE_WEIGHTS);
            let tmp1_s16 = (noise_global_mean >> 6) as i16;
            for g in 0..NUM_GAUSSIANS {
                let nmk = self.noise_means[g][channel];
                let smk = self.speech_means[g][channel];
                let nsk = self.noise_stds[g][channel];
                let ssk = self.speech_stds[g][channel];
                let mut nmk2 = nmk;
                if !vadflag {
                    let delt = ((i32::from(ngprvec[g][channel]) * i32::from(delta_noise[g][channel])) >> 11) as i16;
                    nmk2 = nmk.wrapping_add(((i32::from(delt) * i32::from(NOISE_UPDATE)) >> 22) as i16);
                }
                let ndelt = (feature_minimum << 4).wrapping_sub(tmp1_s16);
                let nmk3 = nmk2.wrapping_add(((i32::from(ndelt) * i32::from(BACK_ETA)) >> 9) as i16);
                self.noise_means[g][channel] = nmk3.clamp(((g + 5) << 7) as i16, ((72 + g - channel) << 7) as i16);

                if vadflag {
                    let delt = ((i32::from(sgprvec[g][channel]) * i32::from(delta_speech[g][channel])) >> 11) as i16;
                    let tmp_s16 = ((i32::from(delt) * i32::from(SPEECH_UPDATE)) >> 21) as i16;
                    let smk2 = smk.wrapping_add((tmp_s16 + 1) >> 1);
                    self.speech_means[g][channel] = smk2.clamp(MINIMUM_MEAN[g], maxspe + 640);
                    let tmp_s16 = self.feature_vector[channel].wrapping_sub(smk.wrapping_add(4) >> 3);
                    let tmp1_s32 = (i32::from(delta_speech[g][channel]) * i32::from(tmp_s16)) >> 3;
                    let tmp2_s32 = tmp1_s32 - 4096;
                    let tmp_s16 = sgprvec[g][channel] >> 2;
                    let tmp1_s32 = i32::from(tmp_s16).wrapping_mul(tmp2_s32);
                    let tmp2_s32 = tmp1_s32 >> 4;
                    let denom = ssk.wrapping_mul(10);
                    let mut tmp_s16 = if tmp2_s32 > 0 {
                        div_i32_i16(tmp2_s32, denom)
                    } else {
                        div_i32_i16(tmp2_s32.wrapping_neg(), denom).wrapping_neg()
                    } as i16;
                    tmp_s16 = tmp_s16.wrapping_add(128);
                    // earshot 0.1 caps with `min` here (WebRTC floors); kept for parity.
                    self.speech_stds[g][channel] = ssk.wrapping_add(tmp_s16 >> 8).min(MIN_STD);
                } else {
                    let tmp_s16 = self.feature_vector[channel].wrapping_sub(nmk >> 3);
                    let mut tmp1_s32 = (i32::from(delta_noise[g][channel]) * i32::from(tmp_s16)) >> 3;
                    tmp1_s32 -= 4096;
                    let tmp_s16 = ngprvec[g][channel].wrapping_add(2) >> 2;
                    let tmp2_s32 = i32::from(tmp_s16).saturating_mul(tmp1_s32);
                    tmp1_s32 = tmp2_s32 >> 14;
                    let mut tmp_s16 = if tmp1_s32 > 0 {
                        div_i32_i16(tmp1_s32, nsk)
                    } else {
                        div_i32_i16(tmp1_s32.wrapping_neg(), nsk).wrapping_neg()
                    } as i16;
                    tmp_s16 = tmp_s16.wrapping_add(32);
                    self.noise_stds[g][channel] = nsk.wrapping_add(tmp_s16 >> 6).min(MIN_STD);
                }
            }
            let mut noise_global_mean = weighted_average(&mut self.noise_means, channel, 0, &NOISE_WEIGHTS);
            let mut speech_global_mean = weighted_average(&mut self.speech_means, channel, 0, &SPEECH_WEIGHTS);
            let diff = ((speech_global_mean >> 9) as i16).wrapping_sub((noise_global_mean >> 9) as i16);
            if diff < MINIMUM_DIFFERENCE[channel] {
                let tmp_s16 = MINIMUM_DIFFERENCE[channel].wrapping_sub(diff);
                let tmp1_s16 = 13i16.wrapping_mul(tmp_s16) >> 2;
                let tmp2_s16 = 3i16.wrapping_mul(tmp_s16) >> 2;
                speech_global_mean = weighted_average(&mut self.speech_means, channel, tmp1_s16, &SPEECH_WEIGHTS);
                noise_global_mean =
                    weighted_average(&mut self.noise_means, channel, tmp2_s16.wrapping_neg(), &NOISE_WEIGHTS);
            }
            maxspe = MAXIMUM_SPEECH[channel];
            let tmp2_s16 = (speech_global_mean >> 7) as i16;
            if tmp2_s16 > maxspe {
                let d = tmp2_s16 - maxspe;
                for g in 0..NUM_GAUSSIANS {
                    self.speech_means[g][channel] = self.speech_means[g][channel].wrapping_sub(d);
                }
            }
            let tmp2_s16 = (noise_global_mean >> 7) as i16;
            if tmp2_s16 > MAXIMUM_NOISE[channel] {
                let d = tmp2_s16 - MAXIMUM_NOISE[channel];
                for g in 0..NUM_GAUSSIANS {
                    self.noise_means[g][channel] = self.noise_means[g][channel].wrapping_sub(d);
                }
            }
        }
        self.frame_counter += 1;
        vadflag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The stage-by-stage filter bank of earshot 0.1 / WebRTC, as the reference.
    fn allpass(inv: &[i16], out: &mut [i16], filter_state: &mut i16, coefficient: i16) {
        let c = i32::from(coefficient);
        let mut state32 = i32::from(*filter_state) * (1 << 16);
        for (o, &x) in out.iter_mut().zip(inv.iter().step_by(2)) {
            let tmp32 = state32.wrapping_add(c * i32::from(x));
            let tmp16 = (tmp32 >> 16) as i16;
            *o = tmp16;
            state32 = (i32::from(x) * (1 << 14)) - c * i32::from(tmp16);
            state32 = state32.wrapping_mul(2);
        }
        *filter_state = (state32 >> 16) as i16;
    }

    fn split(inv: &[i16], hp_out: &mut [i16], upper: &mut i16, lp_out: &mut [i16], lower: &mut i16) {
        allpass(inv, hp_out, upper, HIGHPASS_COEFFICIENT as i16);
        allpass(&inv[1..], lp_out, lower, LOWPASS_COEFFICIENT as i16);
        for i in 0..(inv.len() >> 1) {
            let tmp = hp_out[i];
            hp_out[i] = hp_out[i].wrapping_sub(lp_out[i]);
            lp_out[i] = lp_out[i].wrapping_add(tmp);
        }
    }

    fn reference(inv: &[i16], up: &mut [i16; 5], lo: &mut [i16; 5], hp: &mut [i16; 4]) -> Vec<Vec<i16>> {
        let n = inv.len();
        let (mut h1, mut l1) = (vec![0; n / 2], vec![0; n / 2]);
        split(inv, &mut h1, &mut up[0], &mut l1, &mut lo[0]);
        let (mut b3000, mut b2000) = (vec![0; n / 4], vec![0; n / 4]);
        split(&h1, &mut b3000, &mut up[1], &mut b2000, &mut lo[1]);
        let (mut b1000, mut l2) = (vec![0; n / 4], vec![0; n / 4]);
        split(&l1, &mut b1000, &mut up[2], &mut l2, &mut lo[2]);
        let (mut b500, mut l3) = (vec![0; n / 8], vec![0; n / 8]);
        split(&l2, &mut b500, &mut up[3], &mut l3, &mut lo[3]);
        let (mut b250, mut l4) = (vec![0; n / 16], vec![0; n / 16]);
        split(&l3, &mut b250, &mut up[4], &mut l4, &mut lo[4]);
        let b80: Vec<i16> = l4.iter().map(|&x| highpass_step(x, hp)).collect();
        vec![b3000, b2000, b1000, b500, b250, b80]
    }

    #[test]
    fn filter_bank_matches_the_stage_by_stage_filters() {
        let mut rng = crate::synth::Rng::new(3);
        let (mut up, mut lo, mut hp) = ([0i16; 5], [0i16; 5], [0i16; 4]);
        let (mut up2, mut lo2, mut hp2) = (up, lo, hp);
        for frame in 0..600 {
            let n = [80, 160, 240][frame % 3];
            let inv: Vec<i16> = match frame % 5 {
                0 => (0..n).map(|_| (rng.next_u64() >> 48) as u16 as i16).collect(),
                1 => (0..n).map(|i| if (i / 3) % 2 == 0 { i16::MAX } else { i16::MIN }).collect(),
                _ => (0..n).map(|_| ((rng.next_u64() >> 52) as i16) - 2048).collect(),
            };
            let expected = reference(&inv, &mut up, &mut lo, &mut hp);
            let mut b =
                Bands { b3000: [0; 64], b2000: [0; 64], b1000: [0; 64], b500: [0; 32], b250: [0; 16], b80: [0; 16] };
            filter_bank(&inv, &mut up2, &mut lo2, &mut hp2, &mut b);
            let got = [
                &b.b3000[..n / 4],
                &b.b2000[..n / 4],
                &b.b1000[..n / 4],
                &b.b500[..n / 8],
                &b.b250[..n / 16],
                &b.b80[..n / 16],
            ];
            for (band, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert_eq!(*g, &e[..], "frame {frame} band {band}");
            }
            assert_eq!((up, lo, hp), (up2, lo2, hp2), "frame {frame} states");
        }
    }
}
