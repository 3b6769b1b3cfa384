//! `spawn_app()`: the real call-api on port 0 over a fresh database (a temporary SQLite file, or
//! a fresh schema in the shared PostgreSQL), and helpers to talk to it like a client.
#![allow(dead_code)]

pub mod carrier;
pub mod proxy;
pub mod stack;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use telemetry::{Env, ServiceContext, Shutdown, TelemetryConfig};
use tokio::net::TcpListener;

/// Key of the default tenant.
pub const KEY: &str = "k-default-1234567890abcdef";
/// Key of tenant `acme`.
pub const ACME_KEY: &str = "k-acme-1234567890abcdefgh";
const API_KEYS: &str = "k-default-1234567890abcdef,acme:k-acme-1234567890abcdefgh";

/// The shared PostgreSQL (trust auth); tests work in a schema of their own.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database for one test, removed when dropped.
pub enum TestDb {
    Sqlite {
        dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        schema: String,
        url: String,
    },
    /// Another handle on a database some other `TestDb` owns (a second replica on it).
    Shared {
        backend: Backend,
        url: String,
    },
}

impl TestDb {
    /// `None` when PostgreSQL is unreachable and not required (the test then skips, loudly).
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                // The file does not exist yet: call-api must create it.
                let url = format!("sqlite://{}", dir.path().join("calls.db").display());
                Some(Self::Sqlite { dir, url })
            }
            Backend::Postgres => {
                let mut admin = pg_admin().await?;
                let schema = format!("vkt_{}", uuid::Uuid::new_v4().simple());
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .await
                    .expect("create test schema");
                let _ = admin.close().await;
                let url = pg_url_for_schema("127.0.0.1:5432", &schema);
                Some(Self::Postgres { schema, url })
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } | Self::Postgres { url, .. } | Self::Shared { url, .. } => url,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite { .. } => Backend::Sqlite,
            Self::Postgres { .. } => Backend::Postgres,
            Self::Shared { backend, .. } => *backend,
        }
    }

    /// A handle on the same database for a second replica (the original owns it).
    pub fn share(&self) -> Self {
        Self::Shared { backend: self.backend(), url: self.url().to_string() }
    }

    /// The number of rows in `calls` (read directly, not through the API).
    pub async fn count_calls(&self, condition: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM calls WHERE {condition}");
        let url = self.url();
        match self.backend() {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(url).await.expect("open sqlite");
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&mut c).await.expect("count")
            }
            Backend::Postgres => {
                let mut c = PgConnection::connect(url).await.expect("open postgres");
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&mut c).await.expect("count")
            }
        }
    }
}

/// `postgres://…/test` with `search_path` set to `schema`, through `host_port`.
pub fn pg_url_for_schema(host_port: &str, schema: &str) -> String {
    format!("postgres://postgres@{host_port}/test?options=-c%20search_path%3D{schema}")
}

/// An admin connection to the shared PostgreSQL, or `None` (after one loud line) when it is
/// unreachable; with `REQUIRE_POSTGRES=1` unreachable is a failure instead.
pub async fn pg_admin() -> Option<PgConnection> {
    let connect = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(PG_ADMIN_URL)).await;
    match connect {
        Ok(Ok(c)) => Some(c),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "connect timed out".to_string(),
            };
            if std::env::var("REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("REQUIRE_POSTGRES=1 but PostgreSQL at 127.0.0.1:5432 is unreachable: {why}");
            }
            eprintln!(
                "!!! SKIPPED: PostgreSQL at 127.0.0.1:5432 is unreachable ({why}); set REQUIRE_POSTGRES=1 to fail instead"
            );
            None
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Self::Postgres { schema, .. } = self {
            let schema = schema.clone();
            // Drop runs outside async code: clean up on a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                rt.block_on(async move {
                    if let Ok(mut c) = PgConnection::connect(PG_ADMIN_URL).await {
                        let _ = c.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))).await;
                        let _ = c.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// A running call-api.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    shutdown: Shutdown,
    /// `call_api::run`: finishes when the service has shut down.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub telemetry: telemetry::Telemetry,
}

/// Starts call-api over a fresh database of `backend`; `None` when PostgreSQL is skipped.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    let db = TestDb::new(backend).await?;
    let url = db.url().to_string();
    Some(spawn_app_with(db, &url, &[]).await)
}

/// Starts call-api with `DATABASE_URL=database_url` (which may differ from `db.url()`, e.g. a
/// proxy in front of it) and extra environment.
pub async fn spawn_app_with(db: TestDb, database_url: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut env = Env::from_pairs([
        ("API_KEYS", API_KEYS),
        ("DATABASE_URL", database_url),
        ("PUBLIC_BASE_URL", "https://calls.example.test"),
        ("LOG_LEVEL", "warn"),
        ("APM_ENABLED", "false"),
        // Tests make many requests at once; the limits tests turn rate limiting on.
        ("API_RATE_LIMIT_PER_SECOND", "0"),
    ]);
    for (k, v) in extra {
        env.set(*k, *v);
    }
    let config = call_api::Config::from_env(&env).expect("valid test config");
    let telemetry_config = TelemetryConfig::from_env(&env).expect("valid telemetry config");
    let telemetry = telemetry::init(&call_api::service_info(), &telemetry_config).expect("telemetry");
    // Tests drain in 5 s unless they set SHUTDOWN_DELAY_SECONDS / SHUTDOWN_TIMEOUT_SECONDS.
    let delay =
        if env.get("SHUTDOWN_DELAY_SECONDS").is_some() { telemetry_config.shutdown_delay } else { Duration::ZERO };
    let timeout = if env.get("SHUTDOWN_TIMEOUT_SECONDS").is_some() {
        telemetry_config.shutdown_timeout
    } else {
        Duration::from_secs(5)
    };
    let shutdown = Shutdown::new(delay, timeout);
    let ctx = ServiceContext::new(call_api::service_info(), "test", telemetry.metrics(), shutdown.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(call_api::run(config, listener, ctx));
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    // Wait until it serves (migrations done), or report why it stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if server.is_finished() {
            panic!("call-api stopped during start: {:?}", server.await);
        }
        if let Ok(r) = client.get(format!("{base}/ready")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "call-api did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    TestApp { addr, base, client, db, shutdown, server, telemetry }
}

impl TestApp {
    /// Starts the shutdown sequence (as SIGTERM would).
    pub fn trigger_shutdown(&self) {
        self.shutdown.trigger();
    }

    /// A second signal: what still drains ends now.
    pub fn force_shutdown(&self) {
        self.shutdown.force();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A valid create body (inbound: an outbound `twilio` call would be dialled through Twilio,
/// which these apps do not configure).
pub fn new_call(provider: &str) -> Value {
    json!({"provider": provider, "from": "+14155550100", "to": "+420123456789", "direction": "inbound"})
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).bearer_auth(key).json(body).send().await.expect("request");
        decode(r).await
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).bearer_auth(key).send().await.expect("request");
        decode(r).await
    }

    /// Creates a call (asserting 201) and returns its body.
    pub async fn create(&self, provider: &str) -> Value {
        let (status, body) = self.post_json("/v1/calls", KEY, &new_call(provider)).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn end(&self, id: &str, outcome: &str) -> (u16, Value) {
        self.post_json(&format!("/v1/calls/{id}/end"), KEY, &json!({"outcome": outcome})).await
    }

    pub async fn metrics(&self) -> Metrics {
        let text = self.client.get(self.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        Metrics::parse(&text)
    }

    /// A repository handle on the same database, for what no endpoint does yet (media start).
    pub async fn repository(&self) -> call_api::db::Database {
        call_api::db::Database::connect(&call_api::db::DatabaseConfig::with_url(self.db.url()))
            .await
            .expect("connect repository")
    }
}

pub async fn decode(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Asserts an error response: status, the SPEC body shape and its code.
#[track_caller]
pub fn assert_error(actual: (u16, Value), status: u16, code: &str) {
    let (s, body) = actual;
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only `error` at the top: {body}");
}

/// Samples of a Prometheus text exposition: metric name → [(labels, value)].
pub struct Metrics(BTreeMap<String, Vec<Sample>>);

/// One series' labels and value.
type Sample = (BTreeMap<String, String>, f64);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut map: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().unwrap_or(f64::NAN);
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let rest = rest.trim_end_matches('}');
                    let labels = rest
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .filter_map(|p| p.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            map.entry(name).or_default().push((labels, value));
        }
        Self(map)
    }

    /// The value of `name` with exactly these labels (0 when absent).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }

    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(name)?.iter().find_map(|(l, v)| {
            (l.len() == labels.len() && labels.iter().all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want)))
                .then_some(*v)
        })
    }

    /// Sum of `name` over the series that carry these labels (and possibly others).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(name).map_or(0.0, |series| {
            series
                .iter()
                .filter(|(l, _)| labels.iter().all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want)))
                .map(|(_, v)| v)
                .sum()
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Generates a `sqlite` and a `postgres` test for each named `async fn(TestApp)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(app) = $crate::common::spawn_app($crate::common::Backend::Sqlite).await {
                    super::$name(app).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::common::spawn_app($crate::common::Backend::Postgres).await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}
