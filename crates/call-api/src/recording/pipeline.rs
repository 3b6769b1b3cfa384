//! The recording pipeline: the upload streams into audio-processor as it arrives (no whole copy
//! is buffered here), the speech it returns goes to provider-gateway for transcription per
//! channel (in chunks of at most a minute, a few at a time), then sentiment over the
//! transcript. Each stage is a span under `call_analysis`; the gRPC client spans beneath them
//! carry the trace into the other two services.
//!
//! Transcription and sentiment failing or being unavailable do not lose the audio analysis:
//! the results say per stage what happened and why.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use futures_util::{StreamExt as _, TryStreamExt as _};
use kraliki_proto::{
    audio::v1::{self as audio_pb, analyze_recording_stream_request::Payload},
    errors::{self, Reason},
    provider::v1 as provider_pb,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::{Instrument as _, field::Empty};
use uuid::Uuid;

use super::document::{
    self as analysis, AnalysisResults, ChannelSentiment, ChannelTranscript, RecordingInfo, SPEECH_RATE, Sentiment,
    SentimentScore, StageStatus, Timings, Transcript, TranscriptSegment,
};
use crate::{metrics, peers::Peers};

/// Longest speech sent in one transcription request (about 1.9 MB of 16 kHz PCM16).
pub const CHUNK_SECONDS: usize = 60;
/// Upload bytes forwarded to audio-processor per gRPC message (small body chunks are merged).
const FORWARD_BYTES: usize = 256 * 1024;

/// How the uploaded bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingKind {
    /// A RIFF/WAVE file (PCM16, μ-law or A-law inside).
    Wav,
    /// Raw 8 kHz mono μ-law (`audio/basic`).
    Mulaw,
}

impl RecordingKind {
    /// The kind for a `Content-Type`: `audio/wav` and its aliases, or `audio/basic`.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" | "audio/x-pn-wav" => Some(Self::Wav),
            "audio/basic" => Some(Self::Mulaw),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Wav => "audio/wav",
            Self::Mulaw => "audio/basic",
        }
    }

    fn format(self) -> audio_pb::AudioFormat {
        match self {
            Self::Wav => {
                audio_pb::AudioFormat { encoding: audio_pb::AudioEncoding::Wav as i32, sample_rate_hz: 0, channels: 0 }
            }
            Self::Mulaw => audio_pb::AudioFormat {
                encoding: audio_pb::AudioEncoding::Mulaw as i32,
                sample_rate_hz: 8000,
                channels: 1,
            },
        }
    }
}

/// An upload whose first bytes have been read (to tell audio from not-audio before anything
/// is claimed).
pub struct Upload {
    pub call_id: Uuid,
    pub kind: RecordingKind,
    pub channel_labels: Vec<String>,
    pub language: Option<String>,
    /// The bytes already read.
    pub head: Bytes,
    /// The rest of the body.
    pub rest: Body,
    pub max_bytes: u64,
}

/// Why an upload produced no analysis.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The client's fault: nothing is stored, the claim is released.
    #[error("recording is larger than {0} bytes")]
    TooLarge(u64),
    #[error("{0}")]
    InvalidAudio(String),
    #[error("the upload was interrupted")]
    Interrupted,
    /// Ours or a peer's: the analysis is marked failed, retryable.
    #[error("audio-processor is unavailable")]
    AudioUnavailable,
    #[error("the analysis did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("audio analysis failed")]
    AudioFailed(#[source] anyhow::Error),
}

impl UploadError {
    /// Whether the client's upload was at fault (the analysis then stays as it was).
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::TooLarge(_) | Self::InvalidAudio(_) | Self::Interrupted)
    }
}

/// What the pipeline produced.
#[derive(Debug, Clone)]
pub struct Produced {
    pub results: AnalysisResults,
    pub transcript: Transcript,
}

impl Produced {
    /// The reason the analysis counts as failed: a provider failed (not merely unavailable) in
    /// a way a retry may fix. A permanent failure (the provider refused the input) leaves the
    /// analysis `done`, the stage `failed` with its reason: uploading again would not help.
    pub fn failure(&self) -> Option<String> {
        if self.transcript.status == StageStatus::Failed && !self.transcript.permanent {
            return Some(format!("transcription failed: {}", self.transcript.reason.as_deref().unwrap_or("unknown")));
        }
        if self.results.sentiment.status == StageStatus::Failed && !self.results.sentiment.permanent {
            return Some(format!(
                "sentiment analysis failed: {}",
                self.results.sentiment.reason.as_deref().unwrap_or("unknown")
            ));
        }
        None
    }
}

/// Settings of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub transcribe_concurrency: usize,
}

/// Runs the whole pipeline for `upload`; the providers' usage is added to `cost`.
pub async fn run(
    peers: &Peers,
    upload: Upload,
    limits: Limits,
    cost: &crate::pricing::CostMeter,
) -> Result<Produced, UploadError> {
    let started = Instant::now();
    let deadline = started + limits.timeout;
    let call_id = upload.call_id.to_string();
    let (kind, language) = (upload.kind, upload.language.clone());
    let audio_span = tracing::info_span!(
        "audio_analysis",
        otel.name = "call_analysis.audio",
        otel.status_code = Empty,
        sentry.op = "call_analysis.audio",
        recording.bytes = Empty,
        recording.duration_seconds = Empty,
    );
    let (response, bytes) = match tokio::time::timeout(limits.timeout, analyse_audio(peers, upload, limits.timeout))
        .instrument(audio_span.clone())
        .await
    {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            audio_span.record("otel.status_code", "ERROR");
            return Err(e);
        }
        Err(_) => return Err(UploadError::TimedOut(limits.timeout)),
    };
    let audio_seconds = started.elapsed().as_secs_f64();
    metrics::analysis_stage("audio", audio_seconds);
    let Some(analysis) = response.analysis else {
        return Err(UploadError::AudioFailed(anyhow::anyhow!("audio-processor answered without an analysis")));
    };
    audio_span.record("recording.bytes", bytes);
    audio_span.record("recording.duration_seconds", analysis.duration_seconds);
    let recording = RecordingInfo {
        content_type: kind.content_type().to_string(),
        bytes,
        duration_seconds: analysis.duration_seconds,
        sample_rate_hz: analysis.sample_rate_hz,
        codec: analysis.codec.clone(),
        channels: analysis.channels.len() as u32,
    };
    let audio = analysis::audio_from_proto(&analysis);

    let t = Instant::now();
    let transcript = transcribe(peers, &call_id, &response.speech, language.as_deref(), deadline, limits, cost)
        .instrument(tracing::info_span!(
            "transcription",
            otel.name = "call_analysis.transcription",
            sentry.op = "call_analysis.transcription",
            channels = response.speech.len(),
        ))
        .await;
    let transcription_seconds = t.elapsed().as_secs_f64();
    metrics::analysis_stage("transcription", transcription_seconds);

    let t = Instant::now();
    let sentiment = sentiment(peers, &call_id, &transcript, deadline)
        .instrument(tracing::info_span!(
            "sentiment",
            otel.name = "call_analysis.sentiment",
            sentry.op = "call_analysis.sentiment",
        ))
        .await;
    let sentiment_seconds = t.elapsed().as_secs_f64();
    metrics::analysis_stage("sentiment", sentiment_seconds);

    let timings = Timings {
        audio_seconds,
        transcription_seconds,
        sentiment_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    let trace_id = telemetry::logging::current_trace_ids().map(|(trace, _)| trace);
    Ok(Produced { results: AnalysisResults { recording, audio, sentiment, timings, trace_id }, transcript })
}

/// Streams the upload to `AnalyzeRecordingStream` while it arrives; returns the answer and the
/// number of bytes uploaded.
async fn analyse_audio(
    peers: &Peers,
    upload: Upload,
    timeout: Duration,
) -> Result<(audio_pb::AnalyzeRecordingResponse, u64), UploadError> {
    let header = audio_pb::AnalyzeRecordingRequest {
        call_id: upload.call_id.to_string(),
        format: Some(upload.kind.format()),
        audio: Vec::new(),
        vad: None,
        channel_labels: upload.channel_labels.clone(),
        include_speech_audio: true,
        skip_dtmf: false,
    };
    let (tx, rx) = mpsc::channel::<audio_pb::AnalyzeRecordingStreamRequest>(4);
    tx.send(audio_pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Header(header)) })
        .await
        .map_err(|_| UploadError::AudioUnavailable)?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.set_timeout(timeout);
    let mut client = peers.audio.clone();
    let grpc = client.analyze_recording_stream(request);
    let pump = pump(upload.head, upload.rest, upload.max_bytes, tx);
    tokio::pin!(grpc, pump);
    let mut uploaded = None;
    loop {
        tokio::select! {
            sent = &mut pump, if uploaded.is_none() => match sent {
                // Returning drops the gRPC call, which cancels it: a partial upload is never
                // analysed as if it were the whole recording.
                Err(e) => return Err(e),
                Ok(n) => uploaded = Some(n),
            },
            answer = &mut grpc => {
                let answer = answer.map_err(|s| audio_error(&s))?;
                return match uploaded {
                    Some(n) => Ok((answer.into_inner(), n)),
                    // An answer before the end of the upload can only be a refusal.
                    None => Err(UploadError::AudioFailed(anyhow::anyhow!("audio-processor answered before the upload ended"))),
                };
            }
        }
    }
}

/// Forwards the body to the gRPC stream in messages of about [`FORWARD_BYTES`], counting bytes
/// against the limit; the stream ends (and the server analyses) only when the body ended well.
async fn pump(
    head: Bytes,
    rest: Body,
    max_bytes: u64,
    tx: mpsc::Sender<audio_pb::AnalyzeRecordingStreamRequest>,
) -> Result<u64, UploadError> {
    let mut total = head.len() as u64;
    let mut pending = BytesMut::from(&head[..]);
    let mut body = rest.into_data_stream().map_err(|_| UploadError::Interrupted);
    let send = |bytes: Bytes| {
        let tx = tx.clone();
        async move {
            tx.send(audio_pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Chunk(bytes.to_vec())) })
                .await
                .map_err(|_| UploadError::AudioUnavailable)
        }
    };
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        if total > max_bytes {
            return Err(UploadError::TooLarge(max_bytes));
        }
        pending.extend_from_slice(&chunk);
        if pending.len() >= FORWARD_BYTES {
            send(pending.split().freeze()).await?;
        }
    }
    if total == 0 {
        return Err(UploadError::InvalidAudio("the recording is empty".into()));
    }
    if !pending.is_empty() {
        send(pending.freeze()).await?;
    }
    Ok(total)
}

/// The one place a `Status` from audio-processor becomes call-api's error: by code, and by the
/// structured reason where the code is ambiguous (`ResourceExhausted` is the input's fault when
/// its reason is `INPUT_TOO_LARGE`, else the service is busy). Never by the message's text.
fn audio_error(status: &tonic::Status) -> UploadError {
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            UploadError::InvalidAudio(status.message().to_string())
        }
        Code::ResourceExhausted if errors::reason(status) == Some(Reason::InputTooLarge) => {
            UploadError::InvalidAudio(status.message().to_string())
        }
        Code::Unavailable | Code::ResourceExhausted | Code::Cancelled | Code::Unknown | Code::DeadlineExceeded => {
            UploadError::AudioUnavailable
        }
        _ => UploadError::AudioFailed(anyhow::anyhow!(
            "audio-processor answered {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

/// What one chunk's transcription gave.
struct ChunkText {
    channel: usize,
    index: usize,
    response: provider_pb::TranscribeResponse,
}

/// Transcribes every channel's speech; never fails, the transcript says what happened.
async fn transcribe(
    peers: &Peers,
    call_id: &str,
    speech: &[audio_pb::ChannelSpeech],
    language: Option<&str>,
    deadline: Instant,
    limits: Limits,
    cost: &crate::pricing::CostMeter,
) -> Transcript {
    let max_samples = CHUNK_SECONDS * SPEECH_RATE as usize;
    let mut jobs = Vec::new();
    let mut chunks_by_channel = Vec::new();
    for (c, channel) in speech.iter().enumerate() {
        let samples = channel.pcm16_16khz.len() / 2;
        let chunks = analysis::chunk_speech(samples, &channel.segments, &channel.segment_sample_offsets, max_samples);
        for (i, chunk) in chunks.iter().enumerate() {
            jobs.push((c, i, chunk.range.clone()));
        }
        chunks_by_channel.push(chunks);
    }
    if jobs.is_empty() {
        return Transcript::unavailable("no speech in the recording");
    }
    if let Err(unusable) = capability_configured(peers, provider_pb::Capability::SpeechToText, deadline).await {
        return unusable.into_transcript();
    }
    let results: Vec<Result<ChunkText, tonic::Status>> = futures_util::stream::iter(jobs)
        .map(|(c, i, range)| {
            let channel = &speech[c];
            let audio = channel.pcm16_16khz[range.start * 2..range.end * 2].to_vec();
            let mut request = tonic::Request::new(provider_pb::TranscribeRequest {
                audio,
                encoding: provider_pb::AudioEncoding::Pcm16 as i32,
                sample_rate_hz: SPEECH_RATE,
                channels: 1,
                language: language.unwrap_or_default().to_string(),
                model: String::new(),
                provider: String::new(),
                call_id: call_id.to_string(),
            });
            request.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
            let mut client = peers.gateway.clone();
            let span = tracing::info_span!(
                "transcribe",
                otel.name = "call_analysis.transcribe",
                sentry.op = "call_analysis.transcribe",
                channel = channel.label.as_str(),
                chunk = i,
                audio_seconds = range.len() as f64 / f64::from(SPEECH_RATE),
            );
            // 16 kHz PCM16: what the usage is when the provider reports no duration.
            let sent_seconds = range.len() as f64 / f64::from(SPEECH_RATE);
            async move {
                let mut pending = crate::pricing::Pending::new(cost);
                let result = client.transcribe(request).await;
                pending.reported();
                let response = result?.into_inner();
                cost.speech_to_text(&response.provider, &response.model, response.duration_seconds, sent_seconds);
                Ok(ChunkText { channel: c, index: i, response })
            }
            .instrument(span)
        })
        .buffer_unordered(limits.transcribe_concurrency.max(1))
        .collect()
        .await;
    let mut texts = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(t) => texts.push(t),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "transcription failed");
                return Transcript::failed_with(&status);
            }
        }
    }
    texts.sort_by_key(|t| (t.channel, t.index));
    let mut transcript = Transcript { status: StageStatus::Done, ..Transcript::default() };
    let mut per_channel: Vec<Vec<String>> = vec![Vec::new(); speech.len()];
    for t in &texts {
        let channel = &speech[t.channel];
        let chunk = &chunks_by_channel[t.channel][t.index];
        let r = &t.response;
        let text = r.text.trim();
        if !text.is_empty() {
            per_channel[t.channel].push(text.to_string());
        }
        let label = channel.label.clone();
        if r.segments.is_empty() {
            if !text.is_empty() {
                let (start, end) = chunk.recording_span();
                transcript.segments.push(TranscriptSegment {
                    channel: channel.channel,
                    label,
                    start_seconds: start,
                    end_seconds: end,
                    text: text.to_string(),
                });
            }
        } else {
            for s in r.segments.iter().filter(|s| !s.text.trim().is_empty()) {
                transcript.segments.push(TranscriptSegment {
                    channel: channel.channel,
                    label: label.clone(),
                    start_seconds: chunk.recording_time(s.start_seconds),
                    end_seconds: chunk.recording_time(s.end_seconds),
                    text: s.text.trim().to_string(),
                });
            }
        }
        transcript.provider.get_or_insert_with(|| r.provider.clone());
        transcript.model.get_or_insert_with(|| r.model.clone());
        if !r.language.is_empty() {
            transcript.language.get_or_insert_with(|| r.language.clone());
        }
    }
    transcript.segments.sort_by(|a, b| a.start_seconds.total_cmp(&b.start_seconds).then(a.channel.cmp(&b.channel)));
    transcript.channels = speech
        .iter()
        .zip(per_channel)
        .map(|(c, parts)| ChannelTranscript { channel: c.channel, label: c.label.clone(), text: parts.join(" ") })
        .collect();
    transcript.text = Some(analysis::conversation_text(&transcript.segments, speech.len()));
    transcript
}

/// Why a capability cannot be used for this analysis.
enum Unusable {
    /// No provider is configured for it: not an error.
    NotConfigured(String),
    /// provider-gateway could not be asked.
    Failed(String),
}

impl Unusable {
    fn into_transcript(self) -> Transcript {
        match self {
            Self::NotConfigured(reason) => Transcript::unavailable(reason),
            Self::Failed(reason) => Transcript::failed(reason),
        }
    }
}

/// Asks provider-gateway whether any provider of `capability` is configured; when none is,
/// the reason names each provider and what it lacks (e.g. `OPENAI_API_KEY is not set`).
async fn capability_configured(
    peers: &Peers,
    capability: provider_pb::Capability,
    deadline: Instant,
) -> Result<(), Unusable> {
    let mut request = tonic::Request::new(provider_pb::ListProvidersRequest { capability: capability as i32 });
    request.set_timeout(
        deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), Duration::from_secs(5)),
    );
    let providers = match peers.gateway.clone().list_providers(request).await {
        Ok(r) => r.into_inner().providers,
        Err(status) => {
            tracing::warn!(code = ?status.code(), "provider-gateway could not list providers");
            return Err(Unusable::Failed(format!("provider-gateway is unavailable ({:?})", status.code())));
        }
    };
    if providers.iter().any(|p| p.configured) {
        return Ok(());
    }
    let what = match capability {
        provider_pb::Capability::SpeechToText => "speech-to-text",
        provider_pb::Capability::Sentiment => "sentiment",
        _ => "required",
    };
    let details: Vec<String> = providers
        .iter()
        .map(|p| if p.reason.is_empty() { p.name.clone() } else { format!("{}: {}", p.name, p.reason) })
        .collect();
    Err(Unusable::NotConfigured(if details.is_empty() {
        format!("no {what} provider is configured")
    } else {
        format!("no {what} provider is configured ({})", details.join("; "))
    }))
}

fn sentiment_label(label: i32) -> &'static str {
    match provider_pb::SentimentLabel::try_from(label) {
        Ok(provider_pb::SentimentLabel::Negative) => "negative",
        Ok(provider_pb::SentimentLabel::Positive) => "positive",
        _ => "neutral",
    }
}

/// Longest text of one sentiment request: under provider-gateway's 10,000-character cap on a
/// text, with room to spare.
pub const SENTIMENT_CHUNK_CHARS: usize = 8_000;
/// Sentiment requests of one analysis in flight at once.
const SENTIMENT_CONCURRENCY: usize = 4;

/// `text` in pieces of at most `max_chars` characters, cut between words (a longer word is cut
/// inside). Whitespace runs become one space.
pub fn sentiment_chunks(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for word in text.split_whitespace() {
        let mut rest = word;
        while !rest.is_empty() {
            let chars = rest.chars().count();
            let needed = chars + usize::from(current_chars > 0);
            if current_chars + needed <= max_chars {
                if current_chars > 0 {
                    current.push(' ');
                }
                current.push_str(rest);
                current_chars += needed;
                break;
            }
            if current_chars > 0 {
                out.push(std::mem::take(&mut current));
                current_chars = 0;
                continue;
            }
            let cut = rest.char_indices().nth(max_chars).map_or(rest.len(), |(i, _)| i);
            out.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
    }
    if current_chars > 0 {
        out.push(current);
    }
    out
}

/// Scores of a text's pieces as one: the mean score weighted by each piece's length, the label
/// of that score (neutral within ±0.2, the `local` provider's band) — one piece keeps its own
/// label — and the keywords of the longest pieces first, at most five, each once.
fn combine_scores(mut parts: Vec<(usize, SentimentScore)>) -> Option<SentimentScore> {
    if parts.len() <= 1 {
        return parts.pop().map(|(_, score)| score);
    }
    let total: usize = parts.iter().map(|(weight, _)| *weight).sum();
    let total = total.max(1) as f64;
    let score = parts.iter().map(|(weight, s)| *weight as f64 * s.score).sum::<f64>() / total;
    let label = if score > 0.2 {
        "positive"
    } else if score < -0.2 {
        "negative"
    } else {
        "neutral"
    };
    parts.sort_by_key(|(weight, _)| std::cmp::Reverse(*weight));
    let mut keywords: Vec<String> = Vec::new();
    for keyword in parts.iter().flat_map(|(_, s)| s.keywords.iter()) {
        if keywords.len() < 5 && !keywords.contains(keyword) {
            keywords.push(keyword.clone());
        }
    }
    Some(SentimentScore { score, label: label.to_string(), keywords })
}

/// Sentiment of the whole conversation and, with two channels, of each party. A text longer
/// than [`SENTIMENT_CHUNK_CHARS`] is scored in pieces, combined by [`combine_scores`].
async fn sentiment(peers: &Peers, call_id: &str, transcript: &Transcript, deadline: Instant) -> Sentiment {
    if transcript.status != StageStatus::Done {
        return Sentiment::unavailable("no transcript");
    }
    let overall_text = transcript.segments.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join(" ");
    if overall_text.trim().is_empty() {
        return Sentiment::unavailable("the transcript is empty");
    }
    if let Err(unusable) = capability_configured(peers, provider_pb::Capability::Sentiment, deadline).await {
        return match unusable {
            Unusable::NotConfigured(reason) => Sentiment::unavailable(reason),
            Unusable::Failed(reason) => Sentiment::failed(reason),
        };
    }
    // Target 0 is the whole conversation, target i + 1 the i-th channel.
    let mut targets = vec![None];
    let mut jobs =
        sentiment_chunks(&overall_text, SENTIMENT_CHUNK_CHARS).into_iter().map(|t| (0, t)).collect::<Vec<_>>();
    if transcript.channels.len() > 1 {
        for c in transcript.channels.iter().filter(|c| !c.text.trim().is_empty()) {
            targets.push(Some(c));
            let target = targets.len() - 1;
            jobs.extend(sentiment_chunks(&c.text, SENTIMENT_CHUNK_CHARS).into_iter().map(|t| (target, t)));
        }
    }
    let language = transcript.language.clone().unwrap_or_default();
    let answers: Vec<_> = futures_util::stream::iter(jobs)
        .map(|(target, text)| {
            let mut client = peers.gateway.clone();
            let weight = text.chars().count();
            let mut request = tonic::Request::new(provider_pb::AnalyzeSentimentRequest {
                text,
                language: language.clone(),
                provider: String::new(),
                call_id: call_id.to_string(),
            });
            request.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
            async move { (target, weight, client.analyze_sentiment(request).await) }
        })
        .buffered(SENTIMENT_CONCURRENCY)
        .collect()
        .await;
    let mut out = Sentiment { status: StageStatus::Done, ..Sentiment::default() };
    let mut parts: Vec<Vec<(usize, SentimentScore)>> = vec![Vec::new(); targets.len()];
    for (target, weight, answer) in answers {
        let r = match answer {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "sentiment analysis failed");
                return Sentiment::failed_with(&status);
            }
        };
        out.provider.get_or_insert(r.provider);
        parts[target].push((
            weight,
            SentimentScore { score: r.score, label: sentiment_label(r.label).to_string(), keywords: r.keywords },
        ));
    }
    for (target, scores) in targets.into_iter().zip(parts) {
        let Some(score) = combine_scores(scores) else { continue };
        match target {
            None => out.overall = Some(score),
            Some(c) => {
                out.channels.push(ChannelSentiment { channel: c.channel, label: c.label.clone(), sentiment: score })
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_between_words_under_the_cap() {
        let text = "word ".repeat(5_000);
        let chunks = sentiment_chunks(&text, SENTIMENT_CHUNK_CHARS);
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c.chars().count() <= SENTIMENT_CHUNK_CHARS && !c.starts_with(' ')));
        assert_eq!(chunks.join(" "), text.trim_end());
        let long_word = "é".repeat(10);
        assert_eq!(sentiment_chunks(&long_word, 4), ["éééé", "éééé", "éé"]);
        assert!(sentiment_chunks("  ", 10).is_empty());
    }

    #[test]
    fn piece_scores_combine_weighted_by_length() {
        let score = |s: f64, label: &str, k: &[&str]| SentimentScore {
            score: s,
            label: label.into(),
            keywords: k.iter().map(|k| k.to_string()).collect(),
        };
        let one = combine_scores(vec![(10, score(0.1, "positive", &["thanks"]))]).unwrap();
        assert_eq!((one.score, one.label.as_str()), (0.1, "positive"));
        let combined = combine_scores(vec![
            (100, score(-0.8, "negative", &["angry"])),
            (300, score(0.4, "positive", &["thanks"])),
        ])
        .unwrap();
        assert!((combined.score - 0.1).abs() < 1e-9, "{}", combined.score);
        assert_eq!(combined.label, "neutral");
        assert_eq!(combined.keywords, ["thanks", "angry"]);
        assert!(combine_scores(Vec::new()).is_none());
    }

    /// audio-processor's refusals are told apart by code and reason, never by their text.
    #[test]
    fn audio_refusals_by_code_and_reason_not_text() {
        let too_large = errors::status(Code::ResourceExhausted, "any words at all", Reason::InputTooLarge);
        assert!(matches!(audio_error(&too_large), UploadError::InvalidAudio(m) if m == "any words at all"));
        let busy = errors::status(Code::ResourceExhausted, "recording exceeds the limit", Reason::Busy);
        assert!(matches!(audio_error(&busy), UploadError::AudioUnavailable), "busy, whatever the text says");
        let bare = tonic::Status::resource_exhausted("recording exceeds the limit");
        assert!(matches!(audio_error(&bare), UploadError::AudioUnavailable), "no reason: retryable");
        assert!(matches!(audio_error(&tonic::Status::invalid_argument("x")), UploadError::InvalidAudio(_)));
        assert!(matches!(audio_error(&tonic::Status::internal("x")), UploadError::AudioFailed(_)));
    }

    #[test]
    fn content_types() {
        for wav in ["audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "Audio/WAV; codecs=1"] {
            assert_eq!(RecordingKind::from_content_type(wav), Some(RecordingKind::Wav), "{wav}");
        }
        assert_eq!(RecordingKind::from_content_type("audio/basic"), Some(RecordingKind::Mulaw));
        for other in ["application/json", "audio/mpeg", "text/plain", "", "audio/wavx"] {
            assert_eq!(RecordingKind::from_content_type(other), None, "{other}");
        }
    }
}
