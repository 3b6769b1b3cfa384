//! The database goes away and comes back: PostgreSQL reached through a loopback proxy that the
//! test cuts and restores (the shared server itself is never touched). While cut, `/ready` and
//! the API answer 503 and nothing is half-written; once restored, the same process recovers.

use std::time::Duration;

use crate::common::{Backend, KEY, TestDb, assert_error, new_call, pg_url_for_schema, proxy::Proxy, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503_and_recovers_without_restart() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let TestDb::Postgres { schema, .. } = &db else { unreachable!() };
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = pg_url_for_schema(&proxy.addr.to_string(), schema);
    let app = spawn_app_with(db, &url, &[("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "1")]).await;

    let first = app.create("twilio").await;
    let first_id = first["id"].as_str().unwrap().to_string();
    assert_eq!(app.client.get(app.url("/ready")).send().await.unwrap().status(), 200);

    proxy.cut();
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    let reasons = body["reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|r| r.as_str().unwrap().starts_with("database: ")), "{body}");
    assert!(!body.to_string().contains("5432"), "no connection detail leaks: {body}");
    // Liveness is not readiness: the process still serves.
    assert_eq!(app.client.get(app.url("/health")).send().await.unwrap().status(), 200);

    assert_error(app.post_json("/v1/calls", KEY, &new_call("twilio")).await, 503, "unavailable");
    assert_error(app.get(&format!("/v1/calls/{first_id}"), KEY).await, 503, "unavailable");
    assert_error(app.get("/v1/calls", KEY).await, 503, "unavailable");
    assert_error(app.end(&first_id, "completed").await, 503, "unavailable");
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("db_up", &[]), 0.0);
    assert!(metrics.sum("db_errors_total", &[("kind", "unavailable")]) >= 4.0);

    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if app.client.get(app.url("/ready")).send().await.unwrap().status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "did not recover after restore");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.metrics().await.value("db_up", &[]), 1.0);
    let (status, got) = app.get(&format!("/v1/calls/{first_id}"), KEY).await;
    assert_eq!((status, got["status"].as_str()), (200, Some("queued")), "the end during the outage did not apply");
    let second = app.create("twilio").await;
    assert_eq!(app.end(second["id"].as_str().unwrap(), "completed").await.0, 200);

    // Exactly the calls that were acknowledged exist: the refused create left nothing behind.
    assert_eq!(app.db.count_calls("1 = 1").await, 2);
    let (_, page) = app.get("/v1/calls", KEY).await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 2);
}

/// `db_up` follows the database by itself (a background probe every
/// `DATABASE_PROBE_INTERVAL_SECONDS`): nobody calls `/ready` here, only `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_up_follows_the_database_without_readiness_checks() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let TestDb::Postgres { schema, .. } = &db else { unreachable!() };
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = pg_url_for_schema(&proxy.addr.to_string(), schema);
    let extra = [("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "1"), ("DATABASE_PROBE_INTERVAL_SECONDS", "0.2")];
    let app = spawn_app_with(db, &url, &extra).await;
    let db_up = || async { app.metrics().await.find("db_up", &[]) };
    assert_eq!(db_up().await, Some(1.0));

    proxy.cut();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db_up().await != Some(0.0) {
        assert!(tokio::time::Instant::now() < deadline, "db_up stayed 1 with the database cut off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db_up().await != Some(1.0) {
        assert!(tokio::time::Instant::now() < deadline, "db_up stayed 0 after the database came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
