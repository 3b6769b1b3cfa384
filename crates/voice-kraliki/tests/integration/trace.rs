//! One request to `GET /v1/providers` (call-api → provider-gateway over gRPC) is one trace: the
//! in-test OTLP collector receives spans from both services with one trace id and the right
//! parent/child edges, and both services' log lines inside the request carry that trace id.

use std::time::Duration;

use crate::common::*;
use telemetry::testing::{OtlpReceiver, ReceivedSpan};

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str, kind: i32) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.service_name == service && s.name == name && s.kind == kind)
}

const METHOD: &str = "kraliki.provider.v1.ProviderGateway/ListProviders";
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn providers_request_is_one_trace_across_services() {
    let receiver = OtlpReceiver::start().await;
    let ports = Ports::new();
    let api_log = temp_path("call-api.log");
    let gateway_log = temp_path("gateway.log");
    let mut env = ports.env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()));
    let mut gw_env = env.clone();
    gw_env.push(("LOG_FILE".into(), gateway_log.display().to_string()));
    let mut api_env = env.clone();
    api_env.push(("LOG_FILE".into(), api_log.display().to_string()));
    let mut gateway = Service::start("provider-gateway", &gw_env);
    let mut api = Service::start("call-api", &api_env);
    let base = format!("http://127.0.0.1:{}", ports.api);
    wait_ready(&format!("{base}/ready"), Duration::from_secs(20)).await;
    wait_ready(&format!("http://127.0.0.1:{}/ready", ports.gateway_admin), Duration::from_secs(20)).await;

    let r = client().get(format!("{base}/v1/providers")).bearer_auth(API_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let spans = receiver
        .wait_for(Duration::from_secs(20), |s| {
            find(s, "call-api", "GET /v1/providers", SERVER).is_some()
                && find(s, "call-api", METHOD, CLIENT).is_some()
                && find(s, "provider-gateway", METHOD, SERVER).is_some()
        })
        .await;
    let root = find(&spans, "call-api", "GET /v1/providers", SERVER).unwrap_or_else(|| panic!("{spans:#?}"));
    let client_span = find(&spans, "call-api", METHOD, CLIENT).expect("client span");
    let server_span = find(&spans, "provider-gateway", METHOD, SERVER).expect("gateway server span");
    assert_eq!(root.parent_span_id, "", "the API span is the root");
    assert_eq!(client_span.trace_id, root.trace_id);
    assert_eq!(server_span.trace_id, root.trace_id, "trace id crossed the gRPC hop");
    assert_eq!(server_span.parent_span_id, client_span.span_id, "gateway span is a child of the client span");
    assert!(
        spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .any(|s| s.service_name == "call-api" && s.parent_span_id == root.span_id),
        "a call-api span hangs under the request span"
    );
    let attrs = |s: &ReceivedSpan, k: &str| s.attributes.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    assert_eq!(attrs(root, "http.route").as_deref(), Some("/v1/providers"));
    assert_eq!(attrs(root, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attrs(server_span, "rpc.grpc.status_code").as_deref(), Some("0"));

    // Log lines written inside the request carry the same trace id, in both services.
    api.terminate();
    gateway.terminate();
    api.wait(Duration::from_secs(15)).expect("call-api exits");
    gateway.wait(Duration::from_secs(15)).expect("gateway exits");
    for (service, path) in [("call-api", &api_log), ("provider-gateway", &gateway_log)] {
        let text = std::fs::read_to_string(path).unwrap();
        let traced: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
            .filter(|l| l["trace_id"] == root.trace_id.as_str())
            .collect();
        assert!(!traced.is_empty(), "{service} logged nothing with trace id {}:\n{text}", root.trace_id);
        for line in &traced {
            assert_eq!(line["service"], service);
            assert!(line["span_id"].as_str().is_some_and(|s| s.len() == 16), "{line}");
            for key in ["timestamp", "level", "message", "target", "version", "environment"] {
                assert!(line.get(key).is_some(), "{key} missing in {line}");
            }
        }
    }
}

/// An OpenAI-compatible transcription answer.
fn whisper(_: &telemetry::testing::FakeRequest) -> telemetry::testing::FakeReply {
    telemetry::testing::FakeReply::json(
        200,
        serde_json::json!({"text": "Hello there.", "language": "english", "duration": 1.0,
                           "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": " Hello there."}]}),
    )
}

fn by_name<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.service_name == service && s.name == name).collect()
}

const ANALYZE: &str = "kraliki.audio.v1.AudioProcessor/AnalyzeRecordingStream";
const TRANSCRIBE: &str = "kraliki.provider.v1.ProviderGateway/Transcribe";
const SENTIMENT: &str = "kraliki.provider.v1.ProviderGateway/AnalyzeSentiment";

#[tokio::test(flavor = "multi_thread")]
async fn recording_analysis_is_one_call_analysis_trace_across_three_services_and_a_sentry_transaction() {
    let receiver = OtlpReceiver::start().await;
    let sentry = telemetry::testing::SentrySink::start().await;
    let openai = telemetry::testing::FakeHttp::start(whisper).await;
    let ports = Ports::new();
    let mut env = ports.env();
    env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), receiver.endpoint()),
        ("SENTRY_DSN".to_string(), sentry.dsn()),
        ("SENTRY_TRACES_SAMPLE_RATE".to_string(), "1.0".to_string()),
        ("OPENAI_API_KEY".to_string(), "sk-test-0123456789abcdef".to_string()),
        ("OPENAI_BASE_URL".to_string(), openai.base_url()),
        ("STT_PROVIDERS".to_string(), "openai".to_string()),
    ]);
    let _services = start_all(&env);
    let base = format!("http://127.0.0.1:{}", ports.api);
    ports.wait_all_ready().await;

    let id = create_call(&base, "twilio").await;
    let wav = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../audio-dsp/fixtures/call-stereo.wav")).unwrap();
    let r = client()
        .post(format!("{base}/v1/calls/{id}/recording"))
        .bearer_auth(API_KEY)
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["transcript"]["status"], "done", "{doc:#}");

    let spans = receiver
        .wait_for(Duration::from_secs(20), |s| {
            !by_name(s, "call-api", "call_analysis.store").is_empty()
                && !by_name(s, "audio-processor", ANALYZE).is_empty()
                && by_name(s, "provider-gateway", TRANSCRIBE).len() >= 2
                && !by_name(s, "provider-gateway", SENTIMENT).is_empty()
        })
        .await;
    let one = |service: &str, name: &str| -> &ReceivedSpan {
        let found = by_name(&spans, service, name);
        assert_eq!(found.len(), 1, "one {name} span from {service}: {found:#?}");
        found[0]
    };
    let root = one("call-api", "POST /v1/calls/{id}/recording");
    let analysis = one("call-api", "call_analysis");
    assert_eq!(doc["trace_id"].as_str(), Some(root.trace_id.as_str()), "the document names its trace");
    assert_eq!(analysis.parent_span_id, root.span_id);
    let stage = |name: &str| {
        let s = one("call-api", name);
        assert_eq!(s.parent_span_id, analysis.span_id, "{name} is a stage of call_analysis");
        s
    };
    let (audio, transcription, sentiment, _store) = (
        stage("call_analysis.audio"),
        stage("call_analysis.transcription"),
        stage("call_analysis.sentiment"),
        stage("call_analysis.store"),
    );
    // call-api → audio-processor.
    let audio_client = one("call-api", ANALYZE);
    assert_eq!(audio_client.parent_span_id, audio.span_id);
    assert_eq!(one("audio-processor", ANALYZE).parent_span_id, audio_client.span_id);
    // call-api → provider-gateway, once per channel, then sentiment (overall and per party).
    let transcribes = by_name(&spans, "call-api", "call_analysis.transcribe");
    assert_eq!(transcribes.len(), 2, "one transcription per channel");
    let gateway_transcribes = by_name(&spans, "provider-gateway", TRANSCRIBE);
    for t in &transcribes {
        assert_eq!(t.parent_span_id, transcription.span_id);
        let client_span = by_name(&spans, "call-api", TRANSCRIBE)
            .into_iter()
            .find(|c| c.parent_span_id == t.span_id)
            .expect("a gRPC client span under each transcribe span");
        assert!(gateway_transcribes.iter().any(|g| g.parent_span_id == client_span.span_id), "gateway span under it");
    }
    let sentiment_clients = by_name(&spans, "call-api", SENTIMENT);
    assert_eq!(sentiment_clients.len(), 3, "overall and two parties");
    assert!(sentiment_clients.iter().all(|c| c.parent_span_id == sentiment.span_id));
    // Everything is one trace.
    for s in spans.iter().filter(|s| s.name.contains("call_analysis") || s.name.contains("kraliki.")) {
        assert_eq!(s.trace_id, root.trace_id, "{} from {} is in the trace", s.name, s.service_name);
    }

    // Sentry: a `call_analysis` transaction with a span per stage, in the request's trace.
    let items = sentry
        .wait_for(Duration::from_secs(20), |items| {
            items.iter().any(|i| i.kind == "transaction" && i.payload["transaction"] == "call_analysis")
        })
        .await;
    let transactions: Vec<&serde_json::Value> =
        items.iter().filter(|i| i.kind == "transaction").map(|i| &i.payload).collect();
    let tx = transactions
        .iter()
        .find(|t| t["transaction"] == "call_analysis")
        .unwrap_or_else(|| panic!("no call_analysis transaction in {transactions:#?}"));
    assert_eq!(tx["contexts"]["trace"]["op"], "call_analysis");
    let ops: Vec<&str> = tx["spans"].as_array().unwrap().iter().filter_map(|s| s["op"].as_str()).collect();
    for op in [
        "call_analysis.audio",
        "call_analysis.transcription",
        "call_analysis.transcribe",
        "call_analysis.sentiment",
        "call_analysis.store",
        "grpc.client",
    ] {
        assert!(ops.contains(&op), "span {op} in the transaction: {ops:?}");
    }
    let request_tx = transactions
        .iter()
        .find(|t| t["transaction"] == "POST /v1/calls/{id}/recording")
        .expect("the request's own transaction");
    assert_eq!(tx["contexts"]["trace"]["trace_id"], request_tx["contexts"]["trace"]["trace_id"], "one Sentry trace");
    let raw = sentry.raw().join("\n");
    assert!(!raw.contains("+14155550100") && !raw.contains("+420123456789"), "no phone numbers sent to Sentry");
}
