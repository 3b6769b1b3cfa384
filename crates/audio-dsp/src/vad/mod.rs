//! Voice activity detection in two tiers, plus the smoothing that turns frame decisions
//! into speech segments.
//!
//! - [`VadKind::Fast`]: the WebRTC GMM detector (earshot 0.1's fixed-point port, vendored
//!   with overflow fixes, see `webrtc.rs`). Works on 10/20/30 ms frames at 8 or 16 kHz
//!   (24 and 48 kHz input is resampled to 8 kHz). Cheap, good at telling silence from
//!   sound, weaker at telling noise from speech.
//! - [`VadKind::Neural`]: earshot 1.x, a small neural network on 16 ms frames of 16 kHz
//!   audio (other rates are resampled). Costs more, holds up in noise.
//!
//! [`FrameVad`] gives one score per frame; [`VadRunner`] feeds it from arbitrary-sized
//! chunks at any supported rate; [`Segmenter`] applies onset confirmation (minimum speech),
//! hangover (end-of-turn silence) and a maximum segment length.

use serde::{Deserialize, Serialize};

use crate::DspError;
use crate::audio::check_rate;
use crate::resample::{StreamResampler, resample};

mod webrtc;

/// Which detector to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VadKind {
    /// WebRTC-class GMM detector (earshot 0.1): the cheap default.
    #[default]
    Fast,
    /// Neural detector (earshot 1.x) at 16 kHz: robust in noise, about an order of
    /// magnitude more CPU.
    Neural,
}

impl VadKind {
    /// Lowercase name for labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Neural => "neural",
        }
    }
}

/// Aggressiveness of the fast detector (the WebRTC modes). The detector's built-in hangover
/// is disabled; [`Segmenter`] does the smoothing for both tiers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FastMode {
    /// WebRTC mode 0: keeps the most speech, most false positives.
    Quality,
    /// WebRTC mode 1.
    LowBitrate,
    /// WebRTC mode 2: the default.
    #[default]
    Aggressive,
    /// WebRTC mode 3: fewest false positives.
    VeryAggressive,
}

impl FastMode {
    fn thresholds(self) -> webrtc::Thresholds {
        // Thresholds of the WebRTC modes (10/20/30 ms frames).
        let (local, global) = match self {
            Self::Quality => ([24, 21, 24], [57, 48, 57]),
            Self::LowBitrate => ([37, 32, 37], [100, 80, 100]),
            Self::Aggressive => ([82, 78, 82], [285, 260, 285]),
            Self::VeryAggressive => ([94, 94, 94], [1100, 1050, 1100]),
        };
        webrtc::Thresholds { local, global }
    }
}

/// Detector settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VadConfig {
    /// Which tier.
    pub kind: VadKind,
    /// Fast tier aggressiveness.
    pub fast_mode: FastMode,
    /// Fast tier frame length in ms: 10, 20 or 30.
    pub fast_frame_ms: u32,
    /// Neural tier: a frame is speech when its score is at least this (0..1).
    pub neural_threshold: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self { kind: VadKind::Fast, fast_mode: FastMode::default(), fast_frame_ms: 20, neural_threshold: 0.5 }
    }
}

impl VadConfig {
    /// Default settings for `kind`.
    pub fn for_kind(kind: VadKind) -> Self {
        Self { kind, ..Self::default() }
    }

    fn validate(&self) -> Result<(), DspError> {
        if ![10, 20, 30].contains(&self.fast_frame_ms) {
            return Err(DspError::InvalidConfig("fast_frame_ms must be 10, 20 or 30"));
        }
        if !(0.0..=1.0).contains(&self.neural_threshold) {
            return Err(DspError::InvalidConfig("neural_threshold must be within 0 and 1"));
        }
        Ok(())
    }

    /// The rate the detector runs at for input at `input_rate`.
    pub fn detector_rate(&self, input_rate: u32) -> u32 {
        match self.kind {
            VadKind::Neural => 16000,
            VadKind::Fast if input_rate == 16000 => 16000,
            VadKind::Fast => 8000,
        }
    }
}

/// Once the fast detector has seen [`GATE_AFTER_FRAMES`] frames, frames whose RMS is under
/// this (about -66 dBFS) are silence without asking it: inaudible on a phone line, and
/// skipping them roughly halves the fast tier's cost on real calls, where each party is
/// quiet about half the time. The warm-up lets the detector's noise model learn the line's
/// background first (gating from the start delays the first onset).
const SILENCE_MEAN_SQUARE: u64 = 16 * 16;
const GATE_AFTER_FRAMES: u32 = 50;
/// Cap on sample magnitudes in the gate's energy sum: its square is at least the threshold
/// of the longest fast-tier frame (30 ms at 16 kHz, 480 samples).
const GATE_CAP: u32 = 512;

/// The neural detector scores a frame from a 48 ms window ending with it, so its decisions
/// trail the audio by about two frames (measured on the flite fixtures: accuracy peaks at a
/// two-frame shift). Decisions are shifted back by this much.
const NEURAL_LAG_FRAMES: usize = 2;

// The WebRTC state (~600 bytes) is kept inline on purpose: one allocation fewer per stream.
#[allow(clippy::large_enum_variant)]
enum Detector {
    Fast(webrtc::WebRtcVad),
    Neural(Box<earshot::Detector>),
}

/// One detector instance working on whole frames at its own rate.
pub struct FrameVad {
    detector: Detector,
    rate: u32,
    frame_len: usize,
    threshold: f32,
    frames_seen: u32,
}

impl std::fmt::Debug for FrameVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameVad").field("rate", &self.rate).field("frame_len", &self.frame_len).finish_non_exhaustive()
    }
}

impl FrameVad {
    /// Builds a detector for audio at `rate`, which must equal
    /// [`VadConfig::detector_rate`] of some supported rate (fast: 8 or 16 kHz;
    /// neural: 16 kHz).
    pub fn new(config: &VadConfig, rate: u32) -> Result<Self, DspError> {
        config.validate()?;
        let (detector, frame_len) = match config.kind {
            VadKind::Fast => {
                if ![8000, 16000].contains(&rate) {
                    return Err(DspError::UnsupportedSampleRate(rate));
                }
                let d = webrtc::WebRtcVad::new(config.fast_mode.thresholds());
                (Detector::Fast(d), (rate * config.fast_frame_ms / 1000) as usize)
            }
            VadKind::Neural => {
                if rate != 16000 {
                    return Err(DspError::UnsupportedSampleRate(rate));
                }
                (Detector::Neural(earshot::Detector::default_boxed()), 256)
            }
        };
        Ok(Self { detector, rate, frame_len, threshold: config.neural_threshold, frames_seen: 0 })
    }

    /// Samples per frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Frame duration in seconds.
    pub fn frame_seconds(&self) -> f64 {
        self.frame_len as f64 / f64::from(self.rate)
    }

    /// The detector's sample rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// How many frames a decision trails its audio by (0 for the fast tier, 2 for the
    /// neural one). [`detect_frames`] and [`VadRunner`] compensate for it.
    pub fn lag_frames(&self) -> usize {
        match self.detector {
            Detector::Fast(_) => 0,
            Detector::Neural(_) => NEURAL_LAG_FRAMES,
        }
    }

    /// Speech score of one frame in 0..=1 (the fast tier answers 0 or 1). A frame of the
    /// wrong length scores 0.
    pub fn score(&mut self, frame: &[i16]) -> f32 {
        if frame.len() != self.frame_len {
            return 0.0;
        }
        match &mut self.detector {
            Detector::Fast(d) => {
                if self.frames_seen >= GATE_AFTER_FRAMES {
                    // Magnitudes are capped at GATE_CAP: a capped sample alone reaches the
                    // threshold, so the comparison comes out as with exact energy, and the
                    // sum fits i32 (cheap, vectorised arithmetic).
                    debug_assert!(SILENCE_MEAN_SQUARE * frame.len() as u64 <= u64::from(GATE_CAP * GATE_CAP));
                    let energy: u32 = frame
                        .iter()
                        .map(|&s| {
                            let a = u32::from(s.unsigned_abs().min(GATE_CAP as u16));
                            a * a
                        })
                        .sum();
                    if u64::from(energy) < SILENCE_MEAN_SQUARE * frame.len() as u64 {
                        return 0.0;
                    }
                } else {
                    self.frames_seen += 1;
                }
                let r = if self.rate == 8000 { d.predict_8khz(frame) } else { d.predict_16khz(frame) };
                if r == Some(true) { 1.0 } else { 0.0 }
            }
            Detector::Neural(d) => d.predict_i16(frame).clamp(0.0, 1.0),
        }
    }

    /// Whether one frame is speech.
    pub fn is_speech(&mut self, frame: &[i16]) -> bool {
        let s = self.score(frame);
        match self.detector {
            Detector::Fast(_) => s >= 0.5,
            Detector::Neural(_) => s >= self.threshold,
        }
    }

    /// Forgets all state (new stream).
    pub fn reset(&mut self) {
        self.frames_seen = 0;
        match &mut self.detector {
            Detector::Fast(d) => d.reset(),
            Detector::Neural(d) => d.reset(),
        }
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match self.detector {
            // The WebRTC state is inline (counted in `size_of::<FrameVad>()`).
            Detector::Fast(_) => 0,
            Detector::Neural(_) => std::mem::size_of::<earshot::Detector>(),
        }
    }
}

/// Frame-level decisions for a whole clip.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameDecisions {
    /// Duration of one frame in seconds.
    pub frame_seconds: f64,
    /// One decision per whole frame, in order.
    pub voiced: Vec<bool>,
}

/// Runs the detector over a whole mono clip at `rate` (resampling offline when the detector
/// needs another rate, so decisions are time-aligned with the input). A trailing partial
/// frame is not scored.
pub fn detect_frames(samples: &[i16], rate: u32, config: &VadConfig) -> Result<FrameDecisions, DspError> {
    check_rate(rate)?;
    let det_rate = config.detector_rate(rate);
    let mut vad = FrameVad::new(config, det_rate)?;
    let converted;
    let input = if det_rate == rate {
        samples
    } else {
        converted = resample(samples, rate, det_rate)?;
        &converted[..]
    };
    let lag = vad.lag_frames();
    let silence = vec![0i16; vad.frame_len()];
    let frames = input.chunks_exact(vad.frame_len()).len();
    let mut voiced: Vec<bool> = input
        .chunks_exact(vad.frame_len())
        .chain(std::iter::repeat_n(&silence[..], lag))
        .map(|f| vad.is_speech(f))
        .skip(lag)
        .collect();
    voiced.truncate(frames);
    Ok(FrameDecisions { frame_seconds: vad.frame_seconds(), voiced })
}

/// Streaming front end of a [`FrameVad`]: takes chunks of any size at the input rate,
/// resamples when needed and calls back once per frame. Allocation-free after
/// construction.
#[derive(Debug)]
pub struct VadRunner {
    vad: FrameVad,
    resampler: Option<StreamResampler>,
    frame: Vec<i16>,
    converted: Vec<i16>,
    frames_done: u64,
    skip: usize,
}

impl VadRunner {
    /// A runner for input at `input_rate`.
    pub fn new(config: &VadConfig, input_rate: u32) -> Result<Self, DspError> {
        check_rate(input_rate)?;
        let det_rate = config.detector_rate(input_rate);
        let vad = FrameVad::new(config, det_rate)?;
        let resampler = if det_rate == input_rate { None } else { Some(StreamResampler::new(input_rate, det_rate)?) };
        let frame_len = vad.frame_len();
        Ok(Self {
            resampler,
            frame: Vec::with_capacity(frame_len),
            // Room for 120 ms at the detector rate; grows only for larger pushes.
            converted: Vec::with_capacity(det_rate as usize * 12 / 100),
            frames_done: 0,
            skip: vad.lag_frames(),
            vad,
        })
    }

    /// Frame duration in seconds.
    pub fn frame_seconds(&self) -> f64 {
        self.vad.frame_seconds()
    }

    /// Latency between input and decisions from resampling, in seconds (frame `i` covers
    /// input time `i * frame_seconds - delay_seconds` onwards).
    pub fn delay_seconds(&self) -> f64 {
        self.resampler.as_ref().map_or(0.0, |r| r.delay() as f64 / f64::from(self.vad.rate()))
    }

    /// Decisions reported so far (frame indices are lag-compensated: decision `i` is about
    /// frame `i`, reported [`FrameVad::lag_frames`] frames late).
    pub fn frames_done(&self) -> u64 {
        self.frames_done
    }

    /// Feeds samples; `on_frame(index, voiced)` is called for each completed frame.
    pub fn push(&mut self, samples: &[i16], mut on_frame: impl FnMut(u64, bool)) -> Result<(), DspError> {
        let input: &[i16] = match &mut self.resampler {
            Some(r) => {
                self.converted.clear();
                r.push(samples, &mut self.converted)?;
                &self.converted
            }
            None => samples,
        };
        let frame_len = self.vad.frame_len();
        let mut rest = input;
        while !rest.is_empty() {
            let take = (frame_len - self.frame.len()).min(rest.len());
            self.frame.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.frame.len() == frame_len {
                let voiced = self.vad.is_speech(&self.frame);
                self.frame.clear();
                if self.skip > 0 {
                    self.skip -= 1;
                    continue;
                }
                on_frame(self.frames_done, voiced);
                self.frames_done += 1;
            }
        }
        Ok(())
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.vad.heap_bytes()
            + self.resampler.as_ref().map_or(0, StreamResampler::heap_bytes)
            + (self.frame.capacity() + self.converted.capacity()) * 2
    }
}

/// Smoothing settings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SegmenterConfig {
    /// Voiced time needed before a segment is confirmed; shorter bursts are ignored.
    pub min_speech_ms: u32,
    /// While a segment is not yet confirmed, a silence this long discards it.
    pub onset_gap_ms: u32,
    /// Silence that ends a confirmed segment (hangover / end of turn). Shorter pauses are
    /// bridged.
    pub end_silence_ms: u32,
    /// A segment reaching this length is ended (and a new one starts if speech goes on);
    /// 0 disables the cap.
    pub max_speech_ms: u32,
}

impl Default for SegmenterConfig {
    /// Recording-analysis defaults: 100 ms minimum speech, pauses under 500 ms bridged
    /// (sentence pauses stay inside a turn).
    fn default() -> Self {
        Self { min_speech_ms: 100, onset_gap_ms: 100, end_silence_ms: 500, max_speech_ms: 0 }
    }
}

/// What the [`Segmenter`] reports, in frame indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEvent {
    /// A segment starting at frame `start` was confirmed.
    Started {
        /// First voiced frame.
        start: u64,
    },
    /// The segment `[start, end)` ended.
    Ended {
        /// First voiced frame.
        start: u64,
        /// One past the last voiced frame.
        end: u64,
        /// True when cut by `max_speech_ms` (or by [`Segmenter::finish`]) rather than
        /// by silence.
        forced: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegState {
    Idle,
    Candidate { start: u64, voiced: u32, last: u64 },
    Speech { start: u64, last: u64 },
}

/// Turns per-frame decisions into speech segments.
#[derive(Debug, Clone)]
pub struct Segmenter {
    min_frames: u32,
    onset_gap: u64,
    end_gap: u64,
    max_frames: u64,
    state: SegState,
    next: u64,
}

fn ms_to_frames(ms: u32, frame_seconds: f64) -> u64 {
    (f64::from(ms) / 1000.0 / frame_seconds).round() as u64
}

impl Segmenter {
    /// A segmenter for frames of `frame_seconds`.
    pub fn new(config: &SegmenterConfig, frame_seconds: f64) -> Self {
        Self {
            min_frames: ms_to_frames(config.min_speech_ms, frame_seconds).max(1) as u32,
            onset_gap: ms_to_frames(config.onset_gap_ms, frame_seconds).max(1),
            end_gap: ms_to_frames(config.end_silence_ms, frame_seconds).max(1),
            max_frames: ms_to_frames(config.max_speech_ms, frame_seconds),
            state: SegState::Idle,
            next: 0,
        }
    }

    /// True while inside a confirmed segment.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, SegState::Speech { .. })
    }

    /// Feeds the next frame's decision.
    pub fn push(&mut self, voiced: bool, mut on_event: impl FnMut(SegmentEvent)) {
        let i = self.next;
        self.next += 1;
        self.state = match self.state {
            SegState::Idle if voiced => self.candidate(i, i, 1, &mut on_event),
            SegState::Idle => SegState::Idle,
            SegState::Candidate { start, voiced: n, last } => {
                if voiced {
                    self.candidate(start, i, n + 1, &mut on_event)
                } else if i - last >= self.onset_gap {
                    SegState::Idle
                } else {
                    self.state
                }
            }
            SegState::Speech { start, last } => {
                let last = if voiced { i } else { last };
                if !voiced && i - last >= self.end_gap {
                    on_event(SegmentEvent::Ended { start, end: last + 1, forced: false });
                    SegState::Idle
                } else if self.max_frames > 0 && i + 1 - start >= self.max_frames {
                    on_event(SegmentEvent::Ended { start, end: i + 1, forced: true });
                    SegState::Idle
                } else {
                    SegState::Speech { start, last }
                }
            }
        };
    }

    fn candidate(&self, start: u64, last: u64, voiced: u32, on_event: &mut impl FnMut(SegmentEvent)) -> SegState {
        if voiced >= self.min_frames {
            on_event(SegmentEvent::Started { start });
            SegState::Speech { start, last }
        } else {
            SegState::Candidate { start, voiced, last }
        }
    }

    /// Ends the input: closes an open segment at its last voiced frame.
    pub fn finish(&mut self, mut on_event: impl FnMut(SegmentEvent)) {
        if let SegState::Speech { start, last } = self.state {
            on_event(SegmentEvent::Ended { start, end: last + 1, forced: true });
        }
        self.state = SegState::Idle;
    }
}

/// Speech segments `[start, end)` in seconds from frame decisions.
pub fn segments_from_decisions(decisions: &FrameDecisions, config: &SegmenterConfig) -> Vec<(f64, f64)> {
    let mut seg = Segmenter::new(config, decisions.frame_seconds);
    let mut out = Vec::new();
    let fs = decisions.frame_seconds;
    let mut on = |e: SegmentEvent| {
        if let SegmentEvent::Ended { start, end, .. } = e {
            out.push((start as f64 * fs, end as f64 * fs));
        }
    };
    for &v in &decisions.voiced {
        seg.push(v, &mut on);
    }
    seg.finish(&mut on);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(decisions: &[bool], cfg: SegmenterConfig) -> Vec<SegmentEvent> {
        let mut s = Segmenter::new(&cfg, 0.01);
        let mut ev = Vec::new();
        for &d in decisions {
            s.push(d, |e| ev.push(e));
        }
        s.finish(|e| ev.push(e));
        ev
    }

    fn pattern(spec: &[(bool, usize)]) -> Vec<bool> {
        spec.iter().flat_map(|&(v, n)| std::iter::repeat_n(v, n)).collect()
    }

    #[test]
    fn segmenter_bridges_pauses_and_drops_blips() {
        let cfg = SegmenterConfig { min_speech_ms: 50, onset_gap_ms: 30, end_silence_ms: 200, max_speech_ms: 0 };
        // blip of 3 frames (too short), then speech 10 + pause 10 + speech 10, then silence.
        let d = pattern(&[(false, 5), (true, 3), (false, 10), (true, 10), (false, 10), (true, 10), (false, 30)]);
        let ev = run(&d, cfg);
        assert_eq!(
            ev,
            vec![SegmentEvent::Started { start: 18 }, SegmentEvent::Ended { start: 18, end: 48, forced: false }]
        );
    }

    #[test]
    fn segmenter_caps_long_speech() {
        let cfg = SegmenterConfig { min_speech_ms: 20, onset_gap_ms: 30, end_silence_ms: 100, max_speech_ms: 500 };
        let ev = run(&pattern(&[(true, 120), (false, 20)]), cfg);
        let ends: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                SegmentEvent::Ended { start, end, forced } => Some((*start, *end, *forced)),
                SegmentEvent::Started { .. } => None,
            })
            .collect();
        assert_eq!(ends, vec![(0, 50, true), (50, 100, true), (100, 120, false)]);
    }

    #[test]
    fn rejects_bad_config_and_rates() {
        let mut c = VadConfig::default();
        assert!(FrameVad::new(&c, 24000).is_err());
        assert!(FrameVad::new(&c, 48000).is_err());
        c.fast_frame_ms = 15;
        assert!(FrameVad::new(&c, 8000).is_err());
        let n = VadConfig::for_kind(VadKind::Neural);
        assert!(FrameVad::new(&n, 8000).is_err());
        assert_eq!(FrameVad::new(&n, 16000).unwrap().frame_len(), 256);
    }

    #[test]
    fn silence_is_not_speech_in_either_tier() {
        for kind in [VadKind::Fast, VadKind::Neural] {
            for rate in [8000, 16000, 24000, 48000] {
                let d = detect_frames(&vec![0; rate as usize], rate, &VadConfig::for_kind(kind)).unwrap();
                assert!(d.voiced.len() >= 30, "{kind:?} {rate}");
                assert!(d.voiced.iter().all(|v| !v), "{kind:?} {rate}");
            }
        }
    }

    /// Extreme input must not trip an arithmetic overflow in either detector (these tests
    /// run with overflow checks on; earshot 0.1 itself panics on some of this).
    #[test]
    fn extreme_input_never_panics() {
        let mut rng = crate::synth::Rng::new(99);
        let n = 48000;
        let signals: Vec<Vec<i16>> = vec![
            (0..n).map(|_| (rng.next_u64() >> 48) as u16 as i16).collect(),
            (0..n).map(|i| if (i / 7) % 2 == 0 { i16::MAX } else { i16::MIN }).collect(),
            vec![i16::MIN; n],
            (0..n).map(|i| if i % 2 == 0 { i16::MAX } else { i16::MIN }).collect(),
            crate::synth::white_noise(48000, 1.0, 0.0, 5),
        ];
        for x in &signals {
            for kind in [VadKind::Fast, VadKind::Neural] {
                for mode in [FastMode::Quality, FastMode::VeryAggressive] {
                    for rate in [8000u32, 16000, 24000, 48000] {
                        let cfg = VadConfig { kind, fast_mode: mode, ..VadConfig::default() };
                        let d = detect_frames(&x[..rate as usize], rate, &cfg).unwrap();
                        assert!(!d.voiced.is_empty());
                    }
                }
            }
        }
    }
}
