//! Any OpenAI-compatible server: `POST {base}/chat/completions` (SSE stream),
//! `POST {base}/audio/transcriptions` (multipart) and `POST {base}/audio/speech` (streamed PCM).

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CallCtx, Opened};
use crate::audio::{Transcoder, wav_wrap};
use crate::config::OpenAiConfig;
use crate::error::{ProviderError, scrub_body};
use crate::http::{self, Multipart};
use crate::sse::{SseEvent, SseParser};
use crate::types::{
    ChatChunk, ChatRequest, FinishReason, Segment, SynthesisRequest, Transcript, TranscriptionRequest, Usage, Word,
};

const NAME: &str = "openai";
/// `response_format=pcm` is 24 kHz, 16-bit signed little-endian, mono.
pub(crate) const SPEECH_PCM_RATE: u32 = 24_000;
const TRANSCRIPT_LIMIT: usize = 32 * 1024 * 1024;

pub(crate) struct OpenAi {
    pub(crate) config: OpenAiConfig,
    client: reqwest::Client,
}

impl OpenAi {
    pub(crate) fn new(config: OpenAiConfig, client: reqwest::Client) -> Self {
        Self { config, client }
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ProviderError> {
        reqwest::Url::parse(&format!("{}{path}", self.config.base_url))
            .map_err(|e| ProviderError::Internal(format!("bad openai url: {e}")))
    }

    fn post(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let builder = self.client.post(url);
        match &self.config.api_key {
            Some(key) => builder.bearer_auth(key.expose()),
            None => builder,
        }
    }

    fn secrets(&self) -> Vec<&str> {
        self.config.api_key.iter().map(|k| k.expose()).collect()
    }

    pub(crate) async fn chat(&self, req: &ChatRequest, ctx: &CallCtx) -> Result<Opened<ChatChunk>, ProviderError> {
        let model = ctx.model.clone();
        let messages: Vec<Value> =
            req.messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect();
        let mut body = json!({
            "model": model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(max) = req.max_tokens {
            body[self.config.max_tokens_param.field()] = json!(max);
        }
        let url = self.url("/chat/completions")?;
        http::record_target(ctx, "POST", &url);
        let request = self.post(url).header(reqwest::header::ACCEPT, "text/event-stream").json(&body);
        let response = http::send(ctx, request, ctx.timeouts.first_byte, &self.secrets()).await?;
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if !is_sse {
            // Some compatible servers ignore `stream` and answer one JSON completion.
            let raw = http::read_limited(ctx, response, TRANSCRIPT_LIMIT, ctx.timeouts.idle).await?;
            let chunk = parse_completion(&raw)?;
            return Ok(Opened { model, stream: Box::pin(futures_util::stream::iter([Ok(chunk)])) });
        }
        let secrets: Vec<String> = self.secrets().into_iter().map(str::to_owned).collect();
        let stream = chat_stream(Box::pin(response.bytes_stream()), secrets, ctx.operation);
        Ok(Opened { model, stream: Box::pin(stream) })
    }

    pub(crate) async fn transcribe(
        &self,
        req: &TranscriptionRequest,
        ctx: &CallCtx,
    ) -> Result<Transcript, ProviderError> {
        let model = ctx.model.clone();
        let audio = if req.encoding.is_raw() {
            wav_wrap(req.encoding, req.sample_rate, req.channels, &req.audio)
        } else {
            req.audio.clone()
        };
        // gpt-4o(-mini)-transcribe only answer `json`/`text`; whisper-style models give segments.
        let verbose = !model.starts_with("gpt-4o");
        let filename = format!("audio.{}", req.encoding.extension());
        let mut form = Multipart::new()
            .file("file", &filename, req.encoding.mime(), &audio)
            .text("model", &model)
            .text("response_format", if verbose { "verbose_json" } else { "json" });
        if verbose {
            form = form.text("timestamp_granularities[]", "segment").text("timestamp_granularities[]", "word");
        }
        if let Some(lang) = &req.language {
            // The API takes ISO-639-1 (`en`), not a BCP-47 tag (`en-US`).
            let code = lang.split(['-', '_']).next().unwrap_or(lang).to_ascii_lowercase();
            form = form.text("language", &code);
        }
        let (content_type, body) = form.finish();
        let url = self.url("/audio/transcriptions")?;
        http::record_target(ctx, "POST", &url);
        let request = self.post(url).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        let response = http::send(ctx, request, ctx.timeouts.transcribe, &self.secrets()).await?;
        ctx.mark_first_byte();
        let raw = http::read_limited(ctx, response, TRANSCRIPT_LIMIT, ctx.timeouts.idle).await?;
        let parsed: TranscriptionBody = serde_json::from_slice(&raw).map_err(|e| malformed(&e))?;
        Ok(Transcript {
            text: parsed.text.trim().to_owned(),
            language: parsed.language.or_else(|| req.language.clone()),
            segments: parsed
                .segments
                .unwrap_or_default()
                .into_iter()
                .map(|s| Segment {
                    start: s.start,
                    end: s.end,
                    text: s.text.trim().to_owned(),
                    speaker: None,
                    channel: None,
                })
                .collect(),
            words: parsed
                .words
                .unwrap_or_default()
                .into_iter()
                .map(|w| Word {
                    word: w.word,
                    start: w.start,
                    end: w.end,
                    confidence: None,
                    speaker: None,
                    channel: None,
                })
                .collect(),
            duration_seconds: parsed.duration,
            provider: NAME.to_owned(),
            model,
        })
    }

    pub(crate) async fn synthesize(
        &self,
        req: &SynthesisRequest,
        ctx: &CallCtx,
    ) -> Result<Opened<Bytes>, ProviderError> {
        let model = ctx.model.clone();
        let voice = req.voice.clone().unwrap_or_else(|| self.config.tts_voice.clone());
        let body = json!({
            "model": model,
            "input": req.text,
            "voice": voice,
            "response_format": "pcm",
        });
        let url = self.url("/audio/speech")?;
        http::record_target(ctx, "POST", &url);
        let response = http::send(ctx, self.post(url).json(&body), ctx.timeouts.first_byte, &self.secrets()).await?;
        let mut transcoder = Transcoder::new(SPEECH_PCM_RATE, req.sample_rate, req.encoding);
        let stream = response
            .bytes_stream()
            .map(move |item| match item {
                Ok(chunk) => Ok(transcoder.push(&chunk)),
                Err(e) => Err(http::transport_error(NAME, &e, true)),
            })
            .filter(|item| std::future::ready(!matches!(item, Ok(b) if b.is_empty())));
        Ok(Opened { model, stream: Box::pin(stream) })
    }
}

fn malformed(e: &serde_json::Error) -> ProviderError {
    ProviderError::Malformed { provider: NAME, detail: format!("invalid json: {e}") }
}

#[derive(Deserialize)]
struct TranscriptionBody {
    text: String,
    language: Option<String>,
    duration: Option<f64>,
    segments: Option<Vec<SegmentBody>>,
    words: Option<Vec<WordBody>>,
}

#[derive(Deserialize)]
struct SegmentBody {
    start: f64,
    end: f64,
    text: String,
}

#[derive(Deserialize)]
struct WordBody {
    word: String,
    start: f64,
    end: f64,
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
    model: Option<String>,
    usage: Option<UsageBody>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<DeltaBody>,
    #[serde(default)]
    message: Option<DeltaBody>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaBody {
    content: Option<String>,
}

#[derive(Deserialize)]
struct UsageBody {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    total_tokens: Option<u64>,
}

impl From<UsageBody> for Usage {
    fn from(u: UsageBody) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens.unwrap_or(u.prompt_tokens + u.completion_tokens),
        }
    }
}

/// Longest model name kept from an answer.
const MODEL_CHARS: usize = 128;

fn to_chunk(parsed: StreamChunk) -> Option<ChatChunk> {
    let mut chunk = ChatChunk { usage: parsed.usage.map(Usage::from), ..ChatChunk::default() };
    for choice in parsed.choices {
        if let Some(text) = choice.delta.or(choice.message).and_then(|d| d.content) {
            chunk.delta.push_str(&text);
        }
        if let Some(reason) = choice.finish_reason {
            chunk.finish_reason = Some(FinishReason::from_wire(&reason));
        }
    }
    (!chunk.delta.is_empty() || chunk.finish_reason.is_some() || chunk.usage.is_some()).then_some(chunk)
}

fn parse_completion(raw: &[u8]) -> Result<ChatChunk, ProviderError> {
    let mut parsed: StreamChunk = serde_json::from_slice(raw).map_err(|e| malformed(&e))?;
    if parsed.error.is_some() {
        return Err(ProviderError::Malformed { provider: NAME, detail: "error object in a 200 answer".into() });
    }
    let model = parsed.model.take().map(|m| m.chars().take(MODEL_CHARS).collect());
    let mut chunk = to_chunk(parsed)
        .ok_or_else(|| ProviderError::Malformed { provider: NAME, detail: "completion without content".into() })?;
    chunk.model = model;
    Ok(chunk)
}

/// State of one SSE chat stream.
struct ChatState<S> {
    body: S,
    parser: SseParser,
    events: VecDeque<SseEvent>,
    scratch: Vec<SseEvent>,
    finished: bool,
    saw_finish: bool,
    /// The model the server named, until it rides on the first chunk out.
    model: Option<String>,
    model_sent: bool,
    secrets: Vec<String>,
    operation: &'static str,
}

fn chat_stream<S>(
    body: S,
    secrets: Vec<String>,
    operation: &'static str,
) -> impl Stream<Item = Result<ChatChunk, ProviderError>> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
{
    let state = ChatState {
        body,
        parser: SseParser::new(),
        events: VecDeque::new(),
        scratch: Vec::new(),
        finished: false,
        saw_finish: false,
        model: None,
        model_sent: false,
        secrets,
        operation,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        loop {
            while let Some(event) = st.events.pop_front() {
                match st.handle(event) {
                    Ok(Some(chunk)) => return Some((Ok(chunk), st)),
                    Ok(None) if st.finished => return None,
                    Ok(None) => {}
                    Err(e) => {
                        st.finished = true;
                        return Some((Err(e), st));
                    }
                }
            }
            match st.body.next().await {
                Some(Ok(bytes)) => {
                    let mut scratch = std::mem::take(&mut st.scratch);
                    if let Err(e) = st.parser.feed(&bytes, &mut scratch) {
                        st.finished = true;
                        let err = ProviderError::Malformed { provider: NAME, detail: e.to_string() };
                        return Some((Err(err), st));
                    }
                    st.events.extend(scratch.drain(..));
                    st.scratch = scratch;
                }
                Some(Err(e)) => {
                    st.finished = true;
                    return Some((Err(http::transport_error(NAME, &e, true)), st));
                }
                None => {
                    st.finished = true;
                    // A clean end after the finish reason is fine even without `[DONE]`.
                    if st.saw_finish {
                        return None;
                    }
                    let err =
                        ProviderError::Interrupted { provider: NAME, detail: "stream ended before completion".into() };
                    return Some((Err(err), st));
                }
            }
        }
    })
}

impl<S> ChatState<S> {
    fn handle(&mut self, event: SseEvent) -> Result<Option<ChatChunk>, ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finished = true;
            return Ok(None);
        }
        if data.is_empty() {
            return Ok(None);
        }
        let mut parsed: StreamChunk = serde_json::from_str(data).map_err(|e| malformed(&e))?;
        if let Some(error) = &parsed.error {
            let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
            tracing::warn!(
                provider = NAME,
                operation = self.operation,
                body = %scrub_body(&error.to_string(), &secrets, 512),
                "provider sent an error event mid-stream"
            );
            return Err(ProviderError::Interrupted { provider: NAME, detail: "error event in stream".into() });
        }
        if !self.model_sent && self.model.is_none() {
            self.model = parsed.model.take().map(|m| m.chars().take(MODEL_CHARS).collect());
        }
        let mut chunk = to_chunk(parsed);
        if let Some(c) = chunk.as_mut()
            && !self.model_sent
        {
            c.model = self.model.take();
            self.model_sent = true;
        }
        if chunk.as_ref().is_some_and(|c| c.finish_reason.is_some()) {
            self.saw_finish = true;
        }
        Ok(chunk)
    }
}
