//! Live calls: the call's `media_url` WebSocket speaking the Twilio Media Streams protocol, and
//! the turn loop behind it (voice activity in audio-processor → speech to text → streamed chat
//! → streamed speech synthesis → paced μ-law frames back to the carrier, with barge-in).
//!
//! ```text
//! protocol.rs   the carrier's messages, checked; ours, built
//! session.rs    one call: WebSocket reader, audio-processor stream, events, ending the call
//! legs.rs       calls' audio on one shared stream per audio-processor endpoint, gathered
//! turn.rs       one caller turn → one agent reply, its latency stages, storing both turns
//! playback.rs   paces synthesised audio out in 20 ms frames with marks; `clear` on barge-in
//! quality.rs    line quality: inbound jitter/loss, playback delay from mark echoes, dead air, MOS
//! replicas.rs   many replicas: owner and lease of each live call, the reaper, hang-up anywhere
//! ```

pub mod config;
pub mod legs;
pub mod playback;
pub mod protocol;
pub mod quality;
pub mod replicas;
pub mod session;
pub mod turn;

pub use config::{DEFAULT_FALLBACK_TEXT, LiveConfig};

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Path, Query, State, WebSocketUpgrade},
    response::{IntoResponse, Response},
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{AppState, error::ApiError};

/// How long a carrier refused for capacity is asked to wait before trying again.
const BUSY_RETRY_AFTER_SECONDS: u64 = 5;

/// How often a drain reports its progress in the log.
const DRAIN_PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The live calls of this replica: tracked so that shutdown can wait for them, then end them;
/// capped (`LIVE_MAX_CALLS`) so that one call too many is refused instead of slowing all; and
/// registered by call id, so that a hang-up from anywhere reaches the session.
#[derive(Clone)]
pub struct LiveCalls {
    tracker: TaskTracker,
    /// Cancelled when the drain bound has passed: every session ends its call as `failed`.
    end_all: CancellationToken,
    slots: Arc<Semaphore>,
    max: usize,
    /// Running sessions: their hang-up token and when they registered.
    sessions: Arc<Mutex<HashMap<Uuid, (CancellationToken, Instant)>>>,
    /// Media sockets without a URL token that have not proven one yet, per client address.
    unproven: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    /// `MEDIA_UNAUTHENTICATED_PER_IP`.
    unproven_per_ip: usize,
}

/// A session's registration; removed when dropped.
pub struct Registration {
    calls: LiveCalls,
    id: Uuid,
    /// Cancelled when the call is hung up from anywhere.
    pub hang_up: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.calls.sessions().remove(&self.id);
    }
}

impl LiveCalls {
    /// `max` live calls (`LIVE_MAX_CALLS`); `unproven_per_ip` sockets still proving their token
    /// per client address (`MEDIA_UNAUTHENTICATED_PER_IP`).
    pub fn new(max: usize, unproven_per_ip: usize) -> Self {
        crate::metrics::live_calls_max(max);
        crate::metrics::quality_init();
        Self {
            tracker: TaskTracker::new(),
            end_all: CancellationToken::new(),
            slots: Arc::new(Semaphore::new(max)),
            max,
            sessions: Arc::default(),
            unproven: Arc::default(),
            unproven_per_ip,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (CancellationToken, Instant)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count(&self) -> usize {
        self.tracker.len()
    }

    /// Whether another call would be refused right now.
    pub fn is_full(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// A slot for one live call, held for as long as the call runs; refused at the cap.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            crate::metrics::request_limited("live_calls");
            tracing::warn!(max = self.max, "live call refused: this replica is at LIVE_MAX_CALLS");
            busy(format!("this replica carries its maximum of {} live calls; retry later", self.max))
        })
    }

    /// Registers a started session (its call is `in_progress`, owned by this replica).
    pub fn register(&self, id: Uuid) -> Registration {
        let hang_up = CancellationToken::new();
        self.sessions().insert(id, (hang_up.clone(), Instant::now()));
        Registration { calls: self.clone(), id, hang_up }
    }

    /// Stops call `id`'s session if it runs here; whether it did.
    pub fn hang_up(&self, id: Uuid, why: &str) -> bool {
        let token = self.sessions().get(&id).map(|(t, _)| t.clone());
        match token {
            Some(t) if !t.is_cancelled() => {
                tracing::info!(call_id = %id, why, "hanging up a live call");
                t.cancel();
                true
            }
            _ => false,
        }
    }

    /// After a lease renewal that started at `checked_at` and found this replica owning `owned`:
    /// sessions registered before it whose call is not among them were ended elsewhere (a
    /// hang-up notice that never arrived) or reaped, and stop.
    pub fn keep_only(&self, owned: &[Uuid], checked_at: Instant) {
        let stale: Vec<(Uuid, CancellationToken)> = self
            .sessions()
            .iter()
            .filter(|(id, (t, since))| *since < checked_at && !t.is_cancelled() && !owned.contains(id))
            .map(|(id, (t, _))| (*id, t.clone()))
            .collect();
        for (id, token) in stale {
            tracing::info!(call_id = %id, "live call no longer owned by this replica (ended elsewhere); hanging up");
            token.cancel();
        }
    }

    /// At shutdown: live calls go on for up to `bound` (or until `force` resolves: a second
    /// signal), reporting progress every 30 s; then the rest are ended (as `failed`, reason
    /// `service shutting down`) and stored.
    pub async fn drain(&self, bound: Duration, force: impl Future<Output = ()>) {
        self.tracker.close();
        let started = Instant::now();
        crate::metrics::drain_progress(self.tracker.len(), Duration::ZERO);
        if !self.tracker.is_empty() {
            tracing::info!(
                live_calls = self.tracker.len(),
                bound_seconds = bound.as_secs_f64(),
                "draining: waiting for the live calls to end (a second signal ends them now)"
            );
        }
        let deadline = started + bound;
        let mut progress = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
        let mut next_report = started + DRAIN_PROGRESS_EVERY;
        tokio::pin!(force);
        let cut = loop {
            tokio::select! {
                () = self.tracker.wait() => break None,
                () = tokio::time::sleep_until(deadline) => break Some("the drain bound (LIVE_DRAIN_TIMEOUT_SECONDS) passed"),
                () = &mut force => break Some("a second shutdown signal"),
                _ = progress.tick() => {
                    crate::metrics::drain_progress(self.tracker.len(), started.elapsed());
                    if Instant::now() >= next_report {
                        next_report += DRAIN_PROGRESS_EVERY;
                        tracing::info!(
                            live_calls = self.tracker.len(),
                            draining_seconds = started.elapsed().as_secs(),
                            remaining_seconds = deadline.saturating_duration_since(Instant::now()).as_secs(),
                            "draining: live calls still running"
                        );
                    }
                }
            }
        };
        if let Some(why) = cut {
            tracing::warn!(live_calls = self.tracker.len(), why, "ending the live calls still running");
            self.end_all.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
        crate::metrics::drain_progress(self.tracker.len(), started.elapsed());
        tracing::info!(drain_seconds = started.elapsed().as_secs_f64(), "live calls drained");
    }
}

/// The busy answer of the media WebSocket: 503 with `Retry-After`.
fn busy(message: String) -> ApiError {
    ApiError::Busy { message, retry_after_seconds: BUSY_RETRY_AFTER_SECONDS }
}

/// The peer address of the connection, when the server recorded it.
pub struct PeerIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let info = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(Self(info.map(|c| c.0.ip())))
    }
}

/// A media socket still proving its token (in `start`); counted per client address.
pub struct Unproven {
    pending: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: Option<std::net::IpAddr>,
}

impl Drop for Unproven {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pending.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&ip);
            }
        }
    }
}

impl LiveCalls {
    /// Room for one more socket without a URL token from `ip`: it holds no live-call slot
    /// until its `start` proves the token, and one address may hold only a few at once.
    pub fn unproven(&self, ip: Option<std::net::IpAddr>) -> Result<Unproven, ApiError> {
        if let Some(ip) = ip {
            let mut pending = self.unproven.lock().unwrap_or_else(|e| e.into_inner());
            let n = pending.entry(ip).or_default();
            if *n >= self.unproven_per_ip {
                drop(pending);
                crate::metrics::request_limited("media_unauthenticated");
                tracing::warn!("media socket refused: too many unauthenticated media sockets from one address");
                return Err(ApiError::TooManyRequests { retry_after_seconds: 5 });
            }
            *n += 1;
        }
        Ok(Unproven { pending: self.unproven.clone(), ip })
    }
}

/// Read buffer of a media WebSocket (it grows for a larger message, up to
/// `MEDIA_WS_MAX_MESSAGE_BYTES`). Each read zeroes up to this many bytes of it first, and a
/// frame takes two reads (the message, then the one that finds the socket empty): a carrier's
/// 20 ms message is about 400 bytes, so 1 KiB holds two of them and zeroes a quarter of what
/// 4 KiB did (callgrind, 10 live calls: the zeroing 28.9M → 1.2M instructions).
const WS_READ_BUFFER: usize = 1024;

/// `GET /v1/calls/{id}/media`: the WebSocket a carrier streams the call to. The token travels in
/// the URL (`?token=`) or as the `token` custom parameter of the `start` message. A live-call
/// slot is taken only once the token is proven: here for a URL token, after `start` otherwise.
pub async fn media(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    PeerIp(ip): PeerIp,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.live.end_all.is_cancelled() || state.shutdown.is_draining() {
        // Kubernetes stops routing here once readiness fails; a carrier that still comes is
        // asked to try again (on another replica).
        return busy("this replica is shutting down; retry on another".into()).into_response();
    }
    let Ok(id) = Uuid::try_parse(&id) else { return ApiError::NotFound("call").into_response() };
    let admission = match query.get("token") {
        None => match state.live.unproven(ip) {
            Ok(unproven) => session::Admission::Unproven(unproven),
            Err(refused) => return refused.into_response(),
        },
        Some(token) => {
            let call = match state.db.call_for_media_token(id, token).await {
                Ok(Some(call)) => call,
                Ok(None) => return ApiError::Unauthorized.into_response(),
                Err(e) => return ApiError::from(e).into_response(),
            };
            match state.live.admit() {
                Ok(slot) => session::Admission::Proven(call, slot),
                Err(busy) => return busy.into_response(),
            }
        }
    };
    let live = state.live.clone();
    let max_message = state.limits.ws_max_message_bytes;
    upgrade
        // A carrier's messages are a few hundred bytes: 128 KiB per call of read buffer (the
        // default) was most of a live call's memory. Each message is written as sent.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            let end_all = live.end_all.clone();
            live.tracker.track_future(session::run(state, id, admission, socket, end_all))
        })
        .into_response()
}
