//! Many replicas on one database: a hang-up reaches the live call from any replica (PostgreSQL
//! `LISTEN/NOTIFY`, or in process on SQLite), a notice missed while the listening connection was
//! down is caught by the lease check, a lost replica's calls and queued calls nobody connected to
//! are ended exactly once, and shutdown drains HTTP and live calls at the same time.

use crate::common;
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use crate::common::{
    Backend, TestApp, TestDb,
    carrier::{Carrier, create_call, get, metric, silence, wait_until},
    pg_url_for_schema,
    proxy::Proxy,
    spawn_app_with, stack,
};
use uuid::Uuid;

/// The peers every app here uses; kept alive by the test.
struct Peers {
    audio: stack::Peer,
    gateway: stack::Peer,
}

async fn peers() -> Peers {
    Peers { audio: stack::start_audio(None).await, gateway: stack::start_gateway(None, &[]).await }
}

async fn replica(db: TestDb, peers: &Peers, id: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("REPLICA_ID", id)];
    env.extend_from_slice(extra);
    stack::start_api(db, &peers.audio.url(), &peers.gateway.url(), &env).await
}

/// A carrier connected to `app` whose call has started (`in_progress`).
async fn live_call(app: &TestApp) -> Carrier {
    let mut carrier = Carrier::connect(app).await;
    carrier.speak(&silence(0.2)).await;
    let id = carrier.id.clone();
    wait_until(
        async || get(app, &format!("/v1/calls/{id}")).await["status"] == "in_progress",
        Duration::from_secs(10),
        "media start",
    )
    .await;
    carrier
}

/// Waits for the server to close the carrier's WebSocket; its close code and how long it took.
async fn closed(carrier: Carrier, within: Duration) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let code = tokio::time::timeout(within, carrier.reader).await.expect("the server closes the media stream").unwrap();
    (code, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_on_another_replica_hangs_up_the_live_call() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let peers = peers().await;
    let shared = db.share();
    let a = replica(db, &peers, "replica-a", &[]).await;
    let b = replica(shared, &peers, "replica-b", &[]).await;
    let carrier = live_call(&a).await;
    let id = carrier.id.clone();

    let sent = Instant::now();
    let (status, call) = b.end(&id, "completed").await;
    assert_eq!(status, 200, "{call}");
    let (code, _) = closed(carrier, Duration::from_secs(10)).await;
    let took = sent.elapsed();
    assert_eq!(code, Some(1000), "closed normally");
    // The drill measures the figure; a hang-up that needs a lease tick (5 s) would fail here.
    assert!(took < Duration::from_secs(3), "hang-up took {took:?}");

    // Ended once, as the API said; a second end is still 409 on either replica.
    let stored = get(&a, &format!("/v1/calls/{id}")).await;
    assert_eq!((stored["status"].as_str(), stored["outcome"].as_str()), (Some("ended"), Some("completed")));
    assert!(stored.get("end_reason").is_none(), "{stored}");
    assert_eq!(a.end(&id, "failed").await.0, 409);
    assert_eq!(b.end(&id, "failed").await.0, 409);
    assert_eq!(a.db.count_calls("status = 'ended'").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_through_the_api_hangs_up_the_live_call_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let peers = peers().await;
    let app = replica(db, &peers, "only", &[]).await;
    let carrier = live_call(&app).await;
    let id = carrier.id.clone();
    assert_eq!(app.end(&id, "callback_requested").await.0, 200);
    let (code, took) = closed(carrier, Duration::from_secs(10)).await;
    assert_eq!(code, Some(1000));
    assert!(took < Duration::from_secs(3), "hang-up took {took:?}");
    let stored = get(&app, &format!("/v1/calls/{id}")).await;
    assert_eq!(stored["outcome"], "callback_requested", "the session did not overwrite the API's outcome");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_missed_while_the_connection_was_down_is_caught_by_the_lease_check() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let TestDb::Postgres { schema, .. } = &db else { unreachable!() };
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let through_proxy = pg_url_for_schema(&proxy.addr.to_string(), schema);
    let peers = peers().await;
    let shared = db.share();
    // Replica A reaches PostgreSQL through the proxy (its notice connection too).
    let env = [
        ("AUDIO_PROCESSOR_URL", peers.audio.url()),
        ("PROVIDER_GATEWAY_URL", peers.gateway.url()),
        ("REPLICA_ID", "replica-a".to_string()),
        ("LIVE_LEASE_SECONDS", "1".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = spawn_app_with(db, &through_proxy, &env).await;
    let b = replica(shared, &peers, "replica-b", &[("LIVE_LEASE_SECONDS", "1")]).await;
    let carrier = live_call(&a).await;
    let id = carrier.id.clone();
    // Let A's notice listener settle on its connection, then cut every connection of A.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let (status, _) = b.end(&id, "completed").await;
    assert_eq!(status, 200);
    // The notice is gone for A; the session goes on while A cannot reach the database.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!carrier.reader.is_finished(), "nothing could have told A yet");
    proxy.restore();
    let (code, took) = closed(carrier, Duration::from_secs(15)).await;
    assert_eq!(code, Some(1000));
    assert!(took < Duration::from_secs(10), "caught {took:?} after the database came back");
    let stored = get(&b, &format!("/v1/calls/{id}")).await;
    assert_eq!(stored["outcome"], "completed");
    assert!(stored.get("end_reason").is_none(), "not reaped: {stored}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_replicas_calls_are_ended_once_by_the_survivors() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let peers = peers().await;
    let shared = db.share();
    // Calls a replica that is gone was carrying: in progress, lease lapsed a moment ago.
    let a = replica(db, &peers, "replica-a", &[("LIVE_LEASE_SECONDS", "0.6")]).await;
    let repo = a.repository().await;
    let mut lost = Vec::new();
    for _ in 0..12 {
        let (id, _) = create_call(&a).await;
        let id = Uuid::parse_str(&id).unwrap();
        let lapsed = chrono::Utc::now() - chrono::Duration::milliseconds(100);
        repo.mark_in_progress(id, "replica-gone#0000", lapsed).await.unwrap().expect("started");
        lost.push(id);
    }
    // A call whose owner is alive (renews its lease) and one started just now are left alone.
    let live = live_call(&a).await;
    let b = replica(shared, &peers, "replica-b", &[("LIVE_LEASE_SECONDS", "0.6")]).await;
    let lost_count = lost.len() as i64;
    wait_until(
        async || a.db.count_calls("end_reason = 'replica lost'").await == lost_count,
        Duration::from_secs(15),
        "the lost calls to be reaped",
    )
    .await;
    // Two reapers raced; each call was ended once (the counter is shared by both apps here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.db.count_calls("end_reason = 'replica lost'").await, lost_count);
    let m = b.client.get(format!("{}/metrics", b.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&m, "voice_calls_reaped_total{reason=\"replica_lost\"}"), Some(lost.len() as f64));
    assert_eq!(metric(&m, "voice_calls_total{provider=\"websocket\",status=\"failed\"}"), Some(lost.len() as f64));
    for id in &lost {
        let call = get(&b, &format!("/v1/calls/{id}")).await;
        assert_eq!((call["status"].as_str(), call["outcome"].as_str()), (Some("ended"), Some("failed")));
        assert!(call["duration_seconds"].as_f64().unwrap() >= 0.0);
        assert!(call["ended_at"].is_string());
    }
    let still = get(&a, &format!("/v1/calls/{}", live.id)).await;
    assert_eq!(still["status"], "in_progress", "a live call whose owner renews is not reaped");
    assert!(!live.reader.is_finished());
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite_a_restart_ends_what_a_crash_left_and_unused_calls_expire() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let peers = peers().await;
    let app = replica(db, &peers, "only", &[("LIVE_LEASE_SECONDS", "0.6"), ("MEDIA_TOKEN_TTL_SECONDS", "1")]).await;
    let repo = app.repository().await;
    // What a crashed previous life of this replica left: a live call it no longer renews.
    let (crashed, _) = create_call(&app).await;
    let lapsed = chrono::Utc::now() - chrono::Duration::seconds(30);
    repo.mark_in_progress(Uuid::parse_str(&crashed).unwrap(), "only#dead", lapsed).await.unwrap().expect("started");
    // Nobody ever connects to this one; the other is a recording's record (analysis claimed).
    let (unused, _) = create_call(&app).await;
    let (recording, _) = create_call(&app).await;
    let claimed = repo.claim_analysis("default", Uuid::parse_str(&recording).unwrap(), None, None).await.unwrap();
    assert!(claimed.is_some());
    wait_until(
        async || app.db.count_calls("status = 'ended'").await == 2,
        Duration::from_secs(15),
        "the crashed and the unused call to end",
    )
    .await;
    let call = get(&app, &format!("/v1/calls/{crashed}")).await;
    assert_eq!((call["outcome"].as_str(), call["end_reason"].as_str()), (Some("failed"), Some("replica lost")));
    let call = get(&app, &format!("/v1/calls/{unused}")).await;
    assert_eq!(
        (call["outcome"].as_str(), call["end_reason"].as_str()),
        (Some("failed"), Some("media never connected"))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&app, &format!("/v1/calls/{recording}")).await["status"], "queued", "recordings are left alone");
    let m = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&m, "voice_calls_reaped_total{reason=\"replica_lost\"}"), Some(1.0));
    assert_eq!(metric(&m, "voice_calls_reaped_total{reason=\"media_never_connected\"}"), Some(1.0));
}

/// Opens a request whose body never arrives whole: it holds the HTTP drain until its bound.
fn stalled_request(app: &TestApp) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(app.addr).unwrap();
    write!(
        s,
        "POST /v1/calls HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{{\"provider\":",
        common::KEY
    )
    .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_refuses_new_calls_and_drains_http_and_live_calls_together() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let peers = peers().await;
    let mut app = replica(
        db,
        &peers,
        "draining",
        &[("SHUTDOWN_DELAY_SECONDS", "1.5"), ("SHUTDOWN_TIMEOUT_SECONDS", "3"), ("LIVE_DRAIN_TIMEOUT_SECONDS", "3")],
    )
    .await;
    let mut carrier = live_call(&app).await;
    let (other, token) = create_call(&app).await;
    let _stalled = stalled_request(&app);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signal = Instant::now();
    app.trigger_shutdown();
    // Readiness fails at once; a new media stream gets the busy answer while the listener is
    // still open (the preStop window).
    let ready = app.client.get(format!("{}/ready", app.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/calls/{other}/media?token={token}", app.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().get("retry-after").is_some(), "busy answers say when to retry");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // The live call goes on meanwhile.
    carrier.speak(&silence(0.5)).await;
    assert!(!carrier.reader.is_finished());
    // Both drains run at once: the live call is cut at its bound, counted from the signal (3 s),
    // not after the delay (1.5 s) and the stalled request's HTTP drain (3 s) plus its bound.
    let code = tokio::time::timeout(Duration::from_secs(15), &mut carrier.reader).await.expect("closed").unwrap();
    let cut_after = signal.elapsed();
    assert_eq!(code, Some(1001));
    assert!(cut_after >= Duration::from_millis(2900), "the live call had its drain time: {cut_after:?}");
    assert!(cut_after < Duration::from_millis(5500), "drains ran one after the other: {cut_after:?}");
    let call = get_stored(&app, &carrier.id).await;
    assert_eq!(call, ("failed".to_string(), Some("service shutting down".to_string())));
    let finished = tokio::time::timeout(Duration::from_secs(10), &mut app.server).await.expect("run returns").unwrap();
    assert!(finished.is_ok(), "{finished:?}");
    let m = app.telemetry.metrics().expect("metrics").render();
    assert_eq!(metric(&m, "voice_calls_cut_by_shutdown_total"), Some(1.0));
    assert!(metric(&m, "shutdown_drain_seconds").unwrap() >= 2.5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_call_ends_by_itself_during_the_drain_and_a_second_signal_ends_the_rest() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let peers = peers().await;
    let mut app = replica(db, &peers, "draining", &[("LIVE_DRAIN_TIMEOUT_SECONDS", "60")]).await;
    let mut finishing = live_call(&app).await;
    let staying = live_call(&app).await;
    app.trigger_shutdown();
    // A call that ends during the drain ends as the carrier says, not as a shutdown.
    tokio::time::sleep(Duration::from_millis(500)).await;
    finishing.hang_up().await;
    assert_eq!(get_stored(&app, &finishing.id).await, ("completed".to_string(), None));
    // The other would go on for a minute; a second signal ends it now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!staying.reader.is_finished());
    let id = staying.id.clone();
    app.force_shutdown();
    let (code, took) = closed(staying, Duration::from_secs(10)).await;
    assert_eq!(code, Some(1001));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(get_stored(&app, &id).await, ("failed".to_string(), Some("service shutting down".to_string())));
    tokio::time::timeout(Duration::from_secs(10), &mut app.server).await.expect("run returns").unwrap().unwrap();
}

/// A call's outcome and end reason, read from the database (the API may be closed by now).
async fn get_stored(app: &TestApp, id: &str) -> (String, Option<String>) {
    let repo = app.repository().await;
    let call = repo.get_call("default", Uuid::parse_str(id).unwrap()).await.unwrap().expect("stored");
    (call.outcome.map(|o| o.as_str().to_string()).unwrap_or_default(), call.end_reason)
}
