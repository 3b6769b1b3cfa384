//! Between the wire and audio-dsp: request fields checked and turned into audio-dsp settings,
//! results turned into proto messages. Every check on a client's field lives here and answers
//! `InvalidArgument` naming the field.

use std::time::Duration;

use audio_dsp::analysis::{ChannelAnalysis as DspChannel, ConversationAnalysis as DspConversation, Segment};
use audio_dsp::{AnalysisConfig, DspError, Encoding, ErrorClass, RawFormat, RecordingAnalysis as DspRecording};
use audio_dsp::{StreamConfig as DspStreamConfig, StreamStats as DspStats, VadConfig, VadKind};
use kraliki_proto::audio::v1 as pb;
use kraliki_proto::errors::{self, Reason};
use tonic::{Code, Status};

/// Longest accepted `call_id` and channel label, in bytes.
const MAX_ID_LEN: usize = 128;

/// The answer for an audio-dsp error: its message is written for clients.
pub(crate) fn dsp_status(e: &DspError) -> Status {
    match e.class() {
        ErrorClass::InvalidInput => errors::status(Code::InvalidArgument, e.to_string(), Reason::InvalidInput),
        ErrorClass::ResourceExhausted => errors::status(Code::ResourceExhausted, e.to_string(), Reason::InputTooLarge),
        ErrorClass::Internal => {
            tracing::error!(error = %e, "audio processing failed");
            errors::status(Code::Internal, "internal error while processing audio", Reason::Internal)
        }
    }
}

/// How the bytes of a recording are to be decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Container {
    Wav,
    Raw(RawFormat),
}

/// A checked recording request, without its audio.
#[derive(Debug, Clone)]
pub(crate) struct RecordingParams {
    pub call_id: String,
    pub source: pb::AudioEncoding,
    pub container: Container,
    pub analysis: AnalysisConfig,
    pub labels: Vec<String>,
    pub include_speech_audio: bool,
}

pub(crate) fn check_call_id(call_id: &str) -> Result<(), Status> {
    if call_id.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!("call_id is longer than {MAX_ID_LEN} bytes")));
    }
    Ok(())
}

fn raw_encoding(e: pb::AudioEncoding) -> Option<Encoding> {
    match e {
        pb::AudioEncoding::Pcm16 => Some(Encoding::Pcm16),
        pb::AudioEncoding::Mulaw => Some(Encoding::Mulaw),
        pb::AudioEncoding::Alaw => Some(Encoding::Alaw),
        pb::AudioEncoding::Wav | pb::AudioEncoding::Unspecified => None,
    }
}

fn encoding_field(format: &pb::AudioFormat) -> Result<pb::AudioEncoding, Status> {
    match pb::AudioEncoding::try_from(format.encoding) {
        Ok(pb::AudioEncoding::Unspecified) => {
            Err(Status::invalid_argument("format.encoding is required (wav, pcm16, mulaw or alaw)"))
        }
        Ok(e) => Ok(e),
        Err(_) => Err(Status::invalid_argument(format!("format.encoding {} is not a known encoding", format.encoding))),
    }
}

/// The declared format of headerless audio; rate 0 means 8000 for G.711, channels 0 means 1.
fn raw_format(format: &pb::AudioFormat, encoding: Encoding) -> Result<RawFormat, Status> {
    let sample_rate = match (format.sample_rate_hz, encoding) {
        (0, Encoding::Mulaw | Encoding::Alaw) => 8000,
        (0, Encoding::Pcm16) => {
            return Err(Status::invalid_argument("format.sample_rate_hz is required for raw pcm16 audio"));
        }
        (rate, _) => rate,
    };
    if !audio_dsp::SUPPORTED_RATES.contains(&sample_rate) {
        return Err(Status::invalid_argument(format!(
            "format.sample_rate_hz {sample_rate} is not supported (8000, 16000, 24000 or 48000)"
        )));
    }
    let channels = if format.channels == 0 { 1 } else { format.channels };
    Ok(RawFormat { encoding, sample_rate, channels })
}

fn duration_ms(
    d: Option<&prost_types::Duration>,
    field: &str,
    min_ms: u32,
    max_ms: u32,
) -> Result<Option<u32>, Status> {
    let Some(d) = d else { return Ok(None) };
    let out_of_range = || Status::invalid_argument(format!("{field} must be between {min_ms} ms and {max_ms} ms"));
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(out_of_range());
    }
    let ms = d.seconds.saturating_mul(1000).saturating_add(i64::from(d.nanos / 1_000_000));
    if ms < i64::from(min_ms) || ms > i64::from(max_ms) {
        return Err(out_of_range());
    }
    Ok(Some(ms as u32))
}

/// Checked voice-activity options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VadChoice {
    pub kind: VadKind,
    pub end_of_turn_ms: Option<u32>,
    pub min_speech_ms: Option<u32>,
}

pub(crate) fn vad_choice(vad: Option<&pb::VadOptions>) -> Result<VadChoice, Status> {
    let Some(vad) = vad else {
        return Ok(VadChoice { kind: VadKind::Fast, end_of_turn_ms: None, min_speech_ms: None });
    };
    let kind = match pb::VadModel::try_from(vad.model) {
        Ok(pb::VadModel::Unspecified | pb::VadModel::Fast) => VadKind::Fast,
        Ok(pb::VadModel::Neural) => VadKind::Neural,
        Err(_) => return Err(Status::invalid_argument(format!("vad.model {} is not a known model", vad.model))),
    };
    Ok(VadChoice {
        kind,
        end_of_turn_ms: duration_ms(vad.end_of_turn_silence.as_ref(), "vad.end_of_turn_silence", 20, 10_000)?,
        min_speech_ms: duration_ms(vad.min_speech.as_ref(), "vad.min_speech", 0, 5_000)?,
    })
}

pub(crate) fn vad_model(kind: VadKind) -> pb::VadModel {
    match kind {
        VadKind::Fast => pb::VadModel::Fast,
        VadKind::Neural => pb::VadModel::Neural,
    }
}

/// Checks everything of a recording request but its audio.
pub(crate) fn recording_params(req: &pb::AnalyzeRecordingRequest) -> Result<RecordingParams, Status> {
    check_call_id(&req.call_id)?;
    let format = req.format.as_ref().ok_or_else(|| Status::invalid_argument("format is required"))?;
    let source = encoding_field(format)?;
    let container = match raw_encoding(source) {
        Some(encoding) => {
            let f = raw_format(format, encoding)?;
            if f.channels > 2 {
                return Err(Status::invalid_argument(format!(
                    "format.channels {} is not supported (1 or 2: one party per channel)",
                    f.channels
                )));
            }
            Container::Raw(f)
        }
        None => Container::Wav,
    };
    let vad = vad_choice(req.vad.as_ref())?;
    let mut analysis = AnalysisConfig::with_vad(vad.kind);
    analysis.detect_dtmf = !req.skip_dtmf;
    if let Some(ms) = vad.end_of_turn_ms {
        analysis.segments.end_silence_ms = ms;
    }
    if let Some(ms) = vad.min_speech_ms {
        analysis.segments.min_speech_ms = ms;
    }
    if req.channel_labels.len() > 2 {
        return Err(Status::invalid_argument(format!(
            "channel_labels has {} entries; recordings have at most 2 channels",
            req.channel_labels.len()
        )));
    }
    if let Some(l) = req.channel_labels.iter().find(|l| l.len() > MAX_ID_LEN) {
        return Err(Status::invalid_argument(format!(
            "channel label of {} bytes is longer than {MAX_ID_LEN} bytes",
            l.len()
        )));
    }
    Ok(RecordingParams {
        call_id: req.call_id.clone(),
        source,
        container,
        analysis,
        labels: req.channel_labels.clone(),
        include_speech_audio: req.include_speech_audio,
    })
}

/// The label of channel `i`: the client's, or `channel_<i>`.
pub(crate) fn label(labels: &[String], i: usize) -> String {
    match labels.get(i) {
        Some(l) if !l.is_empty() => l.clone(),
        _ => format!("channel_{i}"),
    }
}

pub(crate) fn proto_duration(seconds: f64) -> prost_types::Duration {
    let d = Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO);
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn segment(s: &Segment) -> pb::SpeechSegment {
    pb::SpeechSegment { start_seconds: s.start, end_seconds: s.end }
}

fn channel(c: &DspChannel, labels: &[String]) -> pb::ChannelAnalysis {
    pb::ChannelAnalysis {
        channel: c.channel as u32,
        label: label(labels, c.channel),
        duration_seconds: c.duration_seconds,
        speech_seconds: c.speech_seconds,
        speech_segments: c.speech_segments.iter().map(segment).collect(),
        silence_ratio: c.silence_share,
        active_speech_level_dbfs: c.active_speech_level_dbfs.unwrap_or(audio_dsp::analysis::MIN_DBFS),
        rms_dbfs: c.rms_dbfs,
        peak_dbfs: c.peak_dbfs,
        clipping_ratio: c.clipping_share,
        dc_offset: c.dc_offset,
        noise_floor_dbfs: c.noise_floor_dbfs,
        snr_db: c.snr_db.unwrap_or(0.0),
        dropouts: c
            .dropouts
            .runs
            .iter()
            .map(|d| pb::SpeechSegment { start_seconds: d.start, end_seconds: d.end })
            .collect(),
        dropout_count: c.dropouts.count as u32,
        dropout_seconds: c.dropouts.total_seconds,
        time_to_first_speech_seconds: c.time_to_first_speech_seconds,
    }
}

fn conversation(c: &DspConversation) -> pb::ConversationAnalysis {
    let monologue = c.longest_monologue;
    pb::ConversationAnalysis {
        talk_ratio: c.talk_share.clone(),
        longest_monologue_seconds: monologue.map_or(0.0, |m| m.seconds),
        longest_monologue_channel: monologue.map_or(0, |m| m.channel as u32),
        turns_per_minute: c.turns_per_minute,
        interruptions: c.interruptions.iter().sum::<usize>() as u32,
        overlap_seconds: c.overlap_seconds,
        longest_dead_air_seconds: c.longest_dead_air_seconds,
        time_to_first_speech_seconds: c.time_to_first_speech_seconds,
        response_gaps_seconds: c.response_gaps.gaps.iter().map(|g| g.seconds).collect(),
        mean_response_gap_seconds: c.response_gaps.mean_seconds.unwrap_or(0.0),
        turns: c.turns as u32,
        overlap_count: c.overlap_count as u32,
        interruptions_by_channel: c.interruptions.iter().map(|&n| n as u32).collect(),
        median_response_gap_seconds: c.response_gaps.median_seconds.unwrap_or(0.0),
        p90_response_gap_seconds: c.response_gaps.p90_seconds.unwrap_or(0.0),
    }
}

/// The wire form of an analysis.
pub(crate) fn recording_analysis(
    a: &DspRecording,
    source: pb::AudioEncoding,
    labels: &[String],
    processing: Duration,
) -> pb::RecordingAnalysis {
    let mut dtmf: Vec<pb::DtmfDigit> = a
        .channels
        .iter()
        .flat_map(|c| {
            c.dtmf.iter().map(|d| pb::DtmfDigit {
                digit: d.digit.to_string(),
                start_seconds: d.start,
                end_seconds: d.end,
                channel: c.channel as u32,
            })
        })
        .collect();
    dtmf.sort_by(|x, y| x.start_seconds.total_cmp(&y.start_seconds));
    pb::RecordingAnalysis {
        duration_seconds: a.duration_seconds,
        sample_rate_hz: a.sample_rate,
        source_encoding: source as i32,
        codec: a.encoding.as_str().to_string(),
        channels: a.channels.iter().map(|c| channel(c, labels)).collect(),
        conversation: a.conversation.as_ref().map(conversation),
        dtmf,
        vad_model: vad_model(a.vad) as i32,
        processing_time: Some(prost_types::Duration {
            seconds: processing.as_secs() as i64,
            nanos: processing.subsec_nanos() as i32,
        }),
    }
}

/// Bounds of `StreamConfig.speech_audio_part_bytes` when set (0: each utterance whole).
pub(crate) const SPEECH_AUDIO_PART_BYTES: std::ops::RangeInclusive<u32> = 1_024..=1_048_576;

/// How an utterance's audio is sent: in parts of at most this many bytes (whole samples), or
/// whole (`None`).
pub(crate) fn speech_audio_part_bytes(c: &pb::StreamConfig) -> Result<Option<usize>, Status> {
    match c.speech_audio_part_bytes {
        0 => Ok(None),
        n if SPEECH_AUDIO_PART_BYTES.contains(&n) => Ok(Some((n & !1) as usize)),
        n => Err(Status::invalid_argument(format!(
            "config.speech_audio_part_bytes {n} is out of range: 0 (whole) or {} to {}",
            SPEECH_AUDIO_PART_BYTES.start(),
            SPEECH_AUDIO_PART_BYTES.end()
        ))),
    }
}

/// A checked live-stream configuration.
pub(crate) fn stream_config(c: &pb::StreamConfig) -> Result<DspStreamConfig, Status> {
    check_call_id(&c.call_id)?;
    let format = c.format.as_ref().ok_or_else(|| Status::invalid_argument("config.format is required"))?;
    let source = encoding_field(format)?;
    let Some(encoding) = raw_encoding(source) else {
        return Err(Status::invalid_argument("live frames must be raw pcm16, mulaw or alaw, not wav"));
    };
    let raw = raw_format(format, encoding)?;
    if raw.channels != 1 {
        return Err(Status::invalid_argument(format!(
            "format.channels {} is not supported for live streams (mono only: one stream per party)",
            raw.channels
        )));
    }
    let vad = vad_choice(c.vad.as_ref())?;
    let mut cfg = DspStreamConfig {
        encoding,
        sample_rate: raw.sample_rate,
        vad: VadConfig::for_kind(vad.kind),
        ..DspStreamConfig::default()
    };
    if let Some(ms) = vad.end_of_turn_ms {
        cfg.end_of_turn_silence_ms = ms;
    }
    if let Some(ms) = vad.min_speech_ms {
        cfg.min_speech_ms = ms;
    }
    if let Some(ms) = duration_ms(c.max_utterance.as_ref(), "max_utterance", 1_000, 600_000)? {
        cfg.max_utterance_ms = ms;
    }
    Ok(cfg)
}

pub(crate) fn stream_stats(s: &DspStats) -> pb::StreamStats {
    pb::StreamStats {
        frames_received: s.packets_received,
        frames_lost: s.packets_lost,
        frames_duplicated: s.duplicates,
        frames_out_of_order: s.out_of_order,
        jitter: Some(proto_duration(s.jitter_ms / 1000.0)),
        largest_gap: Some(proto_duration(s.largest_arrival_gap_ms / 1000.0)),
        frames_accepted: s.packets_accepted,
        frames_rejected: s.rejected,
        resyncs: s.resyncs,
        media_duration: Some(proto_duration(s.media_seconds)),
        max_jitter: Some(proto_duration(s.max_jitter_ms / 1000.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(encoding: pb::AudioEncoding, rate: u32, channels: u32) -> pb::AnalyzeRecordingRequest {
        pb::AnalyzeRecordingRequest {
            format: Some(pb::AudioFormat { encoding: encoding as i32, sample_rate_hz: rate, channels }),
            ..Default::default()
        }
    }

    #[test]
    fn recording_formats() {
        let p = recording_params(&req(pb::AudioEncoding::Mulaw, 0, 0)).unwrap();
        assert_eq!(p.container, Container::Raw(RawFormat::TELEPHONE));
        assert_eq!(recording_params(&req(pb::AudioEncoding::Wav, 0, 0)).unwrap().container, Container::Wav);
        for bad in [
            req(pb::AudioEncoding::Pcm16, 0, 1),
            req(pb::AudioEncoding::Mulaw, 11025, 1),
            req(pb::AudioEncoding::Alaw, 8000, 3),
            req(pb::AudioEncoding::Unspecified, 8000, 1),
            pb::AnalyzeRecordingRequest::default(),
        ] {
            assert_eq!(recording_params(&bad).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        let mut r = req(pb::AudioEncoding::Wav, 0, 0);
        r.format.as_mut().unwrap().encoding = 42;
        assert!(recording_params(&r).unwrap_err().message().contains("format.encoding"));
    }

    #[test]
    fn vad_options() {
        let mut r = req(pb::AudioEncoding::Wav, 0, 0);
        r.vad = Some(pb::VadOptions {
            model: pb::VadModel::Neural as i32,
            end_of_turn_silence: Some(prost_types::Duration { seconds: 0, nanos: 300_000_000 }),
            min_speech: Some(prost_types::Duration { seconds: 0, nanos: 50_000_000 }),
        });
        let p = recording_params(&r).unwrap();
        assert_eq!(p.analysis.vad.kind, VadKind::Neural);
        assert_eq!((p.analysis.segments.end_silence_ms, p.analysis.segments.min_speech_ms), (300, 50));
        r.vad.as_mut().unwrap().end_of_turn_silence = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        assert!(recording_params(&r).unwrap_err().message().contains("end_of_turn_silence"));
        r.vad.as_mut().unwrap().end_of_turn_silence = None;
        r.vad.as_mut().unwrap().model = 9;
        assert!(recording_params(&r).unwrap_err().message().contains("vad.model"));
    }

    #[test]
    fn labels_default_by_index() {
        let labels = vec!["agent".to_string(), String::new()];
        assert_eq!(label(&labels, 0), "agent");
        assert_eq!(label(&labels, 1), "channel_1");
        assert_eq!(label(&[], 0), "channel_0");
    }

    #[test]
    fn durations_round_trip() {
        let d = proto_duration(1.25);
        assert_eq!((d.seconds, d.nanos), (1, 250_000_000));
        assert_eq!(proto_duration(-3.0).seconds, 0);
        assert_eq!(proto_duration(f64::NAN).seconds, 0);
    }
}
