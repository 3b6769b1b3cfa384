//! A collector and a Sentry that accept connections but never answer slow neither requests nor
//! shutdown beyond the flush bound.

use std::time::{Duration, Instant};

use crate::common::*;

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

#[tokio::test(flavor = "multi_thread")]
async fn dead_collector_and_sentry_do_not_block() {
    let hole = black_hole().await;
    let telemetry = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{hole}")),
        ("SENTRY_DSN", format!("http://public@{hole}/1")),
        ("SENTRY_TRACES_SAMPLE_RATE", "1".into()),
        ("TELEMETRY_FLUSH_TIMEOUT_SECONDS", "2".into()),
    ]);
    let url = serve(app()).await;
    let c = client();
    for _ in 0..50 {
        let started = Instant::now();
        let status = c.post(format!("{url}/v1/fail")).send().await.unwrap().status();
        assert_eq!(status, 502);
        // Generous: catches a request that waits on the exporter, not a slow machine.
        assert!(started.elapsed() < Duration::from_secs(3), "request blocked on telemetry export");
    }
    let started = Instant::now();
    telemetry.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "shutdown took {took:?} with a 2 s flush bound");
}
