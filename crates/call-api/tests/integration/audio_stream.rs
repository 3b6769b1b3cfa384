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
    AnalyzeRecordingRequest, AnalyzeRecordingResponse, AnalyzeRecordingStreamRequest, AudioFrame, SpeechAudio,
    SpeechEnded, SpeechStarted, StreamAudioRequest, StreamAudioResponse,
    audio_processor_server::{AudioProcessor, AudioProcessorServer},
    stream_audio_request::Payload,
    stream_audio_response::Event,
};
use serde_json::json;
use telemetry::testing::FakeHttp;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// An audio-processor that records every message of every live stream, with when it came, and
/// answers a stream's first frame with the events of `script` (none unless set).
#[derive(Clone, Default)]
struct Recorder {
    messages: Arc<Mutex<Vec<(Instant, StreamAudioRequest)>>>,
    script: Arc<Mutex<Vec<StreamAudioResponse>>>,
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
        let script = self.script.clone();
        // The response stays open until the client half-closes.
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let is_frame = matches!(m.payload, Some(Payload::Frame(_) | Payload::Frames(_)));
                messages.lock().unwrap().push((Instant::now(), m));
                if is_frame {
                    let events = std::mem::take(&mut *script.lock().unwrap());
                    for e in events {
                        let _ = tx.send(Ok(e)).await;
                    }
                }
            }
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type StreamAudioCallsStream =
        Pin<Box<dyn Stream<Item = Result<kraliki_proto::audio::v1::StreamAudioCallsResponse, Status>> + Send>>;

    async fn stream_audio_calls(
        &self,
        _: Request<Streaming<kraliki_proto::audio::v1::StreamAudioCallsRequest>>,
    ) -> Result<Response<Self::StreamAudioCallsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
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
    // No turn is taken (the recorder reports no speech): provider-gateway is never asked. Each
    // call on its own stream: what these tests read is that stream's messages.
    let mut env = vec![("LIVE_AUDIO_GATHER_MS", "0")];
    env.extend_from_slice(extra);
    let app = stack::start_api(db, &audio_url, "http://127.0.0.1:9", &env).await;
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

#[tokio::test]
async fn gather_outside_0_to_100_ms_is_a_configuration_error() {
    for bad in ["101", "-1", "ten", "2.5"] {
        let env = telemetry::Env::from_pairs([("LIVE_AUDIO_GATHER_MS", bad)]);
        let errors = call_api::Config::from_env(&env).expect_err(bad);
        assert_eq!(errors.0.iter().map(|e| e.variable.as_str()).collect::<Vec<_>>(), ["LIVE_AUDIO_GATHER_MS"], "{bad}");
    }
    for (good, ms) in [("0", 0), ("10", 10), ("100", 100)] {
        let env = telemetry::Env::from_pairs([("LIVE_AUDIO_GATHER_MS", good)]);
        let config = call_api::Config::from_env(&env).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        assert_eq!(config.live.audio_gather, Duration::from_millis(ms));
    }
}

/// An utterance that audio-processor sends in parts (as call-api asks it to, 8,000 bytes at
/// most) reaches speech to text whole and in order.
#[tokio::test(flavor = "multi_thread")]
async fn an_utterance_sent_in_parts_is_transcribed_whole() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let (recorder, audio_url) = Recorder::start().await;
    let utterance: Vec<u8> = (0..25_000u32).map(|i| (i % 251) as u8).collect();
    let (parts, last) = utterance.split_at(24_000);
    let at = |ms: i64| Some(prost_types::Duration { seconds: ms / 1000, nanos: (ms % 1000) as i32 * 1_000_000 });
    let mut script = vec![StreamAudioResponse { event: Some(Event::SpeechStarted(SpeechStarted { at: at(0) })) }];
    script.extend(
        parts
            .chunks(8_000)
            .map(|p| StreamAudioResponse { event: Some(Event::SpeechAudio(SpeechAudio { pcm16_16khz: p.to_vec() })) }),
    );
    script.push(StreamAudioResponse {
        event: Some(Event::SpeechEnded(SpeechEnded {
            start: at(0),
            end: at(780),
            pcm16_16khz: last.to_vec(),
            truncated: false,
        })),
    });
    *recorder.script.lock().unwrap() = script;
    let fake = FakeHttp::start(crate::live::providers(0.2)).await;
    let gateway = stack::start_gateway(Some(&fake), &[("LLM_PROVIDERS", "openai"), ("TTS_PROVIDERS", "openai")]).await;
    let app = stack::start_api(db, &audio_url, &gateway.url(), &[("LIVE_AUDIO_GATHER_MS", "0")]).await;
    let mut carrier = Carrier::connect(&app).await;
    carrier.speak(&silence(0.1)).await;
    wait_until(
        async || fake.requests().iter().any(|r| r.path == "/v1/audio/transcriptions"),
        Duration::from_secs(10),
        "the utterance transcribed",
    )
    .await;
    carrier.hang_up().await;

    let config = recorder.messages.lock().unwrap().iter().find_map(|(_, m)| match &m.payload {
        Some(Payload::Config(c)) => Some(c.speech_audio_part_bytes),
        _ => None,
    });
    assert_eq!(config, Some(8_000), "call-api asks for the utterance in parts");
    // The upload is a WAV of exactly the parts and the last piece, in order.
    let requests = fake.requests();
    let body = &requests.iter().find(|r| r.path == "/v1/audio/transcriptions").unwrap().body;
    let wave = body.windows(4).position(|w| w == b"WAVE").expect("a WAV file");
    let data = wave + body[wave..].windows(4).position(|w| w == b"data").expect("a WAV data chunk") + 8;
    let len = u32::from_le_bytes(body[data - 4..data].try_into().unwrap()) as usize;
    assert_eq!(len, utterance.len());
    assert!(body[data..data + len] == utterance[..], "the utterance arrived whole and in order");
}
