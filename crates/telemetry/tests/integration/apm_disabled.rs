//! `APM_ENABLED=false`: nothing reaches the Sentry sink or the OTLP receiver, although both are
//! configured; metrics and logs keep working.

use std::time::Duration;

use crate::common::*;
use telemetry::testing::{OtlpReceiver, SentrySink};

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_exported_when_apm_is_off() {
    let sink = SentrySink::start().await;
    let receiver = OtlpReceiver::start().await;
    let telemetry = start(&[
        ("APM_ENABLED", "false".into()),
        ("SENTRY_DSN", sink.dsn()),
        ("SENTRY_TRACES_SAMPLE_RATE", "1".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
    ]);
    let metrics = telemetry.metrics().expect("metrics stay on");
    let url = serve(app()).await;
    let c = client();
    assert_eq!(c.post(format!("{url}/v1/fail")).send().await.unwrap().status(), 502);
    assert_eq!(c.get(format!("{url}/v1/boom")).send().await.unwrap().status(), 500);
    assert_eq!(c.get(format!("{url}/v1/hello")).send().await.unwrap().status(), 200);
    telemetry.shutdown().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sink.raw().is_empty(), "sentry received {:?}", sink.raw());
    assert!(receiver.spans().is_empty(), "otlp received {:?}", receiver.spans());
    assert!(metrics.render().contains("endpoint=\"/v1/hello\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_when_apm_is_on() {
    // The positive control for the test above: same setup with APM on.
    let receiver = OtlpReceiver::start().await;
    let telemetry = start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())]);
    let url = serve(app()).await;
    assert_eq!(client().get(format!("{url}/v1/hello")).send().await.unwrap().status(), 200);
    telemetry.shutdown().await;
    let spans = receiver.wait_for(Duration::from_secs(10), |s| !s.is_empty()).await;
    assert!(spans.iter().any(|s| s.name == "GET /v1/hello" && s.service_name == "test-service"), "{spans:#?}");
}
