//! The recording analysis of a call as stored and returned by `GET /v1/calls/{id}/analysis`:
//! the audio analytics, the transcript (per channel, on the recording's timeline) and the
//! sentiment, plus the pure functions that build them from the peers' answers.

use chrono::{DateTime, Utc};
use kraliki_proto::audio::v1 as audio_pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::AnalysisStatus;

/// Sample rate of the speech audio audio-processor returns for transcription.
pub const SPEECH_RATE: u32 = 16_000;

/// The analysis of a call's recording.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AnalysisDocument {
    pub call_id: Uuid,
    /// `pending` while it runs, `done`, or `failed` (see `error`; upload again to retry).
    pub status: AnalysisStatus,
    /// Why the analysis failed; absent unless `status` is `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The results; absent while pending and when the audio itself could not be analysed.
    #[serde(flatten)]
    pub results: Option<AnalysisResults>,
    /// Present once the audio stage ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Transcript>,
}

/// What the pipeline produced (stored as JSON on the call).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnalysisResults {
    pub recording: RecordingInfo,
    pub audio: AudioAnalysis,
    pub sentiment: Sentiment,
    pub timings: Timings,
    /// The trace of the analysis (`call_analysis`): the `trace_id` of its log lines, and its id
    /// in the tracing backend when traces are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The uploaded recording.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordingInfo {
    /// `audio/wav` or `audio/basic`, as uploaded (aliases normalised).
    pub content_type: String,
    pub bytes: u64,
    pub duration_seconds: f64,
    pub sample_rate_hz: u32,
    /// `pcm16`, `mulaw` or `alaw`.
    pub codec: String,
    pub channels: u32,
}

/// Audio analytics from audio-processor.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AudioAnalysis {
    /// `fast` or `neural`.
    pub vad_model: String,
    pub channels: Vec<ChannelAudio>,
    /// Present when the recording has two channels (one party each).
    pub conversation: Option<Conversation>,
    /// Touch tones (DTMF) heard, in order.
    pub dtmf: Vec<DtmfDigit>,
    /// Time audio-processor spent analysing.
    pub processing_seconds: f64,
}

/// A span of the recording, in seconds from its start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimeSpan {
    pub start_seconds: f64,
    pub end_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelAudio {
    pub channel: u32,
    pub label: String,
    pub duration_seconds: f64,
    pub speech_seconds: f64,
    pub speech_segments: Vec<TimeSpan>,
    /// Share of the channel's time without speech, 0..1.
    pub silence_ratio: f64,
    /// Level of the speech frames (dBFS); -120 without speech.
    pub active_speech_level_dbfs: f64,
    pub rms_dbfs: f64,
    pub peak_dbfs: f64,
    /// Share of samples at or near full scale, 0..1.
    pub clipping_ratio: f64,
    /// Mean sample value as a fraction of full scale.
    pub dc_offset: f64,
    pub noise_floor_dbfs: f64,
    /// Speech over noise; 0 without speech.
    pub snr_db: f64,
    /// Digital silence or stuck samples of at least 100 ms (the first 100).
    pub dropouts: Vec<TimeSpan>,
    pub dropout_count: u32,
    pub dropout_seconds: f64,
    pub time_to_first_speech_seconds: Option<f64>,
}

/// How the two parties talked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    /// Each channel's share of all speech, by channel.
    pub talk_ratio: Vec<f64>,
    pub turns: u32,
    pub turns_per_minute: f64,
    pub interruptions: u32,
    pub interruptions_by_channel: Vec<u32>,
    pub overlap_count: u32,
    pub overlap_seconds: f64,
    pub longest_monologue_seconds: f64,
    pub longest_monologue_channel: u32,
    pub longest_dead_air_seconds: f64,
    pub time_to_first_speech_seconds: Option<f64>,
    pub mean_response_gap_seconds: f64,
    pub median_response_gap_seconds: f64,
    pub p90_response_gap_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DtmfDigit {
    pub digit: String,
    pub channel: u32,
    pub start_seconds: f64,
    pub end_seconds: f64,
}

/// State of the transcript or the sentiment within an analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Produced.
    #[default]
    Done,
    /// Not produced, not an error: no provider is configured for it, or there was nothing to
    /// work on (no speech); `reason` says which.
    Unavailable,
    /// The provider failed; `reason` says how. In an analysis that is `failed`, upload again to
    /// retry; in one that is `done`, the provider refused this recording's input and a retry
    /// would fail the same way.
    Failed,
}

/// Speech to text over the recording's speech, per channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Transcript {
    pub status: StageStatus,
    /// Why the transcript is unavailable or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The conversation in order; with two channels each line starts with its speaker's label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub channels: Vec<ChannelTranscript>,
    /// Every segment on the recording's timeline, in order of start.
    pub segments: Vec<TranscriptSegment>,
    /// A failure that a retry cannot fix (the provider refused the input). Not stored.
    #[serde(skip)]
    pub permanent: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelTranscript {
    pub channel: u32,
    pub label: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptSegment {
    pub channel: u32,
    pub label: String,
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub text: String,
}

/// Sentiment over the transcript: overall and, with two channels, per party.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Sentiment {
    pub status: StageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overall: Option<SentimentScore>,
    pub channels: Vec<ChannelSentiment>,
    /// A failure that a retry cannot fix (the provider refused the input). Not stored.
    #[serde(skip)]
    pub permanent: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SentimentScore {
    /// -1 (most negative) .. 1 (most positive).
    pub score: f64,
    /// `negative`, `neutral` or `positive`.
    pub label: String,
    /// Words that moved the score most.
    pub keywords: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelSentiment {
    pub channel: u32,
    pub label: String,
    pub sentiment: SentimentScore,
}

/// Wall time per stage, in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    /// Receiving the upload while audio-processor decodes and analyses it.
    pub audio_seconds: f64,
    pub transcription_seconds: f64,
    pub sentiment_seconds: f64,
    /// From the start of the upload to the results being ready to store.
    pub total_seconds: f64,
}

/// Whether a peer's refusal would be the same on a retry: the request itself was refused.
pub fn permanent_failure(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::Unimplemented)
}

impl Transcript {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self { status: StageStatus::Unavailable, reason: Some(reason.into()), ..Self::default() }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Self { status: StageStatus::Failed, reason: Some(reason.into()), ..Self::default() }
    }

    /// A failed call to provider-gateway: permanent when a retry cannot fix it.
    pub fn failed_with(status: &tonic::Status) -> Self {
        Self { permanent: permanent_failure(status.code()), ..Self::failed(status_reason(status)) }
    }
}

impl Sentiment {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self { status: StageStatus::Unavailable, reason: Some(reason.into()), ..Self::default() }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Self { status: StageStatus::Failed, reason: Some(reason.into()), ..Self::default() }
    }

    /// A failed call to provider-gateway: permanent when a retry cannot fix it.
    pub fn failed_with(status: &tonic::Status) -> Self {
        Self { permanent: permanent_failure(status.code()), ..Self::failed(status_reason(status)) }
    }
}

fn status_reason(status: &tonic::Status) -> String {
    format!("{} ({:?})", status.message(), status.code())
}

fn spans(segments: &[audio_pb::SpeechSegment]) -> Vec<TimeSpan> {
    segments.iter().map(|s| TimeSpan { start_seconds: s.start_seconds, end_seconds: s.end_seconds }).collect()
}

fn vad_name(model: i32) -> &'static str {
    match audio_pb::VadModel::try_from(model) {
        Ok(audio_pb::VadModel::Neural) => "neural",
        _ => "fast",
    }
}

/// The audio analytics as stored, from audio-processor's answer.
pub fn audio_from_proto(a: &audio_pb::RecordingAnalysis) -> AudioAnalysis {
    AudioAnalysis {
        vad_model: vad_name(a.vad_model).to_string(),
        channels: a
            .channels
            .iter()
            .map(|c| ChannelAudio {
                channel: c.channel,
                label: c.label.clone(),
                duration_seconds: c.duration_seconds,
                speech_seconds: c.speech_seconds,
                speech_segments: spans(&c.speech_segments),
                silence_ratio: c.silence_ratio,
                active_speech_level_dbfs: c.active_speech_level_dbfs,
                rms_dbfs: c.rms_dbfs,
                peak_dbfs: c.peak_dbfs,
                clipping_ratio: c.clipping_ratio,
                dc_offset: c.dc_offset,
                noise_floor_dbfs: c.noise_floor_dbfs,
                snr_db: c.snr_db,
                dropouts: spans(&c.dropouts),
                dropout_count: c.dropout_count,
                dropout_seconds: c.dropout_seconds,
                time_to_first_speech_seconds: c.time_to_first_speech_seconds,
            })
            .collect(),
        conversation: a.conversation.as_ref().map(|c| Conversation {
            talk_ratio: c.talk_ratio.clone(),
            turns: c.turns,
            turns_per_minute: c.turns_per_minute,
            interruptions: c.interruptions,
            interruptions_by_channel: c.interruptions_by_channel.clone(),
            overlap_count: c.overlap_count,
            overlap_seconds: c.overlap_seconds,
            longest_monologue_seconds: c.longest_monologue_seconds,
            longest_monologue_channel: c.longest_monologue_channel,
            longest_dead_air_seconds: c.longest_dead_air_seconds,
            time_to_first_speech_seconds: c.time_to_first_speech_seconds,
            mean_response_gap_seconds: c.mean_response_gap_seconds,
            median_response_gap_seconds: c.median_response_gap_seconds,
            p90_response_gap_seconds: c.p90_response_gap_seconds,
        }),
        dtmf: a
            .dtmf
            .iter()
            .map(|d| DtmfDigit {
                digit: d.digit.clone(),
                channel: d.channel,
                start_seconds: d.start_seconds,
                end_seconds: d.end_seconds,
            })
            .collect(),
        processing_seconds: a.processing_time.map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
    }
}

/// A piece of a chunk: `len` samples at `offset` in the chunk were recorded from
/// `recording_start` seconds on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Piece {
    pub offset: usize,
    pub len: usize,
    pub recording_start: f64,
}

/// Consecutive speech of one channel sent to transcription in one request: `range` of the
/// channel's speech samples, made of `pieces` that map its time back to the recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub range: std::ops::Range<usize>,
    pub pieces: Vec<Piece>,
}

/// Splits a channel's speech (concatenated segments, `offsets[i]` where segment `i` starts) into
/// chunks of at most `max_samples`, at segment boundaries where possible; a segment longer than
/// a chunk is cut.
pub fn chunk_speech(
    total_samples: usize,
    segments: &[audio_pb::SpeechSegment],
    offsets: &[u64],
    max_samples: usize,
) -> Vec<Chunk> {
    let max_samples = max_samples.max(1);
    // Segment i spans offsets[i]..offsets[i+1] (or the end); mismatched lists fall back to one
    // piece starting at the first segment (or 0).
    let mut parts: Vec<(usize, usize, f64)> = Vec::new();
    if segments.len() == offsets.len() && !segments.is_empty() {
        for (i, seg) in segments.iter().enumerate() {
            let start = (offsets[i] as usize).min(total_samples);
            let end = offsets.get(i + 1).map_or(total_samples, |&o| (o as usize).min(total_samples)).max(start);
            if end > start {
                parts.push((start, end, seg.start_seconds));
            }
        }
    } else if total_samples > 0 {
        parts.push((0, total_samples, segments.first().map_or(0.0, |s| s.start_seconds)));
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current: Option<Chunk> = None;
    for (mut start, end, mut recording_start) in parts {
        while start < end {
            let chunk = current.get_or_insert_with(|| Chunk { range: start..start, pieces: Vec::new() });
            let room = max_samples - chunk.range.len();
            let take = room.min(end - start);
            chunk.pieces.push(Piece { offset: chunk.range.len(), len: take, recording_start });
            chunk.range.end = start + take;
            start += take;
            recording_start += take as f64 / f64::from(SPEECH_RATE);
            if chunk.range.len() == max_samples {
                chunks.extend(current.take());
            }
        }
    }
    chunks.extend(current);
    chunks
}

impl Chunk {
    /// The recording time of `t` seconds into this chunk's audio.
    pub fn recording_time(&self, t: f64) -> f64 {
        let sample = (t.max(0.0) * f64::from(SPEECH_RATE)).round() as usize;
        let piece =
            self.pieces.iter().rev().find(|p| p.offset <= sample).or(self.pieces.first()).copied().unwrap_or(Piece {
                offset: 0,
                len: 0,
                recording_start: 0.0,
            });
        // Clamp inside the piece: a provider's timestamp past the audio stays on its speech.
        let within = (sample.saturating_sub(piece.offset)).min(piece.len);
        piece.recording_start + within as f64 / f64::from(SPEECH_RATE)
    }

    /// Where this chunk's speech starts and ends in the recording.
    pub fn recording_span(&self) -> (f64, f64) {
        let start = self.pieces.first().map_or(0.0, |p| p.recording_start);
        let end = self.pieces.last().map_or(start, |p| p.recording_start + p.len as f64 / f64::from(SPEECH_RATE));
        (start, end)
    }
}

/// The conversation as text: segments in order; with more than one channel each run of one
/// speaker becomes a line `label: text`.
pub fn conversation_text(segments: &[TranscriptSegment], channels: usize) -> String {
    if channels <= 1 {
        return segments.iter().map(|s| s.text.as_str()).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ");
    }
    let mut lines: Vec<(u32, String, String)> = Vec::new();
    for s in segments.iter().filter(|s| !s.text.is_empty()) {
        match lines.last_mut() {
            Some((channel, _, text)) if *channel == s.channel => {
                text.push(' ');
                text.push_str(&s.text);
            }
            _ => lines.push((s.channel, s.label.clone(), s.text.clone())),
        }
    }
    lines.into_iter().map(|(_, label, text)| format!("{label}: {text}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: f64, end: f64) -> audio_pb::SpeechSegment {
        audio_pb::SpeechSegment { start_seconds: start, end_seconds: end }
    }

    #[test]
    fn chunks_keep_segments_whole_and_map_back_to_the_recording() {
        // Three segments: 1 s at 2.0 s, 2 s at 10.0 s, 0.5 s at 30.0 s.
        let segments = [seg(2.0, 3.0), seg(10.0, 12.0), seg(30.0, 30.5)];
        let offsets = [0, 16_000, 48_000];
        let chunks = chunk_speech(56_000, &segments, &offsets, 48_000);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].range, 0..48_000);
        assert_eq!(chunks[1].range, 48_000..56_000);
        assert_eq!(chunks[0].pieces.len(), 2);
        // 0.5 s into the chunk is 2.5 s into the recording; 1.5 s in is 0.5 s into segment 2.
        assert!((chunks[0].recording_time(0.5) - 2.5).abs() < 1e-9);
        assert!((chunks[0].recording_time(1.5) - 10.5).abs() < 1e-9);
        assert!((chunks[1].recording_time(0.25) - 30.25).abs() < 1e-9);
        // Past the end of the audio: clamped to the end of the last piece.
        assert!((chunks[1].recording_time(9.0) - 30.5).abs() < 1e-9);
        assert_eq!(chunks[0].recording_span(), (2.0, 12.0));
    }

    #[test]
    fn a_segment_longer_than_a_chunk_is_cut() {
        let chunks = chunk_speech(40_000, &[seg(5.0, 7.5)], &[0], 16_000);
        assert_eq!(
            chunks.iter().map(|c| c.range.clone()).collect::<Vec<_>>(),
            [0..16_000, 16_000..32_000, 32_000..40_000]
        );
        assert!((chunks[1].recording_time(0.0) - 6.0).abs() < 1e-9);
        assert!((chunks[2].recording_time(0.25) - 7.25).abs() < 1e-9);
    }

    #[test]
    fn mismatched_offsets_and_empty_speech() {
        assert!(chunk_speech(0, &[], &[], 16_000).is_empty());
        let chunks = chunk_speech(8_000, &[seg(1.0, 1.5), seg(2.0, 2.5)], &[0], 16_000);
        assert_eq!(chunks.len(), 1);
        assert!((chunks[0].recording_time(0.0) - 1.0).abs() < 1e-9);
        // Offsets past the audio are clamped, never sliced out of range.
        let chunks = chunk_speech(100, &[seg(1.0, 2.0), seg(3.0, 4.0)], &[0, 5_000], 16_000);
        assert_eq!(chunks[0].range, 0..100);
    }

    #[test]
    fn conversation_text_labels_runs_of_one_speaker() {
        let s = |channel: u32, label: &str, start: f64, text: &str| TranscriptSegment {
            channel,
            label: label.into(),
            start_seconds: start,
            end_seconds: start + 1.0,
            text: text.into(),
        };
        let segments =
            [s(0, "agent", 0.5, "Hello."), s(0, "agent", 1.5, "How can I help?"), s(1, "caller", 3.0, "My order.")];
        assert_eq!(conversation_text(&segments, 2), "agent: Hello. How can I help?\ncaller: My order.");
        assert_eq!(conversation_text(&segments, 1), "Hello. How can I help? My order.");
    }
}
