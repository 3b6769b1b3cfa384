//! What a live call sends audio-processor: its inbound frames, grouped
//! `LIVE_AUDIO_FRAMES_PER_MESSAGE` to a message, read by a recording audio-processor.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::{
    Backend, TestDb,
    carrier::{Carrier, silence, wait_until},
    stack,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use kraliki_proto::audio::v1::{
    AnalyzeRecordingRequest, AnalyzeRecordingResponse, AnalyzeRecordingStreamRequest, AudioFrame, StreamAudioRequest,
    StreamAudioResponse,
    audio_processor_server::{AudioProcessor, AudioProcessorServer},
    stream_audio_request::Payload,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// An audio-processor that records every message of every live stream, with when it came.
#[derive(Clone, Default)]
struct Recorder {
    messages: Arc<Mutex<Vec<(Instant, StreamAudioRequest)>>>,
}

#[tonic::async_trait]
impl AudioProcessor for Recorder {
    async fn analyze_recording(
        &self,
        _: Request<AnalyzeRecordingRequest>,
    ) -> Result<Response<AnalyzeRecordingResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn analyze_recording_stream(
        &self,
        _: Request<Streaming<AnalyzeRecordingStreamRequest>>,
    ) -> Result<Response<AnalyzeRecordingResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type StreamAudioStream = Pin<Box<dyn Stream<Item = Result<StreamAudioResponse, Status>> + Send>>;

    async fn stream_audio(
        &self,
        request: Request<Streaming<StreamAudioRequest>>,
    ) -> Result<Response<Self::StreamAudioStream>, Status> {
        let mut inbound = request.into_inner();
        let messages = self.messages.clone();
        // No events: the response stays open until the client half-closes.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                messages.lock().unwrap().push((Instant::now(), m));
            }
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Recorder {
    async fn start() -> (Self, String) {
        let recorder = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = AudioProcessorServer::new(recorder.clone());
        tokio::spawn(
            tonic::transport::Server::builder().add_service(service).serve_with_incoming(telemetry::incoming(listener)),
        );
        (recorder, url)
    }

    /// The frame messages so far: (when, the frames each carried, whether as a `frames` batch).
    fn frame_messages(&self) -> Vec<(Instant, Vec<AudioFrame>, bool)> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, m)| match &m.payload {
                Some(Payload::Frame(f)) => Some((*at, vec![f.clone()], false)),
                Some(Payload::Frames(b)) => Some((*at, b.frames.clone(), true)),
                _ => None,
            })
            .collect()
    }
}

/// Sends `frames` frames of silence at once (numbered from 2, media time from 0), pauses
/// `pause`, hangs up, and waits until audio-processor has `frames` frames; returns what it got,
/// and when the pause began.
async fn stream_through(extra: &[(&str, &str)], frames: u64, pause: Duration) -> (Recorder, Instant) {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let (recorder, audio_url) = Recorder::start().await;
    // No turn is taken (the recorder reports no speech): provider-gateway is never asked.
    let app = stack::start_api(db, &audio_url, "http://127.0.0.1:9", extra).await;
    let mut carrier = Carrier::connect(&app).await;
    // At once rather than paced: which frames share a message does not depend on timing.
    for i in 0..frames {
        let seq = (i + 2).to_string();
        carrier
            .send(json!({"event": "media", "sequenceNumber": seq, "streamSid": "MZtest",
                         "media": {"track": "inbound", "chunk": seq, "timestamp": (i * 20).to_string(),
                                   "payload": STANDARD.encode(silence(0.02))}}))
            .await;
    }
    let paused = Instant::now();
    tokio::time::sleep(pause).await;
    carrier.hang_up().await;
    let r = recorder.clone();
    wait_until(
        async || r.frame_messages().iter().map(|(_, f, _)| f.len() as u64).sum::<u64>() >= frames,
        Duration::from_secs(10),
        "every frame at audio-processor",
    )
    .await;
    (recorder, paused)
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_frames_go_two_to_a_message_and_a_pause_does_not_hold_the_last_one() {
    let (recorder, paused) = stream_through(&[], 5, Duration::from_millis(500)).await;
    let messages = recorder.frame_messages();
    // The default: two frames a message; the fifth goes alone once the carrier pauses.
    let sizes: Vec<(usize, bool)> = messages.iter().map(|(_, f, batch)| (f.len(), *batch)).collect();
    assert_eq!(sizes, [(2, true), (2, true), (1, true)], "{messages:?}");
    let frames: Vec<&AudioFrame> = messages.iter().flat_map(|(_, f, _)| f).collect();
    // Each frame keeps its own number, media time and edge arrival time.
    assert_eq!(frames.iter().map(|f| f.sequence_number).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
    let ms: Vec<i64> = frames
        .iter()
        .map(|f| {
            let t = f.timestamp.unwrap();
            t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
        })
        .collect();
    assert_eq!(ms, [0, 20, 40, 60, 80]);
    assert!(frames.iter().all(|f| f.payload == [0xFF; 160] && f.received_at.is_some()));
    let arrivals: Vec<prost_types::Timestamp> = frames.iter().map(|f| f.received_at.unwrap()).collect();
    assert!(arrivals.windows(2).all(|w| (w[0].seconds, w[0].nanos) <= (w[1].seconds, w[1].nanos)), "{arrivals:?}");
    // The lone last frame went during the pause (its batch's wait: 30 ms), not at the hang-up.
    let last = messages.last().unwrap().0;
    assert!(last.saturating_duration_since(paused) < Duration::from_millis(400), "held {:?}", last - paused);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_frame_per_message_sends_each_frame_alone() {
    let (recorder, _) = stream_through(&[("LIVE_AUDIO_FRAMES_PER_MESSAGE", "1")], 4, Duration::ZERO).await;
    let messages = recorder.frame_messages();
    let sizes: Vec<(usize, bool)> = messages.iter().map(|(_, f, batch)| (f.len(), *batch)).collect();
    assert_eq!(sizes, [(1, false); 4], "{messages:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_held_for_a_batch_reach_audio_processor_when_the_call_ends() {
    // Ten a message (a batch waits 190 ms for the rest) and a hang-up right after four frames:
    // the four are sent as the call ends, not dropped.
    let (recorder, _) = stream_through(&[("LIVE_AUDIO_FRAMES_PER_MESSAGE", "10")], 4, Duration::ZERO).await;
    let messages = recorder.frame_messages();
    let numbers: Vec<u64> = messages.iter().flat_map(|(_, f, _)| f.iter().map(|f| f.sequence_number)).collect();
    assert_eq!(numbers, [2, 3, 4, 5], "{messages:?}");
}

#[tokio::test]
async fn frames_per_message_outside_1_to_10_is_a_configuration_error() {
    for bad in ["0", "11", "two"] {
        let env = telemetry::Env::from_pairs([("LIVE_AUDIO_FRAMES_PER_MESSAGE", bad)]);
        let errors = call_api::Config::from_env(&env).expect_err(bad);
        assert_eq!(
            errors.0.iter().map(|e| e.variable.as_str()).collect::<Vec<_>>(),
            ["LIVE_AUDIO_FRAMES_PER_MESSAGE"],
            "{bad}"
        );
    }
}
