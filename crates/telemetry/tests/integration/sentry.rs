//! A Sentry DSN pointing at an in-test HTTP server receives the captured error, the panic and the
//! transaction, with release, environment and service, and never the phone number in the request.

use std::time::Duration;

use crate::common::*;
use telemetry::testing::SentrySink;

#[tokio::test(flavor = "multi_thread")]
async fn errors_panics_and_transactions_reach_sentry_without_pii() {
    let sink = SentrySink::start().await;
    let telemetry = start(&[
        ("SENTRY_DSN", sink.dsn()),
        ("SENTRY_TRACES_SAMPLE_RATE", "1".into()),
        ("APM_ENVIRONMENT", "staging".into()),
        ("RELEASE_VERSION", "2026.11.1".into()),
    ]);
    let url = serve(app()).await;
    let c = client();
    let r = c
        .post(format!("{url}/v1/fail?to={PHONE}"))
        .header("x-caller", PHONE)
        .body(format!("{{\"to\":\"{PHONE}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let r = c.get(format!("{url}/v1/boom?from={PHONE}")).send().await.unwrap();
    assert_eq!(r.status(), 500, "a panicking handler answers 500");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal");
    assert!(!body.to_string().contains("exploded"), "panic text must not reach the client");

    telemetry.shutdown().await;
    let items = sink
        .wait_for(Duration::from_secs(10), |items| {
            items.iter().filter(|i| i.kind == "event").count() >= 3 && items.iter().any(|i| i.kind == "transaction")
        })
        .await;
    let events: Vec<_> = items.iter().filter(|i| i.kind == "event").map(|i| &i.payload).collect();
    let exception_types = |e: &serde_json::Value| -> Vec<String> {
        e["exception"]["values"]
            .as_array()
            .map(|v| v.iter().map(|x| x["type"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    };
    let captured = events
        .iter()
        .find(|e| exception_types(e).iter().any(|t| t.contains("CarrierError")))
        .unwrap_or_else(|| panic!("captured error missing: {events:#?}"));
    assert_eq!(captured["tags"]["operation"], "dial");
    assert_eq!(captured["user"]["id"], "tenant-a");
    assert!(captured["tags"]["trace_id"].as_str().is_some_and(|t| t.len() == 32));
    let panicked = events
        .iter()
        .find(|e| e["exception"]["values"][0]["mechanism"]["type"] == "panic")
        .unwrap_or_else(|| panic!("panic event missing: {}", serde_json::to_string(&events).unwrap()));
    assert!(panicked["exception"]["values"][0]["value"].as_str().unwrap().contains("handler exploded"));
    for e in &events {
        assert_eq!(e["release"], "2026.11.1", "{e}");
        assert_eq!(e["environment"], "staging");
        assert_eq!(e["tags"]["service"], "test-service");
    }
    let tx: Vec<_> = items.iter().filter(|i| i.kind == "transaction").map(|i| &i.payload).collect();
    assert!(tx.iter().any(|t| t["transaction"] == "POST /v1/fail"), "{tx:#?}");
    let fail_tx = tx.iter().find(|t| t["transaction"] == "POST /v1/fail").unwrap();
    assert!(
        fail_tx["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["op"] == "http.server")),
        "the request span is a child span of the transaction: {fail_tx}"
    );
    for raw in sink.raw() {
        assert!(!raw.contains("4155550123"), "phone number sent to Sentry: {raw}");
    }
}

/// A thread that touched Sentry before `init` (a runtime worker serving a peer started first)
/// keeps a hub without the client: errors captured there still reach Sentry.
#[tokio::test(flavor = "multi_thread")]
async fn errors_captured_on_a_thread_older_than_init_are_sent() {
    let sink = SentrySink::start().await;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let early = std::thread::spawn(move || {
        // This thread's hub is made now, before any client exists.
        assert!(sentry::Hub::current().client().is_none());
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let error = std::io::Error::other("captured on an early thread");
        telemetry::capture_exception(&error, telemetry::ErrorContext::default().tag("where", "early"))
    });
    ready_rx.recv().unwrap();
    let telemetry = start(&[("SENTRY_DSN", sink.dsn())]);
    go_tx.send(()).unwrap();
    let id = early.join().unwrap();
    assert!(!id.is_nil(), "the event was captured");
    telemetry.shutdown().await;
    let items = sink
        .wait_for(Duration::from_secs(10), |items| items.iter().any(|i| i.payload["tags"]["where"] == "early"))
        .await;
    assert!(items.iter().any(|i| i.kind == "event" && i.payload["tags"]["where"] == "early"), "{items:?}");
}

/// A request that matches no route is one transaction name, whatever its path: raw paths carry
/// ids and would make a transaction name per URL.
#[tokio::test(flavor = "multi_thread")]
async fn unmatched_requests_share_one_transaction_name() {
    let sink = SentrySink::start().await;
    let telemetry = start(&[("SENTRY_DSN", sink.dsn()), ("SENTRY_TRACES_SAMPLE_RATE", "1".into())]);
    let url = serve(app()).await;
    let c = client();
    assert_eq!(c.get(format!("{url}/no/such/path/123")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(format!("{url}/v1/hello")).send().await.unwrap().status(), 200);

    telemetry.shutdown().await;
    let items = sink
        .wait_for(Duration::from_secs(10), |items| items.iter().filter(|i| i.kind == "transaction").count() >= 2)
        .await;
    let names: Vec<&str> =
        items.iter().filter(|i| i.kind == "transaction").filter_map(|i| i.payload["transaction"].as_str()).collect();
    assert!(names.contains(&"GET /v1/hello"), "a matched route keeps its template: {names:?}");
    assert!(names.contains(&telemetry::http::UNMATCHED_TRANSACTION), "{names:?}");
    assert!(names.iter().all(|n| !n.contains("/no/such/path")), "{names:?}");
}
