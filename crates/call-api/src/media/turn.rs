//! One turn of a live call: the caller's utterance is transcribed, the conversation so far goes
//! to a streamed chat completion, each sentence of the reply goes to streamed synthesis as soon
//! as it is complete, and the audio to playback. Latency is measured where the caller hears it:
//! from the end of their speech to the first reply frame sent, in stages that add up to it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use kraliki_proto::provider::v1::{
    self as pb, ChatMessage, Role as ChatRole, StreamChatRequest, StreamChatResponse, SynthesizeSpeechRequest,
    TranscribeRequest, stream_chat_response::Event,
};
use serde_json::json;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field::Empty};
use uuid::Uuid;

use super::playback::Command;
use crate::{
    db::turns::{Role, Turn},
    metrics, model,
    peers::Peers,
};

/// The latency stages of a turn, in order; they add up to `total`.
pub const STAGES: [&str; 6] =
    ["end_of_turn", "stt", "llm_first_token", "llm_first_sentence", "tts_first_byte", "overhead"];

/// What starts a turn.
pub struct TurnInput {
    pub caller_seq: i64,
    /// The caller's speech (16 kHz PCM16), or `None` for keypad input given as `text`.
    pub speech: Option<Vec<u8>>,
    pub text: Option<String>,
    /// When the caller stopped speaking (from the frames' arrival times).
    pub speech_end: Instant,
    /// When the end of their turn was detected.
    pub detected: Instant,
    pub caller_started_at: DateTime<Utc>,
}

/// Everything a turn needs from its call.
#[derive(Clone)]
pub struct TurnContext {
    pub call_id: Uuid,
    pub peers: Peers,
    pub db: crate::db::Database,
    pub system_prompt: String,
    pub language: Option<String>,
    /// Bounds of each stage's provider request and of the reply's length.
    pub limits: TurnLimits,
    pub playback: mpsc::Sender<Command>,
    pub events: mpsc::Sender<TurnEvent>,
}

/// Bounds of a turn's provider requests (`LIVE_*`, see `media::LiveConfig`).
#[derive(Debug, Clone, Copy)]
pub struct TurnLimits {
    /// `LIVE_TRANSCRIBE_TIMEOUT_SECONDS`: hearing the caller's utterance, default 15.
    pub transcribe_timeout: Duration,
    /// `LIVE_REPLY_TIMEOUT_SECONDS`: the whole streamed reply, default 30.
    pub reply_timeout: Duration,
    /// `LIVE_SPEECH_TIMEOUT_SECONDS`: synthesising one sentence, default 30.
    pub speech_timeout: Duration,
    /// `LIVE_MAX_TOKENS`: the longest reply, in tokens, default 300.
    pub max_tokens: u32,
}

impl Default for TurnLimits {
    fn default() -> Self {
        Self {
            transcribe_timeout: Duration::from_secs(15),
            reply_timeout: Duration::from_secs(30),
            speech_timeout: Duration::from_secs(30),
            max_tokens: 300,
        }
    }
}

/// What a turn tells its session.
#[derive(Debug)]
pub enum TurnEvent {
    /// The caller's words (added to the conversation).
    Heard { caller_seq: i64, text: String },
    /// The agent's reply as spoken (all of it, or up to the interruption).
    Replied { caller_seq: i64, text: String, interrupted: bool },
    /// Nothing usable was said (empty transcript) or a provider failed.
    Nothing { caller_seq: i64, reason: String },
}

/// Splits complete sentences off the front of `buffer`.
pub fn take_sentence(buffer: &mut String, end_of_stream: bool) -> Option<String> {
    let bytes = buffer.as_bytes();
    let mut cut = None;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(b, b'.' | b'!' | b'?' | b'\n') && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) {
            if bytes.get(i + 1).is_none() && !end_of_stream {
                break; // "3." may become "3.5": wait for the next character
            }
            cut = Some(i + 1);
            break;
        }
    }
    let cut = cut.or_else(|| (end_of_stream && !buffer.trim().is_empty()).then_some(buffer.len()))?;
    let sentence: String = buffer.drain(..cut).collect();
    let sentence = sentence.trim().to_string();
    if sentence.is_empty() { take_sentence(buffer, end_of_stream) } else { Some(sentence) }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Runs one turn until its reply has been handed to playback, or until `cancel` (barge-in).
pub async fn run(ctx: TurnContext, input: TurnInput, history: Vec<ChatMessage>, cancel: CancellationToken) {
    let span = tracing::info_span!(
        "turn",
        otel.name = "turn",
        sentry.op = "voice.turn",
        call_id = %ctx.call_id,
        turn = input.caller_seq,
        interrupted = Empty,
        latency.end_of_turn = Empty,
        latency.stt = Empty,
        latency.llm_first_token = Empty,
        latency.llm_first_sentence = Empty,
        latency.tts_first_byte = Empty,
        latency.overhead = Empty,
        latency.total = Empty,
    );
    let caller_seq = input.caller_seq;
    let events = ctx.events.clone();
    let progress = Arc::new(Mutex::new(Progress::default()));
    let outcome = async {
        tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            out = turn(&ctx, input, history, progress.clone()) => Some(out),
        }
    }
    .instrument(span.clone())
    .await;
    let event = match outcome {
        None => {
            // Interrupted: keep what was said so far and how fast it started.
            span.record("interrupted", true);
            let p = std::mem::take(&mut *progress.lock().expect("progress"));
            if let Some(started_at) = p.agent_started_at {
                let mut latency = p.latency.unwrap_or_default();
                latency.insert("interrupted".into(), json!(true));
                let agent_turn = Turn {
                    seq: caller_seq + 1,
                    role: Role::Agent,
                    text: p.spoken.clone(),
                    started_at,
                    ended_at: Some(model::now()),
                    latency: Some(serde_json::Value::Object(latency)),
                    interrupted: true,
                };
                if let Err(e) = ctx.db.insert_turn(ctx.call_id, &agent_turn).await {
                    tracing::warn!(error = %e, "could not store the interrupted turn");
                }
            }
            TurnEvent::Replied { caller_seq, text: p.spoken, interrupted: true }
        }
        Some(Ok(e)) | Some(Err(e)) => e,
    };
    let _ = events.send(event).await;
}

/// Speech for one sentence, as μ-law at 8 kHz (what the carrier plays).
fn speech_request(ctx: &TurnContext, sentence: &str) -> tonic::Request<SynthesizeSpeechRequest> {
    let mut request = tonic::Request::new(SynthesizeSpeechRequest {
        text: sentence.to_string(),
        encoding: pb::AudioEncoding::Mulaw as i32,
        sample_rate_hz: 8000,
        call_id: ctx.call_id.to_string(),
        ..Default::default()
    });
    request.set_timeout(ctx.limits.speech_timeout);
    request
}

/// The agent's greeting, spoken before the caller says anything: each sentence synthesised and
/// played with a mark (`turn-0-<n>`), then stored as agent turn 0. Barge-in cancels it like any
/// reply; what was spoken by then is kept.
pub async fn greet(ctx: TurnContext, text: String, cancel: CancellationToken) {
    let span = tracing::info_span!("greeting", otel.name = "greeting", call_id = %ctx.call_id);
    let started_at = model::now();
    let spoken = Arc::new(Mutex::new(String::new()));
    let speak = {
        let (ctx, spoken) = (ctx.clone(), spoken.clone());
        async move {
            let mut buffer = text;
            let mut n = 0usize;
            while let Some(sentence) = take_sentence(&mut buffer, true) {
                let mut audio = match ctx.peers.gateway.clone().synthesize_speech(speech_request(&ctx, &sentence)).await
                {
                    Ok(r) => r.into_inner(),
                    Err(s) => {
                        tracing::warn!(code = ?s.code(), "greeting: speech synthesis failed");
                        return;
                    }
                };
                while let Some(Ok(chunk)) = audio.next().await {
                    if !chunk.audio.is_empty()
                        && ctx.playback.send(Command::Audio { bytes: chunk.audio, first_sent: None }).await.is_err()
                    {
                        return;
                    }
                }
                n += 1;
                let _ = ctx.playback.send(Command::Mark(format!("turn-0-{n}"))).await;
                let mut spoken = spoken.lock().expect("spoken");
                if !spoken.is_empty() {
                    spoken.push(' ');
                }
                spoken.push_str(&sentence);
            }
        }
    };
    let interrupted = tokio::select! {
        biased;
        () = cancel.cancelled() => true,
        () = speak.instrument(span) => false,
    };
    let text = std::mem::take(&mut *spoken.lock().expect("spoken"));
    if text.is_empty() {
        let _ = ctx
            .events
            .send(TurnEvent::Nothing { caller_seq: -1, reason: "the greeting produced no audio".into() })
            .await;
        return;
    }
    let turn = Turn {
        seq: 0,
        role: Role::Agent,
        text: text.clone(),
        started_at,
        ended_at: Some(model::now()),
        latency: None,
        interrupted,
    };
    if let Err(e) = ctx.db.insert_turn(ctx.call_id, &turn).await {
        tracing::warn!(error = %e, "could not store the greeting");
    }
    let _ = ctx.events.send(TurnEvent::Replied { caller_seq: -1, text, interrupted }).await;
}

/// What a turn has done so far, for when it is interrupted.
#[derive(Default)]
struct Progress {
    agent_started_at: Option<DateTime<Utc>>,
    spoken: String,
    latency: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The turn proper, in three stages: hear (transcribe), reply (chat, as a stream of sentences),
/// speak (synthesis and playback of each sentence). `Err` carries the event to report when it
/// ended early.
async fn turn(
    ctx: &TurnContext,
    input: TurnInput,
    mut history: Vec<ChatMessage>,
    progress: Arc<Mutex<Progress>>,
) -> Result<TurnEvent, TurnEvent> {
    let caller_seq = input.caller_seq;
    let nothing = |reason: String| TurnEvent::Nothing { caller_seq, reason };
    let mut clock = LatencyClock::new(input.speech_end, input.detected);

    let text = hear(ctx, &input).await.map_err(nothing)?;
    clock.heard();
    if text.is_empty() {
        return Err(nothing("no words in the utterance".into()));
    }
    let caller_turn = Turn {
        seq: caller_seq,
        role: Role::Caller,
        text: text.clone(),
        started_at: input.caller_started_at,
        ended_at: Some(model::now()),
        latency: None,
        interrupted: false,
    };
    if let Err(e) = ctx.db.insert_turn(ctx.call_id, &caller_turn).await {
        tracing::warn!(error = %e, "could not store the caller's turn");
    }
    let _ = ctx.events.send(TurnEvent::Heard { caller_seq, text: text.clone() }).await;

    let agent_started_at = model::now();
    progress.lock().expect("progress").agent_started_at = Some(agent_started_at);
    history.push(ChatMessage { role: ChatRole::User as i32, content: text });
    let mut sentences = reply(ctx, history, &mut clock).await.map_err(nothing)?;
    let mut speaker = Speaker {
        ctx,
        caller_seq,
        progress,
        clock,
        first_frame: false,
        latency: None,
        spoken: String::new(),
        sentences: 0,
    };
    while let Some(sentence) = sentences.next(&mut speaker.clock).await {
        speaker.speak(sentence).await.map_err(nothing)?;
    }
    let Some(mut latency) = speaker.latency.filter(|_| speaker.first_frame) else {
        return Err(nothing("the reply produced no audio".into()));
    };
    latency.insert("interrupted".into(), json!(false));
    tracing::Span::current().record("interrupted", false);
    let agent_turn = Turn {
        seq: caller_seq + 1,
        role: Role::Agent,
        text: speaker.spoken.clone(),
        started_at: agent_started_at,
        ended_at: Some(model::now()),
        latency: Some(serde_json::Value::Object(latency)),
        interrupted: false,
    };
    if let Err(e) = ctx.db.insert_turn(ctx.call_id, &agent_turn).await {
        tracing::warn!(error = %e, "could not store the agent's turn");
    }
    Ok(TurnEvent::Replied { caller_seq, text: speaker.spoken, interrupted: false })
}

/// Hear: the caller's words, transcribed from their speech (or given as keypad text). `Err` is
/// the reason the words could not be had.
async fn hear(ctx: &TurnContext, input: &TurnInput) -> Result<String, String> {
    match (&input.speech, &input.text) {
        (_, Some(text)) => Ok(text.clone()),
        (Some(pcm), None) => {
            let mut request = tonic::Request::new(TranscribeRequest {
                audio: pcm.clone(),
                encoding: pb::AudioEncoding::Pcm16 as i32,
                sample_rate_hz: 16_000,
                channels: 1,
                language: ctx.language.clone().unwrap_or_default(),
                call_id: ctx.call_id.to_string(),
                ..Default::default()
            });
            request.set_timeout(ctx.limits.transcribe_timeout);
            match ctx.peers.gateway.clone().transcribe(request).await {
                Ok(r) => Ok(r.into_inner().text.trim().to_string()),
                Err(s) => Err(format!("transcription failed: {}", s.message())),
            }
        }
        (None, None) => Ok(String::new()),
    }
}

/// Reply: the conversation so far to a streamed chat completion, read back as sentences.
async fn reply(ctx: &TurnContext, history: Vec<ChatMessage>, clock: &mut LatencyClock) -> Result<Sentences, String> {
    let mut messages = vec![ChatMessage { role: ChatRole::System as i32, content: ctx.system_prompt.clone() }];
    messages.extend(history);
    clock.reply_started();
    let mut request = tonic::Request::new(StreamChatRequest {
        messages,
        max_tokens: ctx.limits.max_tokens,
        call_id: ctx.call_id.to_string(),
        ..Default::default()
    });
    request.set_timeout(ctx.limits.reply_timeout);
    match ctx.peers.gateway.clone().stream_chat(request).await {
        Ok(r) => Ok(Sentences { chat: r.into_inner(), buffer: String::new(), ready: Default::default(), done: false }),
        Err(s) => Err(format!("chat failed: {}", s.message())),
    }
}

/// A streamed reply, cut into sentences as they complete.
struct Sentences {
    chat: tonic::Streaming<StreamChatResponse>,
    buffer: String,
    ready: std::collections::VecDeque<String>,
    done: bool,
}

impl Sentences {
    /// The next complete sentence; `None` once the reply has ended (a broken stream ends it too,
    /// after what was already said).
    async fn next(&mut self, clock: &mut LatencyClock) -> Option<String> {
        loop {
            if let Some(sentence) = self.ready.pop_front() {
                clock.sentence();
                return Some(sentence);
            }
            if self.done {
                return None;
            }
            match self.chat.next().await {
                Some(Ok(message)) => match message.event {
                    Some(Event::Delta(delta)) => {
                        clock.token();
                        self.buffer.push_str(&delta);
                    }
                    Some(Event::Done(_)) | None => self.done = true,
                },
                Some(Err(s)) => {
                    tracing::warn!(code = ?s.code(), "chat stream failed");
                    self.done = true;
                }
                None => self.done = true,
            }
            while let Some(sentence) = take_sentence(&mut self.buffer, self.done) {
                self.ready.push_back(sentence);
            }
        }
    }
}

/// Speak: each sentence synthesised and handed to playback, with a mark after it; the latency
/// is taken when the reply's first frame is sent.
struct Speaker<'a> {
    ctx: &'a TurnContext,
    caller_seq: i64,
    progress: Arc<Mutex<Progress>>,
    clock: LatencyClock,
    first_frame: bool,
    latency: Option<serde_json::Map<String, serde_json::Value>>,
    spoken: String,
    sentences: usize,
}

impl Speaker<'_> {
    /// `Err` when the call has ended (playback is gone). A sentence whose synthesis fails is
    /// skipped.
    async fn speak(&mut self, sentence: String) -> Result<(), String> {
        let ctx = self.ctx;
        self.clock.speech_started();
        self.sentences += 1;
        let mut audio = match ctx.peers.gateway.clone().synthesize_speech(speech_request(ctx, &sentence)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                tracing::warn!(code = ?s.code(), "speech synthesis failed");
                return Ok(());
            }
        };
        while let Some(chunk) = audio.next().await {
            let Ok(chunk) = chunk else { break };
            if chunk.audio.is_empty() {
                continue;
            }
            let first = !self.first_frame;
            let (first_sent, sent) = if first {
                self.first_frame = true;
                self.clock.speech_first_byte();
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            if ctx.playback.send(Command::Audio { bytes: chunk.audio, first_sent }).await.is_err() {
                return Err("the call ended".into());
            }
            if let Some(rx) = sent {
                // The first frame goes out at once (or after the previous reply's tail).
                let sent = rx.await.unwrap_or_else(|_| Instant::now());
                let latency = self.clock.record(sent);
                self.progress.lock().expect("progress").latency = Some(latency.clone());
                self.latency = Some(latency);
            }
        }
        let mark = format!("turn-{}-{}", self.caller_seq + 1, self.sentences);
        let _ = ctx.playback.send(Command::Mark(mark)).await;
        if !self.spoken.is_empty() {
            self.spoken.push(' ');
        }
        self.spoken.push_str(&sentence);
        self.progress.lock().expect("progress").spoken = self.spoken.clone();
        Ok(())
    }
}

/// The stage timings of one turn: each stage's start and first result, taken once, turned
/// into consecutive intervals that add up to the total.
struct LatencyClock {
    speech_end: Instant,
    end_of_turn: Duration,
    hear_started: Instant,
    stt: Duration,
    reply_started: Option<Instant>,
    first_token: Option<Instant>,
    first_sentence: Option<Instant>,
    speech_started: Option<Instant>,
    speech_first_byte: Option<Instant>,
}

impl LatencyClock {
    /// Starts when the end of the caller's turn (which ended their speech at `speech_end`) was
    /// `detected`; hearing starts now.
    fn new(speech_end: Instant, detected: Instant) -> Self {
        Self {
            speech_end,
            end_of_turn: detected.saturating_duration_since(speech_end),
            hear_started: Instant::now(),
            stt: Duration::ZERO,
            reply_started: None,
            first_token: None,
            first_sentence: None,
            speech_started: None,
            speech_first_byte: None,
        }
    }

    fn heard(&mut self) {
        self.stt = self.hear_started.elapsed();
    }

    fn reply_started(&mut self) {
        self.reply_started.get_or_insert_with(Instant::now);
    }

    fn token(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    fn sentence(&mut self) {
        self.first_sentence.get_or_insert_with(Instant::now);
    }

    fn speech_started(&mut self) {
        self.speech_started.get_or_insert_with(Instant::now);
    }

    fn speech_first_byte(&mut self) {
        self.speech_first_byte.get_or_insert_with(Instant::now);
    }

    /// The latency stages once the first frame was sent; recorded as metrics and on the `turn`
    /// span.
    fn record(&self, first_frame: Instant) -> serde_json::Map<String, serde_json::Value> {
        let llm_started = self.reply_started.unwrap_or(first_frame);
        let llm_first_token = self.first_token.unwrap_or(llm_started).saturating_duration_since(llm_started);
        let llm_first_sentence = self
            .first_sentence
            .unwrap_or(llm_started)
            .saturating_duration_since(self.first_token.unwrap_or(llm_started));
        let tts = self
            .speech_first_byte
            .unwrap_or(first_frame)
            .saturating_duration_since(self.speech_started.unwrap_or(first_frame));
        let total = first_frame.saturating_duration_since(self.speech_end);
        let accounted = self.end_of_turn + self.stt + llm_first_token + llm_first_sentence + tts;
        let overhead = total.saturating_sub(accounted);
        let total = accounted + overhead;
        let values = [self.end_of_turn, self.stt, llm_first_token, llm_first_sentence, tts, overhead];
        let span = tracing::Span::current();
        let mut latency = serde_json::Map::new();
        for (stage, value) in STAGES.iter().zip(values) {
            metrics::turn_latency(stage, secs(value));
            latency.insert((*stage).to_string(), json!(secs(value)));
        }
        metrics::turn_latency("total", secs(total));
        latency.insert("total".into(), json!(secs(total)));
        span.record("latency.end_of_turn", secs(self.end_of_turn));
        span.record("latency.stt", secs(self.stt));
        span.record("latency.llm_first_token", secs(llm_first_token));
        span.record("latency.llm_first_sentence", secs(llm_first_sentence));
        span.record("latency.tts_first_byte", secs(tts));
        span.record("latency.overhead", secs(overhead));
        span.record("latency.total", secs(total));
        latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_cut_as_they_complete() {
        let mut b = String::from("Hello there. How are");
        assert_eq!(take_sentence(&mut b, false).as_deref(), Some("Hello there."));
        assert_eq!(take_sentence(&mut b, false), None);
        b.push_str(" you? It costs 3.");
        assert_eq!(take_sentence(&mut b, false).as_deref(), Some("How are you?"));
        assert_eq!(take_sentence(&mut b, false), None, "3. may continue as 3.5");
        b.push_str("5 euros");
        assert_eq!(take_sentence(&mut b, false), None);
        assert_eq!(take_sentence(&mut b, true).as_deref(), Some("It costs 3.5 euros"));
        assert_eq!(take_sentence(&mut b, true), None);
        let mut b = String::from("  ");
        assert_eq!(take_sentence(&mut b, true), None);
    }
}
