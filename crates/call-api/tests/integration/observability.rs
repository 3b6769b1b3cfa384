//! Database statements are visible: as OTLP client spans inside the request's trace, and as
//! debug log lines with their duration. Each test installs the global tracing subscriber, so
//! each needs its own process (nextest runs every test in one).

use crate::common;
use std::time::Duration;

use crate::common::{Backend, TestDb, spawn_app_with};
use telemetry::testing::OtlpReceiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_queries_are_client_spans_in_the_request_trace() {
    let otlp = OtlpReceiver::start().await;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let url = db.url().to_string();
    let endpoint = otlp.endpoint();
    let extra = [("APM_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("LOG_LEVEL", "info")];
    let app = spawn_app_with(db, &url, &extra).await;
    app.create("twilio").await;

    let is_insert = |s: &&telemetry::testing::ReceivedSpan| {
        s.attributes.iter().any(|(k, v)| k == "db.operation" && v == "insert_call")
    };
    let spans = otlp.wait_for(Duration::from_secs(30), |spans| spans.iter().any(|s| is_insert(&s))).await;
    let db_span = spans.iter().find(is_insert).expect("an insert_call span");
    assert_eq!(db_span.kind, 3, "client span: {db_span:?}");
    assert_eq!(db_span.service_name, "call-api");
    let attr = |k: &str| db_span.attributes.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(attr("db.system"), Some("sqlite"));
    assert!(attr("db.statement").is_some_and(|s| s.starts_with("INSERT INTO calls")));
    // Part of the request's trace, under its server span.
    let server = spans
        .iter()
        .find(|s| s.kind == 2 && s.trace_id == db_span.trace_id)
        .unwrap_or_else(|| panic!("no server span in trace {}: {spans:?}", db_span.trace_id));
    assert_eq!(server.name, "POST /v1/calls");
    let mut parent = db_span.parent_span_id.clone();
    let mut hops = 0;
    while parent != server.span_id {
        let p = spans.iter().find(|s| s.span_id == parent).unwrap_or_else(|| panic!("broken parent chain: {spans:?}"));
        parent = p.parent_span_id.clone();
        hops += 1;
        assert!(hops < 5, "the database span is not under the server span");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_level_logs_every_statement_with_its_duration() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let url = db.url().to_string();
    let log_file = log.display().to_string();
    let extra = [("LOG_LEVEL", "DEBUG"), ("LOG_FILE", log_file.as_str()), ("LOG_FORMAT", "json")];
    let app = spawn_app_with(db, &url, &extra).await;
    let call = app.create("twilio").await;
    app.get(&format!("/v1/calls/{}", call["id"].as_str().unwrap()), common::KEY).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let statements: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "sqlx::query")
            .collect();
        let insert = statements.iter().find(|v| v.to_string().contains("INSERT INTO calls"));
        let select = statements.iter().find(|v| v.to_string().contains("FROM calls WHERE id"));
        if let (Some(insert), Some(_)) = (insert, select) {
            assert_eq!(insert["level"].as_str().map(str::to_ascii_uppercase).as_deref(), Some("DEBUG"), "{insert}");
            assert!(insert.to_string().contains("elapsed"), "duration logged: {insert}");
            // Statements are logged without their parameters: no phone number in the logs.
            assert!(!text.contains("4155550100"), "a phone number reached the logs");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no statement log lines in {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A request that matches no route reaches Sentry as one transaction name, not its raw path
/// (ids in paths would make a transaction name per URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_requests_are_one_sentry_transaction_name() {
    let sentry = telemetry::testing::SentrySink::start().await;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let url = db.url().to_string();
    let dsn = sentry.dsn();
    let extra = [("APM_ENABLED", "true"), ("SENTRY_DSN", dsn.as_str()), ("SENTRY_TRACES_SAMPLE_RATE", "1")];
    let app = spawn_app_with(db, &url, &extra).await;
    let r = app.client.get(app.url("/no/such/path/123")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    app.create("twilio").await;

    let is_tx = |i: &&telemetry::testing::EnvelopeItem| i.kind == "transaction";
    let items = sentry
        .wait_for(Duration::from_secs(30), |items| {
            let names: Vec<_> = items.iter().filter(is_tx).map(|i| i.payload["transaction"].clone()).collect();
            names.iter().any(|n| n == "POST /v1/calls") && names.iter().any(|n| n == "<unmatched>")
        })
        .await;
    let names: Vec<String> =
        items.iter().filter(is_tx).filter_map(|i| i.payload["transaction"].as_str().map(String::from)).collect();
    assert!(names.iter().all(|n| !n.contains("/no/such")), "the raw path named a transaction: {names:?}");
}
