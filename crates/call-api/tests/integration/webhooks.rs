//! Call events and signed webhooks, against a real HTTP receiver on loopback
//! (`WEBHOOK_ALLOW_PRIVATE=true`): events are written with the changes they describe, the
//! signature verifies (recomputed here from the secret), a receiver that fails 5 times still gets
//! each event exactly once, two replicas on one PostgreSQL never send the same event twice, and
//! a delivery cut off by a replica's death is sent again after restart.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, http::HeaderMap, http::StatusCode, routing::post};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;
use uuid::Uuid;

use crate::common::{Backend, KEY, TestApp, TestDb, carrier::wait_until, spawn_app_with};

/// The default tenant's secret (`whsec_` + base64 of 24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
    /// What the receiver answered.
    status: u16,
    /// When it arrived.
    at: chrono::DateTime<chrono::Utc>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// How the receiver behaves.
#[derive(Clone, Copy)]
enum Mode {
    /// 204 to everything.
    Accept,
    /// 503 to the first `n` requests, then 204.
    FailFirst(usize),
    /// Answers 204 after a pause (so deliveries of two replicas overlap).
    Slow(Duration),
    /// Never answers the first request (the sender dies meanwhile), then 204.
    HangFirst,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let g = got.clone();
        let handler = move |headers: HeaderMap, body: Bytes| {
            let (got, seen) = (g.clone(), seen.clone());
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let status = match mode {
                    Mode::Accept => StatusCode::NO_CONTENT,
                    Mode::FailFirst(k) if n < k => StatusCode::SERVICE_UNAVAILABLE,
                    Mode::FailFirst(_) => StatusCode::NO_CONTENT,
                    Mode::Slow(pause) => {
                        tokio::time::sleep(pause).await;
                        StatusCode::NO_CONTENT
                    }
                    Mode::HangFirst if n == 0 => {
                        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        got.lock().unwrap().push(Received {
                            id: h("webhook-id"),
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            body: body.clone(),
                            status: 0,
                            at: chrono::Utc::now(),
                        });
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    Mode::HangFirst => StatusCode::NO_CONTENT,
                };
                let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                got.lock().unwrap().push(Received {
                    id: h("webhook-id"),
                    timestamp: h("webhook-timestamp"),
                    signature: h("webhook-signature"),
                    body,
                    status: status.as_u16(),
                    at: chrono::Utc::now(),
                });
                status
            }
        };
        let app = Router::new().route("/hook", post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, got }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The requests answered 2xx.
    fn accepted(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| (200..300).contains(&r.status)).collect()
    }

    /// How many times each event id was accepted.
    fn accepted_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.accepted() {
            *counts.entry(r.id).or_default() += 1;
        }
        counts
    }
}

fn webhook_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("WEBHOOK_ENDPOINTS", format!("default={}", receiver.url())),
        ("WEBHOOK_SECRETS", format!("default={SECRET}")),
        ("WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ("WEBHOOK_RETRY_BASE_SECONDS", "0.05".into()),
    ]
}

async fn start(db: TestDb, env: &[(&'static str, String)]) -> TestApp {
    let url = db.url().to_string();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app_with(db, &url, &env).await
}

/// Creates a call and ends it: `call.created` then `call.ended`. Its id.
async fn call_and_end(app: &TestApp) -> String {
    let id = app.create("sip").await["id"].as_str().unwrap().to_string();
    let (status, body) = app.end(&id, "completed").await;
    assert_eq!(status, 200, "{body}");
    id
}

/// The Standard Webhooks signature, computed here from the secret (not with call-api's code).
fn expected_signature(id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = <Hmac<sha2_v11::Sha256>>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Events are written with the changes they describe, in order, with the turn's figures and
/// the ended call's outcome; another tenant sees none of them.
async fn events_follow_the_call(app: TestApp) {
    let repo = app.repository().await;
    let id = app.create("sip").await["id"].as_str().unwrap().to_string();
    let uuid: Uuid = id.parse().unwrap();
    let started = repo.mark_in_progress(uuid, "test#1", chrono::Utc::now() + chrono::Duration::seconds(30)).await;
    assert!(started.unwrap().is_some());
    // A caller turn still being answered is no event; completed turns are.
    let mut caller =
        call_api::db::turns::Turn::new(1, call_api::db::turns::Role::Caller, "hello".into(), chrono::Utc::now());
    repo.insert_turn("default", uuid, &caller).await.unwrap();
    caller.outcome = Some(call_api::db::turns::TurnOutcome::Answered);
    repo.insert_turn("default", uuid, &caller).await.unwrap();
    let mut agent =
        call_api::db::turns::Turn::new(2, call_api::db::turns::Role::Agent, "hi there".into(), chrono::Utc::now());
    agent.latency = Some(serde_json::json!({"total": 0.8, "interrupted": false}));
    repo.insert_turn("default", uuid, &agent).await.unwrap();
    let (status, _) = app.end(&id, "completed").await;
    assert_eq!(status, 200);
    // A second end changes nothing and writes no event.
    assert_eq!(app.end(&id, "failed").await.0, 409);

    // A recording analysis: the attempt that owns it writes the event; one taken over writes none.
    let stale = repo.claim_analysis("default", uuid, None, None).await.unwrap().unwrap();
    let owner = repo.claim_analysis("default", uuid, Some(&stale), None).await.unwrap().unwrap();
    let finished = call_api::db::analysis::Finished {
        status: call_api::model::AnalysisStatus::Failed,
        error: Some("transcription failed".into()),
        results: None,
        transcript: None,
    };
    assert!(!repo.finish_analysis(uuid, &stale, &finished).await.unwrap());
    assert!(repo.finish_analysis(uuid, &owner, &finished).await.unwrap());

    let events = repo.call_events("default", uuid).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["call.created", "call.started", "turn.completed", "turn.completed", "call.ended", "analysis.completed"]
    );
    assert_eq!(events[5].data["status"], "failed");
    assert_eq!(events[5].data["error"], "transcription failed");
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "ordered by row id");
    assert!(events.iter().all(|e| e.call_id == uuid && e.tenant == "default" && e.id.starts_with("evt_")));
    assert_eq!(events[2].data["turn"]["outcome"], "answered");
    assert_eq!(events[3].data["turn"]["text"], "hi there");
    assert_eq!(events[3].data["turn"]["latency"]["total"], 0.8);
    assert_eq!(events[4].data["call"]["outcome"], "completed");
    assert!(events[4].data["call"]["duration_seconds"].is_number());
    assert!(events[4].data.get("quality").is_some(), "quality is present (null when not measured)");
    assert!(repo.call_events("acme", uuid).await.unwrap().is_empty(), "another tenant's call");
}

on_both_databases!(events_follow_the_call);

/// Each event arrives signed, in order, and the signature verifies; the body carries the event
/// and never an API key.
async fn deliveries_are_signed_and_ordered(db: TestDb) {
    let receiver = Receiver::start(Mode::Accept).await;
    let app = start(db, &webhook_env(&receiver)).await;
    let id = call_and_end(&app).await;
    wait_until(async || receiver.accepted().len() >= 2, Duration::from_secs(30), "two deliveries").await;
    let got = receiver.accepted();
    assert_eq!(got.len(), 2, "{got:?}");
    let kinds: Vec<String> = got.iter().map(|r| r.json()["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["call.created", "call.ended"]);
    for r in &got {
        assert_eq!(r.signature, expected_signature(&r.id, &r.timestamp, &r.body), "signature of {}", r.id);
        let body = r.json();
        assert_eq!(body["id"], r.id.as_str(), "webhook-id is the event id");
        assert_eq!(body["call_id"], id.as_str());
        assert_eq!(body["tenant"], "default");
        assert_eq!(body["data"]["call"]["id"], id.as_str());
        let ts: i64 = r.timestamp.parse().expect("webhook-timestamp is Unix seconds");
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 300);
        assert!(!String::from_utf8_lossy(&r.body).contains(KEY), "no API key in a payload");
    }
    // A tampered body does not verify.
    let mut tampered = got[0].body.to_vec();
    tampered[0] = b' ';
    assert_ne!(got[0].signature, expected_signature(&got[0].id, &got[0].timestamp, &tampered));
    let m = app.metrics().await;
    assert_eq!(m.value("webhook_deliveries_total", &[("result", "delivered")]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_ordered_sqlite() {
    deliveries_are_signed_and_ordered(TestDb::new(Backend::Sqlite).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_ordered_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    deliveries_are_signed_and_ordered(db).await;
}

/// A receiver answering 503 five times then 2xx gets every event exactly once in the end, and
/// a call's later event never before its earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_each_event_once_in_the_end() {
    let receiver = Receiver::start(Mode::FailFirst(5)).await;
    let app = start(TestDb::new(Backend::Sqlite).await.unwrap(), &webhook_env(&receiver)).await;
    let first = call_and_end(&app).await;
    let second = call_and_end(&app).await;
    wait_until(async || receiver.accepted().len() >= 4, Duration::from_secs(60), "four deliveries").await;
    // Give any duplicate time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counts = receiver.accepted_counts();
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "each event exactly once: {counts:?}");
    assert_eq!(receiver.all().iter().filter(|r| r.status == 503).count(), 5);
    for call in [&first, &second] {
        let kinds: Vec<String> = receiver
            .accepted()
            .iter()
            .map(Received::json)
            .filter(|b| b["call_id"] == call.as_str())
            .map(|b| b["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["call.created", "call.ended"], "per-call order of {call}");
        // Nothing of the call reached the receiver (even refused) before its created event.
        let first_seen = receiver.all().iter().map(Received::json).find(|b| b["call_id"] == call.as_str()).unwrap();
        assert_eq!(first_seen["type"], "call.created");
    }
    let m = app.metrics().await;
    assert_eq!(m.value("webhook_deliveries_total", &[("result", "error")]), 5.0);
    assert_eq!(m.value("webhook_deliveries_total", &[("result", "delivered")]), 4.0);
    wait_until(
        async || app.metrics().await.value("webhook_outbox_pending", &[]) == 0.0,
        Duration::from_secs(10),
        "an empty backlog",
    )
    .await;
}

/// Two replicas on one PostgreSQL deliver every event exactly once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_send_an_event_twice() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let receiver = Receiver::start(Mode::Slow(Duration::from_millis(30))).await;
    let env = webhook_env(&receiver);
    let shared = db.share();
    let a = start(db, &env).await;
    let b = start(shared, &env).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(call_and_end(if i % 2 == 0 { &a } else { &b }).await);
    }
    wait_until(async || receiver.accepted().len() >= 24, Duration::from_secs(60), "24 deliveries").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counts = receiver.accepted_counts();
    assert_eq!(counts.len(), 24, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "each event exactly once: {counts:?}");
    assert_eq!(receiver.all().len(), 24, "no request beyond one per event");
    // Both apps run in this process and share one metrics registry: it counts them together.
    let delivered = a.metrics().await.value("webhook_deliveries_total", &[("result", "delivered")]);
    assert_eq!(delivered, 24.0);
    drop(b);
}

/// A replica that dies while a delivery is in flight leaves it claimed; once the claim runs out
/// the restarted service sends it again (at least once), and then the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_by_a_dead_replica_is_sent_after_restart() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::start(Mode::HangFirst).await;
    let env = webhook_env(&receiver);
    let shared = db.share();
    let a = start(db, &env).await;
    let id = call_and_end(&a).await;
    wait_until(async || !receiver.all().is_empty(), Duration::from_secs(30), "the first request").await;
    let cut = receiver.all()[0].id.clone();
    a.trigger_shutdown();
    a.force_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while !a.server.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await
        }
    })
    .await;
    assert!(a.server.is_finished(), "the first replica stopped");
    assert!(receiver.accepted().is_empty());

    let b = start(shared, &env).await;
    // Meanwhile both events wait, the cut one the oldest.
    wait_until(
        async || {
            let m = b.metrics().await;
            m.value("webhook_outbox_pending", &[]) == 2.0 && m.value("webhook_oldest_pending_seconds", &[]) > 0.0
        },
        Duration::from_secs(15),
        "the backlog gauges to show the two waiting events",
    )
    .await;
    // The claim lasts 20 s.
    wait_until(async || receiver.accepted().len() >= 2, Duration::from_secs(60), "both events after restart").await;
    let got = receiver.accepted();
    assert_eq!(got[0].id, cut, "the cut delivery first (per-call order)");
    let kinds: Vec<String> = got.iter().map(|r| r.json()["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["call.created", "call.ended"]);
    assert!(got.iter().all(|r| r.json()["call_id"] == id.as_str()));
    drop(b);
}

/// The worker's configuration for `receiver`, as the service reads it.
fn webhook_config(receiver: &Receiver) -> call_api::events::WebhookConfig {
    let pairs = webhook_env(receiver);
    let env = telemetry::Env::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
    let mut r = telemetry::Reader::new(&env);
    let config = call_api::events::WebhookConfig::read(&mut r);
    r.errors.into_result(config).expect("webhook configuration")
}

/// A worker with nothing to do waits (here an hour, so only a wake-up can deliver): an event
/// committed wakes it — on PostgreSQL also one committed by another replica, through the
/// `NOTIFY` its event stream follows — and so does its own retry coming due.
async fn a_waiting_worker_is_woken_by_events_and_its_own_retries(db: TestDb) {
    let receiver = Receiver::start(Mode::FailFirst(1)).await;
    let config = call_api::db::DatabaseConfig::with_url(db.url());
    let worker_db = call_api::db::Database::connect(&config).await.unwrap();
    // On PostgreSQL the event is written by another replica's handle; SQLite has one replica.
    let writer = match db.backend() {
        Backend::Postgres => call_api::db::Database::connect(&config).await.unwrap(),
        Backend::Sqlite => worker_db.clone(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    call_api::events::stream::EventBus::new(worker_db.clone()).start(stop.clone()).await;
    call_api::events::Worker::new(webhook_config(&receiver), worker_db, Arc::from("test#1"))
        .unwrap()
        .with_quiet(Duration::from_secs(3600))
        .spawn(stop.clone());
    // The worker's first rounds find nothing; it waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.all().is_empty());
    let call = Uuid::new_v4();
    let event = call_api::db::events::NewEvent::new(
        "default",
        call,
        call_api::db::events::EventType::CallCreated,
        serde_json::json!({}),
    );
    writer.insert_event(&event).await.unwrap();
    // Refused once (503), retried at its time (WEBHOOK_RETRY_BASE_SECONDS=0.05), delivered.
    wait_until(async || receiver.accepted().len() == 1, Duration::from_secs(30), "the event delivered").await;
    let all = receiver.all();
    assert_eq!(all.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 204], "refused, then retried");
    assert!(all.iter().all(|r| r.id == event.event_id), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_worker_is_woken_by_events_and_its_own_retries_sqlite() {
    a_waiting_worker_is_woken_by_events_and_its_own_retries(TestDb::new(Backend::Sqlite).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_worker_is_woken_by_events_and_its_own_retries_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    a_waiting_worker_is_woken_by_events_and_its_own_retries(db).await;
}

/// With nothing happening, a replica's webhook worker claims at most once every 2 s (not every
/// 250 ms) and fans out with one indexed read and no transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_reads_the_outbox_rarely() {
    let receiver = Receiver::start(Mode::Accept).await;
    let app = start(TestDb::new(Backend::Sqlite).await.unwrap(), &webhook_env(&receiver)).await;
    call_and_end(&app).await;
    wait_until(async || receiver.accepted().len() == 2, Duration::from_secs(30), "both events delivered").await;
    let count =
        async |operation: &str| app.metrics().await.sum("db_query_duration_seconds_count", &[("operation", operation)]);
    let (claims, dispatches) = (count("claim_deliveries").await, count("dispatch_events").await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let claimed = count("claim_deliveries").await - claims;
    // 2 or 3 rounds in 5 s at one per 2 s; at one per 250 ms it would be about 20.
    assert!((1.0..=4.0).contains(&claimed), "{claimed} claims in 5 idle seconds");
    assert_eq!(count("dispatch_events").await, dispatches, "no fan-out transaction while no event waits");
}

/// A fan-out marks exactly the rows it read: never one past its page, and on PostgreSQL not one
/// another replica holds locked (that one is fanned out once let go).
async fn a_fan_out_marks_only_the_events_it_read(db: TestDb) {
    use sqlx::Connection as _;
    let repo = call_api::db::Database::connect(&call_api::db::DatabaseConfig::with_url(db.url())).await.unwrap();
    for _ in 0..4 {
        let event = call_api::db::events::NewEvent::new(
            "default",
            Uuid::new_v4(),
            call_api::db::events::EventType::CallCreated,
            serde_json::json!({}),
        );
        repo.insert_event(&event).await.unwrap();
    }
    let endpoints = |_: &str| vec!["https://hooks.example.test/".to_string()];
    let count = async |sql: &'static str| -> i64 {
        match db.backend() {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    };
    let undispatched = async || count("SELECT COUNT(*) FROM events WHERE NOT dispatched").await;
    let holder = if db.backend() == Backend::Postgres {
        // Another replica's fan-out holds the first event.
        let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
        sqlx::query("BEGIN").execute(&mut other).await.unwrap();
        sqlx::query("SELECT id FROM events WHERE NOT dispatched ORDER BY id LIMIT 1 FOR UPDATE")
            .execute(&mut other)
            .await
            .unwrap();
        Some(other)
    } else {
        None
    };
    assert_eq!(repo.dispatch_events(2, &endpoints).await.unwrap(), 2, "a page of two");
    assert_eq!(undispatched().await, 2, "only the page is marked");
    if let Some(mut other) = holder {
        assert_eq!(repo.dispatch_events(100, &endpoints).await.unwrap(), 1, "the held event is skipped");
        assert_eq!(undispatched().await, 1, "and not marked");
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        assert_eq!(repo.dispatch_events(100, &endpoints).await.unwrap(), 1, "fanned out once let go");
    } else {
        assert_eq!(repo.dispatch_events(100, &endpoints).await.unwrap(), 2);
    }
    assert_eq!(undispatched().await, 0);
    assert_eq!(repo.dispatch_events(100, &endpoints).await.unwrap(), 0, "nothing left");
    assert_eq!(count("SELECT COUNT(*) FROM webhook_deliveries").await, 4, "one delivery per event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_marks_only_the_events_it_read_sqlite() {
    a_fan_out_marks_only_the_events_it_read(TestDb::new(Backend::Sqlite).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_marks_only_the_events_it_read_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    a_fan_out_marks_only_the_events_it_read(db).await;
}

/// The figures (not a check; run by hand with `--run-ignored only`): events per second from one
/// replica to a local receiver, and the delay from event to delivery (p50, p99).
async fn throughput(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let receiver = Receiver::start(Mode::Accept).await;
    let app = start(db, &webhook_env(&receiver)).await;
    let repo = app.repository().await;
    let id = app.create("sip").await["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    let n = 2000;
    let started = std::time::Instant::now();
    // Events of many calls (one call's events go one at a time, in order).
    for i in 0..n {
        let call = if i % 50 == 0 { id } else { Uuid::now_v7() };
        let e = call_api::db::events::NewEvent::new(
            "default",
            call,
            call_api::db::events::EventType::TurnCompleted,
            serde_json::json!({"i": i}),
        );
        repo.insert_event(&e).await.unwrap();
    }
    let written = started.elapsed();
    wait_until(async || receiver.accepted().len() > n, Duration::from_secs(300), "all deliveries").await;
    let took = started.elapsed();
    let mut delays: Vec<f64> = receiver
        .accepted()
        .iter()
        .map(|r| {
            let ts: chrono::DateTime<chrono::Utc> = r.json()["timestamp"].as_str().unwrap().parse().unwrap();
            (r.at - ts).as_seconds_f64()
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let p = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{backend:?}: {n} events written in {written:?} (while delivering), all delivered after {took:?}: \
         {:.0} events/s; delay p50 {:.3} s, p99 {:.3} s",
        n as f64 / took.as_secs_f64(),
        p(0.5),
        p(0.99),
    );
    // Steady: 50 events a second for 6 s; the delay of those alone.
    let before = receiver.accepted().len();
    for i in 0..300 {
        let e = call_api::db::events::NewEvent::new(
            "default",
            Uuid::now_v7(),
            call_api::db::events::EventType::TurnCompleted,
            serde_json::json!({"i": i}),
        );
        repo.insert_event(&e).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(async || receiver.accepted().len() >= before + 300, Duration::from_secs(60), "steady deliveries").await;
    let mut steady: Vec<f64> = receiver.accepted()[before..]
        .iter()
        .map(|r| {
            let ts: chrono::DateTime<chrono::Utc> = r.json()["timestamp"].as_str().unwrap().parse().unwrap();
            (r.at - ts).as_seconds_f64()
        })
        .collect();
    steady.sort_by(f64::total_cmp);
    let q = |x: f64| steady[((steady.len() - 1) as f64 * x) as usize];
    eprintln!("{backend:?}: steady 50 events/s: delay p50 {:.3} s, p99 {:.3} s", q(0.5), q(0.99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput_sqlite() {
    throughput(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput_postgres() {
    throughput(Backend::Postgres).await;
}

/// A malformed `WEBHOOK_ENDPOINTS` or `WEBHOOK_SECRETS` entry stops the binary at start (exit 2)
/// with one line naming the variable and the entry, and never the secret.
#[test]
fn bad_webhook_configuration_stops_the_binary_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = format!("default={SECRET}");
    let cases: [(&str, &str, &str, &str); 5] = [
        ("default=https://hooks.example.com/a,default", &secrets, "WEBHOOK_ENDPOINTS", "entry 2"),
        ("default=ftp://hooks.example.com/a", &secrets, "WEBHOOK_ENDPOINTS", "only http and https"),
        ("default=http://169.254.169.254/latest", &secrets, "WEBHOOK_ENDPOINTS", "link-local"),
        ("default=https://hooks.example.com/a", "default=not-a-secret", "WEBHOOK_SECRETS", "entry 1"),
        ("default=https://hooks.example.com/a", "", "WEBHOOK_SECRETS", "no secret"),
    ];
    for (endpoints, secrets, variable, entry) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_call-api"))
            .current_dir(dir.path())
            .env("WEBHOOK_ENDPOINTS", endpoints)
            .env("WEBHOOK_SECRETS", secrets)
            .env("CALL_API_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", format!("sqlite://{}", dir.path().join("never.db").display()))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{endpoints}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{endpoints}: {stderr}");
        assert!(lines[0].contains(variable) && lines[0].contains(entry), "want {variable} {entry:?} in {stderr}");
        assert!(!stderr.contains("MfKQ9r8"), "the secret leaked: {stderr}");
    }
    assert!(!dir.path().join("never.db").exists(), "nothing started");
}
