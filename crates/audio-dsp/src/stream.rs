//! Live-stream state machine for one call leg.
//!
//! Frames arrive with a sequence number, a media timestamp and the caller's arrival time.
//! In-order frames are decoded and run through DTMF detection, the VAD and the segmenter;
//! late frames are dropped and counted, duplicates ignored, and gaps filled with silence
//! (at most one second per gap) so event times stay on the media clock. Events carry times
//! in seconds since the first frame.
//!
//! Cost and memory: no heap allocation per frame once warmed up, except while an utterance
//! is being collected (its buffer grows, bounded by `max_utterance_ms`) and when an
//! utterance ends (it is resampled to 16 kHz for transcription: from 8 kHz by
//! [`crate::resample::upsample_2x`]'s half-band filter, from other rates by the FFT resampler). See
//! [`LiveStream::heap_bytes`].

use serde::{Deserialize, Serialize};

use crate::codec::{decode_into, sample_count};
use crate::dtmf::{DtmfConfig, DtmfDetector, DtmfEvent};
use crate::resample::{resample, upsample_2x};
use crate::vad::{SegmentEvent, Segmenter, SegmenterConfig, VadConfig, VadRunner};
use crate::{DspError, Encoding, audio::check_rate};

/// Rate of the audio attached to [`StreamEvent::SpeechEnded`].
pub const TRANSCRIPTION_RATE: u32 = 16000;

/// Settings of one live stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamConfig {
    /// Payload encoding.
    pub encoding: Encoding,
    /// Payload sample rate, Hz (8000, 16000, 24000 or 48000).
    pub sample_rate: u32,
    /// Voice-activity detector.
    pub vad: VadConfig,
    /// Voiced time needed before `SpeechStarted` (shorter sounds are ignored).
    pub min_speech_ms: u32,
    /// Silence that ends an utterance (end of turn).
    pub end_of_turn_silence_ms: u32,
    /// Utterances are cut (forced `SpeechEnded`) at this length; bounds memory.
    pub max_utterance_ms: u32,
    /// Audio kept before the detected start, so the utterance audio has its onset.
    pub pre_roll_ms: u32,
    /// Whether to detect DTMF.
    pub detect_dtmf: bool,
    /// DTMF thresholds.
    pub dtmf: DtmfConfig,
    /// Longest accepted frame payload, ms.
    pub max_frame_ms: u32,
    /// A forward sequence jump larger than this is a restart (counted in `resyncs`), not
    /// loss.
    pub max_sequence_jump: u64,
}

impl Default for StreamConfig {
    /// Telephone defaults: μ-law 8 kHz, fast VAD, 200 ms minimum speech, 700 ms end of turn,
    /// 30 s utterance cap.
    fn default() -> Self {
        Self {
            encoding: Encoding::Mulaw,
            sample_rate: 8000,
            vad: VadConfig::default(),
            min_speech_ms: 200,
            end_of_turn_silence_ms: 700,
            max_utterance_ms: 30_000,
            pre_roll_ms: 400,
            detect_dtmf: true,
            dtmf: DtmfConfig::default(),
            max_frame_ms: 200,
            max_sequence_jump: 3000,
        }
    }
}

/// One media frame from the network.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Extended sequence number (callers with 16-bit RTP numbers extend them).
    pub sequence: u64,
    /// Media timestamp in samples at the stream's rate (RTP convention).
    pub timestamp: u64,
    /// Arrival time on the caller's monotonic clock, microseconds.
    pub arrival_us: u64,
    /// Encoded audio.
    pub payload: &'a [u8],
}

/// What the stream reports. Times are seconds on the media clock since the first frame.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Speech was confirmed; `at` is where it began (reported `min_speech_ms` later).
    SpeechStarted {
        /// Start of speech.
        at: f64,
    },
    /// An utterance ended.
    SpeechEnded {
        /// Start of speech.
        start: f64,
        /// End of the last voiced frame.
        end: f64,
        /// True when cut at `max_utterance_ms` or by [`LiveStream::finish`].
        forced: bool,
        /// The utterance (with up to 150 ms before and after), 16 kHz mono PCM16.
        audio: Vec<i16>,
    },
    /// A DTMF digit was detected.
    Dtmf {
        /// `0-9`, `*`, `#` or `A-D`.
        digit: char,
        /// Start of the tone.
        at: f64,
    },
}

/// Transport statistics derived from frame metadata.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct StreamStats {
    /// Frames received (all of them, including duplicates and late ones).
    pub packets_received: u64,
    /// Frames whose audio was used.
    pub packets_accepted: u64,
    /// Frames never received (sequence gaps, less late arrivals).
    pub packets_lost: u64,
    /// Frames received twice.
    pub duplicates: u64,
    /// Frames that arrived after a later one (dropped).
    pub out_of_order: u64,
    /// Sequence restarts (a jump above `max_sequence_jump`).
    pub resyncs: u64,
    /// Largest forward sequence gap (1 = no loss).
    pub largest_sequence_gap: u64,
    /// Largest time between two consecutive arrivals, ms.
    pub largest_arrival_gap_ms: f64,
    /// Interarrival jitter (RFC 3550 §6.4.1 estimator), ms.
    pub jitter_ms: f64,
    /// Largest jitter estimate seen, ms.
    pub max_jitter_ms: f64,
    /// Audio time processed, including concealed gaps, seconds.
    pub media_seconds: f64,
    /// Frames rejected as malformed.
    pub rejected: u64,
}

/// The state of one call leg. See the module docs.
#[derive(Debug)]
pub struct LiveStream {
    cfg: StreamConfig,
    vad: VadRunner,
    segmenter: Segmenter,
    dtmf: Option<DtmfDetector>,
    frame_seconds: f64,
    vad_delay: f64,
    scratch: Vec<i16>,
    seg_events: Vec<SegmentEvent>,
    ring: Box<[i16]>,
    ring_pos: usize,
    samples_done: u64,
    utterance: Option<Utterance>,
    utterance_cap: usize,
    max_frame_samples: usize,
    // Sequence tracking.
    highest: Option<u64>,
    window: u64,
    prev_transit_us: Option<f64>,
    last_arrival_us: Option<u64>,
    stats: StreamStats,
}

#[derive(Debug)]
struct Utterance {
    start: f64,
    /// Sample index (media clock) of `audio[0]`.
    first_sample: u64,
    audio: Vec<i16>,
}

const MAX_CONCEAL_SECONDS: f64 = 1.0;
const PAD_SECONDS: f64 = 0.15;
static ZEROS: [i16; 480] = [0; 480];

impl LiveStream {
    /// A new stream.
    pub fn new(cfg: StreamConfig) -> Result<Self, DspError> {
        let rate = check_rate(cfg.sample_rate)?;
        if cfg.max_utterance_ms < 1000 || cfg.max_utterance_ms > 600_000 {
            return Err(DspError::InvalidConfig("max_utterance_ms must be within 1000 and 600000"));
        }
        if cfg.pre_roll_ms > 2000 || cfg.max_frame_ms == 0 || cfg.max_frame_ms > 1000 {
            return Err(DspError::InvalidConfig("pre_roll_ms must be at most 2000 and max_frame_ms within 1 and 1000"));
        }
        let vad = VadRunner::new(&cfg.vad, rate)?;
        let frame_seconds = vad.frame_seconds();
        let seg_cfg = SegmenterConfig {
            min_speech_ms: cfg.min_speech_ms,
            onset_gap_ms: cfg.end_of_turn_silence_ms.min(120),
            end_silence_ms: cfg.end_of_turn_silence_ms,
            max_speech_ms: cfg.max_utterance_ms,
        };
        let per_ms = |ms: u32| (u64::from(rate) * u64::from(ms) / 1000) as usize;
        let max_frame_samples = per_ms(cfg.max_frame_ms);
        Ok(Self {
            segmenter: Segmenter::new(&seg_cfg, frame_seconds),
            dtmf: cfg.detect_dtmf.then(|| DtmfDetector::new(rate, cfg.dtmf)),
            frame_seconds,
            vad_delay: vad.delay_seconds(),
            vad,
            scratch: Vec::with_capacity(max_frame_samples.min(per_ms(40))),
            seg_events: Vec::with_capacity(4),
            ring: vec![0; per_ms(cfg.pre_roll_ms).max(1)].into_boxed_slice(),
            ring_pos: 0,
            samples_done: 0,
            utterance: None,
            utterance_cap: per_ms(cfg.max_utterance_ms + cfg.end_of_turn_silence_ms)
                + per_ms(cfg.pre_roll_ms)
                + per_ms(1000),
            max_frame_samples,
            highest: None,
            window: 0,
            prev_transit_us: None,
            last_arrival_us: None,
            stats: StreamStats::default(),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }

    /// Statistics so far.
    pub fn stats(&self) -> StreamStats {
        let mut s = self.stats;
        s.media_seconds = self.samples_done as f64 / f64::from(self.cfg.sample_rate);
        s
    }

    /// True while an utterance is open (after `SpeechStarted`, before `SpeechEnded`).
    pub fn in_speech(&self) -> bool {
        self.utterance.is_some()
    }

    /// Heap bytes held by this stream right now (the detector, buffers and any open
    /// utterance), excluding `size_of::<LiveStream>()` itself.
    pub fn heap_bytes(&self) -> usize {
        self.vad.heap_bytes()
            + self.ring.len() * 2
            + self.scratch.capacity() * 2
            + self.seg_events.capacity() * std::mem::size_of::<SegmentEvent>()
            + self.dtmf.as_ref().map_or(0, |_| (f64::from(self.cfg.sample_rate) * 205.0 / 8000.0) as usize * 4)
            + self.utterance.as_ref().map_or(0, |u| u.audio.capacity() * 2)
    }

    /// Takes one frame; appends any events to `events`. A malformed frame is rejected
    /// with an error and changes nothing but the `rejected` count.
    pub fn push(&mut self, frame: Frame<'_>, events: &mut Vec<StreamEvent>) -> Result<(), DspError> {
        let n = match sample_count(self.cfg.encoding, frame.payload) {
            Ok(n) => n,
            Err(e) => {
                self.stats.rejected += 1;
                return Err(e);
            }
        };
        if n == 0 || n > self.max_frame_samples {
            self.stats.rejected += 1;
            return Err(DspError::InvalidFrame("payload is empty or longer than max_frame_ms"));
        }
        self.stats.packets_received += 1;
        if let Some(last) = self.last_arrival_us {
            let gap_ms = frame.arrival_us.saturating_sub(last) as f64 / 1000.0;
            self.stats.largest_arrival_gap_ms = self.stats.largest_arrival_gap_ms.max(gap_ms);
        }
        self.last_arrival_us = Some(frame.arrival_us);

        let mut conceal = 0usize;
        match self.highest {
            None => {
                self.highest = Some(frame.sequence);
                self.window = 1;
                self.stats.largest_sequence_gap = 1;
            }
            Some(h) if frame.sequence > h => {
                let jump = frame.sequence - h;
                if jump > self.cfg.max_sequence_jump {
                    self.stats.resyncs += 1;
                    self.window = 1;
                    self.prev_transit_us = None;
                } else {
                    self.stats.packets_lost += jump - 1;
                    self.stats.largest_sequence_gap = self.stats.largest_sequence_gap.max(jump);
                    self.window = if jump >= 64 { 1 } else { (self.window << jump) | 1 };
                    conceal = ((jump - 1) as usize).saturating_mul(n);
                }
                self.highest = Some(frame.sequence);
            }
            Some(h) => {
                let back = h - frame.sequence;
                if back < 64 && self.window & (1 << back) != 0 {
                    self.stats.duplicates += 1;
                } else {
                    if back < 64 {
                        self.window |= 1 << back;
                        self.stats.packets_lost = self.stats.packets_lost.saturating_sub(1);
                    }
                    self.stats.out_of_order += 1;
                    self.update_jitter(&frame);
                }
                return Ok(());
            }
        }
        self.update_jitter(&frame);
        self.stats.packets_accepted += 1;

        let max_conceal = (f64::from(self.cfg.sample_rate) * MAX_CONCEAL_SECONDS) as usize;
        let mut conceal = conceal.min(max_conceal);
        while conceal > 0 {
            let k = conceal.min(ZEROS.len());
            self.process(&ZEROS[..k], events)?;
            conceal -= k;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        decode_into(self.cfg.encoding, frame.payload, &mut scratch);
        let r = self.process(&scratch, events);
        self.scratch = scratch;
        r
    }

    fn update_jitter(&mut self, frame: &Frame<'_>) {
        let ts_us = frame.timestamp as f64 * 1e6 / f64::from(self.cfg.sample_rate);
        let transit = frame.arrival_us as f64 - ts_us;
        if let Some(prev) = self.prev_transit_us {
            let d = (transit - prev).abs();
            let j = self.stats.jitter_ms * 1000.0;
            self.stats.jitter_ms = (j + (d - j) / 16.0) / 1000.0;
            self.stats.max_jitter_ms = self.stats.max_jitter_ms.max(self.stats.jitter_ms);
        }
        self.prev_transit_us = Some(transit);
    }

    /// Runs decoded samples (at the stream rate) through the detectors. Useful directly
    /// when the caller has no frame metadata.
    pub fn process(&mut self, samples: &[i16], events: &mut Vec<StreamEvent>) -> Result<(), DspError> {
        let rate = f64::from(self.cfg.sample_rate);
        self.ring_pos = write_ring(&mut self.ring, self.ring_pos, samples);
        if let Some(u) = &mut self.utterance {
            let room = self.utterance_cap.saturating_sub(u.audio.len());
            u.audio.extend_from_slice(&samples[..samples.len().min(room)]);
        }
        self.samples_done += samples.len() as u64;

        let mut dtmf_active = false;
        if let Some(d) = &mut self.dtmf {
            d.push(samples, |e| {
                if let DtmfEvent::Detected { digit, start } = e {
                    events.push(StreamEvent::Dtmf { digit, at: start });
                }
            });
            dtmf_active = d.is_active();
        }

        let seg = &mut self.segmenter;
        let seg_events = &mut self.seg_events;
        self.vad.push(samples, |_, voiced| {
            seg.push(voiced && !dtmf_active, |e| seg_events.push(e));
        })?;
        let mut pending = std::mem::take(&mut self.seg_events);
        for e in pending.drain(..) {
            match e {
                SegmentEvent::Started { start } => {
                    let at = (start as f64 * self.frame_seconds - self.vad_delay).max(0.0);
                    events.push(StreamEvent::SpeechStarted { at });
                    self.open_utterance(at, rate);
                }
                SegmentEvent::Ended { start, end, forced } => {
                    let start = (start as f64 * self.frame_seconds - self.vad_delay).max(0.0);
                    let end = (end as f64 * self.frame_seconds - self.vad_delay).max(start);
                    let audio = self.close_utterance(end, rate)?;
                    events.push(StreamEvent::SpeechEnded { start, end, forced, audio });
                }
            }
        }
        self.seg_events = pending;
        Ok(())
    }

    fn open_utterance(&mut self, at: f64, rate: f64) {
        let now = self.samples_done;
        let want = ((at - PAD_SECONDS).max(0.0) * rate) as u64;
        let oldest = now.saturating_sub(self.ring.len() as u64);
        let first = want.max(oldest).min(now);
        let back = (now - first) as usize;
        let mut audio = Vec::with_capacity((back + (rate as usize)).min(self.utterance_cap));
        // The ring's oldest sample sits at ring_pos; the newest just before it.
        let len = self.ring.len();
        let start_idx = (self.ring_pos + len - back) % len;
        for i in 0..back {
            audio.push(self.ring[(start_idx + i) % len]);
        }
        self.utterance = Some(Utterance { start: at, first_sample: first, audio });
    }

    fn close_utterance(&mut self, end: f64, rate: f64) -> Result<Vec<i16>, DspError> {
        let Some(mut u) = self.utterance.take() else {
            return Ok(Vec::new());
        };
        let keep = (((end + PAD_SECONDS) * rate) as u64).saturating_sub(u.first_sample) as usize;
        u.audio.truncate(keep);
        debug_assert!(u.start <= end + 1e-9);
        if self.cfg.sample_rate * 2 == TRANSCRIPTION_RATE {
            // A call's 8 kHz: the half-band filter, in less than half the FFT resampler's time.
            Ok(upsample_2x(&u.audio))
        } else {
            resample(&u.audio, self.cfg.sample_rate, TRANSCRIPTION_RATE)
        }
    }

    /// Ends the stream: closes an open utterance (forced) and a sounding DTMF digit.
    pub fn finish(&mut self, events: &mut Vec<StreamEvent>) -> Result<(), DspError> {
        if let Some(d) = &mut self.dtmf {
            d.finish(|_| {});
        }
        let seg_events = &mut self.seg_events;
        self.segmenter.finish(|e| seg_events.push(e));
        let rate = f64::from(self.cfg.sample_rate);
        let mut pending = std::mem::take(&mut self.seg_events);
        for e in pending.drain(..) {
            if let SegmentEvent::Ended { start, end, .. } = e {
                let start = (start as f64 * self.frame_seconds - self.vad_delay).max(0.0);
                let end = (end as f64 * self.frame_seconds - self.vad_delay).max(start);
                let audio = self.close_utterance(end, rate)?;
                events.push(StreamEvent::SpeechEnded { start, end, forced: true, audio });
            }
        }
        self.seg_events = pending;
        Ok(())
    }
}

/// Writes `samples` into the pre-roll `ring` from `pos` on, wrapping (what does not fit leaves
/// only its newest part); returns the position after the newest sample, where the oldest now is.
fn write_ring(ring: &mut [i16], pos: usize, samples: &[i16]) -> usize {
    let len = ring.len();
    let skip = samples.len().saturating_sub(len);
    let mut pos = (pos + skip) % len;
    let mut rest = &samples[skip..];
    while !rest.is_empty() {
        let n = rest.len().min(len - pos);
        ring[pos..pos + n].copy_from_slice(&rest[..n]);
        pos = if pos + n == len { 0 } else { pos + n };
        rest = &rest[n..];
    }
    pos
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::write_ring;

    proptest! {
        /// Runs of any length, written at once, leave the ring as sample by sample would.
        #[test]
        fn ring_writes_match_sample_by_sample(
            len in 1usize..50,
            runs in prop::collection::vec(prop::collection::vec(any::<i16>(), 0..120), 0..8),
        ) {
            let (mut ring, mut pos) = (vec![0i16; len], 0);
            let (mut want, mut want_pos) = (vec![0i16; len], 0);
            for run in &runs {
                pos = write_ring(&mut ring, pos, run);
                for &s in run {
                    want[want_pos] = s;
                    want_pos = if want_pos + 1 == len { 0 } else { want_pos + 1 };
                }
                prop_assert_eq!(pos, want_pos);
                prop_assert_eq!(&ring, &want);
            }
        }
    }
}
