//! Live calls: the call's `media_url` WebSocket speaking the Twilio Media Streams protocol, and
//! the turn loop behind it (voice activity in audio-processor → speech to text → streamed chat
//! → streamed speech synthesis → paced μ-law frames back to the carrier, with barge-in).
//!
//! ```text
//! protocol.rs   the carrier's messages, checked; ours, built
//! session.rs    one call: WebSocket reader, audio-processor stream, events, ending the call
//! turn.rs       one caller turn → one agent reply, its latency stages, storing both turns
//! playback.rs   paces synthesised audio out in 20 ms frames with marks; `clear` on barge-in
//! ```

pub mod playback;
pub mod protocol;
pub mod session;
pub mod turn;

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    extract::{Path, Query, State, WebSocketUpgrade},
    response::{IntoResponse, Response},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{AppState, error::ApiError};

/// How long a carrier refused for capacity is asked to wait before trying again.
const BUSY_RETRY_AFTER_SECONDS: u64 = 5;

/// The live calls of this replica: tracked so that shutdown can wait for them, then end them,
/// and capped (`LIVE_MAX_CALLS`) so that one call too many is refused instead of slowing all.
#[derive(Clone)]
pub struct LiveCalls {
    tracker: TaskTracker,
    /// Cancelled when the drain bound has passed: every session ends its call as `failed`.
    end_all: CancellationToken,
    slots: Arc<Semaphore>,
    max: usize,
}

impl LiveCalls {
    pub fn new(max: usize) -> Self {
        crate::metrics::live_calls_max(max);
        Self {
            tracker: TaskTracker::new(),
            end_all: CancellationToken::new(),
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
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
            ApiError::Busy {
                message: format!("this replica carries its maximum of {} live calls; retry later", self.max),
                retry_after_seconds: BUSY_RETRY_AFTER_SECONDS,
            }
        })
    }

    /// At shutdown: waits up to `bound` for live calls to end by themselves, then ends the rest
    /// (as `failed`, reason `service shutting down`) and waits for them to be stored.
    pub async fn drain(&self, bound: Duration) {
        self.tracker.close();
        if !self.tracker.is_empty() {
            tracing::info!(live_calls = self.tracker.len(), "waiting for live calls to end");
        }
        if tokio::time::timeout(bound, self.tracker.wait()).await.is_err() {
            tracing::warn!(live_calls = self.tracker.len(), "ending the live calls still running");
            self.end_all.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
    }
}

/// `GET /v1/calls/{id}/media`: the WebSocket a carrier streams the call to. The token travels in
/// the URL (`?token=`) or as the `token` custom parameter of the `start` message.
pub async fn media(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.live.end_all.is_cancelled() || state.shutdown.is_draining() {
        return ApiError::Unavailable("call-api (shutting down)").into_response();
    }
    let Ok(id) = Uuid::try_parse(&id) else { return ApiError::NotFound("call").into_response() };
    let call = match query.get("token") {
        None => None,
        Some(token) => match state.db.call_for_media_token(id, token).await {
            Ok(Some(call)) => Some(call),
            Ok(None) => return ApiError::Unauthorized.into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let slot = match state.live.admit() {
        Ok(slot) => slot,
        Err(busy) => return busy.into_response(),
    };
    let live = state.live.clone();
    let max_message = state.limits.ws_max_message_bytes;
    upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            let end_all = live.end_all.clone();
            live.tracker.track_future(async move {
                session::run(state, id, call, socket, end_all).await;
                drop(slot);
            })
        })
        .into_response()
}
