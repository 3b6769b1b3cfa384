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

/// Probability of `input` under a normal distribution (Q20) and the delta used for model
/// updates (Q11). See the WebRTC source for the Q-domain derivation.
fn gaussian_probability(input: i16, mean: i16, std: i16) -> (i32, i16) {
    const COMP_VAR: i32 = 22005;
    const LOG2_EXP: i32 = 5909;
    let tmp32 = 131072 + i32::from(std >> 1);
    let inv_std = div_i32_i16(tmp32, std) as i16;
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
    let age = &mut vad.age_vector[offset..offset + 16];
    let smallest = &mut vad.low_value_vector[offset..offset + 16];
    for i in 0..16 {
        if age[i] != 100 {
            age[i] += 1;
        } else {
            for j in i..15 {
                smallest[j] = smallest[j + 1];
                age[j] = age[j + 1];
            }
            age[15] = 101;
            smallest[15] = 10000;
        }
    }
    // Insertion point among the 16 smallest values (same comparisons as the original).
    let position = smallest.iter().position(|&v| feature_value < v);
    if let Some(position) = position {
        let mut i = 15;
        while i > position {
            smallest[i] = smallest[i - 1];
            age[i] = age[i - 1];
            i -= 1;
        }
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

fn highpass(inv: &[i16], out: &mut [i16], state: &mut [i16; 4]) {
    const COEFFS_ZERO: [i32; 3] = [6631, -13262, 6631];
    const COEFFS_POLE: [i32; 2] = [-7756, 5620];
    for (&x, o) in inv.iter().zip(out.iter_mut()) {
        let mut t = COEFFS_ZERO[0] * i32::from(x);
        t += COEFFS_ZERO[1] * i32::from(state[0]);
        t += COEFFS_ZERO[2] * i32::from(state[1]);
        state[1] = state[0];
        state[0] = x;
        t -= COEFFS_POLE[0] * i32::from(state[2]);
        t -= COEFFS_POLE[1] * i32::from(state[3]);
        state[3] = state[2];
        state[2] = (t >> 14) as i16;
        *o = state[2];
    }
}

/// All-pass filter over every other sample of `inv`.
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
    const HIGHPASS_COEFFICIENT: i16 = 20972;
    const LOWPASS_COEFFICIENT: i16 = 5571;
    allpass(inv, hp_out, upper, HIGHPASS_COEFFICIENT);
    allpass(&inv[1..], lp_out, lower, LOWPASS_COEFFICIENT);
    for i in 0..(inv.len() >> 1) {
        let tmp = hp_out[i];
        hp_out[i] = hp_out[i].wrapping_sub(lp_out[i]);
        lp_out[i] = lp_out[i].wrapping_add(tmp);
    }
}

fn energy(inv: &[i16]) -> (i32, u8) {
    let n_bits = size_in_bits(inv.len() as i32);
    let smax = inv.iter().map(|c| i32::from(c.unsigned_abs())).max().unwrap_or(0);
    let t = norm_i32(smax.wrapping_mul(smax)) as u8;
    let scaling = if smax != 0 && t <= n_bits { n_bits - t } else { 0 };
    let e = inv.iter().fold(0i32, |acc, &x| acc.wrapping_add((i32::from(x) * i32::from(x)) >> scaling));
    (e, scaling)
}

fn log_of_energy(inv: &[i16], offset: i16, total_energy: &mut i16) -> i16 {
    const LOG_CONST: i16 = 24660;
    let (e, scaling) = energy(inv);
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
        let mut split1 = [0i16; 240];
        let mut split2 = [0i16; 120];
        let split1_size = inv.len() >> 1;
        let split2_size = split1_size >> 1;
        let (hp_120, lp_120) = split1[..split1_size << 1].split_at_mut(split1_size);
        let (hp_60, lp_60) = split2[..split2_size << 1].split_at_mut(split2_size);
        let mut total = 0i16;
        let f = &mut self.feature_vector;
        let (up, lo) = (&mut self.upper_state, &mut self.lower_state);
        split(inv, hp_120, &mut up[0], lp_120, &mut lo[0]);
        split(hp_120, hp_60, &mut up[1], lp_60, &mut lo[1]);
        f[5] = log_of_energy(hp_60, FEATURES_OFFSET_VECTOR[5], &mut total);
        f[4] = log_of_energy(lp_60, FEATURES_OFFSET_VECTOR[4], &mut total);
        split(lp_120, hp_60, &mut up[2], lp_60, &mut lo[2]);
        f[3] = log_of_energy(hp_60, FEATURES_OFFSET_VECTOR[3], &mut total);
        let hp_30 = &mut hp_120[..split2_size >> 1];
        let lp_30 = &mut lp_120[..split2_size >> 1];
        split(lp_60, hp_30, &mut up[3], lp_30, &mut lo[3]);
        f[2] = log_of_energy(hp_30, FEATURES_OFFSET_VECTOR[2], &mut total);
        let hp_15 = &mut hp_60[..split2_size >> 2];
        let lp_15 = &mut lp_60[..split2_size >> 2];
        split(lp_30, hp_15, &mut up[4], lp_15, &mut lo[4]);
        f[1] = log_of_energy(hp_15, FEATURES_OFFSET_VECTOR[1], &mut total);
        highpass(lp_15, hp_15, &mut self.hp_filter_state);
        f[0] = log_of_energy(hp_15, FEATURES_OFFSET_VECTOR[0], &mut total);
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
