//! The `kraliki.audio.v1.AudioProcessor` gRPC service.
//!
//! - `AnalyzeRecording` / `AnalyzeRecordingStream`: checked, then decoded and analysed on a
//!   blocking thread under a concurrency permit (`AUDIO_MAX_CONCURRENT_ANALYSES`; none free →
//!   `ResourceExhausted`, never a queue). The streamed form takes its permit when the header
//!   arrives, so uploads in memory are bounded too, and enforces the byte limit chunk by chunk.
//! - `StreamAudio`: a permit of `AUDIO_MAX_STREAMS`, the config message, then a task per
//!   stream (`stream.rs`). `StreamAudioCalls`: one task per shared stream runs its legs
//!   (`legs.rs`), each leg holding a permit of the same `AUDIO_MAX_STREAMS`.
//!
//! Deadlines (`grpc-timeout`, else `AUDIO_ANALYSIS_TIMEOUT_SECONDS`) bound the whole call; a
//! live stream is long-lived and has an idle bound instead (`AUDIO_STREAM_IDLE_TIMEOUT_SECONDS`:
//! no message for that long ends it). An analysis that outlives its caller's
//! deadline still finishes on its thread (it cannot be interrupted) and keeps its permit
//! until then, so the bound on CPU holds.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use audio_dsp::{Limits, LiveStream};
use futures_util::Stream;
use kraliki_proto::audio::v1::{
    AnalyzeRecordingRequest, AnalyzeRecordingResponse, AnalyzeRecordingStreamRequest, StreamAudioCallsRequest,
    StreamAudioCallsResponse, StreamAudioRequest, StreamAudioResponse, StreamConfig, analyze_recording_stream_request,
    audio_processor_server::AudioProcessor, stream_audio_request::Payload,
};
use kraliki_proto::errors::{self, Reason};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{
    Config, convert, recording,
    stream::{Live, StreamTask},
};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Bytes a recording request may carry besides its audio (format, labels, call id).
pub(crate) const HEADER_SLACK: usize = 64 * 1024;

/// The audio processor's gRPC front.
#[derive(Clone)]
pub struct Processor {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    max_concurrent_analyses: usize,
    analyses: Arc<Semaphore>,
    max_streams: usize,
    streams: Arc<Semaphore>,
    stats_interval: Duration,
    config_timeout: Duration,
    analysis_timeout: Duration,
    idle_timeout: Duration,
    stopping: CancellationToken,
}

impl Processor {
    /// A processor with `config`'s limits; live streams end when `stopping` is cancelled.
    pub fn new(config: &Config, stopping: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits: Limits {
                    max_bytes: config.max_recording_bytes as u64,
                    max_seconds: config.max_recording_seconds,
                    max_channels: 2,
                },
                max_concurrent_analyses: config.max_concurrent_analyses,
                analyses: Arc::new(Semaphore::new(config.max_concurrent_analyses)),
                max_streams: config.max_streams,
                streams: Arc::new(Semaphore::new(config.max_streams)),
                stats_interval: config.stream_stats_interval,
                config_timeout: config.stream_config_timeout,
                analysis_timeout: config.analysis_timeout,
                idle_timeout: config.stream_idle_timeout,
                stopping,
            }),
        }
    }

    fn analysis_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.inner.analyses.clone().try_acquire_owned().map_err(|_| {
            errors::status(
                Code::ResourceExhausted,
                format!("all {} analysis slots are busy; retry later", self.inner.max_concurrent_analyses),
                Reason::Busy,
            )
        })
    }

    fn too_large(&self, bytes: usize) -> Status {
        errors::status(
            Code::ResourceExhausted,
            format!("recording of at least {bytes} bytes exceeds the limit of {} bytes", self.inner.limits.max_bytes),
            Reason::InputTooLarge,
        )
    }

    /// Analyses `audio` on a blocking thread; the permit is released when the work ends.
    async fn analyze(
        &self,
        params: convert::RecordingParams,
        audio: Vec<u8>,
        permit: OwnedSemaphorePermit,
    ) -> Result<AnalyzeRecordingResponse, Status> {
        if audio.len() as u64 > self.inner.limits.max_bytes {
            return Err(self.too_large(audio.len()));
        }
        let limits = self.inner.limits;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(|| recording::analyze(&params, audio, &limits))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "analysis task failed");
            Status::internal("internal error while analysing the recording")
        })?
    }

    async fn upload_and_analyze(
        &self,
        mut inbound: Streaming<AnalyzeRecordingStreamRequest>,
    ) -> Result<AnalyzeRecordingResponse, Status> {
        use analyze_recording_stream_request::Payload as P;
        let header = match inbound.message().await.map_err(|s| self.transport(s))? {
            Some(AnalyzeRecordingStreamRequest { payload: Some(P::Header(h)) }) => h,
            Some(_) => return Err(Status::invalid_argument("the first message must be the header")),
            None => return Err(Status::invalid_argument("empty stream: the first message must be the header")),
        };
        let params = convert::recording_params(&header)?;
        let permit = self.analysis_permit()?;
        let max = self.inner.limits.max_bytes as usize;
        let mut audio = header.audio;
        if audio.len() > max {
            return Err(self.too_large(audio.len()));
        }
        while let Some(message) = inbound.message().await.map_err(|s| self.transport(s))? {
            match message.payload {
                Some(P::Chunk(chunk)) => {
                    let len = audio.len() + chunk.len();
                    if len > max {
                        return Err(self.too_large(len));
                    }
                    if len > audio.capacity() {
                        // Grow geometrically, but never past the limit.
                        audio.reserve_exact((len.saturating_mul(2)).min(max) - audio.len());
                    }
                    audio.extend_from_slice(&chunk);
                }
                Some(P::Header(_)) => return Err(Status::invalid_argument("the header may only be sent once, first")),
                None => return Err(Status::invalid_argument("message carries neither header nor chunk")),
            }
        }
        self.analyze(params, audio, permit).await
    }

    /// A failed read of the client's stream: a message over the size limit is
    /// `ResourceExhausted`; anything else (cancelled, broken) passes through.
    fn transport(&self, status: Status) -> Status {
        if status.code() == tonic::Code::OutOfRange {
            return errors::status(
                Code::ResourceExhausted,
                format!("message exceeds the limit of {} bytes", self.inner.limits.max_bytes as usize + HEADER_SLACK),
                Reason::InputTooLarge,
            );
        }
        status
    }
}

async fn with_deadline<T>(
    deadline: Option<Duration>,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        Some(d) => tokio::time::timeout(d, work)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline exceeded before the analysis finished"))),
        None => work.await,
    }
}

#[tonic::async_trait]
impl AudioProcessor for Processor {
    async fn analyze_recording(
        &self,
        request: Request<AnalyzeRecordingRequest>,
    ) -> Result<Response<AnalyzeRecordingResponse>, Status> {
        let deadline = telemetry::grpc::deadline_of(&request).or(Some(self.inner.analysis_timeout));
        let mut req = request.into_inner();
        let params = convert::recording_params(&req)?;
        let permit = self.analysis_permit()?;
        let audio = std::mem::take(&mut req.audio);
        with_deadline(deadline, self.analyze(params, audio, permit)).await.map(Response::new)
    }

    async fn analyze_recording_stream(
        &self,
        request: Request<Streaming<AnalyzeRecordingStreamRequest>>,
    ) -> Result<Response<AnalyzeRecordingResponse>, Status> {
        // A caller without a deadline gets the configured one: an upload that stops sending
        // (or never sends past its header) cannot hold an analysis permit for ever.
        let deadline = telemetry::grpc::deadline_of(&request).or(Some(self.inner.analysis_timeout));
        with_deadline(deadline, self.upload_and_analyze(request.into_inner())).await.map(Response::new)
    }

    type StreamAudioStream = ResponseStream<StreamAudioResponse>;

    async fn stream_audio(
        &self,
        request: Request<Streaming<StreamAudioRequest>>,
    ) -> Result<Response<Self::StreamAudioStream>, Status> {
        let deadline = telemetry::grpc::deadline_of(&request).map(|d| tokio::time::Instant::now() + d);
        let permit = self.stream_permit()?;
        let mut inbound = request.into_inner();
        let first = tokio::select! {
            () = self.inner.stopping.cancelled() => return Err(Status::unavailable("server is shutting down")),
            m = tokio::time::timeout(self.inner.config_timeout, inbound.message()) => m,
        };
        let config = match first {
            Err(_) => return Err(Status::deadline_exceeded("no config message within the configuration timeout")),
            Ok(Err(status)) => return Err(self.transport(status)),
            Ok(Ok(Some(StreamAudioRequest { payload: Some(Payload::Config(c)) }))) => c,
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first message of a stream must be its config")),
        };
        let live = self.live_stream(&config, permit, None, "stream")?;
        let (tx, rx) = mpsc::channel(crate::stream::EVENT_BUFFER);
        let task = StreamTask {
            live,
            inbound: Box::new(inbound),
            tx,
            // A child per stream: the task polls it at every message, and a token's poll takes
            // its lock, which every stream would otherwise share across threads.
            stopping: self.inner.stopping.child_token(),
            deadline,
            idle_timeout: self.inner.idle_timeout,
        };
        tokio::spawn(task.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type StreamAudioCallsStream = ResponseStream<StreamAudioCallsResponse>;

    async fn stream_audio_calls(
        &self,
        request: Request<Streaming<StreamAudioCallsRequest>>,
    ) -> Result<Response<Self::StreamAudioCallsStream>, Status> {
        if self.inner.stopping.is_cancelled() {
            return Err(Status::unavailable("server is shutting down"));
        }
        let deadline = telemetry::grpc::deadline_of(&request).map(|d| tokio::time::Instant::now() + d);
        Ok(Response::new(crate::legs::serve(self.clone(), request.into_inner(), deadline)))
    }
}

impl Processor {
    /// A stream slot (`AUDIO_MAX_STREAMS`), or `ResourceExhausted` with reason `BUSY`.
    pub(crate) fn stream_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.inner.streams.clone().try_acquire_owned().map_err(|_| {
            errors::status(
                Code::ResourceExhausted,
                format!("all {} live stream slots are busy; retry later", self.inner.max_streams),
                Reason::Busy,
            )
        })
    }

    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.inner.stopping
    }

    /// No message for this long ends a live stream or leg (`DeadlineExceeded`).
    pub(crate) fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    /// The state of one live stream whose config has arrived, holding `permit`. `traceparent`:
    /// the leg's trace context on a shared stream (a `StreamAudio` stream's comes with its
    /// request); `via` labels `audio_streams_opened_total` (`stream` or `leg`).
    pub(crate) fn live_stream(
        &self,
        config: &StreamConfig,
        permit: OwnedSemaphorePermit,
        traceparent: Option<&str>,
        via: &'static str,
    ) -> Result<Live, Status> {
        let dsp_config = convert::stream_config(config)?;
        let speech_audio_part_bytes = convert::speech_audio_part_bytes(config)?;
        let live = LiveStream::new(dsp_config).map_err(|e| convert::dsp_status(&e))?;
        let span = tracing::info_span!(
            "audio.stream",
            call_id = %config.call_id,
            codec = dsp_config.encoding.as_str(),
            sample_rate = dsp_config.sample_rate,
            vad = dsp_config.vad.kind.as_str(),
            frames = tracing::field::Empty,
            utterances = tracing::field::Empty,
            media_seconds = tracing::field::Empty,
        );
        if let Some(traceparent) = traceparent.filter(|t| !t.is_empty())
            && let Ok(value) = http::HeaderValue::from_str(traceparent)
        {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", value);
            telemetry::otel::set_parent_from_headers(&span, &headers);
        }
        crate::metrics::stream_opened(via);
        Ok(Live::new(live, self.inner.stats_interval, speech_audio_part_bytes, span, permit))
    }
}

pub use telemetry::grpc::OversizeIsResourceExhausted;
