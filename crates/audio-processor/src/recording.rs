//! Recording analysis: decode, analyse and (optionally) cut out the speech audio. Runs on a
//! blocking thread; the caller holds a concurrency permit for as long as it runs.

use std::time::Instant;

use audio_dsp::{
    DecodedAudio, Limits, decode_raw, decode_wav, resample::resample_to_pcm16le, stream::TRANSCRIPTION_RATE,
};
use kraliki_proto::audio::v1 as pb;
use kraliki_proto::errors::{self, Reason};
use tonic::{Code, Status};
use tracing::field::Empty;

use crate::convert::{self, Container, RecordingParams, dsp_status};
use crate::metrics;

/// Speech audio in a response may be at most this many times the recording limit (8 kHz
/// μ-law grows four times on its way to 16 kHz PCM16).
const SPEECH_AUDIO_FACTOR: usize = 4;

/// Decodes and analyses one recording. Blocking: call it from `spawn_blocking`.
pub(crate) fn analyze(
    params: &RecordingParams,
    audio: Vec<u8>,
    limits: &Limits,
) -> Result<pb::AnalyzeRecordingResponse, Status> {
    let span = tracing::info_span!(
        "audio.analyze",
        call_id = %params.call_id,
        vad = params.analysis.vad.kind.as_str(),
        bytes = audio.len(),
        codec = Empty,
        sample_rate = Empty,
        channels = Empty,
        audio_seconds = Empty,
        duration_seconds = Empty,
    );
    let _entered = span.enter();
    let started = Instant::now();
    let decoded = match params.container {
        Container::Wav => decode_wav(&audio, limits),
        Container::Raw(format) => decode_raw(&audio, format, limits),
    }
    .map_err(|e| dsp_status(&e))?;
    // The encoded bytes are not needed again: free them before the speech audio is cut out.
    drop(audio);
    span.record("codec", decoded.encoding.as_str());
    span.record("sample_rate", decoded.sample_rate);
    span.record("channels", decoded.channels.len());
    span.record("audio_seconds", decoded.duration_seconds());
    let analysis = audio_dsp::analyze(&decoded, &params.analysis).map_err(|e| dsp_status(&e))?;
    let speech = if params.include_speech_audio {
        speech_audio(&decoded, &analysis, &params.labels, limits.max_bytes as usize * SPEECH_AUDIO_FACTOR)?
    } else {
        Vec::new()
    };
    let elapsed = started.elapsed();
    span.record("duration_seconds", elapsed.as_secs_f64());
    metrics::audio_processed(decoded.encoding, analysis.duration_seconds);
    metrics::analysis_done(analysis.vad, elapsed.as_secs_f64(), analysis.duration_seconds);
    tracing::debug!(
        segments = analysis.channels.iter().map(|c| c.speech_segments.len()).sum::<usize>(),
        "recording analysed"
    );
    Ok(pb::AnalyzeRecordingResponse {
        analysis: Some(convert::recording_analysis(&analysis, params.source, &params.labels, elapsed)),
        speech,
    })
}

/// Each channel's speech segments as 16 kHz PCM16, concatenated, with where each begins.
fn speech_audio(
    audio: &DecodedAudio,
    analysis: &audio_dsp::RecordingAnalysis,
    labels: &[String],
    max_bytes: usize,
) -> Result<Vec<pb::ChannelSpeech>, Status> {
    let speech_seconds: f64 = analysis.channels.iter().map(|c| c.speech_seconds).sum();
    let bytes = speech_seconds * f64::from(TRANSCRIPTION_RATE) * 2.0;
    if bytes > max_bytes as f64 {
        return Err(errors::status(
            Code::ResourceExhausted,
            format!(
                "speech audio of about {bytes:.0} bytes exceeds the limit of {max_bytes} bytes; analyse without include_speech_audio or send a shorter recording"
            ),
            Reason::InputTooLarge,
        ));
    }
    let rate = f64::from(audio.sample_rate);
    let mut out = Vec::with_capacity(analysis.channels.len());
    for c in &analysis.channels {
        let x = &audio.channels[c.channel];
        let mut pcm = Vec::with_capacity((c.speech_seconds * f64::from(TRANSCRIPTION_RATE) * 2.0) as usize + 64);
        let mut offsets = Vec::with_capacity(c.speech_segments.len());
        for s in &c.speech_segments {
            let from = ((s.start * rate) as usize).min(x.len());
            let to = ((s.end * rate).ceil() as usize).clamp(from, x.len());
            offsets.push((pcm.len() / 2) as u64);
            if from == to {
                continue;
            }
            // Straight into the answer: no copy of the segment at either rate.
            resample_to_pcm16le(&x[from..to], audio.sample_rate, TRANSCRIPTION_RATE, &mut pcm)
                .map_err(|e| dsp_status(&e))?;
        }
        out.push(pb::ChannelSpeech {
            channel: c.channel as u32,
            label: convert::label(labels, c.channel),
            pcm16_16khz: pcm.into(),
            segments: c
                .speech_segments
                .iter()
                .map(|s| pb::SpeechSegment { start_seconds: s.start, end_seconds: s.end })
                .collect(),
            segment_sample_offsets: offsets,
        });
    }
    Ok(out)
}
