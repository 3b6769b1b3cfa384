//! [`Gateway`]: the one entry point. It validates requests, walks the failover order of the
//! capability, and around every provider attempt applies the circuit breaker, the concurrency
//! limit, retries with backoff, timeouts and the caller's deadline, metrics and a client span.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use opentelemetry::{Array, StringValue, Value};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::ProvidersConfig;
use crate::error::ProviderError;
use crate::metrics;
use crate::providers::{Backend, CallCtx, Opened, deepgram, local, openai, simulated};
use crate::resilience::breaker::{CircuitBreaker, Ticket};
use crate::resilience::limiter::{Limiter, Slot};
use crate::resilience::retry::backoff;
use crate::types::{
    AudioFormat, AudioStream, BoxStream, Capability, ChatChunk, ChatMessage, ChatRequest, ChatStream, CircuitState,
    FinishReason, ProviderInfo, ProviderKind, Role, SentimentResult, SynthesisRequest, Transcript,
    TranscriptionRequest,
};

const MAX_AUDIO_BYTES: usize = 200 * 1024 * 1024;
const MAX_TEXT_CHARS: usize = 100_000;
/// Longest text of one captured message (`PROVIDER_CAPTURE_CONTENT`).
const CAPTURE_CHARS: usize = 4_000;
/// Captured chat input: the last this many messages.
const CAPTURE_MESSAGES: usize = 16;
/// Longest `gen_ai.conversation.id` kept.
const CONVERSATION_ID_CHARS: usize = 64;

/// What a request asks of every attempt: the model (and voice) it names, and its conversation.
#[derive(Default)]
struct Ask {
    model: Option<String>,
    voice: Option<String>,
    conversation_id: Option<String>,
}

/// The provider layer: cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    /// Set by [`Gateway::pinned`]: only this provider is tried (no failover).
    pinned: Option<ProviderKind>,
}

struct Inner {
    config: ProvidersConfig,
    backends: HashMap<ProviderKind, Arc<Backend>>,
    limiters: HashMap<ProviderKind, Limiter>,
    breakers: HashMap<(ProviderKind, Capability), Arc<CircuitBreaker>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// A successful attempt and what must live as long as its result.
struct Attempted<T> {
    value: T,
    ctx: CallCtx,
    ticket: Ticket,
    slot: Slot,
}

impl Gateway {
    /// Build the gateway: an HTTP client per remote provider, a limiter per provider and a
    /// breaker per provider × capability, for the providers that are listed and configured.
    /// Fails only if an HTTP client cannot be built.
    pub fn new(config: ProvidersConfig) -> Result<Self, ProviderError> {
        let mut backends = HashMap::new();
        let mut limiters = HashMap::new();
        let mut breakers = HashMap::new();
        for capability in Capability::ALL {
            for &kind in config.order(capability) {
                if let Err(reason) = config.availability(kind) {
                    tracing::warn!(provider = kind.as_str(), capability = capability.as_str(), %reason, "provider not configured");
                    continue;
                }
                if let std::collections::hash_map::Entry::Vacant(slot) = backends.entry(kind) {
                    let backend = match kind {
                        ProviderKind::OpenAi => Backend::OpenAi(openai::OpenAi::new(
                            config.openai.clone(),
                            crate::http::client(&config.timeouts)?,
                        )),
                        ProviderKind::Deepgram => Backend::Deepgram(deepgram::Deepgram::new(
                            config.deepgram.clone(),
                            crate::http::client(&config.timeouts)?,
                        )),
                        ProviderKind::Local => Backend::Local(local::Local::new()),
                        ProviderKind::Simulated => {
                            tracing::warn!("simulated provider enabled: for load tests and fault drills only");
                            Backend::Simulated(simulated::Simulated::new(config.simulated.clone()))
                        }
                    };
                    slot.insert(Arc::new(backend));
                    limiters.insert(kind, Limiter::new(kind.as_str(), config.max_concurrency(kind)));
                }
                breakers.insert(
                    (kind, capability),
                    CircuitBreaker::new(kind.as_str(), capability.operation(), config.circuit),
                );
            }
        }
        Ok(Self { inner: Arc::new(Inner { config, backends, limiters, breakers }), pinned: None })
    }

    /// A view of this gateway that only tries `kind` (no failover), sharing its breakers,
    /// limiters and clients: for callers that ask for one provider by name. A provider that is
    /// not configured and listed for a capability answers `NotConfigured` there.
    pub fn pinned(&self, kind: ProviderKind) -> Self {
        Self { inner: Arc::clone(&self.inner), pinned: Some(kind) }
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProvidersConfig {
        &self.inner.config
    }

    /// Every provider that offers each capability: its place in the failover order, whether
    /// it is configured (with the reason when not) and its circuit state. `simulated` appears
    /// only where it is listed.
    pub fn list_providers(&self) -> Vec<ProviderInfo> {
        let cfg = &self.inner.config;
        let mut rows = Vec::new();
        for capability in Capability::ALL {
            let order = cfg.order(capability);
            for kind in ProviderKind::ALL.into_iter().filter(|k| k.supports(capability)) {
                let position = order.iter().position(|k| *k == kind);
                if kind == ProviderKind::Simulated && position.is_none() {
                    continue;
                }
                let reason = match (position, cfg.availability(kind)) {
                    (None, _) => Some(format!("not listed in {}", order_variable(capability))),
                    (Some(_), Err(reason)) => Some(reason),
                    (Some(_), Ok(())) => None,
                };
                let circuit = self.inner.breakers.get(&(kind, capability)).map_or(CircuitState::Closed, |b| b.state());
                let model = self.inner.backends.get(&kind).and_then(|b| b.default_model(capability));
                rows.push(ProviderInfo {
                    name: kind.as_str().to_owned(),
                    capability,
                    order: position,
                    configured: reason.is_none(),
                    reason,
                    circuit,
                    model,
                });
            }
        }
        rows
    }

    /// Capabilities with at least one configured provider whose circuit is not open; for
    /// readiness and listings.
    pub fn available_capabilities(&self) -> Vec<(Capability, bool)> {
        Capability::ALL
            .into_iter()
            .map(|cap| {
                let up = self.configured_order(cap).iter().any(|kind| {
                    self.inner.breakers.get(&(*kind, cap)).is_some_and(|b| b.state() != CircuitState::Open)
                });
                (cap, up)
            })
            .collect()
    }

    fn configured_order(&self, capability: Capability) -> Vec<ProviderKind> {
        self.inner
            .config
            .order(capability)
            .iter()
            .copied()
            .filter(|k| self.inner.backends.contains_key(k) && self.pinned.is_none_or(|p| p == *k))
            .collect()
    }

    fn deadline(&self, deadline: Option<Instant>) -> Instant {
        deadline.unwrap_or_else(|| Instant::now() + self.inner.config.timeouts.default_deadline)
    }

    /// Transcribe pre-recorded audio. `deadline` bounds every attempt, backoff and failover;
    /// `None` means `PROVIDER_DEFAULT_DEADLINE_SECONDS` from now.
    pub async fn transcribe(
        &self,
        request: TranscriptionRequest,
        deadline: Option<Instant>,
    ) -> Result<Transcript, ProviderError> {
        validate_transcription(&request)?;
        let deadline = self.deadline(deadline);
        let ask = Ask { model: request.model.clone(), voice: None, conversation_id: request.conversation_id.clone() };
        let request = Arc::new(request);
        let attempted = self
            .execute(Capability::Stt, deadline, ask, move |backend, ctx| {
                let request = Arc::clone(&request);
                async move { backend.transcribe(&request, &ctx).await }
            })
            .await?;
        let Attempted { value, ctx, mut ticket, slot } = attempted;
        ctx.span.record("gen_ai.response.model", value.model.as_str());
        if ctx.capture_content {
            ctx.span.record("gen_ai.output.messages", messages_json(&[(Role::Assistant, &value.text)], None).as_str());
        }
        finish_ok(&ctx, &mut ticket);
        drop(slot);
        Ok(value)
    }

    /// Start a chat completion. Returns once the first token arrived (so a provider that
    /// fails before answering is replaced transparently); the stream then yields the rest.
    /// After the first token a failure ends the stream with an error item: a half-spoken
    /// answer cannot be switched to another provider.
    pub async fn chat(&self, request: ChatRequest, deadline: Option<Instant>) -> Result<ChatStream, ProviderError> {
        validate_chat(&request)?;
        let deadline = self.deadline(deadline);
        let ask = Ask { model: request.model.clone(), voice: None, conversation_id: request.conversation_id.clone() };
        let request = Arc::new(request);
        let attempted = self
            .execute(Capability::Llm, deadline, ask, move |backend, ctx| {
                let request = Arc::clone(&request);
                async move {
                    if ctx.capture_content {
                        ctx.span.record("gen_ai.input.messages", chat_input_json(&request.messages).as_str());
                    }
                    let opened = backend.chat(&request, &ctx).await?;
                    open_stream(opened, &ctx).await
                }
            })
            .await?;
        let provider = attempted.ctx.provider;
        let model = attempted.value.0.clone();
        let capture = attempted.ctx.capture_content;
        let mut completion = String::new();
        let mut first = true;
        let observe = move |chunk: &ChatChunk, ctx: &CallCtx| {
            if std::mem::take(&mut first) {
                // The model the server named, else the one asked for.
                ctx.span.record("gen_ai.response.model", chunk.model.as_deref().unwrap_or(&model));
            }
            if capture && completion.chars().count() < CAPTURE_CHARS {
                completion.push_str(&chunk.delta);
            }
            if let Some(reason) = &chunk.finish_reason {
                // A string array, as the conventions define it (the `tracing` fields cannot
                // carry one, so it goes straight to the OpenTelemetry span).
                let reasons = Array::String(vec![StringValue::from(reason.as_str().to_owned())]);
                ctx.span.set_attribute("gen_ai.response.finish_reasons", Value::Array(reasons));
                if capture {
                    let output = messages_json(&[(Role::Assistant, &completion)], Some(reason));
                    ctx.span.record("gen_ai.output.messages", output.as_str());
                }
            }
            if let Some(usage) = chunk.usage {
                ctx.span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
                ctx.span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
                ctx.span.record("response_tokens", usage.completion_tokens);
                metrics::tokens(ctx.provider, &model, usage.prompt_tokens, usage.completion_tokens);
                metrics::gen_ai_tokens(&ctx.gen_ai, usage.prompt_tokens, usage.completion_tokens);
            }
        };
        let model = attempted.value.0.clone();
        Ok(ChatStream { provider, model, inner: guard(attempted, observe) })
    }

    /// Synthesise speech. Returns once the first audio arrived; see [`Gateway::chat`] for
    /// the stream's rules. The audio is raw mono in exactly the requested encoding and rate.
    pub async fn synthesize(
        &self,
        request: SynthesisRequest,
        deadline: Option<Instant>,
    ) -> Result<AudioStream, ProviderError> {
        validate_synthesis(&request)?;
        let deadline = self.deadline(deadline);
        let format = AudioFormat { encoding: request.encoding, sample_rate: request.sample_rate, channels: 1 };
        let ask = Ask {
            model: request.model.clone(),
            voice: request.voice.clone(),
            conversation_id: request.conversation_id.clone(),
        };
        let request = Arc::new(request);
        let attempted = self
            .execute(Capability::Tts, deadline, ask, move |backend, ctx| {
                let request = Arc::clone(&request);
                async move {
                    if ctx.capture_content {
                        let input = messages_json(&[(Role::User, &request.text)], None);
                        ctx.span.record("gen_ai.input.messages", input.as_str());
                    }
                    let opened = backend.synthesize(&request, &ctx).await?;
                    open_stream(opened, &ctx).await
                }
            })
            .await?;
        let provider = attempted.ctx.provider;
        let model = attempted.value.0.clone();
        attempted.ctx.span.record("gen_ai.response.model", model.as_str());
        Ok(AudioStream { provider, model, format, inner: guard(attempted, |_: &Bytes, _: &CallCtx| {}) })
    }

    /// Score the sentiment of a text (empty text is neutral).
    pub async fn sentiment(&self, text: &str, deadline: Option<Instant>) -> Result<SentimentResult, ProviderError> {
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(ProviderError::InvalidArgument(format!("text exceeds {MAX_TEXT_CHARS} characters")));
        }
        let deadline = self.deadline(deadline);
        let text: Arc<str> = Arc::from(text);
        let attempted = self
            .execute(Capability::Sentiment, deadline, Ask::default(), move |backend, ctx| {
                let text = Arc::clone(&text);
                async move {
                    if ctx.capture_content {
                        ctx.span.record("gen_ai.input.messages", messages_json(&[(Role::User, &text)], None).as_str());
                    }
                    backend.sentiment(&text, &ctx).await
                }
            })
            .await?;
        let Attempted { value, ctx, mut ticket, slot } = attempted;
        ctx.span.record("gen_ai.response.model", ctx.model.as_str());
        finish_ok(&ctx, &mut ticket);
        drop(slot);
        Ok(value)
    }

    /// Walk the failover order until one provider succeeds.
    async fn execute<T, F, Fut>(
        &self,
        capability: Capability,
        deadline: Instant,
        ask: Ask,
        mut call: F,
    ) -> Result<Attempted<T>, ProviderError>
    where
        F: FnMut(Arc<Backend>, CallCtx) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let operation = capability.operation();
        let order = self.configured_order(capability);
        if order.is_empty() {
            return Err(ProviderError::NotConfigured(capability));
        }
        let cfg = &self.inner.config;
        let conversation = ask.conversation_id.as_deref().map(conversation_id);
        let mut last_error = None;
        let mut previous: Option<ProviderKind> = None;
        for kind in order {
            let provider = kind.as_str();
            if let Some(from) = previous {
                metrics::failover(operation, from.as_str(), provider);
                tracing::info!(operation, from = from.as_str(), to = provider, "failing over");
            }
            previous = Some(kind);
            let (Some(backend), Some(limiter), Some(breaker)) = (
                self.inner.backends.get(&kind),
                self.inner.limiters.get(&kind),
                self.inner.breakers.get(&(kind, capability)),
            ) else {
                continue;
            };
            let slot = match limiter.try_acquire() {
                Ok(slot) => slot,
                Err(e) => {
                    metrics::request(provider, operation, e.outcome());
                    tracing::warn!(provider, operation, "provider at its concurrency limit");
                    last_error = Some(e);
                    continue;
                }
            };
            let model = backend.model_for(capability, ask.model.as_deref(), ask.voice.as_deref());
            let configured = backend.default_model(capability);
            let gen_ai = metrics::GenAiLabels::new(
                capability.gen_ai_operation(),
                kind.gen_ai_name(),
                &model,
                configured.as_deref(),
            );
            let mut attempt: u32 = 0;
            loop {
                if Instant::now() >= deadline {
                    return Err(ProviderError::DeadlineExceeded);
                }
                let Some(mut ticket) = breaker.try_acquire() else {
                    metrics::request(provider, operation, "circuit_open");
                    last_error = Some(ProviderError::CircuitOpen { provider, capability });
                    break;
                };
                let span = client_span(kind, capability, attempt, &model, conversation.as_deref());
                let ctx = CallCtx {
                    provider,
                    operation,
                    capability,
                    model: model.clone(),
                    gen_ai: gen_ai.clone(),
                    deadline,
                    started: Instant::now(),
                    timeouts: cfg.timeouts,
                    span: span.clone(),
                    capture_content: cfg.capture_content,
                };
                let outcome = tokio::time::timeout_at(deadline, call(Arc::clone(backend), ctx.clone()))
                    .instrument(span)
                    .await
                    .unwrap_or(Err(ProviderError::DeadlineExceeded));
                let error = match outcome {
                    Ok(value) => return Ok(Attempted { value, ctx, ticket, slot }),
                    Err(error) => error,
                };
                record_failure(&ctx, &error, attempt);
                if error.counts_against_circuit() {
                    ticket.failure();
                }
                drop(ticket);
                if !error.allows_failover() {
                    return Err(error);
                }
                let wait = (error.is_retryable() && attempt < cfg.retry.max_retries)
                    .then(|| backoff(&cfg.retry, attempt, error.retry_after()))
                    .flatten();
                match wait {
                    Some(wait) if Instant::now() + wait < deadline => {
                        tracing::info!(provider, operation, attempt, wait_ms = wait.as_millis() as u64, "retrying");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    _ => {
                        last_error = Some(error);
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or(ProviderError::NotConfigured(capability)))
    }
}

fn order_variable(capability: Capability) -> &'static str {
    match capability {
        Capability::Stt => "STT_PROVIDERS",
        Capability::Llm => "LLM_PROVIDERS",
        Capability::Tts => "TTS_PROVIDERS",
        Capability::Sentiment => "SENTIMENT_PROVIDERS",
    }
}

/// A conversation id as a span attribute: printable, at most 64 characters.
fn conversation_id(id: &str) -> String {
    id.chars().filter(|c| !c.is_control()).take(CONVERSATION_ID_CHARS).collect()
}

/// One attempt's client span, named and attributed after the OpenTelemetry GenAI semantic
/// conventions (`metrics::SEMCONV_VERSION`): `{gen_ai.operation.name} {gen_ai.request.model}`.
/// `gen_ai.response.finish_reasons` (a string array) is set on the OpenTelemetry span directly.
fn client_span(
    kind: ProviderKind,
    capability: Capability,
    attempt: u32,
    model: &str,
    conversation: Option<&str>,
) -> Span {
    let gen_ai_operation = capability.gen_ai_operation();
    tracing::info_span!(
        "provider_call",
        otel.name = %format_args!("{gen_ai_operation} {model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        provider = kind.as_str(),
        operation = capability.operation(),
        retry.attempt = attempt,
        gen_ai.operation.name = gen_ai_operation,
        gen_ai.provider.name = kind.gen_ai_name(),
        gen_ai.request.model = model,
        gen_ai.response.model = Empty,
        gen_ai.conversation.id = conversation,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        response_tokens = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        http.request.method = Empty,
        http.response.status_code = Empty,
        server.address = Empty,
        server.port = Empty,
        error.type = Empty,
    )
}

fn record_failure(ctx: &CallCtx, error: &ProviderError, attempt: u32) {
    metrics::request(ctx.provider, ctx.operation, error.outcome());
    metrics::duration(ctx.provider, ctx.operation, ctx.started.elapsed());
    metrics::gen_ai_duration(&ctx.gen_ai, ctx.started.elapsed(), Some(error.outcome()));
    ctx.span.record("otel.status_code", "ERROR");
    ctx.span.record("error.type", error.outcome());
    tracing::warn!(
        parent: &ctx.span,
        provider = ctx.provider,
        operation = ctx.operation,
        attempt,
        code = error.code().as_str(),
        outcome = error.outcome(),
        error = %error,
        "provider call failed"
    );
}

fn finish_ok(ctx: &CallCtx, ticket: &mut Ticket) {
    ticket.success();
    metrics::request(ctx.provider, ctx.operation, "success");
    metrics::duration(ctx.provider, ctx.operation, ctx.started.elapsed());
    metrics::gen_ai_duration(&ctx.gen_ai, ctx.started.elapsed(), None);
    ctx.span.record("otel.status_code", "OK");
}

/// Wait for the first item of a fresh stream (within the first-byte timeout): until then a
/// failure is still the provider's, and the next one can take over.
async fn open_stream<T: Send + 'static>(
    opened: Opened<T>,
    ctx: &CallCtx,
) -> Result<(String, T, BoxStream<T>), ProviderError> {
    let Opened { model, mut stream } = opened;
    let limit = (ctx.started + ctx.timeouts.first_byte).min(ctx.deadline);
    match tokio::time::timeout_at(limit, stream.next()).await {
        Err(_) if Instant::now() >= ctx.deadline => Err(ProviderError::DeadlineExceeded),
        Err(_) => Err(ProviderError::FirstByteTimeout { provider: ctx.provider, timeout: ctx.timeouts.first_byte }),
        Ok(None) => {
            Err(ProviderError::Malformed { provider: ctx.provider, detail: "stream ended before any data".into() })
        }
        Ok(Some(Err(e))) => Err(e),
        Ok(Some(Ok(first))) => {
            ctx.mark_first_byte();
            Ok((model, first, stream))
        }
    }
}

/// Settles the attempt's metrics, breaker and span exactly once, even when the caller drops
/// the stream midway (outcome `cancelled`).
struct Finisher {
    ctx: CallCtx,
    ticket: Ticket,
    _slot: Slot,
    settled: bool,
}

impl Finisher {
    fn settle(&mut self, result: Result<(), &ProviderError>) {
        if self.settled {
            return;
        }
        self.settled = true;
        match result {
            Ok(()) => {
                metrics::request(self.ctx.provider, self.ctx.operation, "success");
                metrics::duration(self.ctx.provider, self.ctx.operation, self.ctx.started.elapsed());
                metrics::gen_ai_duration(&self.ctx.gen_ai, self.ctx.started.elapsed(), None);
                self.ctx.span.record("otel.status_code", "OK");
            }
            Err(error) => {
                record_failure(&self.ctx, error, 0);
                if error.counts_against_circuit() {
                    self.ticket.late_failure();
                }
            }
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            metrics::request(self.ctx.provider, self.ctx.operation, "cancelled");
            metrics::duration(self.ctx.provider, self.ctx.operation, self.ctx.started.elapsed());
            metrics::gen_ai_duration(&self.ctx.gen_ai, self.ctx.started.elapsed(), Some("cancelled"));
        }
    }
}

struct Guarded<T, O> {
    first: Option<T>,
    inner: BoxStream<T>,
    finisher: Finisher,
    observe: O,
    done: bool,
}

/// Wrap an opened stream: idle timeout between items, the deadline over all of it, metrics
/// and the span settled at its end, the concurrency slot held until then.
fn guard<T, O>(attempted: Attempted<(String, T, BoxStream<T>)>, observe: O) -> BoxStream<T>
where
    T: Send + 'static,
    O: FnMut(&T, &CallCtx) + Send + 'static,
{
    let Attempted { value: (_model, first, inner), ctx, mut ticket, slot } = attempted;
    // The stream started: that is the provider doing its job (and closes a half-open circuit).
    ticket.success();
    let state = Guarded {
        first: Some(first),
        inner,
        finisher: Finisher { ctx, ticket, _slot: slot, settled: false },
        observe,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let item = match st.first.take() {
            Some(first) => Some(Ok(first)),
            None => {
                let ctx = &st.finisher.ctx;
                let idle = ctx.timeouts.idle;
                let limit = (Instant::now() + idle).min(ctx.deadline);
                match tokio::time::timeout_at(limit, st.inner.next()).await {
                    Err(_) if Instant::now() >= ctx.deadline => Some(Err(ProviderError::DeadlineExceeded)),
                    Err(_) => Some(Err(ProviderError::Stalled { provider: ctx.provider, timeout: idle })),
                    Ok(item) => item,
                }
            }
        };
        match item {
            Some(Ok(value)) => {
                (st.observe)(&value, &st.finisher.ctx);
                Some((Ok(value), st))
            }
            Some(Err(error)) => {
                st.done = true;
                st.finisher.settle(Err(&error));
                Some((Err(error), st))
            }
            None => {
                st.finisher.settle(Ok(()));
                None
            }
        }
    }))
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Messages as the conventions' `gen_ai.input.messages` / `gen_ai.output.messages` JSON:
/// `[{"role": …, "parts": [{"type": "text", "content": …}], "finish_reason"?: …}]`, each text
/// cut to `CAPTURE_CHARS` characters. Only with `PROVIDER_CAPTURE_CONTENT=true`.
fn messages_json(messages: &[(Role, &str)], finish_reason: Option<&FinishReason>) -> String {
    let list: Vec<serde_json::Value> = messages
        .iter()
        .map(|(role, text)| {
            let mut message = serde_json::json!({
                "role": role.as_str(),
                "parts": [{"type": "text", "content": truncate(text, CAPTURE_CHARS)}],
            });
            if let Some(reason) = finish_reason {
                message["finish_reason"] = serde_json::Value::from(reason.as_str());
            }
            message
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// The last `CAPTURE_MESSAGES` messages of a chat request, as `gen_ai.input.messages`.
fn chat_input_json(messages: &[ChatMessage]) -> String {
    let from = messages.len().saturating_sub(CAPTURE_MESSAGES);
    let list: Vec<(Role, &str)> = messages[from..].iter().map(|m| (m.role, m.content.as_str())).collect();
    messages_json(&list, None)
}

fn validate_transcription(r: &TranscriptionRequest) -> Result<(), ProviderError> {
    if r.audio.is_empty() {
        return Err(ProviderError::InvalidArgument("audio is empty".into()));
    }
    if r.audio.len() > MAX_AUDIO_BYTES {
        return Err(ProviderError::InvalidArgument(format!("audio exceeds {MAX_AUDIO_BYTES} bytes")));
    }
    if r.encoding.is_raw() {
        if !(1_000..=192_000).contains(&r.sample_rate) {
            return Err(ProviderError::InvalidArgument("sample_rate must be 1000..=192000 for raw audio".into()));
        }
        if !(1..=8).contains(&r.channels) {
            return Err(ProviderError::InvalidArgument("channels must be 1..=8 for raw audio".into()));
        }
    }
    if let Some(lang) = &r.language
        && (lang.is_empty()
            || lang.len() > 16
            || !lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(ProviderError::InvalidArgument("language must be a BCP-47 tag such as `en` or `en-US`".into()));
    }
    validate_model(r.model.as_deref())
}

fn validate_model(model: Option<&str>) -> Result<(), ProviderError> {
    match model {
        Some(m) if m.is_empty() || m.len() > 128 || m.chars().any(|c| c.is_control() || c.is_whitespace()) => {
            Err(ProviderError::InvalidArgument("model must be 1..=128 printable characters without spaces".into()))
        }
        _ => Ok(()),
    }
}

fn validate_chat(r: &ChatRequest) -> Result<(), ProviderError> {
    if r.messages.is_empty() {
        return Err(ProviderError::InvalidArgument("at least one message is required".into()));
    }
    let total: usize = r.messages.iter().map(|m| m.content.len()).sum();
    if total > 4 * 1024 * 1024 {
        return Err(ProviderError::InvalidArgument("messages exceed 4 MiB".into()));
    }
    if r.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ProviderError::InvalidArgument("temperature must be between 0 and 2".into()));
    }
    if r.max_tokens == Some(0) {
        return Err(ProviderError::InvalidArgument("max_tokens must be positive".into()));
    }
    validate_model(r.model.as_deref())
}

fn validate_synthesis(r: &SynthesisRequest) -> Result<(), ProviderError> {
    if r.text.trim().is_empty() {
        return Err(ProviderError::InvalidArgument("text is empty".into()));
    }
    if r.text.chars().count() > MAX_TEXT_CHARS {
        return Err(ProviderError::InvalidArgument(format!("text exceeds {MAX_TEXT_CHARS} characters")));
    }
    if !(8_000..=48_000).contains(&r.sample_rate) {
        return Err(ProviderError::InvalidArgument("sample_rate must be 8000..=48000".into()));
    }
    if let Some(v) = &r.voice {
        validate_model(Some(v))?;
    }
    validate_model(r.model.as_deref())
}

/// Duration helper for callers converting a gRPC timeout.
pub fn deadline_in(timeout: Duration) -> Instant {
    Instant::now() + timeout
}
