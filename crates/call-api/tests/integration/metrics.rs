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

/// Counters whose label values are known in advance are exported at 0 from the start, so that a
/// first event shows in `increase()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_counters_start_at_zero() {
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite");
    let m = app.metrics().await;
    for p in Provider::ALL {
        for o in call_api::model::Outcome::ALL {
            let labels = [("provider", p.as_str()), ("status", o.as_str())];
            assert_eq!(m.find("voice_calls_total", &labels), Some(0.0), "voice_calls_total{labels:?}");
        }
    }
    for outcome in ["answered", "interrupted", "no_speech"] {
        assert_eq!(m.find("voice_turns_total", &[("outcome", outcome)]), Some(0.0), "{outcome}");
    }
    for stage in ["stt", "llm", "tts"] {
        let labels = [("outcome", "failed"), ("stage", stage)];
        assert_eq!(m.find("voice_turns_total", &labels), Some(0.0), "failed {stage}");
    }
    for limit in call_api::metrics::LIMITS {
        assert_eq!(m.find("api_requests_limited_total", &[("limit", limit)]), Some(0.0), "{limit}");
    }
    for result in ["done", "failed", "rejected", "replayed"] {
        assert_eq!(m.find("call_analyses_total", &[("result", result)]), Some(0.0), "{result}");
    }
    for name in ["voice_barge_ins_total", "voice_media_frames_dropped_total", "voice_audio_reconnects_total"] {
        assert_eq!(m.find(name, &[]), Some(0.0), "{name}");
    }
}

/// With `CALL_API_ADMIN_ADDR`, `/metrics` and CPU profiles are served there (profiles without
/// `CALL_API_PPROF`), `/metrics` no longer on the public address, and shutdown closes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_profiles_move_to_the_admin_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("127.0.0.1:{port}");
    let db = common::TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let url = db.url().to_string();
    let mut app = common::spawn_app_with(db, &url, &[("CALL_API_ADMIN_ADDR", admin.as_str())]).await;
    let get = |url: String| {
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    assert_eq!(get(app.url("/metrics")).await.status(), 404, "no /metrics on the public address");
    assert_eq!(get(app.url("/debug/pprof/profile?seconds=1")).await.status(), 404);
    assert_eq!(get(app.url("/ready")).await.status(), 200, "probes stay on the public address too");
    app.create("telnyx").await;

    let metrics = get(format!("http://{admin}/metrics")).await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    let parsed = common::Metrics::parse(&text);
    let created = [("method", "POST"), ("endpoint", "/v1/calls"), ("status", "201")];
    assert_eq!(parsed.value("http_requests_total", &created), 1.0, "the public traffic, counted");
    assert_eq!(get(format!("http://{admin}/ready")).await.status(), 200);
    let profile = get(format!("http://{admin}/debug/pprof/profile?seconds=1")).await;
    assert_eq!(profile.status(), 200);
    let body = profile.bytes().await.unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzipped profile");

    app.trigger_shutdown();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), &mut app.server).await;
    stopped.expect("stopped within the bound").expect("joined").expect("clean stop");
    assert!(tokio::net::TcpStream::connect(&admin).await.is_err(), "the admin listener is closed");
}
