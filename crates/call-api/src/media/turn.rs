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
use kraliki_proto::{
    errors::{self as rpc_errors, Reason},
    provider::v1::{
        self as pb, ChatMessage, Role as ChatRole, StreamChatRequest, StreamChatResponse, SynthesizeSpeechRequest,
        TranscribeRequest, stream_chat_response::Event,
    },
};
use serde_json::json;
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field::Empty};
use uuid::Uuid;

use super::playback::Command;
use crate::{
    db::turns::{Role, Stage, Turn, TurnOutcome},
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
    /// The call's tenant (its events carry it).
    pub tenant: Arc<str>,
    pub peers: Peers,
    pub db: crate::db::Database,
    pub system_prompt: String,
    pub language: Option<String>,
    /// Bounds of each stage's provider request and of the reply's length.
    pub limits: TurnLimits,
    /// `LIVE_FALLBACK_TEXT`: said when hearing or the reply fails; `None` stays silent.
    pub fallback: Option<Arc<str>>,
    pub playback: mpsc::Sender<Command>,
    pub events: mpsc::Sender<TurnEvent>,
    /// The call's provider usage, priced when the call ends.
    pub cost: crate::pricing::CostMeter,
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
    /// The turn ended without a reply of the agent's own: no words were heard, a stage
    /// `failed` (and the fallback line was said when `fallback_spoken`), or the greeting produced
    /// no audio (`caller_seq` -1).
    Unanswered { caller_seq: i64, failed: Option<Failure>, fallback_spoken: bool },
}

/// A stage of a turn that failed, told in words safe to show a client (never the transcript).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    /// E.g. "transcription failed: no stt provider is configured".
    pub reason: String,
    /// The provider named by the failure (`none` when no provider is configured, `unknown`
    /// when provider-gateway did not say).
    pub provider: String,
    /// It stays so until someone changes the configuration: no provider is configured, or the
    /// provider refuses our credentials or requests.
    pub configuration: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "turn failed at {}: {}", self.stage.as_str(), self.reason)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// The failure of `stage` from provider-gateway's (or the channel's) status: its message
    /// when the gateway answered with one of our reasons (provider messages are client-safe by
    /// construction there), otherwise words of our own.
    pub fn from_status(stage: Stage, status: &tonic::Status, timeout: Duration) -> Self {
        let what = match stage {
            Stage::Stt => "transcription failed",
            Stage::Llm => "the reply failed",
            Stage::Tts => "speech synthesis failed",
        };
        let info = rpc_errors::info(status);
        let provider =
            info.as_ref().and_then(|(_, m)| m.get("provider").cloned()).unwrap_or_else(|| "unknown".to_string());
        let configuration =
            matches!(info.as_ref().map(|(r, _)| *r), Some(Reason::ProviderNotConfigured | Reason::ProviderRejected))
                || status.code() == tonic::Code::FailedPrecondition;
        let detail = match (info.is_some(), status.code()) {
            (_, tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
                format!("no answer within {} s", timeout.as_secs_f64())
            }
            (true, _) | (false, tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument) => {
                status.message().chars().take(200).collect()
            }
            (false, tonic::Code::Unavailable) => "provider-gateway unavailable".to_string(),
            (false, code) => format!("provider-gateway answered {code:?}"),
        };
        Self { stage, reason: format!("{what}: {detail}"), provider, configuration }
    }

    fn new(stage: Stage, reason: &str) -> Self {
        Self { stage, reason: reason.to_string(), provider: "none".into(), configuration: false }
    }
}

/// Sends a configuration failure to Sentry once per process and reason, tagged with the
/// capability and provider (the transcript is never part of a failure).
fn report(failure: &Failure) {
    if !failure.configuration {
        return;
    }
    let key = format!("turn/{}/{}/{}", failure.stage.as_str(), failure.provider, failure.reason);
    if telemetry::sentry_support::first_time(key) {
        telemetry::capture_exception(
            failure,
            telemetry::ErrorContext::default()
                .tag("capability", failure.stage.capability())
                .tag("provider", failure.provider.as_str())
                .tag("stage", failure.stage.as_str()),
        );
    }
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

/// How a turn ended, before interruption is considered.
enum Ended {
    /// The whole reply was handed to playback.
    Answered,
    /// The transcript held no words.
    NoSpeech,
    /// A stage failed; the caller turn's timings up to the failure.
    Failed(Failure, serde_json::Map<String, serde_json::Value>),
    /// Playback is gone: the call ended under the turn.
    PlaybackGone,
}

/// Runs one turn until its reply has been handed to playback, or until `cancel` (barge-in),
/// then stores how it ended (`outcome`), counts it in `voice_turns_total` and, when hearing or
/// the reply failed, says the fallback line. Its `turn` span carries `turn.number` (the caller
/// turn's `seq`), `turn.interrupted` and, once the reply's first audio went out, the latency
/// stages, `latency.total` being the seconds from the end of the caller's speech to it.
pub async fn run(ctx: TurnContext, input: TurnInput, history: Vec<ChatMessage>, cancel: CancellationToken) {
    let span = tracing::info_span!(
        "turn",
        otel.name = "turn",
        otel.status_code = Empty,
        sentry.op = "voice.turn",
        call_id = %ctx.call_id,
        turn.number = input.caller_seq,
        turn.interrupted = Empty,
        outcome = Empty,
        failed_stage = Empty,
        latency.end_of_turn = Empty,
        latency.stt = Empty,
        latency.llm_first_token = Empty,
        latency.llm_first_sentence = Empty,
        latency.tts_first_byte = Empty,
        latency.overhead = Empty,
        latency.total = Empty,
    );
    let caller_seq = input.caller_seq;
    let speech_end = input.speech_end;
    let progress = Arc::new(Mutex::new(Progress::default()));
    let caller_started_at = input.caller_started_at;
    let ended = async {
        tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            out = turn(&ctx, input, history, progress.clone()) => Some(out),
        }
    }
    .instrument(span.clone())
    .await;
    let mut p = std::mem::take(&mut *progress.lock().expect("progress"));
    // The heard caller's turn may still be being written (by its own task): that write first,
    // so the one below (with the outcome) is the last.
    written(p.caller_stored.take()).await;
    let mut caller =
        p.caller.clone().unwrap_or_else(|| Turn::new(caller_seq, Role::Caller, String::new(), caller_started_at));
    // The agent's reply, stored with the caller's turn in one transaction (the reply's event
    // first, as it ended first).
    let mut agent = None;
    let event = match ended {
        Some(Ended::Answered) => {
            caller.outcome = Some(TurnOutcome::Answered);
            agent = p.agent.take();
            TurnEvent::Replied { caller_seq, text: p.spoken, interrupted: false }
        }
        Some(Ended::NoSpeech) => {
            caller.outcome = Some(TurnOutcome::NoSpeech);
            caller.reason = Some("no words were heard".into());
            TurnEvent::Unanswered { caller_seq, failed: None, fallback_spoken: false }
        }
        Some(Ended::Failed(failure, timings)) => {
            caller.outcome = Some(TurnOutcome::Failed);
            caller.stage = Some(failure.stage);
            caller.reason = Some(failure.reason.clone());
            caller.latency = Some(serde_json::Value::Object(timings));
            span.record("otel.status_code", "ERROR");
            span.record("failed_stage", failure.stage.as_str());
            report(&failure);
            TurnEvent::Unanswered { caller_seq, failed: Some(failure), fallback_spoken: false }
        }
        // Interrupted (barge-in, the caller going on talking, or the call ending): keep what was
        // said so far and how fast it started.
        None | Some(Ended::PlaybackGone) => {
            // Answered once the reply's first frame went out; interrupted before that.
            caller.outcome = Some(if p.latency.is_some() { TurnOutcome::Answered } else { TurnOutcome::Interrupted });
            if let Some(started_at) = p.agent_started_at {
                let mut latency = p.latency.unwrap_or_default();
                latency.insert("interrupted".into(), json!(true));
                let mut agent_turn = Turn::new(caller_seq + 1, Role::Agent, p.spoken.clone(), started_at);
                agent_turn.latency = Some(serde_json::Value::Object(latency));
                agent_turn.interrupted = true;
                agent = Some(agent_turn);
            }
            TurnEvent::Replied { caller_seq, text: p.spoken, interrupted: true }
        }
    };
    let outcome = caller.outcome.unwrap_or(TurnOutcome::Interrupted);
    span.record("outcome", outcome.as_str());
    span.record("turn.interrupted", matches!(event, TurnEvent::Replied { interrupted: true, .. }));
    metrics::turn_outcome(outcome.as_str(), caller.stage.map(Stage::as_str));
    let stored = match &agent {
        Some(agent) => ctx.db.insert_completed_turns(&ctx.tenant, ctx.call_id, &[agent, &caller]).await,
        None => ctx.db.insert_turn(&ctx.tenant, ctx.call_id, &caller).await,
    };
    if let Err(e) = stored {
        tracing::warn!(error = %e, "could not store the turn");
    }
    let event = match event {
        TurnEvent::Unanswered { caller_seq, failed: Some(failure), .. } => {
            let spoken = match (&ctx.fallback, failure.stage) {
                (Some(text), Stage::Stt | Stage::Llm) => tokio::select! {
                    biased;
                    () = cancel.cancelled() => false,
                    spoken = say_fallback(&ctx, caller_seq, text, speech_end).instrument(span) => spoken,
                },
                _ => false,
            };
            TurnEvent::Unanswered { caller_seq, failed: Some(failure), fallback_spoken: spoken }
        }
        other => other,
    };
    let _ = ctx.events.send(event).await;
}

/// Says the fallback line after a failed turn and stores it as the agent's turn (marked
/// `fallback`, its latency the time from the end of the caller's speech to its first frame).
/// Whether it was spoken.
async fn say_fallback(ctx: &TurnContext, caller_seq: i64, text: &str, speech_end: Instant) -> bool {
    let started_at = model::now();
    let mut speaker = Speaker::new(ctx, caller_seq, Arc::default(), None);
    speaker.fallback_from = Some(speech_end);
    if speaker.speak(text.to_string()).await.is_err() || !speaker.first_frame {
        return false;
    }
    let mut turn = Turn::new(caller_seq + 1, Role::Agent, speaker.spoken, started_at);
    turn.fallback = true;
    turn.latency = speaker.latency.map(serde_json::Value::Object);
    if let Err(e) = ctx.db.insert_turn(&ctx.tenant, ctx.call_id, &turn).await {
        tracing::warn!(error = %e, "could not store the fallback turn");
    }
    true
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
    // Playback takes the audio only as fast as it plays (5 s ahead): a long sentence's stream
    // stays open about as long as it is spoken, on top of the synthesis bound.
    request.set_timeout(ctx.limits.speech_timeout + spoken_for(sentence));
    request
}

/// A generous bound of how long `text` takes to say (10 characters a second; speech is faster).
fn spoken_for(text: &str) -> Duration {
    Duration::from_secs_f64(text.chars().count() as f64 / 10.0)
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
        let _ = ctx.events.send(TurnEvent::Unanswered { caller_seq: -1, failed: None, fallback_spoken: false }).await;
        return;
    }
    let mut turn = Turn::new(0, Role::Agent, text.clone(), started_at);
    turn.interrupted = interrupted;
    if let Err(e) = ctx.db.insert_turn(&ctx.tenant, ctx.call_id, &turn).await {
        tracing::warn!(error = %e, "could not store the greeting");
    }
    let _ = ctx.events.send(TurnEvent::Replied { caller_seq: -1, text, interrupted }).await;
}

/// What a turn has done so far, for when it is interrupted or ends.
#[derive(Default)]
struct Progress {
    /// The caller's turn, once heard (stored then, without an outcome).
    caller: Option<Turn>,
    /// Whether the heard caller's turn, written by a task of its own (see [`store_heard`]), is
    /// stored: waited for before the turn is written again.
    caller_stored: Option<watch::Receiver<bool>>,
    agent_started_at: Option<DateTime<Utc>>,
    /// The agent's reply once it was spoken to its end (stored by `run` with the caller's turn).
    agent: Option<Turn>,
    spoken: String,
    latency: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The turn proper, in three stages: hear (transcribe), reply (chat, as a stream of sentences),
/// speak (synthesis and playback of each sentence).
async fn turn(
    ctx: &TurnContext,
    mut input: TurnInput,
    mut history: Vec<ChatMessage>,
    progress: Arc<Mutex<Progress>>,
) -> Ended {
    let caller_seq = input.caller_seq;
    let mut clock = LatencyClock::new(input.speech_end, input.detected);

    let text = match hear(ctx, &mut input).await {
        Ok(text) => text,
        Err(failure) => {
            let timings = clock.failed(Stage::Stt);
            return Ended::Failed(failure, timings);
        }
    };
    clock.heard();
    if text.is_empty() {
        return Ended::NoSpeech;
    }
    let caller_turn = Turn::new(caller_seq, Role::Caller, text.clone(), input.caller_started_at);
    let stored = store_heard(ctx, caller_turn.clone());
    {
        let mut p = progress.lock().expect("progress");
        p.caller = Some(caller_turn);
        p.caller_stored = Some(stored);
    }
    let _ = ctx.events.send(TurnEvent::Heard { caller_seq, text: text.clone() }).await;

    let agent_started_at = model::now();
    progress.lock().expect("progress").agent_started_at = Some(agent_started_at);
    history.push(ChatMessage { role: ChatRole::User as i32, content: text });
    let mut sentences = match reply(ctx, history, &mut clock).await {
        Ok(sentences) => sentences,
        Err(failure) => {
            let timings = clock.failed(Stage::Llm);
            return Ended::Failed(failure, timings);
        }
    };
    let mut speaker = Speaker::new(ctx, caller_seq, progress.clone(), Some(clock));
    let mut speech_failure = None;
    while let Some(sentence) = sentences.next(speaker.clock.as_mut().expect("clock")).await {
        match speaker.speak(sentence).await {
            Ok(None) => {}
            Ok(Some(failure)) => speech_failure = Some(failure),
            Err(()) => return Ended::PlaybackGone,
        }
    }
    let Some(mut latency) = speaker.latency.take().filter(|_| speaker.first_frame) else {
        // Nothing was said: the reply failed or was empty, or every sentence's speech failed.
        let clock = speaker.clock.as_ref().expect("clock");
        let failure = match (sentences.error.take(), speech_failure) {
            (Some(failure), _) => failure,
            (None, Some(failure)) => failure,
            (None, None) if speaker.sentences == 0 => Failure::new(Stage::Llm, "the reply was empty"),
            (None, None) => Failure::new(Stage::Tts, "speech synthesis produced no audio"),
        };
        let timings = clock.failed(failure.stage);
        return Ended::Failed(failure, timings);
    };
    latency.insert("interrupted".into(), json!(false));
    let mut agent_turn = Turn::new(caller_seq + 1, Role::Agent, speaker.spoken.clone(), agent_started_at);
    agent_turn.latency = Some(serde_json::Value::Object(latency));
    let mut p = progress.lock().expect("progress");
    p.spoken = speaker.spoken;
    p.agent = Some(agent_turn);
    Ended::Answered
}

/// Stores the heard caller's turn (no outcome yet) by a task of its own, so that the reply does
/// not wait for the database: awaited here, a busy database held every reply back by as long as
/// the write took (on the 500-call bench, whose embedded SQLite's writers queue for its one
/// write lock, the turns' p99 `overhead` stage was 11–99 ms, 331 in one run; under 1 ms with
/// the write apart). The write is waited for before the turn is written again, so the stored
/// outcome is the last word.
fn store_heard(ctx: &TurnContext, turn: Turn) -> watch::Receiver<bool> {
    let (db, tenant, call_id) = (ctx.db.clone(), ctx.tenant.clone(), ctx.call_id);
    let (done, stored) = watch::channel(false);
    tokio::spawn(
        async move {
            if let Err(e) = db.insert_turn(&tenant, call_id, &turn).await {
                tracing::warn!(error = %e, "could not store the caller's turn");
            }
            let _ = done.send(true);
        }
        .in_current_span(),
    );
    stored
}

/// Returns once the write [`store_heard`] started has ended (at once without one).
async fn written(stored: Option<watch::Receiver<bool>>) {
    if let Some(mut stored) = stored {
        // An error is the writing task gone: nothing more to wait for.
        let _ = stored.wait_for(|done| *done).await;
    }
}

/// Hear: the caller's words, transcribed from their speech (or given as keypad text).
async fn hear(ctx: &TurnContext, input: &mut TurnInput) -> Result<String, Failure> {
    match (input.speech.take(), &input.text) {
        (_, Some(text)) => Ok(text.clone()),
        // The utterance moves into the request (a few hundred KB: no copy).
        (Some(pcm), None) => {
            // 16 kHz PCM16: what the usage is when the provider reports no duration.
            let sent_seconds = pcm.len() as f64 / 32_000.0;
            let mut request = tonic::Request::new(TranscribeRequest {
                audio: pcm,
                encoding: pb::AudioEncoding::Pcm16 as i32,
                sample_rate_hz: 16_000,
                channels: 1,
                language: ctx.language.clone().unwrap_or_default(),
                call_id: ctx.call_id.to_string(),
                ..Default::default()
            });
            request.set_timeout(ctx.limits.transcribe_timeout);
            let mut pending = crate::pricing::Pending::new(&ctx.cost);
            match ctx.peers.gateway.clone().transcribe(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    ctx.cost.speech_to_text(&r.provider, &r.model, r.duration_seconds, sent_seconds);
                    pending.reported();
                    Ok(r.text.trim().to_string())
                }
                Err(s) => {
                    pending.reported();
                    Err(Failure::from_status(Stage::Stt, &s, ctx.limits.transcribe_timeout))
                }
            }
        }
        (None, None) => Ok(String::new()),
    }
}

/// Reply: the conversation so far to a streamed chat completion, read back as sentences.
async fn reply(ctx: &TurnContext, history: Vec<ChatMessage>, clock: &mut LatencyClock) -> Result<Sentences, Failure> {
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
        Ok(r) => Ok(Sentences {
            chat: r.into_inner(),
            buffer: String::new(),
            ready: Default::default(),
            done: false,
            error: None,
            timeout: ctx.limits.reply_timeout,
            cost: ctx.cost.clone(),
            usage: crate::pricing::Pending::new(&ctx.cost),
        }),
        Err(s) => Err(Failure::from_status(Stage::Llm, &s, ctx.limits.reply_timeout)),
    }
}

/// A streamed reply, cut into sentences as they complete.
struct Sentences {
    chat: tonic::Streaming<StreamChatResponse>,
    buffer: String,
    ready: std::collections::VecDeque<String>,
    done: bool,
    /// How the stream broke, if it did.
    error: Option<Failure>,
    timeout: Duration,
    cost: crate::pricing::CostMeter,
    /// Until the stream's last message brings the token counts.
    usage: crate::pricing::Pending,
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
                    Some(Event::Done(done)) => {
                        if let Some(u) = done.usage {
                            let (input, output) = (u64::from(u.prompt_tokens), u64::from(u.completion_tokens));
                            self.cost.chat(&done.provider, &done.model, input, output);
                            self.usage.reported();
                        }
                        self.done = true;
                    }
                    None => self.done = true,
                },
                Some(Err(s)) => {
                    tracing::debug!(code = ?s.code(), "chat stream failed");
                    self.error = Some(Failure::from_status(Stage::Llm, &s, self.timeout));
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
    /// The turn's stage clock; `None` for the fallback line.
    clock: Option<LatencyClock>,
    /// The fallback line: its latency is the time from this (the end of the caller's speech).
    fallback_from: Option<Instant>,
    first_frame: bool,
    latency: Option<serde_json::Map<String, serde_json::Value>>,
    spoken: String,
    sentences: usize,
}

impl<'a> Speaker<'a> {
    fn new(ctx: &'a TurnContext, caller_seq: i64, progress: Arc<Mutex<Progress>>, clock: Option<LatencyClock>) -> Self {
        Self {
            ctx,
            caller_seq,
            progress,
            clock,
            fallback_from: None,
            first_frame: false,
            latency: None,
            spoken: String::new(),
            sentences: 0,
        }
    }

    /// `Err` when the call has ended (playback is gone). A sentence whose synthesis fails is
    /// skipped: `Ok(Some(failure))` says why.
    async fn speak(&mut self, sentence: String) -> Result<Option<Failure>, ()> {
        let ctx = self.ctx;
        if let Some(clock) = self.clock.as_mut() {
            clock.speech_started();
        }
        self.sentences += 1;
        let mut audio = match ctx.peers.gateway.clone().synthesize_speech(speech_request(ctx, &sentence)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                tracing::debug!(code = ?s.code(), "speech synthesis failed");
                return Ok(Some(Failure::from_status(Stage::Tts, &s, ctx.limits.speech_timeout)));
            }
        };
        let mut failure = None;
        // Counted when the stream ends or is dropped (barge-in), with the provider and model of
        // its first message.
        let mut usage = SpeechUsage::new(&ctx.cost, &sentence);
        while let Some(chunk) = audio.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(s) => {
                    failure = Some(Failure::from_status(Stage::Tts, &s, ctx.limits.speech_timeout));
                    break;
                }
            };
            usage.received(&chunk);
            if chunk.audio.is_empty() {
                continue;
            }
            let first = !self.first_frame;
            let (first_sent, sent) = if first {
                self.first_frame = true;
                if let Some(clock) = self.clock.as_mut() {
                    clock.speech_first_byte();
                }
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            if ctx.playback.send(Command::Audio { bytes: chunk.audio, first_sent }).await.is_err() {
                return Err(());
            }
            if let Some(rx) = sent {
                // The first frame goes out at once (or after the previous reply's tail).
                let sent = rx.await.unwrap_or_else(|_| Instant::now());
                let latency = match (&self.clock, self.fallback_from) {
                    (Some(clock), _) => clock.record(sent),
                    (None, from) => {
                        let total = sent.saturating_duration_since(from.unwrap_or(sent));
                        let mut latency = serde_json::Map::new();
                        latency.insert("total".into(), json!(secs(total)));
                        latency
                    }
                };
                self.progress.lock().expect("progress").latency = Some(latency.clone());
                self.latency = Some(latency);
            }
        }
        if self.first_frame || failure.is_none() {
            let mark = format!("turn-{}-{}", self.caller_seq + 1, self.sentences);
            let _ = ctx.playback.send(Command::Mark(mark)).await;
            if !self.spoken.is_empty() {
                self.spoken.push(' ');
            }
            self.spoken.push_str(&sentence);
            self.progress.lock().expect("progress").spoken = self.spoken.clone();
        }
        Ok(failure)
    }
}

/// The usage of one sentence's speech: the characters sent and the μ-law 8 kHz audio received
/// (a byte a sample), recorded under the provider and model of the stream's first message when
/// it ends or is dropped; a stream cut before its first message is unreported.
struct SpeechUsage {
    cost: crate::pricing::CostMeter,
    characters: u64,
    bytes: u64,
    served_by: Option<(String, String)>,
    pending: crate::pricing::Pending,
}

impl SpeechUsage {
    fn new(cost: &crate::pricing::CostMeter, sentence: &str) -> Self {
        Self {
            cost: cost.clone(),
            characters: sentence.chars().count() as u64,
            bytes: 0,
            served_by: None,
            pending: crate::pricing::Pending::new(cost),
        }
    }

    fn received(&mut self, chunk: &pb::SynthesizeSpeechResponse) {
        if self.served_by.is_none() {
            self.served_by = Some((chunk.provider.clone(), chunk.model.clone()));
            self.pending.reported();
        }
        self.bytes += chunk.audio.len() as u64;
    }
}

impl Drop for SpeechUsage {
    fn drop(&mut self) {
        if let Some((provider, model)) = &self.served_by {
            self.cost.text_to_speech(provider, model, self.characters, self.bytes as f64 / 8000.0);
        }
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

    /// The timings of a turn whose `stage` failed: the stages done before it, `failed_after`
    /// (how long the failing stage ran) and `total` (from the end of the caller's speech).
    fn failed(&self, stage: Stage) -> serde_json::Map<String, serde_json::Value> {
        let now = Instant::now();
        let mut timings = serde_json::Map::new();
        timings.insert("end_of_turn".into(), json!(secs(self.end_of_turn)));
        let stage_started = match stage {
            Stage::Stt => self.hear_started,
            Stage::Llm => {
                timings.insert("stt".into(), json!(secs(self.stt)));
                self.reply_started.unwrap_or(now)
            }
            Stage::Tts => {
                timings.insert("stt".into(), json!(secs(self.stt)));
                if let (Some(started), Some(token)) = (self.reply_started, self.first_token) {
                    timings.insert("llm_first_token".into(), json!(secs(token.saturating_duration_since(started))));
                }
                self.speech_started.unwrap_or(now)
            }
        };
        timings.insert("failed_after".into(), json!(secs(now.saturating_duration_since(stage_started))));
        timings.insert("total".into(), json!(secs(now.saturating_duration_since(self.speech_end))));
        timings
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
