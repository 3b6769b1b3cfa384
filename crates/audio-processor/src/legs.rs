//! `StreamAudioCalls`: many call legs' live streams on one gRPC stream.
//!
//! Each leg is a `StreamAudio` stream's state and work ([`Live`], `stream.rs`) without a task
//! of its own: the shared stream's one task reads a message and runs each leg's part of it in
//! turn, and its events and its ending go back tagged with the leg. A leg opens with its config
//! (a stream slot, `AUDIO_MAX_STREAMS`, as `StreamAudio` takes; none free → the leg ends
//! `ResourceExhausted`/`BUSY`), answers `opened`, and ends as its `StreamAudio` would, with the
//! status in `ended`.
//!
//! Running the legs in the routing task costs no hop and no wake-up per leg and message (a
//! frame's work is a few microseconds), and it keeps a stream's legs on one thread at a time:
//! the parallelism is across shared streams (one per call-api replica and endpoint) and
//! `StreamAudio` streams. Events towards the client wait in one bounded channel: when it is
//! full (the client does not read), the stream stops reading, as a `StreamAudio` stream's flow
//! control would hold that stream: nothing is dropped. The response side sends every event
//! ready at once in one message.
//!
//! Endings: the client half-closes → every leg half-closes (each flushes, then `ended` OK), and
//! the stream ends. The client goes away → every leg stops. Server shutdown → every leg flushes
//! and ends `Unavailable` ("reconnect to another replica"), then the stream ends. The shared
//! stream's deadline → every leg flushes and ends `DeadlineExceeded`, as do legs opened after
//! it. A leg without a message for `AUDIO_STREAM_IDLE_TIMEOUT_SECONDS` flushes and ends
//! `DeadlineExceeded`; the others go on.

use std::collections::{HashMap, HashSet};

use kraliki_proto::audio::v1::{
    self as pb, CallEvent, LegEnded, Opened, StreamAudioCallsRequest, StreamAudioCallsResponse, call_event::Kind,
    stream_audio_request::Payload,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::service::Processor;
use crate::stream::{self, End, Live};

/// Events waiting towards the client, across legs, before the stream stops reading frames.
const EVENTS_BUFFER: usize = 256;
/// Ended legs remembered until their client's `end` (see `route`).
const MAX_ENDED_REMEMBERED: usize = 100_000;
/// Most events in one response message.
const EVENTS_PER_MESSAGE: usize = 256;

type Responses =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<StreamAudioCallsResponse, Status>> + Send + 'static>>;

/// Starts routing `inbound`'s legs; the returned stream carries their events.
pub(crate) fn serve(
    processor: Processor,
    inbound: Streaming<StreamAudioCallsRequest>,
    deadline: Option<Instant>,
) -> Responses {
    let (events_tx, events_rx) = mpsc::channel(EVENTS_BUFFER);
    tokio::spawn(Router::new(processor, events_tx, deadline).run(inbound));
    Box::pin(futures_util::stream::unfold(events_rx, |mut rx| async move {
        let first = rx.recv().await?;
        let mut events = vec![first];
        while events.len() < EVENTS_PER_MESSAGE {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        Some((Ok(StreamAudioCallsResponse { events }), rx))
    }))
}

fn ended(leg: u64, status: &Status) -> CallEvent {
    let details = status.details();
    CallEvent {
        leg,
        kind: Some(Kind::Ended(LegEnded {
            code: status.code() as i32,
            message: status.message().to_string(),
            details: details.to_vec(),
        })),
    }
}

/// One open leg.
struct Leg {
    live: Live,
    /// When its last message came (its idle bound counts from there).
    last_message: Instant,
}

/// The shared stream's task: its legs and the events on their way out.
struct Router {
    processor: Processor,
    events: mpsc::Sender<CallEvent>,
    deadline: Option<Instant>,
    /// The deadline has passed: every leg has ended, and a leg opened now ends at once.
    expired: bool,
    legs: HashMap<u64, Leg>,
    /// Legs that ended here while their client still sent: their frames until the client's
    /// `end` are dropped quietly rather than each answered with an error.
    ended_here: HashSet<u64>,
    /// Events of the message being run, in order, sent before the next is read.
    pending: Vec<CallEvent>,
    /// One leg's responses, moved into `pending`.
    responses: Vec<pb::StreamAudioResponse>,
}

impl Router {
    fn new(processor: Processor, events: mpsc::Sender<CallEvent>, deadline: Option<Instant>) -> Self {
        Self {
            processor,
            events,
            deadline,
            expired: false,
            legs: HashMap::new(),
            ended_here: HashSet::new(),
            pending: Vec::new(),
            responses: Vec::new(),
        }
    }

    /// Reads the shared stream and runs each leg's messages until the stream ends.
    async fn run(mut self, mut inbound: Streaming<StreamAudioCallsRequest>) {
        let stopping = self.processor.stopping().child_token();
        let idle_timeout = self.processor.idle_timeout();
        let deadline = stream::sleep_until(self.deadline);
        tokio::pin!(deadline);
        // Set no later than the earliest leg's idle bound (see `end_idle`).
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                () = stopping.cancelled() => {
                    self.end_all(|| End::Flush(stream::shutdown_status()));
                    break;
                }
                () = &mut deadline, if !self.expired => {
                    self.expired = true;
                    self.end_all(|| End::Flush(stream::deadline_status()));
                }
                () = &mut idle => {
                    let next = self.end_idle(idle_timeout);
                    idle.as_mut().reset(next);
                }
                message = inbound.message() => match message {
                    Ok(Some(m)) => self.route(m.calls),
                    // Half-close: every leg half-closes.
                    Ok(None) => {
                        self.end_all(|| End::HalfClose);
                        break;
                    }
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "shared live stream input ended with an error");
                        self.end_all(|| End::Gone);
                        return;
                    }
                },
            }
            if !self.send().await {
                // The client is gone: its legs stop with it.
                self.end_all(|| End::Gone);
                return;
            }
        }
        let _ = self.send().await;
    }

    /// Runs one message's parts, each on its leg.
    fn route(&mut self, calls: Vec<pb::CallAudio>) {
        let now = Instant::now();
        for call in calls {
            let leg = call.leg;
            if call.end {
                if let Some(open) = self.legs.remove(&leg) {
                    self.end(leg, open, End::HalfClose);
                }
                self.ended_here.remove(&leg);
                continue;
            }
            let Some(request) = call.request else {
                self.pending.push(ended(leg, &Status::invalid_argument("a leg message carries no request")));
                continue;
            };
            if let Some(open) = self.legs.get_mut(&leg) {
                open.last_message = now;
                let result = open.live.message(request, &mut self.responses);
                self.take_responses(leg);
                if let Err(status) = result {
                    let open = self.legs.remove(&leg).expect("the leg is open");
                    self.end_here(leg, open, End::Fail(status));
                }
                continue;
            }
            if self.ended_here.contains(&leg) {
                continue;
            }
            let Some(Payload::Config(config)) = request.payload else {
                let status = Status::invalid_argument("the first message of a leg must be its config");
                self.pending.push(ended(leg, &status));
                continue;
            };
            match self
                .processor
                .stream_permit()
                .and_then(|permit| self.processor.live_stream(&config, permit, Some(&call.traceparent), "leg"))
            {
                Ok(live) => {
                    self.pending.push(CallEvent { leg, kind: Some(Kind::Opened(Opened {})) });
                    let open = Leg { live, last_message: now };
                    if self.expired {
                        self.end_here(leg, open, End::Flush(stream::deadline_status()));
                    } else {
                        self.legs.insert(leg, open);
                    }
                }
                Err(status) => self.pending.push(ended(leg, &status)),
            }
        }
    }

    /// Ends every leg as `end` says.
    fn end_all(&mut self, end: impl Fn() -> End) {
        let legs = std::mem::take(&mut self.legs);
        for (leg, open) in legs {
            self.end(leg, open, end());
        }
    }

    /// Ends the legs past their idle bound; returns when the next one may be.
    fn end_idle(&mut self, idle_timeout: std::time::Duration) -> Instant {
        let now = Instant::now();
        let idle: Vec<u64> =
            self.legs.iter().filter(|(_, l)| l.last_message + idle_timeout <= now).map(|(leg, _)| *leg).collect();
        for leg in idle {
            let open = self.legs.remove(&leg).expect("the leg is open");
            self.end_here(leg, open, End::Flush(stream::idle_status(idle_timeout)));
        }
        self.legs.values().map(|l| l.last_message).min().unwrap_or(now) + idle_timeout
    }

    /// Ends one leg: its flush and its `ended` go into `pending` (none when the client is gone).
    fn end(&mut self, leg: u64, open: Leg, end: End) {
        let gone = matches!(end, End::Gone);
        let status = open.live.end(end, &mut self.responses);
        if gone {
            self.responses.clear();
            return;
        }
        self.take_responses(leg);
        self.pending.push(ended(leg, &status.unwrap_or_else(|| Status::ok(""))));
    }

    /// Ends a leg whose client still sends: its later messages, until the client's `end`, are
    /// dropped quietly.
    fn end_here(&mut self, leg: u64, open: Leg, end: End) {
        self.end(leg, open, end);
        if self.ended_here.len() < MAX_ENDED_REMEMBERED {
            self.ended_here.insert(leg);
        }
    }

    fn take_responses(&mut self, leg: u64) {
        self.pending.extend(self.responses.drain(..).map(|r| CallEvent { leg, kind: Some(Kind::Event(r)) }));
    }

    /// Sends the pending events, waiting while the client is behind; false when it is gone.
    async fn send(&mut self) -> bool {
        for event in self.pending.drain(..) {
            if self.events.send(event).await.is_err() {
                return false;
            }
        }
        true
    }
}
