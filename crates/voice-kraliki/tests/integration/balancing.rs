//! gRPC balanced across replicas, with the real binaries: one call-api whose
//! `AUDIO_PROCESSOR_URL` lists three audio-processor processes spreads recording analyses and
//! live-call streams across all three; a killed one leaves the rotation without failing the
//! requests that follow, and comes back when it is started again.

use std::time::Duration;

use crate::common::{API_KEY, Ports, Service, client, free_port, scrape, value, wait_ready};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// One second of 8 kHz PCM16 mono: a loud tone (speech to the detector), as a WAV file.
fn recording() -> Vec<u8> {
    let samples: Vec<u8> = (0..8000).flat_map(|i| (((i as f64 * 0.3).sin() * 9000.0) as i16).to_le_bytes()).collect();
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    wav
}

/// One audio-processor process on its own ports.
struct Audio {
    grpc: u16,
    admin: u16,
    process: Option<Service>,
}

impl Audio {
    fn start(&mut self) {
        let env = vec![
            ("AUDIO_PROCESSOR_GRPC_ADDR".to_string(), format!("127.0.0.1:{}", self.grpc)),
            ("AUDIO_PROCESSOR_ADMIN_ADDR".to_string(), format!("127.0.0.1:{}", self.admin)),
            // Capacity is not what this test is about (each replica allows CPU-count analyses).
            ("AUDIO_MAX_CONCURRENT_ANALYSES".to_string(), "16".to_string()),
        ];
        self.process = Some(Service::start("audio-processor", &env));
    }

    async fn started(&self, method: &str) -> f64 {
        let (_, samples) = scrape(&format!("http://127.0.0.1:{}/metrics", self.admin)).await;
        value(&samples, "grpc_server_started_total", &[("grpc_method", method)]).unwrap_or(0.0)
    }
}

async fn peer_endpoints(api: &str) -> f64 {
    let (_, samples) = scrape(&format!("{api}/metrics")).await;
    value(&samples, "peer_endpoints", &[("peer", "audio-processor")]).unwrap_or(-1.0)
}

async fn wait_endpoints(api: &str, n: f64) {
    for _ in 0..200 {
        if peer_endpoints(api).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("peer_endpoints never reached {n} (now {})", peer_endpoints(api).await);
}

async fn create(api: &str) -> Value {
    client()
        .post(format!("{api}/v1/calls"))
        .bearer_auth(API_KEY)
        .json(&json!({"provider": "websocket", "from": "+14155550100", "to": "+420123456789", "direction": "inbound"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `n` recording analyses, 8 at a time; the status of each.
async fn analyses(api: &str, n: usize) -> Vec<u16> {
    let wav = recording();
    let api = api.to_string();
    futures_util::stream::iter(0..n)
        .map(|_| {
            let (api, wav) = (api.clone(), wav.clone());
            async move {
                let call = create(&api).await;
                let id = call["id"].as_str().unwrap();
                client()
                    .post(format!("{api}/v1/calls/{id}/recording"))
                    .bearer_auth(API_KEY)
                    .header("content-type", "audio/wav")
                    .body(wav)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A live call's media stream, started (so call-api has opened its audio stream).
async fn live_stream(api: &str, api_addr: &str) -> Ws {
    let call = create(api).await;
    let id = call["id"].as_str().unwrap();
    let token = call["media_url"].as_str().unwrap().split("token=").nth(1).unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{api_addr}/v1/calls/{id}/media?token={token}"))
        .await
        .expect("media stream");
    ws.send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {"streamSid": "MZ1", "callSid": "CA1",
               "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        .to_string(),
    ))
    .await
    .unwrap();
    let frame = STANDARD.encode([0xFFu8; 160]);
    for i in 0..5u64 {
        let m = json!({"event": "media", "sequenceNumber": (i + 2).to_string(), "streamSid": "MZ1",
                       "media": {"track": "inbound", "chunk": i.to_string(), "timestamp": (i * 20).to_string(), "payload": frame}});
        ws.send(Message::text(m.to_string())).await.unwrap();
    }
    ws
}

async fn hang_up(mut ws: Ws) {
    let _ =
        ws.send(Message::text(json!({"event": "stop", "sequenceNumber": "99", "streamSid": "MZ1"}).to_string())).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while ws.next().await.is_some() {} }).await;
}

fn assert_spread(what: &str, counts: &[f64]) {
    let total: f64 = counts.iter().sum();
    for (i, c) in counts.iter().enumerate() {
        assert!(*c >= 0.2 * total, "{what}: replica {i} got {c} of {total} ({counts:?})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_and_streams_spread_over_three_audio_processors_which_may_die_and_return() {
    let ports = Ports::new();
    let mut audio: Vec<Audio> =
        (0..3).map(|_| Audio { grpc: free_port(), admin: free_port(), process: None }).collect();
    for a in &mut audio {
        a.start();
    }
    let list = audio.iter().map(|a| format!("http://127.0.0.1:{}", a.grpc)).collect::<Vec<_>>().join(",");
    let mut env = ports.env();
    env.retain(|(k, _)| k != "AUDIO_PROCESSOR_URL");
    env.push(("AUDIO_PROCESSOR_URL".into(), list));
    env.push(("PEER_RESOLVE_INTERVAL_SECONDS".into(), "0.5".into()));
    env.push(("API_RATE_LIMIT_PER_SECOND".into(), "0".into()));
    env.push(("RECORDING_MAX_UPLOADS_PER_TENANT".into(), "16".into()));
    // Each call on a stream of its own (the shared streams have their own test below).
    env.push(("LIVE_AUDIO_GATHER_MS".into(), "0".into()));
    let _gateway = Service::start("provider-gateway", &env);
    let _api = Service::start("call-api", &env);
    let api = format!("http://127.0.0.1:{}", ports.api);
    let api_addr = format!("127.0.0.1:{}", ports.api);
    wait_ready(&format!("{api}/ready"), Duration::from_secs(30)).await;
    for a in &audio {
        wait_ready(&format!("http://127.0.0.1:{}/ready", a.admin), Duration::from_secs(30)).await;
    }
    wait_endpoints(&api, 3.0).await;

    // 300 analyses and 30 live-call streams from one call-api.
    let statuses = analyses(&api, 300).await;
    assert!(statuses.iter().all(|s| *s == 200), "every analysis succeeds: {statuses:?}");
    let mut streams = Vec::new();
    for _ in 0..30 {
        streams.push(live_stream(&api, &api_addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut by_analysis = Vec::new();
    let mut by_stream = Vec::new();
    for a in &audio {
        by_analysis.push(a.started("AnalyzeRecordingStream").await);
        by_stream.push(a.started("StreamAudio").await);
    }
    assert_eq!(by_analysis.iter().sum::<f64>(), 300.0, "{by_analysis:?}");
    assert_eq!(by_stream.iter().sum::<f64>(), 30.0, "{by_stream:?}");
    assert_spread("analyses", &by_analysis);
    assert_spread("streams", &by_stream);
    eprintln!("spread: analyses {by_analysis:?}, streams {by_stream:?}");
    for ws in streams {
        hang_up(ws).await;
    }

    // Kill one under load: only what was on it fails (8 analyses in flight over three replicas:
    // at most 3 on the killed one); it leaves the set, and what follows all succeeds.
    let load = tokio::spawn({
        let api = api.clone();
        async move { analyses(&api, 90).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut process = audio[1].process.take().unwrap();
    process.child.kill().unwrap();
    process.child.wait().unwrap();
    let statuses = load.await.unwrap();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    eprintln!("killed under load: {failed} of 90 analyses failed");
    assert!(failed <= 3, "only the analyses on the killed replica fail: {statuses:?}");
    wait_endpoints(&api, 2.0).await;
    let statuses = analyses(&api, 60).await;
    assert!(statuses.iter().all(|s| *s == 200), "no analysis fails after the kill: {statuses:?}");

    // Started again on the same address: it comes back into the rotation by itself.
    audio[1].start();
    wait_ready(&format!("http://127.0.0.1:{}/ready", audio[1].admin), Duration::from_secs(30)).await;
    wait_endpoints(&api, 3.0).await;
    let statuses = analyses(&api, 30).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let back = audio[1].started("AnalyzeRecordingStream").await;
    assert!(back >= 6.0, "the restarted replica takes its share again: {back} of 30");
}

impl Audio {
    async fn gauge(&self, name: &str) -> f64 {
        let (_, samples) = scrape(&format!("http://127.0.0.1:{}/metrics", self.admin)).await;
        value(&samples, name, &[]).unwrap_or(0.0)
    }
}

/// Polls until `f` holds (20 s at most).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 20 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_audio_streams_spread_calls_and_move_them_when_an_audio_processor_shuts_down_or_dies() {
    let ports = Ports::new();
    let mut audio: Vec<Audio> =
        (0..2).map(|_| Audio { grpc: free_port(), admin: free_port(), process: None }).collect();
    for a in &mut audio {
        a.start();
    }
    let list = audio.iter().map(|a| format!("http://127.0.0.1:{}", a.grpc)).collect::<Vec<_>>().join(",");
    let mut env = ports.env();
    env.retain(|(k, _)| k != "AUDIO_PROCESSOR_URL");
    env.push(("AUDIO_PROCESSOR_URL".into(), list));
    env.push(("PEER_RESOLVE_INTERVAL_SECONDS".into(), "0.5".into()));
    env.push(("API_RATE_LIMIT_PER_SECOND".into(), "0".into()));
    env.push(("LIVE_AUDIO_GATHER_MS".into(), "10".into()));
    let _gateway = Service::start("provider-gateway", &env);
    let _api = Service::start("call-api", &env);
    let api = format!("http://127.0.0.1:{}", ports.api);
    let api_addr = format!("127.0.0.1:{}", ports.api);
    wait_ready(&format!("{api}/ready"), Duration::from_secs(30)).await;
    for a in &audio {
        wait_ready(&format!("http://127.0.0.1:{}/ready", a.admin), Duration::from_secs(30)).await;
    }
    wait_endpoints(&api, 2.0).await;

    // 20 calls: one shared stream per replica, the calls' legs spread over both.
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(live_stream(&api, &api_addr).await);
    }
    eventually("every leg open", || async {
        audio[0].gauge("audio_active_streams").await + audio[1].gauge("audio_active_streams").await == 20.0
    })
    .await;
    let mut legs = Vec::new();
    for a in &audio {
        assert_eq!(a.started("StreamAudioCalls").await, 1.0, "one shared stream per replica");
        assert_eq!(a.started("StreamAudio").await, 0.0, "no call opened a stream of its own");
        legs.push(a.gauge("audio_active_streams").await);
    }
    assert_spread("legs", &legs);

    // One replica shuts down (SIGTERM): its legs end "reconnect to another replica", and their
    // calls open new legs on the other one. No call ends.
    let mut process = audio[0].process.take().unwrap();
    process.terminate();
    assert!(process.wait(Duration::from_secs(30)).is_some_and(|s| s.success()), "audio-processor drains and exits 0");
    eventually("every call's leg on the remaining replica", || async {
        audio[1].gauge("audio_active_streams").await == 20.0
    })
    .await;
    let (_, samples) = scrape(&format!("{api}/metrics")).await;
    let reconnects = value(&samples, "voice_audio_reconnects_total", &[]).unwrap_or(0.0);
    assert!(reconnects >= legs[0], "the moved calls reconnected: {reconnects} for {} legs", legs[0]);
    assert_eq!(value(&samples, "active_calls", &[]).unwrap_or(-1.0), 20.0, "no call ended");
    eprintln!("legs per replica {legs:?}; {reconnects} reconnected after the shutdown");

    // The remaining replica is killed (no goodbye: the shared stream breaks) and started again on
    // its address: every call opens a new leg on it, within the calls' reconnect window.
    let mut process = audio[1].process.take().unwrap();
    process.child.kill().unwrap();
    process.child.wait().unwrap();
    audio[1].start();
    wait_ready(&format!("http://127.0.0.1:{}/ready", audio[1].admin), Duration::from_secs(30)).await;
    eventually("every call's leg on the restarted replica", || async {
        audio[1].gauge("audio_active_streams").await == 20.0
    })
    .await;
    let (_, samples) = scrape(&format!("{api}/metrics")).await;
    assert_eq!(value(&samples, "active_calls", &[]).unwrap_or(-1.0), 20.0, "no call ended");

    // Hanging up ends each leg: the replica's streams go back to none.
    for ws in streams {
        hang_up(ws).await;
    }
    eventually("every leg ended", || async { audio[1].gauge("audio_active_streams").await == 0.0 }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_calls_on_shared_audio_streams_converse_turn_after_turn() {
    let ports = Ports::new();
    let mut env = ports.env();
    for (k, v) in [
        ("LIVE_AUDIO_GATHER_MS", "10"),
        ("STT_PROVIDERS", "simulated"),
        ("LLM_PROVIDERS", "simulated"),
        ("TTS_PROVIDERS", "simulated"),
        ("SIMULATED_LATENCY", "fixed:0"),
        ("API_RATE_LIMIT_PER_SECOND", "0"),
    ] {
        env.push((k.into(), v.into()));
    }
    let _services: [Service; 3] = crate::common::start_all(&env);
    ports.wait_all_ready().await;
    let api = format!("http://127.0.0.1:{}", ports.api);
    let run = vec![("VOICE_KRALIKI_API_KEY".to_string(), API_KEY.to_string())];
    let mut loadgen = Service::start_args(
        "loadgen",
        &["loadgen", "--url", &api, "--calls", "8", "--turns", "2", "--ramp-seconds", "0"],
        &run,
    );
    let status = loadgen.wait(Duration::from_secs(120)).expect("loadgen finishes");
    let out = loadgen.stdout().join("\n");
    assert!(status.success(), "every call and turn went through: {out}\n{}", loadgen.stderr().join("\n"));
    let row = out.lines().find(|l| l.starts_with("bench-row ")).expect("a bench row");
    assert!(row.contains("failed_calls=0 no_reply=0"), "{row}");
    let (_, samples) = scrape(&format!("http://127.0.0.1:{}/metrics", ports.audio_admin)).await;
    assert_eq!(value(&samples, "grpc_server_started_total", &[("grpc_method", "StreamAudioCalls")]), Some(1.0));
    assert_eq!(value(&samples, "grpc_server_started_total", &[("grpc_method", "StreamAudio")]).unwrap_or(0.0), 0.0);
    let (_, samples) = scrape(&format!("{api}/metrics")).await;
    let answered = value(&samples, "voice_turns_total", &[("outcome", "answered")]).unwrap_or(0.0);
    assert_eq!(answered, 16.0, "each of the 16 caller turns answered");
}
