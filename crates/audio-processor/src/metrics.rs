//! Every metric audio-processor records, in one place, with its help text and buckets.
//!
//! Label values are bounded: `codec` is `pcm16`, `mulaw` or `alaw`; `vad` is `fast` or
//! `neural`; `event` is `speech_started`, `speech_ended` or `dtmf`; `via` is `stream` or `leg`.

use std::sync::atomic::{AtomicU64, Ordering};

use audio_dsp::{Encoding, VadKind};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// `audio_processed_seconds_total{codec}`: seconds of audio decoded and analysed (recordings
/// and live streams). Counters are integers, so each codec carries its sub-second remainder
/// (in microseconds) in an atomic and only whole seconds are added: no audio is lost, the
/// counter trails the truth by under a second per codec.
pub const PROCESSED_SECONDS_TOTAL: &str = "audio_processed_seconds_total";
/// `audio_analysis_duration_seconds{vad}`: wall time of one recording analysis (decode,
/// analysis, speech audio), excluding the upload.
pub const ANALYSIS_DURATION_SECONDS: &str = "audio_analysis_duration_seconds";
/// `audio_realtime_factor{vad}`: audio seconds over analysis seconds, per recording.
pub const REALTIME_FACTOR: &str = "audio_realtime_factor";
/// `audio_active_streams`: live streams open on this replica.
pub const ACTIVE_STREAMS: &str = "audio_active_streams";
/// `audio_streams_opened_total{via}`: live streams opened, `via` `stream` (its own `StreamAudio`)
/// or `leg` (a leg of a shared `StreamAudioCalls` stream).
pub const STREAMS_OPENED_TOTAL: &str = "audio_streams_opened_total";
/// `audio_vad_events_total{event}`: live-stream events sent.
pub const VAD_EVENTS_TOTAL: &str = "audio_vad_events_total";

const ANALYSIS_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const RTF_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1000.0, 5000.0, 10000.0, 50000.0, 100000.0];

/// Each histogram this crate records and its explicit buckets.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] =
    &[(ANALYSIS_DURATION_SECONDS, ANALYSIS_BUCKETS), (REALTIME_FACTOR, RTF_BUCKETS)];

/// Registers help texts and units with the installed recorder.
pub fn describe() {
    describe_counter!(PROCESSED_SECONDS_TOTAL, Unit::Seconds, "Seconds of audio processed, by codec");
    describe_histogram!(ANALYSIS_DURATION_SECONDS, Unit::Seconds, "Wall time of one recording analysis");
    describe_histogram!(REALTIME_FACTOR, "Audio seconds analysed per wall second, per recording");
    describe_gauge!(ACTIVE_STREAMS, "Live audio streams open");
    describe_counter!(VAD_EVENTS_TOTAL, "Live-stream voice-activity events sent, by event");
    describe_counter!(
        STREAMS_OPENED_TOTAL,
        "Live streams opened, by via (stream: its own StreamAudio; leg: a shared stream's leg)"
    );
    for via in ["stream", "leg"] {
        counter!(STREAMS_OPENED_TOTAL, "via" => via).absolute(0);
    }
    // Exported from the start (0), so dashboards and alerts see the series before any stream.
    gauge!(ACTIVE_STREAMS).set(0.0);
    for codec in [Encoding::Pcm16, Encoding::Mulaw, Encoding::Alaw] {
        counter!(PROCESSED_SECONDS_TOTAL, "codec" => codec.as_str()).absolute(0);
    }
    for event in ["speech_started", "speech_ended", "dtmf"] {
        counter!(VAD_EVENTS_TOTAL, "event" => event).increment(0);
    }
}

static REMAINDER_US: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

fn codec_index(codec: Encoding) -> usize {
    match codec {
        Encoding::Pcm16 => 0,
        Encoding::Mulaw => 1,
        Encoding::Alaw => 2,
    }
}

/// Counts `seconds` of audio in `codec` (see [`PROCESSED_SECONDS_TOTAL`]).
pub fn audio_processed(codec: Encoding, seconds: f64) {
    if !(seconds.is_finite() && seconds > 0.0) {
        return;
    }
    let add = (seconds * 1e6).round() as u64;
    let slot = &REMAINDER_US[codec_index(codec)];
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        let total = current.saturating_add(add);
        let whole = total / 1_000_000;
        match slot.compare_exchange_weak(current, total - whole * 1_000_000, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                if whole > 0 {
                    counter!(PROCESSED_SECONDS_TOTAL, "codec" => codec.as_str()).increment(whole);
                }
                return;
            }
            Err(actual) => current = actual,
        }
    }
}

pub(crate) fn analysis_done(vad: VadKind, wall_seconds: f64, audio_seconds: f64) {
    histogram!(ANALYSIS_DURATION_SECONDS, "vad" => vad.as_str()).record(wall_seconds);
    if wall_seconds > 0.0 {
        histogram!(REALTIME_FACTOR, "vad" => vad.as_str()).record(audio_seconds / wall_seconds);
    }
}

/// A live stream opened (see [`STREAMS_OPENED_TOTAL`]).
pub(crate) fn stream_opened(via: &'static str) {
    counter!(STREAMS_OPENED_TOTAL, "via" => via).increment(1);
}

pub(crate) fn vad_event(event: &'static str) {
    counter!(VAD_EVENTS_TOTAL, "event" => event).increment(1);
}

/// Holds one `audio_active_streams` slot; released on drop, however the stream ends.
pub(crate) struct ActiveStream(());

impl ActiveStream {
    pub(crate) fn open() -> Self {
        gauge!(ACTIVE_STREAMS).increment(1.0);
        Self(())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        gauge!(ACTIVE_STREAMS).decrement(1.0);
    }
}
