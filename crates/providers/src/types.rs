//! Domain types: what callers send and get back, independent of any provider's wire format.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::error::ProviderError;

/// What a provider can do. Each capability has its own failover order and circuit breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Speech-to-text (pre-recorded audio → transcript).
    Stt,
    /// Chat completion with streamed tokens.
    Llm,
    /// Text-to-speech with streamed audio.
    Tts,
    /// Sentiment of a text.
    Sentiment,
}

impl Capability {
    /// All capabilities, in listing order.
    pub const ALL: [Capability; 4] = [Self::Stt, Self::Llm, Self::Tts, Self::Sentiment];

    /// Short name: `stt`, `llm`, `tts`, `sentiment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stt => "stt",
            Self::Llm => "llm",
            Self::Tts => "tts",
            Self::Sentiment => "sentiment",
        }
    }

    /// The `operation` metric label: `transcribe`, `chat`, `synthesize`, `sentiment`.
    pub fn operation(self) -> &'static str {
        match self {
            Self::Stt => "transcribe",
            Self::Llm => "chat",
            Self::Tts => "synthesize",
            Self::Sentiment => "sentiment",
        }
    }

    /// `gen_ai.operation.name` (OpenTelemetry GenAI semantic conventions): `chat` is the
    /// conventions' own value; they define none for audio or sentiment, so speech-to-text is
    /// `transcription`, text-to-speech `speech` (the OpenAI endpoints' names) and sentiment
    /// `sentiment`.
    pub fn gen_ai_operation(self) -> &'static str {
        match self {
            Self::Stt => "transcription",
            Self::Llm => "chat",
            Self::Tts => "speech",
            Self::Sentiment => "sentiment",
        }
    }

    /// Whether the answer is streamed (time to first chunk is measured for these).
    pub fn is_streaming(self) -> bool {
        matches!(self, Self::Llm | Self::Tts)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The providers this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, whisper servers…).
    OpenAi,
    /// Deepgram pre-recorded STT and Aura TTS.
    Deepgram,
    /// Built-in offline sentiment.
    Local,
    /// Synthetic provider for load tests and fault drills; only used when listed explicitly.
    Simulated,
}

impl ProviderKind {
    /// All providers.
    pub const ALL: [ProviderKind; 4] = [Self::OpenAi, Self::Deepgram, Self::Local, Self::Simulated];

    /// Name used in configuration, metrics and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Deepgram => "deepgram",
            Self::Local => "local",
            Self::Simulated => "simulated",
        }
    }

    /// `gen_ai.provider.name`: the conventions' well-known value where there is one (`openai`),
    /// else our name (`deepgram`, `local`, `simulated`).
    pub fn gen_ai_name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Deepgram => "deepgram",
            Self::Local => "local",
            Self::Simulated => "simulated",
        }
    }

    /// Parse a configuration name (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// Does this provider implement the capability at all?
    pub fn supports(self, capability: Capability) -> bool {
        match self {
            Self::OpenAi => matches!(capability, Capability::Stt | Capability::Llm | Capability::Tts),
            Self::Deepgram => matches!(capability, Capability::Stt | Capability::Tts),
            Self::Local => capability == Capability::Sentiment,
            Self::Simulated => true,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Speech-to-text

/// How the audio bytes of a transcription request are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioEncoding {
    /// A RIFF/WAV file (any codec inside it).
    Wav,
    /// Raw signed 16-bit little-endian PCM (needs `sample_rate` and `channels`).
    Pcm16,
    /// Raw G.711 μ-law (needs `sample_rate` and `channels`).
    Mulaw,
    /// Raw G.711 A-law (needs `sample_rate` and `channels`).
    Alaw,
    /// MP3 file.
    Mp3,
    /// FLAC file.
    Flac,
    /// Ogg (Opus or Vorbis) file.
    Ogg,
    /// WebM file.
    Webm,
}

impl AudioEncoding {
    /// Raw formats carry no header: the sample rate and channel count must be given.
    pub fn is_raw(self) -> bool {
        matches!(self, Self::Pcm16 | Self::Mulaw | Self::Alaw)
    }

    /// MIME type used when sending a container as-is.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Wav | Self::Pcm16 | Self::Mulaw | Self::Alaw => "audio/wav",
            Self::Mp3 => "audio/mpeg",
            Self::Flac => "audio/flac",
            Self::Ogg => "audio/ogg",
            Self::Webm => "audio/webm",
        }
    }

    /// File extension used in multipart uploads (servers sniff the format from it).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Wav | Self::Pcm16 | Self::Mulaw | Self::Alaw => "wav",
            Self::Mp3 => "mp3",
            Self::Flac => "flac",
            Self::Ogg => "ogg",
            Self::Webm => "webm",
        }
    }
}

/// A pre-recorded transcription request.
#[derive(Debug, Clone)]
pub struct TranscriptionRequest {
    /// The audio bytes (a whole file, or raw samples for the raw encodings).
    pub audio: Bytes,
    /// How `audio` is encoded.
    pub encoding: AudioEncoding,
    /// Samples per second; required for raw encodings, informative otherwise.
    pub sample_rate: u32,
    /// Channel count; required for raw encodings, informative otherwise.
    pub channels: u16,
    /// BCP-47 / ISO-639-1 language (`en`, `en-US`); `None` lets the provider detect it.
    pub language: Option<String>,
    /// Model override; `None` uses the provider's configured model.
    pub model: Option<String>,
    /// Ask for speaker labels (Deepgram `diarize`; ignored by OpenAI-compatible servers).
    pub diarize: bool,
    /// Transcribe each channel separately (Deepgram `multichannel`; ignored by OpenAI).
    pub per_channel: bool,
    /// The conversation (call) this belongs to: `gen_ai.conversation.id` on the span.
    pub conversation_id: Option<String>,
}

impl TranscriptionRequest {
    /// A request with the common defaults: 8 kHz mono, language detected, no diarisation.
    pub fn new(audio: impl Into<Bytes>, encoding: AudioEncoding) -> Self {
        Self {
            audio: audio.into(),
            encoding,
            sample_rate: 8_000,
            channels: 1,
            language: None,
            model: None,
            diarize: false,
            per_channel: false,
            conversation_id: None,
        }
    }
}

/// One word with its timing, when the provider gives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// The word as spoken (punctuated when the provider punctuates).
    pub word: String,
    /// Start, seconds from the start of the audio.
    pub start: f64,
    /// End, seconds from the start of the audio.
    pub end: f64,
    /// Confidence 0…1, when given.
    pub confidence: Option<f32>,
    /// Speaker index, when diarised.
    pub speaker: Option<u32>,
    /// Channel index, when transcribed per channel.
    pub channel: Option<u32>,
}

/// A span of the transcript (a sentence or an utterance) with its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Text of the segment.
    pub text: String,
    /// Speaker index, when diarised.
    pub speaker: Option<u32>,
    /// Channel index, when transcribed per channel.
    pub channel: Option<u32>,
}

/// The result of a transcription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// Full text (channels joined by a newline when transcribed per channel).
    pub text: String,
    /// Language as reported by the provider (`en`, or `english` from Whisper), else as asked.
    pub language: Option<String>,
    /// Segments with times, when the provider returns them.
    pub segments: Vec<Segment>,
    /// Words with times, when the provider returns them.
    pub words: Vec<Word>,
    /// Audio duration in seconds, when known.
    pub duration_seconds: Option<f64>,
    /// Provider that produced it.
    pub provider: String,
    /// Model that produced it.
    pub model: String,
}

// ---------------------------------------------------------------------------------------------
// Chat

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions.
    System,
    /// The human (the caller on the phone).
    User,
    /// The agent.
    Assistant,
}

impl Role {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Author role.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl ChatMessage {
    /// Build a message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// A chat completion request; the answer is streamed.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// The conversation so far (at least one message).
    pub messages: Vec<ChatMessage>,
    /// Model override; `None` uses the provider's configured model.
    pub model: Option<String>,
    /// Sampling temperature (0…2).
    pub temperature: Option<f32>,
    /// Upper bound on generated tokens.
    pub max_tokens: Option<u32>,
    /// The conversation (call) this belongs to: `gen_ai.conversation.id` on the span.
    pub conversation_id: Option<String>,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Provider's content filter.
    ContentFilter,
    /// The model asked for a tool.
    ToolCalls,
    /// Anything else the provider said.
    Other(String),
}

impl FinishReason {
    /// The wire name: `stop`, `length`, `content_filter`, `tool_calls`, or the provider's own.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::ToolCalls => "tool_calls",
            Self::Other(other) => other,
        }
    }

    pub(crate) fn from_wire(value: &str) -> Self {
        match value {
            "stop" => Self::Stop,
            "length" => Self::Length,
            "content_filter" => Self::ContentFilter,
            "tool_calls" | "function_call" => Self::ToolCalls,
            other => Self::Other(other.chars().take(32).collect()),
        }
    }
}

/// Token accounting for one completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Sum as reported by the provider.
    pub total_tokens: u64,
}

/// One piece of a streamed chat answer. A chunk carries new text, or the finish reason, or the
/// usage block (OpenAI sends usage in a last chunk of its own), or several of these.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatChunk {
    /// New text, possibly empty.
    pub delta: String,
    /// Set on the chunk that ends generation.
    pub finish_reason: Option<FinishReason>,
    /// Set once, at the end, when the provider reports usage.
    pub usage: Option<Usage>,
    /// The model that answered, as the provider names it (OpenAI-compatible servers name it
    /// in every event; it is kept on the first chunk only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, ProviderError>> + Send>>;

/// A streamed chat answer. Ends after the last chunk; an `Err` item ends it early (stall,
/// deadline, broken connection, malformed event) and nothing follows it. Dropping it cancels
/// the provider request.
pub struct ChatStream {
    /// Provider serving it.
    pub provider: &'static str,
    /// Model serving it.
    pub model: String,
    pub(crate) inner: BoxStream<ChatChunk>,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatChunk, ProviderError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Text-to-speech

/// Encoding of synthesised audio (always raw, mono, no header: ready for a phone stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputEncoding {
    /// Signed 16-bit little-endian PCM.
    Pcm16,
    /// G.711 μ-law, one byte per sample.
    Mulaw,
}

impl OutputEncoding {
    /// Bytes per sample.
    pub fn bytes_per_sample(self) -> usize {
        match self {
            Self::Pcm16 => 2,
            Self::Mulaw => 1,
        }
    }
}

/// A synthesis request; the audio is streamed.
#[derive(Debug, Clone)]
pub struct SynthesisRequest {
    /// Text to speak.
    pub text: String,
    /// Voice override (OpenAI voice name; for Deepgram the voice is the model, e.g.
    /// `aura-2-thalia-en`, so this overrides the model).
    pub voice: Option<String>,
    /// Model override.
    pub model: Option<String>,
    /// Output encoding.
    pub encoding: OutputEncoding,
    /// Output sample rate (8000, 16000, 24000, 48000).
    pub sample_rate: u32,
    /// The conversation (call) this belongs to: `gen_ai.conversation.id` on the span.
    pub conversation_id: Option<String>,
}

impl SynthesisRequest {
    /// Telephone defaults: μ-law at 8 kHz.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            voice: None,
            model: None,
            encoding: OutputEncoding::Mulaw,
            sample_rate: 8_000,
            conversation_id: None,
        }
    }
}

/// The format of the bytes an [`AudioStream`] yields: always what was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioFormat {
    /// Encoding.
    pub encoding: OutputEncoding,
    /// Samples per second.
    pub sample_rate: u32,
    /// Always 1.
    pub channels: u16,
}

/// Streamed synthesised audio: raw mono samples in `format`, chunk boundaries always on
/// whole samples. Same ending rules as [`ChatStream`].
pub struct AudioStream {
    /// Provider serving it.
    pub provider: &'static str,
    /// Model (or voice model) serving it.
    pub model: String,
    /// Format of every chunk.
    pub format: AudioFormat,
    pub(crate) inner: BoxStream<Bytes>,
}

impl fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AudioStream")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Stream for AudioStream {
    type Item = Result<Bytes, ProviderError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Sentiment

/// Coarse sentiment class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentimentLabel {
    /// Satisfied, thankful, happy.
    Positive,
    /// Factual, a request, or balanced.
    Neutral,
    /// Dissatisfied, angry, complaining.
    Negative,
}

impl SentimentLabel {
    /// `positive`, `neutral`, `negative`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Positive => "positive",
            Self::Neutral => "neutral",
            Self::Negative => "negative",
        }
    }

    /// Parse a label name.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "positive" | "pos" => Some(Self::Positive),
            "neutral" | "neu" => Some(Self::Neutral),
            "negative" | "neg" => Some(Self::Negative),
            _ => None,
        }
    }
}

/// Sentiment of one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentimentResult {
    /// −1 (very negative) … 1 (very positive).
    pub score: f32,
    /// Class derived from the score.
    pub label: SentimentLabel,
    /// The words or phrases that carried the sentiment, strongest first.
    pub keywords: Vec<String>,
    /// Provider that scored it.
    pub provider: String,
}

// ---------------------------------------------------------------------------------------------
// Listing

/// State of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// One probe request is allowed through.
    HalfOpen,
    /// Requests fail fast.
    Open,
}

impl CircuitState {
    /// Value of the `provider_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }

    /// `closed`, `half_open`, `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// One row of the provider listing (one provider for one capability).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// Provider name.
    pub name: String,
    /// Capability.
    pub capability: Capability,
    /// Position in the capability's failover order (0 = first), `None` when not listed.
    pub order: Option<usize>,
    /// Listed and has what it needs (key or keyless base URL).
    pub configured: bool,
    /// Why it is not usable, when it is not.
    pub reason: Option<String>,
    /// Circuit breaker state (closed when not configured).
    pub circuit: CircuitState,
    /// Model used by default, when relevant.
    pub model: Option<String>,
}
