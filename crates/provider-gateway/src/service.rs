//! The `kraliki.provider.v1.ProviderGateway` gRPC service: each method checks its input, picks
//! the failover order (or the one provider asked for), calls the `providers` gateway within the
//! caller's deadline and maps the answer back.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use kraliki_proto::provider::v1::{
    AnalyzeSentimentRequest, AnalyzeSentimentResponse, ListProvidersRequest, ListProvidersResponse, StreamChatRequest,
    StreamChatResponse, SynthesizeSpeechRequest, SynthesizeSpeechResponse, TranscribeRequest, TranscribeResponse,
    provider_gateway_server::ProviderGateway,
};
use providers::{AudioStream, Capability, ChatStream, FinishReason, Gateway, ProviderKind, Usage};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::convert::{self, echo};
use crate::error::failed;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What a caller may ask of the gateway.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `LLM_MAX_TOKENS_CAP`: `max_tokens` is clamped to it (and is it when the caller sends 0).
    pub max_tokens_cap: u32,
    /// `TRANSCRIBE_MAX_BYTES`: the largest audio of one `Transcribe` request.
    pub transcribe_max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_tokens_cap: 1024, transcribe_max_bytes: crate::config::DEFAULT_TRANSCRIBE_MAX_BYTES }
    }
}

/// The gateway's gRPC front. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProviderGatewayService {
    gateway: Gateway,
    limits: Limits,
}

impl ProviderGatewayService {
    /// Serves `gateway` with the default limits.
    pub fn new(gateway: Gateway) -> Self {
        Self::with_limits(gateway, Limits::default())
    }

    /// Serves `gateway` with `limits`.
    pub fn with_limits(gateway: Gateway, limits: Limits) -> Self {
        Self { gateway, limits }
    }

    /// Refuses a model the gateway is not configured with. A named model must be the
    /// configured model of a provider in the capability's order (of `pinned` alone when the
    /// caller pinned one); the request then goes on as if it named none, so that each provider
    /// uses its own configured model (a caller cannot spend the operator's key on another).
    fn check_model(
        &self,
        capability: Capability,
        pinned: Option<ProviderKind>,
        model: &mut Option<String>,
    ) -> Result<(), Status> {
        let Some(named) = model.take() else { return Ok(()) };
        let configured: Vec<String> = self
            .gateway
            .list_providers()
            .into_iter()
            .filter(|row| row.capability == capability && row.order.is_some())
            .filter(|row| pinned.is_none_or(|kind| row.name == kind.as_str()))
            .filter_map(|row| row.model)
            .collect();
        if configured.contains(&named) {
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "model `{}` is not configured for {} on this gateway (configured: {}); leave it empty for the default",
            echo(&named),
            convert::capability_name(capability),
            if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
        )))
    }

    /// The gateway for a request: the capability's failover order, or only the provider the
    /// caller named (which must be listed for it and configured), and that provider.
    fn route(&self, capability: Capability, provider: &str) -> Result<(Gateway, Option<ProviderKind>), Status> {
        let name = provider.trim();
        if name.is_empty() {
            return Ok((self.gateway.clone(), None));
        }
        let Some(kind) = ProviderKind::parse(name) else {
            return Err(Status::invalid_argument(format!(
                "unknown provider `{}` (known: openai, deepgram, local, simulated)",
                echo(name)
            )));
        };
        let capability_name = convert::capability_name(capability);
        if !kind.supports(capability) {
            return Err(Status::invalid_argument(format!("provider `{kind}` does not offer {capability_name}")));
        }
        let config = self.gateway.config();
        if !config.order(capability).contains(&kind) {
            return Err(Status::failed_precondition(format!(
                "provider `{kind}` is not enabled for {capability_name} on this gateway"
            )));
        }
        if let Err(reason) = config.availability(kind) {
            return Err(Status::failed_precondition(format!("provider `{kind}` is not configured: {reason}")));
        }
        Ok((self.gateway.pinned(kind), Some(kind)))
    }
}

/// The caller's deadline from `grpc-timeout`, brought forward by a small margin (a tenth, at
/// most 50 ms) so that our `DEADLINE_EXCEEDED` reaches the caller before its own timer fires
/// (tonic reports that as a bare `Cancelled`).
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    let timeout = telemetry::grpc::deadline_of(request)?;
    let margin = (timeout / 10).min(Duration::from_millis(50));
    Some(Instant::now() + timeout.saturating_sub(margin))
}

fn call_id(id: &str) -> String {
    id.chars().take(64).collect()
}

#[tonic::async_trait]
impl ProviderGateway for ProviderGatewayService {
    #[tracing::instrument(skip_all, fields(capability = request.get_ref().capability))]
    async fn list_providers(
        &self,
        request: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        let wanted = convert::capability_filter(request.into_inner().capability)?;
        let providers = self
            .gateway
            .list_providers()
            .into_iter()
            .filter(|row| wanted.is_none_or(|c| c == row.capability))
            .filter_map(convert::provider_status)
            .collect();
        Ok(Response::new(ListProvidersResponse { providers }))
    }

    #[tracing::instrument(skip_all, fields(call_id = %call_id(&request.get_ref().call_id)))]
    async fn transcribe(&self, request: Request<TranscribeRequest>) -> Result<Response<TranscribeResponse>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        if request.audio.len() > self.limits.transcribe_max_bytes {
            return Err(Status::resource_exhausted(format!(
                "audio of {} bytes exceeds the limit of {} bytes",
                request.audio.len(),
                self.limits.transcribe_max_bytes
            )));
        }
        let (gateway, pinned) = self.route(Capability::Stt, &request.provider)?;
        let mut request = convert::transcription_request(request)?;
        self.check_model(Capability::Stt, pinned, &mut request.model)?;
        let transcript = gateway.transcribe(request, deadline).await.map_err(|e| failed("transcribe", &e))?;
        Ok(Response::new(convert::transcribe_response(transcript)))
    }

    type StreamChatStream = ResponseStream<StreamChatResponse>;

    #[tracing::instrument(skip_all, fields(call_id = %call_id(&request.get_ref().call_id)))]
    async fn stream_chat(
        &self,
        request: Request<StreamChatRequest>,
    ) -> Result<Response<Self::StreamChatStream>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        let (gateway, pinned) = self.route(Capability::Llm, &request.provider)?;
        let mut request = convert::chat_request(request)?;
        self.check_model(Capability::Llm, pinned, &mut request.model)?;
        let cap = self.limits.max_tokens_cap;
        request.max_tokens = Some(request.max_tokens.map_or(cap, |asked| asked.min(cap)));
        // Returns once the first token arrived: failures before it were failed over already.
        let stream = gateway.chat(request, deadline).await.map_err(|e| failed("chat", &e))?;
        Ok(Response::new(Box::pin(chat_events(stream))))
    }

    type SynthesizeSpeechStream = ResponseStream<SynthesizeSpeechResponse>;

    #[tracing::instrument(skip_all, fields(call_id = %call_id(&request.get_ref().call_id)))]
    async fn synthesize_speech(
        &self,
        request: Request<SynthesizeSpeechRequest>,
    ) -> Result<Response<Self::SynthesizeSpeechStream>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        let (gateway, pinned) = self.route(Capability::Tts, &request.provider)?;
        let mut request = convert::synthesis_request(request)?;
        self.check_model(Capability::Tts, pinned, &mut request.model)?;
        let stream = gateway.synthesize(request, deadline).await.map_err(|e| failed("synthesize", &e))?;
        Ok(Response::new(Box::pin(audio_chunks(stream))))
    }

    #[tracing::instrument(skip_all, fields(call_id = %call_id(&request.get_ref().call_id)))]
    async fn analyze_sentiment(
        &self,
        request: Request<AnalyzeSentimentRequest>,
    ) -> Result<Response<AnalyzeSentimentResponse>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        convert::sentiment_text(&request)?;
        let (gateway, _) = self.route(Capability::Sentiment, &request.provider)?;
        let result = gateway.sentiment(&request.text, deadline).await.map_err(|e| failed("sentiment", &e))?;
        Ok(Response::new(convert::sentiment_response(result)))
    }
}

struct ChatState {
    stream: ChatStream,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    ended: bool,
}

/// `delta` messages as tokens arrive, then one `done` with the finish reason and usage (which
/// OpenAI-compatible servers send in a last chunk of their own), or the error that cut the
/// stream. Dropping it (the caller went away) drops the provider request.
fn chat_events(stream: ChatStream) -> impl Stream<Item = Result<StreamChatResponse, Status>> + Send + 'static {
    let state = ChatState { stream, finish_reason: None, usage: None, ended: false };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        loop {
            match st.stream.next().await {
                Some(Ok(chunk)) => {
                    if chunk.finish_reason.is_some() {
                        st.finish_reason = chunk.finish_reason;
                    }
                    if chunk.usage.is_some() {
                        st.usage = chunk.usage;
                    }
                    if !chunk.delta.is_empty() {
                        return Some((Ok(convert::chat_delta(chunk.delta)), st));
                    }
                }
                Some(Err(error)) => {
                    st.ended = true;
                    return Some((Err(failed("chat", &error)), st));
                }
                None => {
                    st.ended = true;
                    let done =
                        convert::chat_done(st.finish_reason.take(), st.usage, st.stream.provider, &st.stream.model);
                    return Some((Ok(done), st));
                }
            }
        }
    })
}

/// Chunks of synthesised audio already waiting are sent as one message, at most this many.
const COALESCE_CHUNKS: usize = 32;
/// The most audio one message carries (1 s of μ-law 8 kHz; an even number, so PCM16 splits
/// between samples): chunks are joined up to it and a larger chunk is split. A message then fits
/// the receiver's default 8 KiB decode buffer, and a fast provider's reply is not handed over in
/// one piece that the caller must hold while it plays.
const MAX_MESSAGE_AUDIO_BYTES: usize = 8_000;

/// The audio chunks, provider and model on the first; an error item ends the stream. Chunks the
/// provider has already produced when the next message goes out are joined into it (a provider
/// that yields one 20 ms frame at a time costs one message per frame otherwise); nothing waits
/// for more, so the first audio leaves as soon as it comes.
fn audio_chunks(stream: AudioStream) -> impl Stream<Item = Result<SynthesizeSpeechResponse, Status>> + Send + 'static {
    let provider = stream.provider.to_owned();
    let model = stream.model.clone();
    let mut first = true;
    let mut ended = false;
    stream.ready_chunks(COALESCE_CHUNKS).flat_map(move |batch| {
        let mut out = Vec::with_capacity(1);
        let mut audio: Vec<u8> = Vec::new();
        let mut message = |audio: &mut Vec<u8>, out: &mut Vec<_>| {
            if !audio.is_empty() {
                let (provider, model) =
                    if std::mem::take(&mut first) { (provider.clone(), model.clone()) } else { Default::default() };
                out.push(Ok(SynthesizeSpeechResponse { audio: std::mem::take(audio), provider, model }));
            }
        };
        for item in batch {
            if ended {
                break;
            }
            match item {
                Ok(bytes) => {
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        if audio.len() == MAX_MESSAGE_AUDIO_BYTES {
                            message(&mut audio, &mut out);
                        }
                        if audio.is_empty() {
                            audio.reserve_exact(rest.len().min(MAX_MESSAGE_AUDIO_BYTES));
                        }
                        let n = (MAX_MESSAGE_AUDIO_BYTES - audio.len()).min(rest.len());
                        audio.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                    }
                }
                Err(error) => {
                    message(&mut audio, &mut out);
                    out.push(Err(failed("synthesize", &error)));
                    ended = true;
                }
            }
        }
        message(&mut audio, &mut out);
        futures_util::stream::iter(out)
    })
}
