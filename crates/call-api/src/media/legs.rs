//! Live calls' audio on shared streams (`LIVE_AUDIO_GATHER_MS` > 0): one `StreamAudioCalls`
//! stream per audio-processor endpoint carries every call of this replica that went to that
//! endpoint, each as a leg.
//!
//! A call's frames are not sent one message at a time: each goes into its endpoint's list (a
//! short lock, no wake-up), and the stream's writer sends the whole list as one message every
//! gather interval. At 300 calls that is one write per 10 ms instead of 7,500 a second, and
//! audio-processor reads and wakes once per message too. A frame waits up to the interval.
//!
//! New calls go to the endpoints in turn, as new `StreamAudio` streams would. A leg behaves as
//! a `StreamAudio` stream for the call: it opens with its config (answered `opened`, or an
//! error such as `BUSY`), its events come in order, and its end is the stream's end (`None`
//! on the events channel). When the shared stream ends (the endpoint shuts down, its
//! connection breaks), every leg on it ends and its call opens a new leg, which goes to a
//! serving endpoint on a new shared stream.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use kraliki_proto::audio::v1::{
    CallAudio, StreamAudioCallsRequest, StreamAudioRequest, StreamAudioResponse, StreamConfig, call_event::Kind,
    stream_audio_request::Payload,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

use super::session::Utterance;
use crate::peers::Peers;

/// Messages waiting in one endpoint's list before a call's new ones are dropped: 2 s of frames
/// for 500 calls.
const MAX_PENDING: usize = 50_000;
/// How long a new leg waits for audio-processor's `opened`.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The replica's shared streams, one per audio-processor endpoint in use.
pub struct SharedAudio {
    gather: Duration,
    lanes: Mutex<HashMap<SocketAddr, Arc<Lane>>>,
}

/// One shared stream.
struct Lane {
    addr: SocketAddr,
    pending: Mutex<Vec<CallAudio>>,
    legs: Mutex<HashMap<u64, Leg>>,
    next_leg: AtomicU64,
    closed: AtomicBool,
    /// Wakes the writer when the first leg opens (it sleeps while the lane is idle).
    wake: Notify,
}

struct Leg {
    opened: Option<oneshot::Sender<Result<(), tonic::Status>>>,
    events: mpsc::Sender<Option<StreamAudioResponse>>,
    utterance: Utterance,
}

/// A call's leg: where its messages go. Dropping it ends the leg (the half-close).
pub struct LegSink {
    lane: Arc<Lane>,
    leg: u64,
}

impl LegSink {
    /// Queues `message` for the next gather, never blocking; false when it was dropped (a full
    /// list, or the shared stream has ended).
    pub fn try_send(&self, message: StreamAudioRequest) -> bool {
        if self.lane.closed.load(Ordering::Relaxed) {
            return false;
        }
        let mut pending = self.lane.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            return false;
        }
        pending.push(CallAudio { leg: self.leg, request: Some(message), end: false, traceparent: String::new() });
        true
    }
}

impl Drop for LegSink {
    fn drop(&mut self) {
        self.lane.legs.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.leg);
        if !self.lane.closed.load(Ordering::Relaxed) {
            self.lane.pending.lock().unwrap_or_else(|e| e.into_inner()).push(CallAudio {
                leg: self.leg,
                request: None,
                end: true,
                traceparent: String::new(),
            });
        }
    }
}

impl SharedAudio {
    pub fn new(gather: Duration) -> Arc<Self> {
        Arc::new(Self { gather, lanes: Mutex::new(HashMap::new()) })
    }

    /// Opens a leg for `config` on the next serving endpoint's shared stream (opening that
    /// stream first if it has none). Events arrive on the receiver; `None` when the leg ended.
    /// A stream that could not be opened, or ended before the leg opened (`Unavailable`: the
    /// endpoint is unreachable or shutting down), sends the leg to the next endpoint, three
    /// endpoints in all.
    pub async fn open(
        self: &Arc<Self>,
        peers: &Peers,
        config: StreamConfig,
    ) -> Result<(LegSink, mpsc::Receiver<Option<StreamAudioResponse>>), tonic::Status> {
        let mut attempt = 1;
        loop {
            match self.open_once(peers, config.clone()).await {
                Err(s) if s.code() == tonic::Code::Unavailable && attempt < 3 => attempt += 1,
                result => return result,
            }
        }
    }

    async fn open_once(
        self: &Arc<Self>,
        peers: &Peers,
        config: StreamConfig,
    ) -> Result<(LegSink, mpsc::Receiver<Option<StreamAudioResponse>>), tonic::Status> {
        let Some((addr, client)) = peers.pick_audio() else {
            return Err(tonic::Status::unavailable("no audio-processor endpoint is serving"));
        };
        let lane = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            match lanes.get(&addr) {
                Some(lane) if !lane.closed.load(Ordering::Relaxed) => lane.clone(),
                _ => {
                    let lane = Arc::new(Lane {
                        addr,
                        pending: Mutex::new(Vec::new()),
                        legs: Mutex::new(HashMap::new()),
                        next_leg: AtomicU64::new(1),
                        closed: AtomicBool::new(false),
                        wake: Notify::new(),
                    });
                    lanes.insert(addr, lane.clone());
                    tokio::spawn(run(self.clone(), lane.clone(), client, self.gather));
                    lane
                }
            }
        };
        let leg = lane.next_leg.fetch_add(1, Ordering::Relaxed);
        let (opened_tx, opened_rx) = oneshot::channel();
        let (events_tx, events_rx) = mpsc::channel(64);
        lane.legs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(leg, Leg { opened: Some(opened_tx), events: events_tx, utterance: Utterance::default() });
        let mut headers = axum::http::HeaderMap::new();
        telemetry::otel::inject_context(&tracing::Span::current(), &mut headers);
        let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        lane.pending.lock().unwrap_or_else(|e| e.into_inner()).push(CallAudio {
            leg,
            request: Some(StreamAudioRequest { payload: Some(Payload::Config(config)) }),
            end: false,
            traceparent,
        });
        lane.wake.notify_one();
        // From here the sink ends the leg when dropped, whatever the answer.
        let sink = LegSink { lane: lane.clone(), leg };
        match tokio::time::timeout(OPEN_TIMEOUT, opened_rx).await {
            Ok(Ok(Ok(()))) => Ok((sink, events_rx)),
            Ok(Ok(Err(status))) => Err(status),
            Ok(Err(_)) => Err(tonic::Status::unavailable("the shared audio stream ended")),
            Err(_) => Err(tonic::Status::deadline_exceeded("audio-processor did not open the stream in time")),
        }
    }

    /// Shared streams open now (tests).
    pub fn streams(&self) -> usize {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|l| !l.closed.load(Ordering::Relaxed))
            .count()
    }
}

/// Runs one shared stream: the writer gathers and sends, the reader routes events to legs.
async fn run(
    shared: Arc<SharedAudio>,
    lane: Arc<Lane>,
    mut client: kraliki_proto::audio::v1::audio_processor_client::AudioProcessorClient<
        telemetry::grpc::GrpcService<crate::peers::Pinned>,
    >,
    gather: Duration,
) {
    let (out_tx, out_rx) = mpsc::channel::<StreamAudioCallsRequest>(4);
    let writer = tokio::spawn(write(lane.clone(), out_tx, gather));
    let result = client.stream_audio_calls(ReceiverStream::new(out_rx)).await;
    match result {
        Ok(response) => {
            read(&lane, response.into_inner()).await;
        }
        Err(status) => {
            tracing::warn!(endpoint = %lane.addr, code = ?status.code(), "audio-processor refused the shared audio stream");
        }
    }
    // The stream is over: no leg is served on it any more.
    lane.closed.store(true, Ordering::Relaxed);
    writer.abort();
    {
        let mut lanes = shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if lanes.get(&lane.addr).is_some_and(|l| Arc::ptr_eq(l, &lane)) {
            lanes.remove(&lane.addr);
        }
    }
    let legs: Vec<Leg> = lane.legs.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, l)| l).collect();
    for mut leg in legs {
        match leg.opened.take() {
            Some(opened) => {
                let _ = opened.send(Err(tonic::Status::unavailable("the shared audio stream ended")));
            }
            None => {
                let _ = leg.events.send(None).await;
            }
        }
    }
}

/// Sends the gathered messages every `gather` while legs are open.
async fn write(lane: Arc<Lane>, out: mpsc::Sender<StreamAudioCallsRequest>, gather: Duration) {
    loop {
        let idle = lane.legs.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
            && lane.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        if idle {
            lane.wake.notified().await;
        }
        tokio::time::sleep(gather).await;
        let calls = {
            let mut pending = lane.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.is_empty() {
                continue;
            }
            // The next list starts at the size of this one, so it rarely grows.
            let size = pending.len();
            std::mem::replace(&mut *pending, Vec::with_capacity(size))
        };
        if out.send(StreamAudioCallsRequest { calls }).await.is_err() {
            return;
        }
    }
}

/// Routes the stream's events to their legs until it ends.
async fn read(lane: &Lane, mut inbound: tonic::Streaming<kraliki_proto::audio::v1::StreamAudioCallsResponse>) {
    while let Some(message) = inbound.next().await {
        let message = match message {
            Ok(m) => m,
            Err(s) => {
                tracing::warn!(endpoint = %lane.addr, code = ?s.code(), message = s.message(), "shared audio stream failed");
                return;
            }
        };
        for event in message.events {
            let leg = event.leg;
            let mut to_send = None;
            let mut end_leg = false;
            {
                let mut legs = lane.legs.lock().unwrap_or_else(|e| e.into_inner());
                let Some(slot) = legs.get_mut(&leg) else { continue };
                match event.kind {
                    Some(Kind::Opened(_)) => {
                        if let Some(opened) = slot.opened.take() {
                            let _ = opened.send(Ok(()));
                        }
                    }
                    Some(Kind::Event(m)) => {
                        if let Some(m) = slot.utterance.join(m) {
                            to_send = Some((slot.events.clone(), Some(m)));
                        }
                    }
                    Some(Kind::Ended(ended)) => {
                        let code = tonic::Code::from_i32(ended.code);
                        let status = tonic::Status::with_details(code, ended.message, ended.details.into());
                        match slot.opened.take() {
                            Some(opened) => {
                                let _ = opened.send(Err(status));
                            }
                            None => {
                                if code != tonic::Code::Ok {
                                    tracing::warn!(code = ?code, message = status.message(), "audio stream failed");
                                }
                                to_send = Some((slot.events.clone(), None));
                            }
                        }
                        end_leg = true;
                    }
                    None => {}
                }
                if end_leg {
                    legs.remove(&leg);
                }
            }
            if let Some((events, m)) = to_send {
                // A call's session reads its events promptly; waiting here keeps them in order.
                let _ = events.send(m).await;
            }
        }
    }
}
