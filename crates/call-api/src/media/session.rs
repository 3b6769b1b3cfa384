//! One live call on the media WebSocket: handshake (`connected`, `start` with the token), then
//! inbound frames → one `StreamAudio` gRPC stream to audio-processor, whose voice-activity events
//! drive the turns; barge-in; DTMF; and ending the call exactly once, with the reason, however
//! the session stops (`stop`, connection lost, protocol error, audio-processor lost, shutdown).

use std::{collections::VecDeque, sync::Arc, time::Duration};

use audio_dsp::codec::mulaw_magnitude;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{
    SinkExt as _, StreamExt as _,
    stream::{SplitSink, SplitStream},
};
use kraliki_proto::{
    audio::v1::{
        AudioEncoding, AudioFormat, AudioFrame, AudioFrames, StreamAudioRequest, StreamAudioResponse, StreamConfig,
        VadOptions, stream_audio_request::Payload, stream_audio_response::Event as AudioEvent,
    },
    provider::v1::{ChatMessage, Role},
};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field::Empty};
use uuid::Uuid;

use super::{
    playback::{self, Playback, Player},
    protocol::{self, Inbound},
    quality::{self, CallQuality},
    turn::{self, TurnContext, TurnEvent, TurnInput},
};
use crate::{
    AppState,
    db::calls::EndError,
    metrics,
    model::{Call, Outcome},
};

/// Time allowed between the upgrade and the `start` message, when the URL carried the token.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a socket without a URL token has to prove one in `start` (it holds no live-call slot
/// meanwhile).
pub const UNPROVEN_START_TIMEOUT: Duration = Duration::from_secs(5);

/// How a media socket was let in.
pub enum Admission {
    /// The URL's token matched this call, and a live-call slot is held.
    Proven(Call, tokio::sync::OwnedSemaphorePermit),
    /// No token in the URL: `start` must bring it; no slot yet.
    Unproven(super::Unproven),
}
/// Digits pressed within this of each other form one input.
const DTMF_GAP: Duration = Duration::from_millis(1200);
/// Frames buffered towards audio-processor before new ones are dropped (2 s); the channel holds
/// messages, so it holds this over the frames per message.
const AUDIO_BUFFER_FRAMES: usize = 100;
/// One carrier frame's duration.
const FRAME_TIME: Duration = Duration::from_millis(20);
/// How long a live call tries to reopen its audio stream before it ends as `audio-processor
/// unavailable`.
const AUDIO_RECONNECT_WINDOW: Duration = Duration::from_secs(10);
/// Arrival times kept to map media time to wall time (15 s of frames: a speech end is reported
/// after the end-of-turn silence, at most 10 s).
const ARRIVALS: usize = 750;

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The carrier sent `stop`: the call is over.
    Stopped,
    Lost,
    Protocol(String),
    AudioLost,
    Shutdown,
    /// The call was ended elsewhere (the API on any replica, the carrier's status callback, the
    /// reaper): the session stops and the call stays as that end left it.
    HungUp,
    /// Nothing arrived from the carrier for `MEDIA_IDLE_TIMEOUT_SECONDS`.
    Idle(Duration),
}

impl End {
    fn outcome(&self) -> (Outcome, Option<String>) {
        match self {
            Self::Stopped | Self::HungUp => (Outcome::Completed, None),
            Self::Lost => (Outcome::Failed, Some("media connection lost".into())),
            Self::Protocol(e) => (Outcome::Failed, Some(format!("media protocol error: {e}"))),
            Self::AudioLost => (Outcome::Failed, Some("audio-processor unavailable".into())),
            Self::Shutdown => (Outcome::Failed, Some("service shutting down".into())),
            Self::Idle(after) => {
                (Outcome::Failed, Some(format!("media idle: nothing received for {} s", after.as_secs_f64())))
            }
        }
    }
}

/// The sending half of the media WebSocket, as the player's output.
struct WsOut(SplitSink<WebSocket, Message>);

impl playback::Out for WsOut {
    async fn send(&mut self, text: String) -> bool {
        self.0.send(Message::Text(text.into())).await.is_ok()
    }
}

/// Serves one media WebSocket until the call ends.
pub async fn run(state: AppState, id: Uuid, admission: Admission, socket: WebSocket, end_all: CancellationToken) {
    let (sink, mut stream) = socket.split();
    let (player_tx, player_rx) = tokio::sync::oneshot::channel::<Player>();
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<(u16, String)>();
    // The writer: once the call has started, the player writes the reply's frames to the socket
    // itself (no task hop per frame); the session's close code ends it.
    let writer = tokio::spawn(async move {
        let mut out = WsOut(sink);
        let mut close_rx = close_rx;
        let close = tokio::select! {
            biased;
            close = &mut close_rx => close.ok(),
            player = player_rx => match player {
                Ok(player) => tokio::select! {
                    biased;
                    close = &mut close_rx => close.ok(),
                    // The socket is gone, or the session is over: its close code follows.
                    () = player.run(&mut out) => {
                        tokio::time::timeout(Duration::from_secs(1), close_rx).await.ok().and_then(Result::ok)
                    }
                },
                // The call never started: only its close code is sent.
                Err(_) => close_rx.await.ok(),
            },
        };
        let mut sink = out.0;
        if let Some((code, reason)) = close {
            let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
        }
        let _ = sink.close().await;
    });
    let span = tracing::info_span!(
        "media_session",
        call_id = %id,
        stream_sid = Empty,
        quality.mos = Empty,
        quality.r_factor = Empty,
        quality.jitter_ms = Empty,
        quality.frames_expected = Empty,
        quality.lost = Empty,
        quality.late = Empty,
        quality.duplicated = Empty,
        quality.playback_delay_ms = Empty,
        quality.marks_returned = Empty,
        quality.barge_ins = Empty,
        quality.dead_air_count = Empty,
        quality.dead_air_seconds = Empty,
        quality.talk_ratio = Empty,
    );
    let close = session(state, id, admission, &mut stream, player_tx, end_all).instrument(span).await;
    let _ = close_tx.send(close);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// The session; returns the close code and reason for the WebSocket.
async fn session(
    state: AppState,
    id: Uuid,
    admission: Admission,
    stream: &mut SplitStream<WebSocket>,
    player: tokio::sync::oneshot::Sender<Player>,
    end_all: CancellationToken,
) -> (u16, String) {
    // Handshake: `connected` (optional), then `start`.
    let limit = match admission {
        Admission::Proven(..) => START_TIMEOUT,
        Admission::Unproven(_) => UNPROVEN_START_TIMEOUT,
    };
    let (stream_sid, custom) = match tokio::time::timeout(limit, handshake(stream)).await {
        Err(_) => {
            if matches!(admission, Admission::Unproven(_)) {
                crate::metrics::request_limited("media_unauthenticated");
            }
            return (1008, "no start message in time".into());
        }
        Ok(Err(e)) => {
            tracing::info!(error = %e, "media handshake refused");
            return (1008, e);
        }
        Ok(Ok(started)) => started,
    };
    tracing::Span::current().record("stream_sid", stream_sid.as_str());
    // The token proves the stream belongs to this call (checked before anything changes), and
    // only then does the call take a live-call slot.
    let _slot = match admission {
        Admission::Proven(_, slot) => slot,
        Admission::Unproven(unproven) => {
            let Some(token) = custom.get("token") else {
                crate::metrics::request_limited("media_unauthenticated");
                return (1008, "missing media token".into());
            };
            match state.db.call_for_media_token(id, token).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    crate::metrics::request_limited("media_unauthenticated");
                    return (1008, "invalid or expired media token".into());
                }
                Err(_) => return (1011, "database unavailable".into()),
            }
            drop(unproven);
            match state.live.admit() {
                Ok(slot) => slot,
                // 1013: try again later (RFC 6455 registry).
                Err(_) => return (1013, "this replica carries its maximum of live calls".into()),
            }
        }
    };
    // queued → in_progress, once: a second stream for the same call is refused.
    let call = match state.db.mark_in_progress(id, &state.replica.lease_owner, state.replica.lease_expiry()).await {
        Ok(Some(started)) => started,
        Ok(None) => return (1008, "the call already has media or has ended".into()),
        Err(_) => return (1011, "database unavailable".into()),
    };
    let _active = metrics::ActiveCall::start(call.provider);
    let registration = state.live.register(id);
    tracing::info!(replica = %state.replica.id, "live call started");

    let mut live = match Live::start(&state, &call, &stream_sid, player).await {
        Ok(live) => live,
        Err(end) => return finish(&state, &call, end, None).await,
    };
    let greeting = match call.metadata.get("greeting") {
        Some(serde_json::Value::String(g)) => Some(g.trim().to_string()).filter(|g| !g.is_empty()),
        _ => state.live_config.greeting.clone(),
    };
    if let Some(text) = greeting {
        live.greet(text);
    }
    let end = live.serve(stream, &end_all, &registration.hang_up).await;
    live.stop();
    live.writes_done().await;
    let quality = live.quality();
    let cost = live.ctx.cost.clone();
    drop(live);
    store_cost(&state, call.id, cost).await;
    finish(&state, &call, end, Some(quality)).await
}

async fn handshake(
    stream: &mut SplitStream<WebSocket>,
) -> Result<(String, std::collections::BTreeMap<String, String>), String> {
    loop {
        match stream.next().await {
            Some(Err(e)) if is_too_long(&e) => {
                crate::metrics::request_limited("ws_message");
                return Err("a message is larger than MEDIA_WS_MAX_MESSAGE_BYTES".into());
            }
            None | Some(Err(_)) => return Err("connection closed before start".into()),
            Some(Ok(Message::Text(text))) => match protocol::parse(&text)? {
                Inbound::Connected => continue,
                Inbound::Start { stream_sid, custom_parameters, .. } => return Ok((stream_sid, custom_parameters)),
                other => return Err(format!("expected start, got {}", event_name(&other))),
            },
            Some(Ok(Message::Close(_))) => return Err("connection closed before start".into()),
            Some(Ok(Message::Binary(_))) => return Err("binary frames are not part of the protocol".into()),
            Some(Ok(_)) => continue,
        }
    }
}

fn event_name(m: &Inbound) -> &'static str {
    match m {
        Inbound::Connected => "connected",
        Inbound::Start { .. } => "start",
        Inbound::Media { .. } => "media",
        Inbound::Mark { .. } => "mark",
        Inbound::Dtmf { .. } => "dtmf",
        Inbound::Stop => "stop",
    }
}

/// Prices the session's provider usage once its turns have stopped (a turn cut by the end of
/// the call lets go within moments) and stores it on the call, before the call is ended.
async fn store_cost(state: &AppState, id: Uuid, cost: crate::pricing::CostMeter) {
    let Some(cost) = cost.settle(Duration::from_secs(2)).await else { return };
    if let Err(e) = state.db.set_live_cost(id, &cost).await {
        tracing::warn!(error = %e, "could not store the call's cost");
    }
}

/// Ends the call with the session's outcome (exactly once; a call ended meanwhile by the API or
/// the carrier's status callback stays as it is) and picks the WebSocket close code. The line
/// quality is stored first (by this replica, which holds the media, whoever ends the call), so
/// that an ended call's quality is there as soon as it reads as ended.
async fn finish(state: &AppState, call: &Call, end: End, quality: Option<CallQuality>) -> (u16, String) {
    if let Some(q) = &quality {
        record_quality(q);
        if let Err(e) = state.db.store_quality(call.id, q).await {
            tracing::warn!(error = %e, "could not store the call's line quality");
        }
    }
    let (outcome, reason) = end.outcome();
    let result = match &reason {
        None => state.db.end_call(&call.tenant, call.id, outcome).await,
        Some(r) => state.db.end_call_with_reason(&call.tenant, call.id, outcome, r).await,
    };
    match result {
        Ok(ended) => {
            if matches!(end, End::Shutdown) {
                metrics::call_cut_by_shutdown();
            }
            metrics::call_ended(ended.provider, outcome, ended.duration_seconds.unwrap_or_default());
            tracing::info!(outcome = %outcome, reason = reason.as_deref().unwrap_or(""), "live call ended");
        }
        Err(EndError::AlreadyEnded) => tracing::info!("live call had already ended"),
        Err(e) => tracing::warn!(error = %e, "could not end the live call"),
    }
    match end {
        End::Stopped | End::Lost | End::HungUp => (1000, "call ended".into()),
        End::Protocol(e) => (1008, e.chars().take(120).collect()),
        End::AudioLost => (1011, "audio-processor unavailable".into()),
        End::Shutdown => (1001, "service shutting down".into()),
        End::Idle(_) => (1008, "no media received in time".into()),
    }
}

/// The call's line quality on its metrics and on the session's span.
fn record_quality(q: &CallQuality) {
    metrics::call_quality(q);
    let span = tracing::Span::current();
    let i = &q.inbound;
    span.record("quality.jitter_ms", i.jitter_seconds * 1000.0);
    span.record("quality.frames_expected", i.frames_expected);
    span.record("quality.lost", i.frames_lost);
    span.record("quality.late", i.frames_late);
    span.record("quality.duplicated", i.frames_duplicated);
    if let Some(e) = &q.estimate {
        span.record("quality.mos", e.mos);
        span.record("quality.r_factor", e.r_factor);
    }
    if let Some(d) = q.playback.delay_mean_seconds {
        span.record("quality.playback_delay_ms", d * 1000.0);
    }
    span.record("quality.marks_returned", q.playback.marks_returned);
    let c = &q.conversation;
    span.record("quality.barge_ins", c.barge_ins);
    span.record("quality.dead_air_count", c.dead_air_count);
    span.record("quality.dead_air_seconds", c.dead_air_seconds);
    if let Some(r) = c.talk_ratio {
        span.record("quality.talk_ratio", r);
    }
    tracing::info!(
        mos = q.estimate.as_ref().map(|e| e.mos),
        jitter_ms = i.jitter_seconds * 1000.0,
        lost = i.frames_lost,
        late = i.frames_late,
        duplicated = i.frames_duplicated,
        "live call line quality"
    );
}

/// A started live call.
struct Live {
    call_id: Uuid,
    peers: crate::peers::Peers,
    /// `LIVE_END_OF_TURN_SECONDS`, sent with every audio stream this call opens.
    end_of_turn: Duration,
    /// The replica's shared audio streams, when calls use them.
    shared_audio: Option<Arc<super::legs::SharedAudio>>,
    audio: AudioSink,
    audio_events: mpsc::Receiver<Option<StreamAudioResponse>>,
    /// Inbound frames waiting to go to audio-processor together (`LIVE_AUDIO_FRAMES_PER_MESSAGE`
    /// of them per message); empty when that is 1.
    batch: Vec<AudioFrame>,
    frames_per_message: usize,
    turn_events: mpsc::Receiver<TurnEvent>,
    ctx: TurnContext,
    playback: Playback,
    /// (media time ms, arrival) of recent frames.
    arrivals: VecDeque<(u64, Instant)>,
    history: Vec<ChatMessage>,
    next_seq: i64,
    /// The running turn: its cancel token and caller seq.
    current: Option<(CancellationToken, i64)>,
    /// The agent's last reply (its seq) while it may still be playing.
    last_agent_seq: Option<i64>,
    in_speech: bool,
    /// When recent inbound frames carried sound (the last second), to tell a caller who keeps
    /// talking from a short sound: the detector reports the end of speech only after the
    /// end-of-turn silence.
    loud: VecDeque<Instant>,
    /// Speech that began during the reply and was judged a short sound: not a turn.
    filler: bool,
    barge_deadline: Option<Instant>,
    barge_in: Duration,
    /// The carrier's last message; a call with none for `idle` ends.
    last_inbound: Instant,
    idle: Duration,
    dtmf: String,
    dtmf_deadline: Option<Instant>,
    /// The failures already logged at WARN for this call (by stage and reason): each once.
    warned: std::collections::HashSet<String>,
    /// Line quality: the inbound frames' numbers, measured against `epoch`.
    inbound: quality::Inbound,
    epoch: Instant,
    /// Playback delays of the marks that came back.
    delays: quality::Delays,
    barge_ins: u64,
    /// Database writes the session started and does not wait for (a barge-in's mark on the
    /// interrupted turn): a slow database must not hold up the call's audio. They are waited for
    /// before the call's end is stored.
    writes: tokio::task::JoinSet<()>,
    /// The turn and greeting tasks not known to have ended: the call's end is stored after them
    /// (at most [`TURN_WRITES_GRACE`]), so whoever reads an ended call reads its turns with their
    /// outcomes. Handles, not a `JoinSet`: dropped, they let the tasks finish their writes.
    turns: Vec<tokio::task::JoinHandle<()>>,
    /// The caller's speech so far (voice activity), and when the current speech began.
    caller_speech: Duration,
    caller_since: Option<Instant>,
}

impl Live {
    async fn start(
        state: &AppState,
        call: &Call,
        stream_sid: &str,
        player: tokio::sync::oneshot::Sender<Player>,
    ) -> Result<Self, End> {
        let end_of_turn = state.live_config.end_of_turn;
        let frames_per_message = state.live_config.audio_frames_per_message;
        let (audio_tx, audio_events) =
            open_audio(&state.peers, state.shared_audio.as_ref(), call.id, end_of_turn, frames_per_message)
                .await
                .map_err(|s| {
                    tracing::warn!(code = ?s.code(), "audio-processor refused the stream");
                    End::AudioLost
                })?;
        let (playback, player_half) =
            Playback::new(stream_sid, Arc::new(quality::Outbound::new(state.live_config.dead_air)));
        let _ = player.send(player_half);
        let (turn_tx, turn_events) = mpsc::channel(16);
        let system_prompt = call
            .metadata
            .get("system_prompt")
            .and_then(|v| v.as_str())
            .map_or_else(|| state.live_config.system_prompt.clone(), str::to_string);
        let ctx = TurnContext {
            call_id: call.id,
            tenant: call.tenant.as_str().into(),
            peers: state.peers.clone(),
            db: state.db.clone(),
            system_prompt,
            language: state.live_config.language.clone(),
            limits: state.live_config.turn,
            fallback: state.live_config.fallback.clone(),
            playback: playback.commands.clone(),
            events: turn_tx,
            cost: crate::pricing::CostMeter::new(state.prices.clone()),
        };
        Ok(Self {
            call_id: call.id,
            peers: state.peers.clone(),
            end_of_turn,
            shared_audio: state.shared_audio.clone(),
            audio: audio_tx,
            audio_events,
            batch: Vec::with_capacity(if frames_per_message > 1 { frames_per_message } else { 0 }),
            frames_per_message,
            turn_events,
            ctx,
            playback,
            arrivals: VecDeque::with_capacity(ARRIVALS),
            history: Vec::new(),
            next_seq: 1,
            current: None,
            last_agent_seq: None,
            in_speech: false,
            loud: VecDeque::new(),
            filler: false,
            barge_deadline: None,
            barge_in: state.live_config.barge_in,
            last_inbound: Instant::now(),
            idle: state.limits.media_idle_timeout,
            dtmf: String::new(),
            dtmf_deadline: None,
            warned: Default::default(),
            inbound: quality::Inbound::default(),
            epoch: Instant::now(),
            delays: quality::Delays::default(),
            barge_ins: 0,
            writes: tokio::task::JoinSet::new(),
            turns: Vec::new(),
            caller_speech: Duration::ZERO,
            caller_since: None,
        })
    }

    /// The wall time a media time (ms) arrived at; now when unknown.
    fn wall(&self, media_ms: u64) -> Instant {
        self.arrivals.iter().find(|(t, _)| *t >= media_ms).or(self.arrivals.back()).map_or_else(Instant::now, |a| a.1)
    }

    fn agent_active(&self) -> bool {
        self.current.is_some() || self.playback.queued_frames() > 0
    }

    async fn serve(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        end_all: &CancellationToken,
        hang_up: &CancellationToken,
    ) -> End {
        // When a partial batch of inbound frames goes without the rest (they are late): made
        // while a batch waits and dropped with the select when the batch fills, which takes it
        // off the timer wheel. A timer kept across batches stays on the wheel after its batch
        // went, and wakes the runtime thread for nothing once per batch.
        let mut flush_at: Option<Instant> = None;
        // Made once, not per message: a timer made per message would register with the timer
        // wheel (a lock) and unregister when the next frame wins. The idle timer stays at an old
        // deadline and is moved on when it fires early.
        let idle_timer = tokio::time::sleep_until(self.last_inbound + self.idle);
        // Shutdown and hang-up come as one message from a task that waits on both tokens: the
        // loop below wakes ~50 times a second, `select!` polls its arms at each wake-up, and a
        // token's poll takes two locks (its own and its `Notify`'s); a oneshot's is an atomic
        // load.
        let (stop_tx, stop) = tokio::sync::oneshot::channel();
        let (end_all, hang_up) = (end_all.clone(), hang_up.clone());
        let _watcher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let end = tokio::select! {
                biased;
                () = end_all.cancelled() => End::Shutdown,
                () = hang_up.cancelled() => End::HungUp,
            };
            let _ = stop_tx.send(end);
        }));
        tokio::pin!(idle_timer, stop);
        loop {
            let barge = self.barge_deadline;
            let dtmf = self.dtmf_deadline;
            tokio::select! {
                end = &mut stop => return end.unwrap_or(End::Shutdown),
                () = &mut idle_timer => {
                    let idle = self.last_inbound + self.idle;
                    if idle > Instant::now() {
                        idle_timer.as_mut().reset(idle);
                        continue;
                    }
                    tracing::warn!(idle_seconds = self.idle.as_secs_f64(), "live call ended: the carrier sent nothing");
                    return End::Idle(self.idle);
                }
                message = stream.next() => {
                    self.last_inbound = Instant::now();
                    let text = match message {
                        Some(Err(e)) if is_too_long(&e) => {
                            crate::metrics::request_limited("ws_message");
                            return End::Protocol("a message is larger than MEDIA_WS_MAX_MESSAGE_BYTES".into());
                        }
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Lost,
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(_))) => return End::Protocol("binary frames are not part of the protocol".into()),
                        Some(Ok(_)) => continue,
                    };
                    match protocol::parse(&text) {
                        Err(e) => return End::Protocol(e),
                        Ok(Inbound::Media { sequence_number, timestamp_ms, payload }) => {
                            self.frame(sequence_number, timestamp_ms, payload);
                            flush_at = match self.batch.len() {
                                0 => None,
                                1 => Some(self.last_inbound + self.batch_wait()),
                                _ => flush_at,
                            };
                        }
                        Ok(Inbound::Stop) => return End::Stopped,
                        Ok(Inbound::Mark { name, sequence_number }) => self.mark_echoed(&name, sequence_number),
                        Ok(Inbound::Connected) => {}
                        Ok(Inbound::Dtmf { digit, sequence_number }) => {
                            self.inbound.other(sequence_number);
                            self.dtmf.push(digit);
                            self.dtmf_deadline = Some(Instant::now() + DTMF_GAP);
                            if self.dtmf.len() > 32 {
                                self.dtmf.drain(..1);
                            }
                        }
                        Ok(Inbound::Start { .. }) => return End::Protocol("start sent twice".into()),
                    }
                }
                event = self.audio_events.recv() => match event.flatten() {
                    None => {
                        if let Err(end) = self.reconnect_audio().await {
                            return end;
                        }
                    }
                    Some(e) => self.audio_event(e),
                },
                Some(event) = self.turn_events.recv() => self.turn_event(event),
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    flush_at = None;
                    self.flush_audio();
                }
                () = sleep_until(barge), if barge.is_some() => {
                    self.barge_deadline = None;
                    if self.in_speech && self.agent_active() {
                        if self.still_talking() {
                            self.interrupt();
                        } else {
                            self.filler = true;
                        }
                    }
                }
                () = sleep_until(dtmf), if dtmf.is_some() => {
                    self.dtmf_deadline = None;
                    let digits = std::mem::take(&mut self.dtmf);
                    let text = format!("(The caller pressed the keys {digits} on the keypad.)");
                    self.start_turn(None, Some(text), Instant::now(), crate::model::now());
                }
            }
        }
    }

    /// The audio stream ended mid-call (an audio-processor replica shutting down says "reconnect
    /// to another replica"): opens a new one, retrying for [`AUDIO_RECONNECT_WINDOW`]. Frames
    /// meanwhile wait in the WebSocket; speech in progress is forgotten.
    async fn reconnect_audio(&mut self) -> Result<(), End> {
        let deadline = Instant::now() + AUDIO_RECONNECT_WINDOW;
        let mut pause = Duration::from_millis(100);
        loop {
            match open_audio(
                &self.peers,
                self.shared_audio.as_ref(),
                self.call_id,
                self.end_of_turn,
                self.frames_per_message,
            )
            .await
            {
                Ok((audio, events)) => {
                    // Frames held for the old stream are as lost as the speech in progress.
                    self.batch.clear();
                    self.audio = audio;
                    self.audio_events = events;
                    self.in_speech = false;
                    self.caller_ended(Instant::now());
                    self.barge_deadline = None;
                    self.filler = false;
                    metrics::audio_reconnected();
                    tracing::info!("audio stream reconnected");
                    return Ok(());
                }
                Err(s) if Instant::now() + pause < deadline => {
                    tracing::debug!(code = ?s.code(), "audio stream reconnect failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(s) => {
                    tracing::warn!(code = ?s.code(), "audio-processor unavailable: could not reconnect the audio stream");
                    return Err(End::AudioLost);
                }
            }
        }
    }

    /// At least 3 of the last 10 frames (200 ms) carried sound.
    fn still_talking(&self) -> bool {
        let since = Instant::now() - Duration::from_millis(200);
        self.loud.iter().filter(|t| **t >= since).count() >= 3
    }

    /// One inbound frame: to audio-processor alone or in the call's batch, never blocking the
    /// reader (a full buffer drops).
    fn frame(&mut self, sequence_number: u64, timestamp_ms: u64, payload: Vec<u8>) {
        let now = Instant::now();
        self.inbound.media(sequence_number, timestamp_ms, now.duration_since(self.epoch).as_secs_f64());
        if is_loud(&payload) {
            while self.loud.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1)) {
                self.loud.pop_front();
            }
            self.loud.push_back(now);
        }
        if self.arrivals.len() == ARRIVALS {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back((timestamp_ms, now));
        let frame = AudioFrame {
            sequence_number,
            timestamp: Some(prost_types_duration(timestamp_ms)),
            payload,
            // The edge's arrival time, for audio-processor's jitter: a batched frame reaches it
            // later than it reached us.
            received_at: Some(std::time::SystemTime::now().into()),
        };
        if self.frames_per_message <= 1 {
            self.send_audio(StreamAudioRequest { payload: Some(Payload::Frame(frame)) });
        } else {
            self.batch.push(frame);
            if self.batch.len() >= self.frames_per_message {
                self.flush_audio();
            }
        }
    }

    /// Sends the batched frames, if any, as one message.
    fn flush_audio(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let frames = std::mem::replace(&mut self.batch, Vec::with_capacity(self.frames_per_message));
        self.send_audio(StreamAudioRequest { payload: Some(Payload::Frames(AudioFrames { frames })) });
    }

    /// How long the first frame of a batch may wait for the rest: the time the others take to
    /// arrive on the 20 ms clock, and half a frame of slack. A carrier pausing its frames
    /// (nothing to send) does not hold back the last ones.
    fn batch_wait(&self) -> Duration {
        FRAME_TIME * (self.frames_per_message.max(1) as u32 - 1) + FRAME_TIME / 2
    }

    /// One message to audio-processor, never blocking the reader: a full buffer drops it. The
    /// audio stream having ended (an audio-processor shutting down) drops it too: its events
    /// channel says so, and the call reopens the stream; ending the call here instead raced the
    /// reconnection.
    fn send_audio(&mut self, message: StreamAudioRequest) {
        let frames = frames_in(&message);
        if !self.audio.try_send(message) {
            metrics::media_frame_dropped(frames);
        }
    }

    fn audio_event(&mut self, response: StreamAudioResponse) {
        match response.event {
            Some(AudioEvent::SpeechStarted(started)) => {
                let at = started.at.map_or_else(Instant::now, |at| self.wall(duration_ms(at)));
                self.playback.quality.caller_started(at);
                self.caller_since = Some(at);
                self.in_speech = true;
                if self.agent_active() {
                    self.barge_deadline = Some(Instant::now() + self.barge_in);
                }
            }
            Some(AudioEvent::SpeechEnded(ended)) => {
                self.in_speech = false;
                let (start_ms, end_ms) = (ended.start.map_or(0, duration_ms), ended.end.map_or(0, duration_ms));
                self.caller_speech += Duration::from_millis(end_ms.saturating_sub(start_ms));
                self.caller_since = None;
                self.playback.quality.caller_ended(self.wall(end_ms));
                if self.barge_deadline.take().is_some() || std::mem::take(&mut self.filler) {
                    // Short speech while the agent talks ("uh-huh", a cough): not a turn.
                    tracing::debug!("short speech during the reply ignored");
                    return;
                }
                let speech_end = self.wall(end_ms);
                let spoken_for = Duration::from_millis(end_ms.saturating_sub(start_ms));
                let started_at = crate::model::now()
                    - chrono::Duration::from_std(spoken_for + speech_end.elapsed()).unwrap_or_default();
                self.start_turn(Some(ended.pcm16_16khz), None, speech_end, started_at);
            }
            Some(AudioEvent::Dtmf(_) | AudioEvent::Stats(_) | AudioEvent::SpeechAudio(_)) | None => {}
        }
    }

    fn start_turn(
        &mut self,
        speech: Option<Vec<u8>>,
        text: Option<String>,
        speech_end: Instant,
        caller_started_at: chrono::DateTime<chrono::Utc>,
    ) {
        if let Some((cancel, _)) = self.current.take() {
            // The caller went on talking before the reply started: answer everything at once.
            cancel.cancel();
        }
        let caller_seq = self.next_seq;
        self.next_seq += 2;
        let cancel = CancellationToken::new();
        self.current = Some((cancel.clone(), caller_seq));
        let input = TurnInput { caller_seq, speech, text, speech_end, detected: Instant::now(), caller_started_at };
        let task = tokio::spawn(turn::run(self.ctx.clone(), input, self.history.clone(), cancel));
        self.track_turn(task);
    }

    fn track_turn(&mut self, task: tokio::task::JoinHandle<()>) {
        self.turns.retain(|t| !t.is_finished());
        self.turns.push(task);
    }

    fn turn_event(&mut self, event: TurnEvent) {
        match event {
            TurnEvent::Heard { text, .. } => self.history.push(ChatMessage { role: Role::User as i32, content: text }),
            TurnEvent::Replied { caller_seq, text, interrupted } => {
                if !text.is_empty() {
                    self.history.push(ChatMessage { role: Role::Assistant as i32, content: text });
                }
                if !interrupted {
                    self.last_agent_seq = Some(caller_seq + 1);
                }
                if self.current.as_ref().is_some_and(|(_, s)| *s == caller_seq) {
                    self.current = None;
                }
            }
            TurnEvent::Unanswered { caller_seq, failed, fallback_spoken } => {
                match failed {
                    // Once per call and reason: a provider down fails every turn the same way.
                    Some(f) if self.warned.insert(format!("{}/{}", f.stage.as_str(), f.reason)) => {
                        tracing::warn!(turn = caller_seq, stage = f.stage.as_str(), reason = %f.reason, "turn failed");
                    }
                    Some(f) => {
                        tracing::debug!(turn = caller_seq, stage = f.stage.as_str(), reason = %f.reason, "turn failed")
                    }
                    None if caller_seq < 0 => tracing::info!("the greeting produced no audio"),
                    None => tracing::debug!(turn = caller_seq, "no words in the caller's turn"),
                }
                if fallback_spoken {
                    self.last_agent_seq = Some(caller_seq + 1);
                }
                if self.current.as_ref().is_some_and(|(_, s)| *s == caller_seq) {
                    self.current = None;
                }
            }
        }
    }

    /// Barge-in: the caller talks over the agent. The carrier drops its buffered audio, the
    /// reply in the works is cancelled (its provider streams with it), and the reply is
    /// recorded as interrupted.
    /// Starts the greeting as the current reply (turn 0), so that barge-in cancels it.
    fn greet(&mut self, text: String) {
        let cancel = CancellationToken::new();
        self.current = Some((cancel.clone(), -1));
        let task = tokio::spawn(turn::greet(self.ctx.clone(), text, cancel));
        self.track_turn(task);
    }

    fn interrupt(&mut self) {
        metrics::barge_in();
        self.barge_ins += 1;
        tracing::info!("barge-in");
        self.playback.clear();
        if let Some((cancel, caller_seq)) = self.current.take() {
            cancel.cancel();
            self.last_agent_seq = Some(caller_seq + 1);
        }
        if let Some(seq) = self.last_agent_seq.take() {
            // The session goes on reading the carrier's frames while the mark is written.
            while self.writes.try_join_next().is_some() {}
            let (db, call_id) = (self.ctx.db.clone(), self.call_id);
            self.writes.spawn(
                async move {
                    if let Err(e) = db.mark_turn_interrupted(call_id, seq).await {
                        tracing::warn!(error = %e, "could not mark the turn interrupted");
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// Waits for the database writes the session started and for its turns (cancelled by
    /// [`Live::stop`], they store their outcomes) before the call's end is stored; the turns for
    /// at most [`TURN_WRITES_GRACE`], after which they finish on their own.
    async fn writes_done(&mut self) {
        while self.writes.join_next().await.is_some() {}
        let turns = std::mem::take(&mut self.turns);
        if tokio::time::timeout(TURN_WRITES_GRACE, futures_util::future::join_all(turns)).await.is_err() {
            tracing::warn!("the call's end is stored before its last turn's writes");
        }
    }

    /// The carrier echoed mark `name`: the audio before it has played.
    fn mark_echoed(&mut self, name: &str, sequence_number: Option<u64>) {
        self.inbound.other(sequence_number);
        if let Some(delay) = self.playback.quality.mark_echoed(name, Instant::now()) {
            metrics::playback_delay(delay.as_secs_f64());
            self.delays.add(delay);
        }
    }

    fn caller_ended(&mut self, at: Instant) {
        if let Some(since) = self.caller_since.take() {
            self.caller_speech += at.saturating_duration_since(since);
            self.playback.quality.caller_ended(at);
        }
    }

    /// The call's line quality as it ends.
    fn quality(&mut self) -> CallQuality {
        let now = Instant::now();
        self.caller_ended(now);
        let (dead_air_count, dead_air, agent_speech) = self.playback.quality.finish(now);
        CallQuality::from_measured(
            quality::Measured {
                inbound: &self.inbound,
                delays: self.delays,
                barge_ins: self.barge_ins,
                dead_air: (dead_air_count, dead_air),
                caller_speech: self.caller_speech,
                agent_speech,
            },
            crate::model::now(),
        )
    }

    fn stop(&mut self) {
        // The last frames reach audio-processor before the stream half-closes.
        self.flush_audio();
        if let Some((cancel, _)) = self.current.take() {
            cancel.cancel();
        }
    }
}

/// The longest the call's end waits for the turns it cut short to store their outcomes.
const TURN_WRITES_GRACE: Duration = Duration::from_secs(10);

/// How many frames a message to audio-processor carries.
fn frames_in(message: &StreamAudioRequest) -> u64 {
    match &message.payload {
        Some(Payload::Frames(f)) => f.frames.len() as u64,
        Some(Payload::Frame(_)) => 1,
        _ => 0,
    }
}

/// Whether a μ-law frame carries sound: mean magnitude above about -40 dBFS.
fn is_loud(mulaw: &[u8]) -> bool {
    if mulaw.is_empty() {
        return false;
    }
    // A table of magnitudes: a read and an add a byte.
    let sum: u64 = mulaw.iter().map(|&b| u64::from(mulaw_magnitude(b))).sum();
    sum / mulaw.len() as u64 > 300
}

/// The most bytes of an utterance's audio in one message from audio-processor (0.25 s of 16 kHz
/// PCM16, within tonic's default 8 KiB decode buffer): a long utterance sent whole would grow
/// the stream's receive buffer to its size for the rest of the call.
const SPEECH_AUDIO_PART_BYTES: u32 = 8_000;
/// The longest utterance kept from its parts: 600 s of 16 kHz PCM16 (audio-processor's longest
/// `max_utterance`).
const MAX_UTTERANCE_BYTES: usize = 600 * 16_000 * 2;

/// Where a call's audio goes: its own `StreamAudio` stream, or its leg of a shared one.
enum AudioSink {
    Stream(mpsc::Sender<StreamAudioRequest>),
    Leg(super::legs::LegSink),
}

impl AudioSink {
    /// Sends `message` without waiting; false when it was dropped (a full buffer, or the stream
    /// has ended: its events say so too, and the call reopens it).
    fn try_send(&self, message: StreamAudioRequest) -> bool {
        match self {
            AudioSink::Stream(tx) => tx.try_send(message).is_ok(),
            AudioSink::Leg(leg) => leg.try_send(message),
        }
    }
}

type AudioStream = (AudioSink, mpsc::Receiver<Option<StreamAudioResponse>>);

/// Opens the call's audio stream: its own `StreamAudio` stream (config sent first), or a leg of
/// the shared stream when `shared` is set. Events arrive on the receiver; `None` when the
/// stream ended, whether cleanly or with an error.
async fn open_audio(
    peers: &crate::peers::Peers,
    shared: Option<&Arc<super::legs::SharedAudio>>,
    call_id: Uuid,
    end_of_turn: Duration,
    frames_per_message: usize,
) -> Result<AudioStream, tonic::Status> {
    let config = StreamConfig {
        call_id: call_id.to_string(),
        format: Some(AudioFormat { encoding: AudioEncoding::Mulaw as i32, sample_rate_hz: 8000, channels: 1 }),
        vad: Some(VadOptions {
            end_of_turn_silence: Some(prost_types_duration(end_of_turn.as_millis() as u64)),
            ..Default::default()
        }),
        max_utterance: None,
        speech_audio_part_bytes: SPEECH_AUDIO_PART_BYTES,
    };
    if let Some(shared) = shared {
        let (leg, events) = shared.open(peers, config).await?;
        return Ok((AudioSink::Leg(leg), events));
    }
    let (audio_tx, audio_rx) = mpsc::channel(AUDIO_BUFFER_FRAMES.div_ceil(frames_per_message.max(1)));
    audio_tx
        .send(StreamAudioRequest { payload: Some(Payload::Config(config)) })
        .await
        .map_err(|_| tonic::Status::internal("audio channel closed"))?;
    let mut inbound = peers.audio.clone().stream_audio(ReceiverStream::new(audio_rx)).await?.into_inner();
    let (events_tx, audio_events) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut utterance = Utterance::default();
        while let Some(message) = inbound.next().await {
            match message {
                Ok(m) => {
                    if let Some(m) = utterance.join(m)
                        && events_tx.send(Some(m)).await.is_err()
                    {
                        return;
                    }
                }
                Err(s) => {
                    tracing::warn!(code = ?s.code(), message = s.message(), "audio stream failed");
                    break;
                }
            }
        }
        let _ = events_tx.send(None).await;
    });
    Ok((AudioSink::Stream(audio_tx), audio_events))
}

/// The `speech_audio` parts of the utterance under way; its `speech_ended` carries the last.
#[derive(Default)]
pub(crate) struct Utterance(Vec<u8>);

impl Utterance {
    /// Keeps a part (`None`: nothing to pass on) and gives a `speech_ended` the whole utterance;
    /// other events pass as they are.
    pub(crate) fn join(&mut self, mut m: StreamAudioResponse) -> Option<StreamAudioResponse> {
        match &mut m.event {
            Some(AudioEvent::SpeechAudio(part)) => {
                // audio-processor ends an utterance at its max_utterance (at most 600 s): parts
                // beyond that are not kept.
                if self.0.len() + part.pcm16_16khz.len() <= MAX_UTTERANCE_BYTES {
                    self.0.extend_from_slice(&part.pcm16_16khz);
                } else {
                    tracing::warn!(bytes = self.0.len(), "utterance parts beyond 600 s dropped");
                }
                return None;
            }
            Some(AudioEvent::SpeechEnded(ended)) if !self.0.is_empty() => {
                self.0.extend_from_slice(&ended.pcm16_16khz);
                ended.pcm16_16khz = std::mem::take(&mut self.0);
            }
            _ => {}
        }
        Some(m)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn duration_ms(d: prost_types::Duration) -> u64 {
    (d.seconds.max(0) as u64) * 1000 + (d.nanos.max(0) as u64) / 1_000_000
}

fn prost_types_duration(ms: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// Whether a WebSocket read failed on the message size limit (the error's own wording is all
/// axum exposes).
fn is_too_long(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Message too long") || text.contains("Frame too long") || text.contains("Space limit exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_magnitudes_and_loudness() {
        assert_eq!(mulaw_magnitude(0xFF), 0);
        assert_eq!(mulaw_magnitude(0x7F), 0);
        assert_eq!(mulaw_magnitude(0x80), 32124);
        assert_eq!(mulaw_magnitude(0x00), 32124);
        assert!(!is_loud(&[0xFF; 160]));
        assert!(!is_loud(&[]));
        assert!(is_loud(&[0x90; 160]));
    }
}
