//! Metrics move by exactly the traffic sent. Each test is its own process under nextest (the
//! recorder is global); they also measure deltas on carriers no other test here uses, so they
//! stay correct when run together.

use crate::common;
use crate::common::{Backend, KEY, TestApp, spawn_app};
use call_api::{metrics::ActiveCall, model::Provider};
use serde_json::json;

const BUCKETS: [&str; 12] = ["1", "5", "10", "30", "60", "120", "300", "600", "1200", "1800", "3600", "+Inf"];

async fn calls_and_durations_follow_the_traffic(app: TestApp, provider: &str) {
    let before = app.metrics().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create(provider).await["id"].as_str().unwrap().to_string());
    }
    // Rejected traffic must not count.
    let bad = json!({"provider": provider, "from": "123", "to": "+420123456789", "direction": "outbound"});
    assert_eq!(app.post_json("/v1/calls", KEY, &bad).await.0, 422);
    for (id, outcome) in ids.iter().zip(["completed", "completed", "voicemail"]) {
        assert_eq!(app.end(id, outcome).await.0, 200);
    }
    assert_eq!(app.end(&ids[0], "failed").await.0, 409);

    let after = app.metrics().await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    assert_eq!(delta("voice_calls_total", &[("provider", provider), ("status", "completed")]), 2.0);
    assert_eq!(delta("voice_calls_total", &[("provider", provider), ("status", "voicemail")]), 1.0);
    assert_eq!(after.value("voice_calls_total", &[("provider", provider), ("status", "failed")]), 0.0);
    assert_eq!(delta("call_duration_seconds_count", &[("provider", provider)]), 3.0);
    // Calls of a test last well under a second: all three sit in the first bucket.
    assert_eq!(delta("call_duration_seconds_bucket", &[("provider", provider), ("le", "1")]), 3.0);
    assert!(after.value("call_duration_seconds_sum", &[("provider", provider)]) >= 0.0);
    // The declared buckets, not the default latency ones.
    let les: Vec<String> = BUCKETS
        .iter()
        .filter(|le| after.find("call_duration_seconds_bucket", &[("provider", provider), ("le", le)]).is_some())
        .map(|s| s.to_string())
        .collect();
    assert_eq!(les.len(), BUCKETS.len(), "buckets {les:?}");
    assert!(after.find("call_duration_seconds_bucket", &[("provider", provider), ("le", "0.005")]).is_none());

    // No media sessions yet: the gauge is there and zero for every carrier.
    for p in ["twilio", "telnyx", "vonage", "plivo", "sip", "websocket"] {
        assert_eq!(after.find("active_calls", &[("provider", p)]), Some(0.0), "active_calls{{provider={p}}}");
    }
    // HTTP RED metrics by route template.
    let created = &[("method", "POST"), ("endpoint", "/v1/calls"), ("status", "201")];
    assert_eq!(delta("http_requests_total", created), 5.0);
    let conflicts = &[("method", "POST"), ("endpoint", "/v1/calls/{id}/end"), ("status", "409")];
    assert_eq!(delta("http_requests_total", conflicts), 1.0);
    // Database: one insert per created call, latency histogram, pool and up gauges.
    assert_eq!(delta("db_query_duration_seconds_count", &[("operation", "insert_call")]), 5.0);
    assert!(
        after.find("db_query_duration_seconds_bucket", &[("operation", "insert_call"), ("le", "0.0005")]).is_some()
    );
    assert!(delta("db_query_duration_seconds_count", &[("operation", "end_call")]) >= 3.0);
    assert_eq!(after.value("db_pool_connections", &[("state", "max")]), 10.0);
    assert!(after.find("db_pool_connections", &[("state", "idle")]).is_some());
    assert!(after.find("db_pool_connections", &[("state", "in_use")]).is_some());
    assert_eq!(after.value("db_up", &[]), 1.0);
    assert_eq!(after.value("db_errors_total", &[("operation", "insert_call"), ("kind", "unavailable")]), 0.0);
    // Never a phone number or call id in a label.
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("4155550100") && !text.contains(&ids[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_calls_and_durations_follow_the_traffic() {
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite");
    calls_and_durations_follow_the_traffic(app, "vonage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_calls_and_durations_follow_the_traffic() {
    if let Some(app) = spawn_app(Backend::Postgres).await {
        calls_and_durations_follow_the_traffic(app, "sip").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_calls_counts_live_media_sessions() {
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite");
    let gauge = |m: &common::Metrics| m.value("active_calls", &[("provider", "plivo")]);
    let base = gauge(&app.metrics().await);
    let a = ActiveCall::start(Provider::Plivo);
    let b = ActiveCall::start(Provider::Plivo);
    assert_eq!(gauge(&app.metrics().await) - base, 2.0);
    drop(a);
    assert_eq!(gauge(&app.metrics().await) - base, 1.0);
    // A session ended by a panic is uncounted too.
    let _ = std::panic::catch_unwind(move || {
        let _b = b;
        panic!("media session failed");
    });
    assert_eq!(gauge(&app.metrics().await) - base, 0.0);
}

/// `CALL_API_PPROF=true` serves CPU profiles (gzipped pprof protobuf) on the API port; off by
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profiles_are_served_only_when_turned_on() {
    let off = spawn_app(Backend::Sqlite).await.expect("sqlite");
    let r = off.client.get(format!("{}/debug/pprof/profile?seconds=1", off.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let db = common::TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let url = db.url().to_string();
    let on = common::spawn_app_with(db, &url, &[("CALL_API_PPROF", "true")]).await;
    let busy = tokio::spawn({
        let (client, base) = (on.client.clone(), on.base.clone());
        async move {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
            while std::time::Instant::now() < until {
                let _ = client.get(format!("{base}/metrics")).send().await;
            }
        }
    });
    let r = on.client.get(format!("{}/debug/pprof/profile?seconds=1", on.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    busy.await.unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzipped profile");
    assert!(body.len() > 100, "with samples: {} bytes", body.len());
}
