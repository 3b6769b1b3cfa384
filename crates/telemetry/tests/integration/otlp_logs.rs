//! Log records over OTLP (`OTEL_LOGS_EXPORTER=otlp`): a request's lines reach the collector with
//! its trace and span ids, severity and `service.name`; they carry the log line's fields with the
//! log line's redaction; a collector that never answers costs requests nothing, drops are
//! counted, and shutdown keeps its bound.

use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use telemetry::{Secret, testing::OtlpReceiver};

use crate::common::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const KEY: &str = "vk-live-key-0123456789abcdef";

async fn refused() -> &'static str {
    let presented = Secret::new(KEY);
    tracing::warn!(api_key = ?presented, to = PHONE, attempt = 3_u64, "refused the call to {PHONE}");
    "refused"
}

fn api() -> Router {
    telemetry::http_layers(Router::new().route("/v1/refused", get(refused))).merge(app())
}

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requests_log_records_arrive_with_its_trace_span_severity_and_service() {
    let receiver = OtlpReceiver::start().await;
    let telemetry =
        start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()), ("OTEL_LOGS_EXPORTER", "otlp".into())]);
    let url = serve(api()).await;
    let r = client().get(format!("{url}/v1/hello")).header("traceparent", traceparent()).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let logs = receiver.wait_for_logs(Duration::from_secs(15), |l| l.iter().any(|r| r.body == "hello handled")).await;
    let record = logs.iter().find(|r| r.body == "hello handled").expect("the request's log record arrived");
    assert_eq!(record.trace_id, TRACE_ID, "the record carries the request's trace id: {record:?}");
    assert_eq!(record.span_id.len(), 16, "{record:?}");
    assert_ne!(record.span_id, PARENT_SPAN_ID, "the record's span is the server's own span");
    assert_eq!((record.severity_number, record.severity_text.as_str()), (9, "INFO"));
    assert_eq!(record.service_name, "test-service");
    // The span it names is the request's server span, exported beside it.
    let spans = receiver.wait_for(Duration::from_secs(15), |s| s.iter().any(|s| s.span_id == record.span_id)).await;
    let span = spans.iter().find(|s| s.span_id == record.span_id).expect("the record's span was exported");
    assert_eq!((span.trace_id.as_str(), span.parent_span_id.as_str()), (TRACE_ID, PARENT_SPAN_ID));
    // Outside a request: no trace.
    assert!(
        logs.iter().any(|r| r.body == "telemetry started" && r.trace_id.is_empty()),
        "{:?}",
        logs.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn records_carry_the_lines_fields_with_the_lines_redaction() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("service.log");
    let telemetry = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_LOGS_EXPORTER", "otlp".into()),
        ("LOG_FILE", log_file.display().to_string()),
    ]);
    let url = serve(api()).await;
    let r = client().get(format!("{url}/v1/refused")).header("traceparent", traceparent()).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let logs = receiver
        .wait_for_logs(Duration::from_secs(15), |l| l.iter().any(|r| r.body.starts_with("refused the call")))
        .await;
    let record = logs.iter().find(|r| r.body.starts_with("refused the call")).expect("the record arrived");
    assert_eq!(record.body, "refused the call to [phone]");
    assert_eq!(record.attribute("api_key"), Some("[redacted]"));
    assert_eq!(record.attribute("to"), Some("[phone]"));
    assert_eq!(record.attribute("attempt"), Some("3"));
    assert_eq!((record.severity_text.as_str(), record.trace_id.as_str()), ("WARN", TRACE_ID));
    // Nothing of the key or the number anywhere in what was exported.
    let raw = receiver.raw_logs().join("\n");
    for needle in [KEY, PHONE, &PHONE[1..], "4155550123"] {
        assert!(!raw.contains(needle), "{needle} was exported: {raw}");
    }
    // The log line says the same, redacted the same way.
    let text = std::fs::read_to_string(&log_file).unwrap();
    let line: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("refused the call")))
        .expect("the line is in LOG_FILE");
    assert_eq!(line["message"], record.body.as_str());
    assert_eq!(line["api_key"], "[redacted]");
    assert_eq!(line["to"], "[phone]");
    assert_eq!(line["attempt"], 3);
    assert_eq!(line["trace_id"], record.trace_id.as_str());
    assert_eq!(line["span_id"], record.span_id.as_str());
    assert!(!text.contains(KEY) && !text.contains("4155550123"), "{text}");
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_stay_local_unless_asked_for() {
    let receiver = OtlpReceiver::start().await;
    let telemetry = start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())]);
    let url = serve(api()).await;
    let r = client().get(format!("{url}/v1/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    telemetry.shutdown().await;
    assert!(
        receiver.spans().iter().any(|s| s.name.contains("/v1/hello")),
        "spans were exported: {:?}",
        receiver.spans()
    );
    assert!(receiver.logs().is_empty(), "OTEL_LOGS_EXPORTER defaults to none: {:?}", receiver.logs());
}

/// Accepts connections and never reads or writes.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr.to_string()
}

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}")) as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_hole_collector_costs_requests_nothing_and_drops_are_counted() {
    let hole = black_hole().await;
    let telemetry = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{hole}")),
        ("OTEL_LOGS_EXPORTER", "otlp".into()),
        ("TELEMETRY_FLUSH_TIMEOUT_SECONDS", "2".into()),
    ]);
    let metrics = telemetry.metrics().expect("metrics on");
    let dropped = r#"telemetry_log_records_dropped_total{reason="queue_full"}"#;
    assert_eq!(counter(&metrics.render(), dropped), 0, "present at 0 from the start");

    let url = serve(api()).await;
    let c = client();
    // A burst far beyond the queue while the collector holds every export.
    let burst = 3 * telemetry::otel::LOG_QUEUE_CAPACITY;
    let started = Instant::now();
    for i in 0..burst {
        tracing::info!(i, "burst line");
    }
    assert!(started.elapsed() < Duration::from_secs(20), "logging waited on the collector");
    for _ in 0..30 {
        let started = Instant::now();
        let status = c.get(format!("{url}/v1/refused")).send().await.unwrap().status();
        assert_eq!(status, 200);
        // Generous: catches a request that waits on the exporter, not a slow machine.
        assert!(started.elapsed() < Duration::from_secs(3), "request blocked on log export");
    }
    let queue_full = counter(&metrics.render(), dropped);
    // At most the queue and the batches taken out of it are held; the rest is dropped, counted.
    assert!(
        queue_full >= (burst - 2 * telemetry::otel::LOG_QUEUE_CAPACITY) as u64,
        "{queue_full} of {burst} counted as dropped"
    );
    assert!(queue_full <= burst as u64 + 100, "{queue_full}");

    let started = Instant::now();
    telemetry.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "shutdown took {took:?} with a 2 s flush bound");
}
