//! Every metric name that the alert rules and dashboards use (`monitoring/metric-names.txt`,
//! kept in sync with them by `make check-deploy`) is exported by a running service after
//! ordinary traffic — no panel or alert points at a metric that does not exist.

use std::{collections::BTreeSet, path::Path, time::Duration};

use crate::common::*;
use kraliki_proto::{
    audio::v1::{AnalyzeRecordingRequest, AudioEncoding, AudioFormat, audio_processor_client::AudioProcessorClient},
    provider::v1::{
        AnalyzeSentimentRequest, ChatMessage, Role, StreamChatRequest, provider_gateway_client::ProviderGatewayClient,
    },
};

/// Metrics of features not shipped yet (live calls). The test fails if one starts being
/// exported, so this list shrinks as the features land.
const NOT_YET_EXPORTED: [&str; 0] = [];

async fn channel(port: u16) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_used_by_rules_and_dashboards_is_exported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let used: BTreeSet<String> = std::fs::read_to_string(root.join("monitoring/metric-names.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    assert!(used.len() > 20, "metric-names.txt looks empty");

    let ports = Ports::new();
    let mut env = ports.env();
    env.push(("LLM_PROVIDERS".into(), "simulated".into()));
    env.push(("STT_PROVIDERS".into(), "simulated".into()));
    env.push(("TTS_PROVIDERS".into(), "simulated".into()));
    env.push(("SIMULATED_LATENCY".into(), "fixed:0".into()));
    env.push(("SIMULATED_TTFB_SECONDS".into(), "0".into()));
    env.push(("SIMULATED_TOKENS_PER_SECOND".into(), "0".into()));
    // The shipped example prices (they price the simulated models), so calls have a cost.
    env.push(("PROVIDER_PRICES_FILE".into(), root.join("deploy/prices.example.yaml").display().to_string()));
    // A webhook receiver, so call events are delivered (and the delivery delay observed).
    let receiver = telemetry::testing::FakeHttp::start(|_| telemetry::testing::FakeReply::text(204, "")).await;
    env.push(("WEBHOOK_ENDPOINTS".into(), format!("default={}", receiver.url("/hooks"))));
    env.push(("WEBHOOK_SECRETS".into(), "default=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()));
    env.push(("WEBHOOK_ALLOW_PRIVATE".into(), "true".into()));
    let _audio = Service::start("audio-processor", &env);
    let _gateway = Service::start("provider-gateway", &env);
    let _api = Service::start("call-api", &env);
    // A second gateway whose first sentiment provider always fails, so failover happens.
    let failing = Ports::new();
    let mut failing_env = failing.env();
    failing_env.push(("SENTIMENT_PROVIDERS".into(), "simulated,local".into()));
    failing_env.push(("SIMULATED_ERROR_RATE".into(), "1".into()));
    failing_env.push(("SIMULATED_LATENCY".into(), "fixed:0".into()));
    let _failing_gateway = Service::start("provider-gateway", &failing_env);
    wait_ready(&format!("http://127.0.0.1:{}/ready", failing.gateway_admin), Duration::from_secs(30)).await;
    let api = format!("http://127.0.0.1:{}", ports.api);
    wait_ready(&format!("{api}/ready"), Duration::from_secs(30)).await;
    wait_ready(&format!("http://127.0.0.1:{}/ready", ports.audio_admin), Duration::from_secs(30)).await;
    wait_ready(&format!("http://127.0.0.1:{}/ready", ports.gateway_admin), Duration::from_secs(30)).await;

    // Ordinary traffic through every service.
    let c = client();
    for outcome in ["completed", "failed"] {
        let id = create_call(&api, "twilio").await;
        let r = c
            .post(format!("{api}/v1/calls/{id}/end"))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({"outcome": outcome}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    c.get(format!("{api}/v1/providers")).bearer_auth(API_KEY).send().await.unwrap();
    c.get(format!("{api}/ready")).send().await.unwrap();

    let wav = std::fs::read(root.join("crates/audio-dsp/fixtures/call-stereo.wav")).unwrap();
    // A recording through the whole pipeline (call-api → audio-processor → provider-gateway).
    let id = create_call(&api, "sip").await;
    let r = c
        .post(format!("{api}/v1/calls/{id}/recording"))
        .bearer_auth(API_KEY)
        .header("content-type", "audio/wav")
        .body(wav.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut audio = AudioProcessorClient::new(channel(ports.audio_grpc).await).max_decoding_message_size(64 << 20);
    audio
        .analyze_recording(AnalyzeRecordingRequest {
            call_id: "monitoring-test".into(),
            format: Some(AudioFormat { encoding: AudioEncoding::Wav as i32, ..Default::default() }),
            audio: wav,
            ..Default::default()
        })
        .await
        .expect("analysis");

    // A live call through the whole turn loop (the load generator as the carrier).
    let args: Vec<String> = ["--calls", "1", "--turns", "1", "--ramp-seconds", "0", "--url", &api, "--key", API_KEY]
        .into_iter()
        .map(String::from)
        .collect();
    // Its own runtime, on its own thread.
    let loadgen = std::thread::spawn(move || {
        voice_kraliki::loadgen::run_code(&args.iter().map(String::as_str).collect::<Vec<_>>())
    });
    let code = tokio::task::spawn_blocking(move || loadgen.join().expect("loadgen thread")).await.unwrap();
    assert_eq!(code, 0, "the load generator's live call succeeded");

    let mut gateway = ProviderGatewayClient::new(channel(ports.gateway_grpc).await);
    gateway
        .analyze_sentiment(AnalyzeSentimentRequest {
            text: "thank you, that was very helpful".into(),
            ..Default::default()
        })
        .await
        .expect("sentiment");
    let mut chat = gateway
        .stream_chat(StreamChatRequest {
            messages: vec![ChatMessage { role: Role::User as i32, content: "hello".into() }],
            ..Default::default()
        })
        .await
        .expect("chat")
        .into_inner();
    while chat.message().await.expect("chat stream").is_some() {}
    let answer = ProviderGatewayClient::new(channel(failing.gateway_grpc).await)
        .analyze_sentiment(AnalyzeSentimentRequest { text: "this is terrible".into(), ..Default::default() })
        .await
        .expect("sentiment after failover")
        .into_inner();
    assert_eq!(answer.provider, "local", "failed over to the second provider");

    // The calls' events reached the receiver.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.requests().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no webhook delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut exported = BTreeSet::new();
    for url in [
        format!("{api}/metrics"),
        format!("http://127.0.0.1:{}/metrics", ports.audio_admin),
        format!("http://127.0.0.1:{}/metrics", ports.gateway_admin),
        format!("http://127.0.0.1:{}/metrics", failing.gateway_admin),
    ] {
        let (_, samples) = scrape(&url).await;
        exported.extend(samples.into_iter().map(|s| s.name));
    }
    let missing: Vec<&String> =
        used.iter().filter(|n| !exported.contains(*n) && !NOT_YET_EXPORTED.contains(&n.as_str())).collect();
    assert!(missing.is_empty(), "rules or dashboards use metrics no service exports: {missing:?}");
    for name in NOT_YET_EXPORTED {
        assert!(!exported.contains(name), "{name} is exported now: remove it from NOT_YET_EXPORTED");
    }
}
