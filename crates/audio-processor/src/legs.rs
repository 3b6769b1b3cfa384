//! `StreamAudioCalls`: many call legs' live streams on one gRPC stream.
//!
//! Each leg is run by the same task as a `StreamAudio` stream (`stream.rs`), fed from a small
//! channel instead of its own gRPC stream; its events and its ending come back tagged with the
//! leg. A leg opens with its config (a stream slot, `AUDIO_MAX_STREAMS`, as `StreamAudio`
//! takes; none free → the leg ends `ResourceExhausted`/`BUSY`), answers `opened`, and ends as
//! its `StreamAudio` would, with the status in `ended`.
//!
//! The shared stream's task only routes: it reads a message and hands each leg its part. A leg
//! whose buffer is full (its events are not being read) holds the stream, as a `StreamAudio`
//! stream's flow control would hold that stream: nothing is dropped. The response side sends
//! every event ready at once in one message.
//!
//! Endings: the client half-closes → every leg half-closes (each flushes, then `ended` OK), and
//! the stream ends when the last leg has. The client goes away → every leg stops. Server
//! shutdown → every leg flushes and ends `Unavailable` ("reconnect to another replica") by
//! itself; the shared stream stops reading and ends once they have.

use std::collections::{HashMap, HashSet};

use kraliki_proto::audio::v1::{
    self as pb, CallEvent, LegEnded, Opened, StreamAudioCallsRequest, StreamAudioCallsResponse, call_event::Kind,
    stream_audio_request::Payload,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::service::Processor;
use crate::stream::Inbound;

/// Messages waiting for one leg's task: 320 ms of single frames.
const LEG_BUFFER: usize = 16;
/// Events waiting towards the client, across legs, before legs stop reading frames.
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
    tokio::spawn(route(processor, inbound, events_tx, deadline));
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

/// Reads the shared stream and hands each leg its messages.
async fn route(
    processor: Processor,
    mut inbound: Streaming<StreamAudioCallsRequest>,
    events: mpsc::Sender<CallEvent>,
    deadline: Option<Instant>,
) {
    let mut legs: HashMap<u64, mpsc::Sender<Result<pb::StreamAudioRequest, Status>>> = HashMap::new();
    // Legs that ended here while their client still sent: their frames until the client's `end`
    // are dropped quietly rather than each answered with an error.
    let mut ended_here: HashSet<u64> = HashSet::new();
    let stopping = processor.stopping().child_token();
    loop {
        let message = tokio::select! {
            biased;
            // Each leg ends itself (flush, `Unavailable`); nothing more is read.
            () = stopping.cancelled() => break,
            m = inbound.message() => m,
        };
        let calls = match message {
            Ok(Some(m)) => m.calls,
            // Half-close: every leg half-closes when its sender is dropped below.
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(code = ?status.code(), "shared live stream input ended with an error");
                for tx in legs.values() {
                    let _ = tx.try_send(Err(Status::cancelled("the client went away")));
                }
                break;
            }
        };
        for call in calls {
            let leg = call.leg;
            if call.end {
                // Dropping the sender is the leg's half-close.
                legs.remove(&leg);
                ended_here.remove(&leg);
                continue;
            }
            let Some(request) = call.request else {
                let _ = events.send(ended(leg, &Status::invalid_argument("a leg message carries no request"))).await;
                continue;
            };
            if let Some(tx) = legs.get(&leg) {
                // A leg's task runs a frame in microseconds; it waits only while the client does
                // not read its events, and then the whole stream should wait (nothing is lost).
                if tx.send(Ok(request)).await.is_err() {
                    // The leg has ended (its `ended` is on its way): later messages are moot.
                    legs.remove(&leg);
                    if ended_here.len() < MAX_ENDED_REMEMBERED {
                        ended_here.insert(leg);
                    }
                }
                continue;
            }
            if ended_here.contains(&leg) {
                continue;
            }
            let Some(Payload::Config(config)) = request.payload else {
                let status = Status::invalid_argument("the first message of a leg must be its config");
                let _ = events.send(ended(leg, &status)).await;
                continue;
            };
            match open(&processor, leg, &config, &call.traceparent, deadline, events.clone()) {
                Ok(tx) => {
                    legs.insert(leg, tx);
                }
                Err(status) => {
                    let _ = events.send(ended(leg, &status)).await;
                }
            }
        }
    }
}

/// Opens one leg: a stream slot and its task, whose events are forwarded tagged with the leg.
fn open(
    processor: &Processor,
    leg: u64,
    config: &pb::StreamConfig,
    traceparent: &str,
    deadline: Option<Instant>,
    events: mpsc::Sender<CallEvent>,
) -> Result<mpsc::Sender<Result<pb::StreamAudioRequest, Status>>, Status> {
    let permit = processor.stream_permit()?;
    let (tx, rx) = mpsc::channel(LEG_BUFFER);
    let mut leg_events = processor.start_stream(config, Inbound::Leg(rx), deadline, permit, Some(traceparent))?;
    tokio::spawn(async move {
        if events.send(CallEvent { leg, kind: Some(Kind::Opened(Opened {})) }).await.is_err() {
            return;
        }
        let mut status = None;
        while let Some(event) = leg_events.recv().await {
            let event = match event {
                Ok(e) => CallEvent { leg, kind: Some(Kind::Event(e)) },
                Err(s) => {
                    status = Some(s);
                    break;
                }
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
        let _ = events.send(ended(leg, &status.unwrap_or_else(|| Status::ok("")))).await;
    });
    Ok(tx)
}
