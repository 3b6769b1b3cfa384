//! Load bench: the real `call-api` binary with all telemetry on (Prometheus metrics, OTLP traces
//! to an in-process collector, Sentry transactions to an in-process sink, JSON logs), driven over
//! HTTP by concurrent clients. Prints requests/s, p50 and p99 of `POST /v1/calls` and
//! `GET /v1/calls/{id}` on SQLite and on PostgreSQL (when reachable), and the server's idle and
//! loaded resident memory.
//!
//! `cargo bench -p call-api --bench api_load` (or `make bench`). `BENCH_SECONDS` (default 5) sets
//! each phase's length, `BENCH_CONCURRENCY` (default 32) the number of clients.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use sqlx::{Connection, Executor};
use telemetry::testing::{OtlpReceiver, SentrySink};

const KEY: &str = "bench-key-1234567890abcdef";
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

async fn start(database_url: &str, otlp: &OtlpReceiver, sentry: &SentrySink) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let child = Command::new(env!("CARGO_BIN_EXE_call-api"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CALL_API_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url)
        .env("API_KEYS", KEY)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint())
        .env("SENTRY_DSN", sentry.dsn())
        .env("LOG_LEVEL", "info")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start call-api");
    let server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{}/ready", server.base)).send().await
            && r.status() == 200
        {
            return server;
        }
        assert!(Instant::now() < deadline, "call-api did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Figures {
    requests: usize,
    errors: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `concurrency` clients for `seconds`, each calling `request(i)` in a loop.
async fn load<F, Fut>(seconds: f64, concurrency: usize, request: F) -> (Figures, Vec<String>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<String>, ()>> + Send,
{
    let request = Arc::new(request);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut outputs) = (Vec::new(), 0usize, Vec::new());
            let mut i = worker;
            while Instant::now() < end {
                let t = Instant::now();
                match request(i).await {
                    Ok(out) => {
                        latencies.push(t.elapsed());
                        outputs.extend(out);
                    }
                    Err(()) => errors += 1,
                }
                i += concurrency;
            }
            (latencies, errors, outputs)
        }));
    }
    let (mut latencies, mut errors, mut outputs) = (Vec::new(), 0, Vec::new());
    for t in tasks {
        let (l, e, o) = t.await.expect("worker");
        latencies.extend(l);
        errors += e;
        outputs.extend(o);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    let figures = Figures {
        requests: latencies.len(),
        errors,
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    };
    (figures, outputs)
}

async fn bench(
    name: &str,
    database_url: &str,
    otlp: &OtlpReceiver,
    sentry: &SentrySink,
    seconds: f64,
    concurrency: usize,
) {
    let server = start(database_url, otlp, sentry).await;
    let idle = server.rss_mib();
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    let base: Arc<str> = server.base.clone().into();

    let create = {
        let (client, base) = (client.clone(), base.clone());
        move |i: usize| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let provider = ["twilio", "telnyx", "sip"][i % 3];
                let body = json!({"provider": provider, "from": "+14155550100",
                                  "to": "+420123456789", "direction": "inbound", "metadata": {"n": i}});
                let r =
                    client.post(format!("{base}/v1/calls")).bearer_auth(KEY).json(&body).send().await.map_err(drop)?;
                if r.status() != 201 {
                    return Err(());
                }
                let v: serde_json::Value = r.json().await.map_err(drop)?;
                Ok(v["id"].as_str().map(str::to_string))
            }
        }
    };
    // Warm-up (connections, statement caches), then the measured phase.
    let _ = load(0.5, concurrency, create.clone()).await;
    let (post, ids) = load(seconds, concurrency, create).await;
    let loaded_post = server.rss_mib();

    let ids: Arc<Vec<String>> = Arc::new(ids);
    let get = {
        let (client, base, ids) = (client.clone(), base.clone(), ids.clone());
        move |i: usize| {
            let (client, base, ids) = (client.clone(), base.clone(), ids.clone());
            async move {
                let id = &ids[(i * 7919) % ids.len()];
                let r = client.get(format!("{base}/v1/calls/{id}")).bearer_auth(KEY).send().await.map_err(drop)?;
                if r.status() != 200 {
                    return Err(());
                }
                r.bytes().await.map_err(drop)?;
                Ok(None)
            }
        }
    };
    let (get_figures, _) = load(seconds, concurrency, get).await;
    let loaded = server.rss_mib().max(loaded_post);
    for (route, f) in [("POST /v1/calls", &post), ("GET /v1/calls/{id}", &get_figures)] {
        println!(
            "{name:<10} {route:<20} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} requests, {} errors)",
            f.per_second, f.p50_ms, f.p99_ms, f.requests, f.errors
        );
    }
    println!("{name:<10} server RSS: idle {idle:.1} MiB, loaded {loaded:.1} MiB");
}

#[tokio::main]
async fn main() {
    // reqwest is built without a default TLS provider (STACK.md): install the shared one.
    telemetry::install_crypto_provider();
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let otlp = OtlpReceiver::start().await;
    let sentry = SentrySink::start().await;
    println!(
        "call-api load: {concurrency} clients, {seconds} s per phase, metrics + OTLP traces + Sentry (10% transactions) + JSON logs on"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    bench("sqlite", &sqlite, &otlp, &sentry, seconds, concurrency).await;

    match sqlx::PgConnection::connect(PG_ADMIN_URL).await {
        Ok(mut admin) => {
            let schema = format!("vk_bench_{}", std::process::id());
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            )))
            .execute(&mut admin)
            .await
            .expect("schema");
            let url = format!("postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}");
            bench("postgres", &url, &otlp, &sentry, seconds, concurrency).await;
            let _ = admin.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))).await;
        }
        Err(e) => println!("postgres   skipped: 127.0.0.1:5432 unreachable ({e})"),
    }
    println!("spans received by the collector: {}", otlp.spans().len());
}
