//! The providers themselves, one module each, dispatched through [`Backend`].
//!
//! A provider only speaks its wire format: the gateway around it owns deadlines (beyond the
//! response head), retries, circuit breakers, failover, concurrency limits and metrics.

pub(crate) mod deepgram;
pub(crate) mod local;
pub(crate) mod openai;
pub(crate) mod simulated;

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Span;

use crate::config::Timeouts;
use crate::error::ProviderError;
use crate::types::{
    BoxStream, ChatChunk, ChatRequest, SentimentResult, SynthesisRequest, Transcript, TranscriptionRequest,
};

/// What one attempt needs to know.
#[derive(Debug, Clone)]
pub(crate) struct CallCtx {
    pub provider: &'static str,
    pub operation: &'static str,
    pub capability: crate::Capability,
    /// The model this attempt asks for ([`Backend::model_for`]).
    pub model: String,
    /// The `gen_ai_*` metric labels.
    pub gen_ai: crate::metrics::GenAiLabels,
    pub deadline: Instant,
    pub started: Instant,
    pub timeouts: Timeouts,
    pub span: Span,
    pub capture_content: bool,
}

impl CallCtx {
    pub(crate) fn idle_timeout(&self) -> Duration {
        self.timeouts.idle
    }

    /// Record the time to first byte (response head for unary calls; for streams, the first
    /// item, which is also the GenAI time to first chunk).
    pub(crate) fn mark_first_byte(&self) {
        let elapsed = self.started.elapsed();
        crate::metrics::ttfb(self.provider, self.operation, elapsed);
        if self.capability.is_streaming() {
            crate::metrics::gen_ai_first_chunk(&self.gen_ai, elapsed);
        }
    }
}

/// An opened stream: the model serving it and its items.
pub(crate) struct Opened<T> {
    pub model: String,
    pub stream: BoxStream<T>,
}

/// The providers, as one enum: a closed set, so no trait objects are needed.
pub(crate) enum Backend {
    OpenAi(openai::OpenAi),
    Deepgram(deepgram::Deepgram),
    Local(local::Local),
    Simulated(simulated::Simulated),
}

fn unsupported(provider: &'static str, what: &str) -> ProviderError {
    ProviderError::Internal(format!("{provider} does not offer {what}"))
}

impl Backend {
    pub(crate) fn default_model(&self, capability: crate::Capability) -> Option<String> {
        use crate::Capability::*;
        match (self, capability) {
            (Self::OpenAi(p), Stt) => Some(p.config.stt_model.clone()),
            (Self::OpenAi(p), Llm) => Some(p.config.chat_model.clone()),
            (Self::OpenAi(p), Tts) => Some(p.config.tts_model.clone()),
            (Self::Deepgram(p), Stt) => Some(p.config.stt_model.clone()),
            (Self::Deepgram(p), Tts) => Some(p.config.tts_model.clone()),
            (Self::Local(_), Sentiment) => Some(local::MODEL.to_owned()),
            (Self::Simulated(_), _) => Some(simulated::MODEL.to_owned()),
            _ => None,
        }
    }

    /// The model an attempt uses: the request's, else the configured one. For Deepgram speech
    /// the voice is the model, so a voice named in the request wins; `local` and `simulated`
    /// have one model each.
    pub(crate) fn model_for(&self, capability: crate::Capability, model: Option<&str>, voice: Option<&str>) -> String {
        let asked = match (self, capability) {
            (Self::Deepgram(_), crate::Capability::Tts) => voice.or(model),
            (Self::Local(_) | Self::Simulated(_), _) => None,
            _ => model,
        };
        asked.map(str::to_owned).or_else(|| self.default_model(capability)).unwrap_or_default()
    }

    pub(crate) async fn transcribe(
        &self,
        req: &TranscriptionRequest,
        ctx: &CallCtx,
    ) -> Result<Transcript, ProviderError> {
        match self {
            Self::OpenAi(p) => p.transcribe(req, ctx).await,
            Self::Deepgram(p) => p.transcribe(req, ctx).await,
            Self::Simulated(p) => p.transcribe(req, ctx).await,
            Self::Local(_) => Err(unsupported(ctx.provider, "transcription")),
        }
    }

    pub(crate) async fn chat(&self, req: &ChatRequest, ctx: &CallCtx) -> Result<Opened<ChatChunk>, ProviderError> {
        match self {
            Self::OpenAi(p) => p.chat(req, ctx).await,
            Self::Simulated(p) => p.chat(req, ctx).await,
            Self::Deepgram(_) | Self::Local(_) => Err(unsupported(ctx.provider, "chat")),
        }
    }

    pub(crate) async fn synthesize(
        &self,
        req: &SynthesisRequest,
        ctx: &CallCtx,
    ) -> Result<Opened<Bytes>, ProviderError> {
        match self {
            Self::OpenAi(p) => p.synthesize(req, ctx).await,
            Self::Deepgram(p) => p.synthesize(req, ctx).await,
            Self::Simulated(p) => p.synthesize(req, ctx).await,
            Self::Local(_) => Err(unsupported(ctx.provider, "speech synthesis")),
        }
    }

    pub(crate) async fn sentiment(&self, text: &str, ctx: &CallCtx) -> Result<SentimentResult, ProviderError> {
        match self {
            Self::Local(p) => Ok(p.analyze(text)),
            Self::Simulated(p) => p.sentiment(text, ctx).await,
            Self::OpenAi(_) | Self::Deepgram(_) => Err(unsupported(ctx.provider, "sentiment")),
        }
    }
}
