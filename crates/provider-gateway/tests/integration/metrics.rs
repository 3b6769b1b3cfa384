//! `/metrics` on the admin port after real traffic. The Prometheus recorder is global to the
//! process, so this file installs it once, in its only test (nextest runs each test in its own
//! process anyway).

use std::time::Duration;

use crate::common::{Fake, Reply, env, spawn_app, with_timeout};
use kraliki_proto::provider::v1::{AudioEncoding, TranscribeRequest};
use serde_json::json;
use telemetry::TelemetryConfig;

fn line_with<'a>(metrics: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    metrics.lines().find(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
}

#[tokio::test]
async fn metrics_show_provider_and_grpc_traffic() {
    let deepgram = Fake::scripted().await;
    deepgram.on(
        "/v1/listen",
        vec![Reply::json(
            200,
            json!({"metadata": {"duration": 1.0}, "results": {"channels": [{"alternatives": [{"transcript": "hello", "confidence": 0.9, "words": []}]}]}}),
        )],
    );
    let env = env(None, Some(&deepgram), &[("STT_PROVIDERS", "deepgram")]);
    let telemetry =
        telemetry::init(&provider_gateway::service_info(), &TelemetryConfig::from_env(&env).unwrap()).unwrap();
    let mut app = spawn_app(&env, telemetry.metrics()).await;

    let request = TranscribeRequest {
        audio: vec![0xff; 1600],
        encoding: AudioEncoding::Mulaw as i32,
        sample_rate_hz: 8000,
        ..Default::default()
    };
    let response = app.client.transcribe(with_timeout(request, Duration::from_secs(10))).await.unwrap().into_inner();
    assert_eq!(response.text, "hello");

    let body = reqwest::get(format!("{}/metrics", app.admin_url)).await.unwrap().text().await.unwrap();
    let requests = line_with(
        &body,
        "provider_requests_total{",
        &[r#"provider="deepgram""#, r#"operation="transcribe""#, r#"outcome="success""#],
    )
    .unwrap_or_else(|| panic!("no provider_requests_total line:\n{body}"));
    assert!(requests.ends_with(" 1"), "{requests}");
    let handled = line_with(
        &body,
        "grpc_server_handled_total{",
        &[r#"grpc_method="Transcribe""#, r#"grpc_code="OK""#, r#"grpc_service="kraliki.provider.v1.ProviderGateway""#],
    )
    .unwrap_or_else(|| panic!("no grpc_server_handled_total line:\n{body}"));
    assert!(handled.ends_with(" 1"), "{handled}");
    // The provider histograms carry the providers crate's buckets, not the default ones.
    assert!(
        line_with(&body, "provider_time_to_first_byte_seconds_bucket{", &[r#"le="0.2""#, r#"provider="deepgram""#])
            .is_some(),
        "{body}"
    );
    assert!(
        line_with(&body, "provider_request_duration_seconds_bucket{", &[r#"le="120""#, r#"operation="transcribe""#])
            .is_some(),
        "{body}"
    );
    // Configuration gauges: deepgram serves speech-to-text, openai has no key.
    let configured = |provider: &str, capability: &str| {
        line_with(
            &body,
            "provider_configured{",
            &[&format!(r#"provider="{provider}""#), &format!(r#"capability="{capability}""#)],
        )
        .unwrap_or_else(|| panic!("no provider_configured line for {provider}/{capability}:\n{body}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
    };
    assert_eq!(configured("deepgram", "speech_to_text"), "1");
    assert_eq!(configured("openai", "chat"), "0");
    assert_eq!(configured("local", "sentiment"), "1");
    assert!(body.contains("# HELP provider_configured"), "{body}");
}
