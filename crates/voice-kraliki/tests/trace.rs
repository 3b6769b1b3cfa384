//! One request to `GET /v1/providers` (call-api → provider-gateway over gRPC) is one trace: the
//! in-test OTLP collector receives spans from both services with one trace id and the right
//! parent/child edges, and both services' log lines inside the request carry that trace id.

mod common;

use std::time::Duration;

use common::*;
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
