//! Helpers for the stack tests: free ports, the services as child processes of the real binary
//! (each with its own metrics registry, logs and `service.name`), and small HTTP/metrics readers.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub const API_KEY: &str = "test-key-0123456789abcdef";

/// A port nothing listens on, for a service of a test stack to bind. It is drawn at random below
/// Linux's ephemeral range (32768–60999): a port the kernel hands out for `bind(0)` is free again
/// the moment this returns, and any process's next outgoing connection can take it as its local
/// port before the service binds it; the service then exits and the stack is never ready.
pub fn free_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..32_768);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Every process this test started: its name, id and output, for [`started_report`].
type Started = (&'static str, u32, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>);
static STARTED: Mutex<Vec<Started>> = Mutex::new(Vec::new());

/// What each process this test started has become (running, or exited) and the last lines it
/// wrote: said when a stack is not ready, so that a failure names the service and its reason.
pub fn started_report() -> String {
    let mut report = String::new();
    for (name, pid, stdout, stderr) in STARTED.lock().unwrap().iter() {
        // Field 3 of `stat` is the state; `Z`: exited, not yet waited for.
        let state = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) => "exited",
            Ok(_) => "running",
            Err(_) => "exited",
        };
        report.push_str(&format!("\n--- {name} (pid {pid}, {state})"));
        for (stream, lines) in [("stderr", stderr), ("stdout", stdout)] {
            let lines = lines.lock().unwrap();
            for line in &lines[lines.len().saturating_sub(5)..] {
                report.push_str(&format!("\n{stream}: {line}"));
            }
        }
    }
    report
}

/// One service running as `voice-kraliki serve <name>`, its stdout captured line by line.
pub struct Service {
    pub name: &'static str,
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr: they end when the process's pipes close.
    readers: [std::thread::JoinHandle<()>; 2],
}

fn capture(reader: impl std::io::Read + Send + 'static) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    let thread = std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    (lines, thread)
}

/// Ports of a test stack.
#[derive(Clone, Copy)]
pub struct Ports {
    pub api: u16,
    pub audio_grpc: u16,
    pub audio_admin: u16,
    pub gateway_grpc: u16,
    pub gateway_admin: u16,
}

impl Ports {
    pub fn new() -> Self {
        Self {
            api: free_port(),
            audio_grpc: free_port(),
            audio_admin: free_port(),
            gateway_grpc: free_port(),
            gateway_admin: free_port(),
        }
    }

    /// Waits until call-api, audio-processor and provider-gateway all answer `/ready` with 200.
    pub async fn wait_all_ready(&self) {
        for port in [self.api, self.audio_admin, self.gateway_admin] {
            wait_ready(&format!("http://127.0.0.1:{port}/ready"), Duration::from_secs(20)).await;
        }
    }

    /// The address variables every service of this stack gets.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CALL_API_ADDR".into(), format!("127.0.0.1:{}", self.api)),
            ("AUDIO_PROCESSOR_GRPC_ADDR".into(), format!("127.0.0.1:{}", self.audio_grpc)),
            ("AUDIO_PROCESSOR_ADMIN_ADDR".into(), format!("127.0.0.1:{}", self.audio_admin)),
            ("PROVIDER_GATEWAY_GRPC_ADDR".into(), format!("127.0.0.1:{}", self.gateway_grpc)),
            ("PROVIDER_GATEWAY_ADMIN_ADDR".into(), format!("127.0.0.1:{}", self.gateway_admin)),
            ("AUDIO_PROCESSOR_URL".into(), format!("http://127.0.0.1:{}", self.audio_grpc)),
            ("PROVIDER_GATEWAY_URL".into(), format!("http://127.0.0.1:{}", self.gateway_grpc)),
            ("API_KEYS".into(), API_KEY.into()),
            ("DATABASE_URL".into(), format!("sqlite://{}", temp_path("db.sqlite").display())),
        ]
    }
}

/// The shared PostgreSQL of the tests (trust auth), through a database that always exists.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh PostgreSQL database of its own for one test, dropped (its connections closed) when
/// this is.
pub struct PgDatabase {
    pub name: String,
    /// What `DATABASE_URL` is set to.
    pub url: String,
}

impl PgDatabase {
    /// Creates the database; `None` (after one loud line) when PostgreSQL at 127.0.0.1:5432 is
    /// unreachable, which `REQUIRE_POSTGRES=1` makes a failure instead.
    pub async fn create(prefix: &str) -> Option<Self> {
        use sqlx::{Connection as _, Executor as _};
        let connect = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(PG_ADMIN_URL)).await;
        let mut admin = match connect {
            Ok(Ok(c)) => c,
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
                return None;
            }
        };
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create the test database");
        let _ = admin.close().await;
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Some(Self { name, url })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        use sqlx::{Connection as _, Executor as _};
        let name = self.name.clone();
        // Drop runs outside async code: clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(mut c) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = c.execute(sqlx::AssertSqlSafe(drop)).await {
                        eprintln!("could not drop the test database {name}: {e}");
                    }
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vk-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Variables of the developer's shell that would change what a test sees.
const SCRUBBED: [&str; 13] = [
    "SENTRY_DSN",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "LOG_FILE",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "DEEPGRAM_API_KEY",
    "DEEPGRAM_BASE_URL",
    "STT_PROVIDERS",
    "LLM_PROVIDERS",
    "TTS_PROVIDERS",
    "ENABLE_METRICS",
];

impl Service {
    pub fn start(name: &'static str, env: &[(String, String)]) -> Self {
        Self::start_args(name, &["serve", name], env)
    }

    pub fn start_args(name: &'static str, args: &[&str], env: &[(String, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voice-kraliki"));
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        for v in SCRUBBED {
            cmd.env_remove(v);
        }
        cmd.env("WORKERS", "2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn voice-kraliki");
        let (stdout, out_reader) = capture(child.stdout.take().unwrap());
        let (stderr, err_reader) = capture(child.stderr.take().unwrap());
        STARTED.lock().unwrap().push((name, child.id(), stdout.clone(), stderr.clone()));
        Self { name, child, stdout, stderr, readers: [out_reader, err_reader] }
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Waits for the process to exit, up to `timeout`, and then for the lines it wrote (its
    /// output is read on threads that can lag behind its exit).
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    telemetry::install_crypto_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Creates a call on call-api at `api` (carrier `provider`, inbound) and returns its id.
pub async fn create_call(api: &str, provider: &str) -> String {
    let created: serde_json::Value = client()
        .post(format!("{api}/v1/calls"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"provider": provider, "from": "+14155550100", "to": "+420123456789", "direction": "inbound"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().expect("call created").to_string()
}

/// audio-processor, provider-gateway and call-api, in that order, each with `env`.
pub fn start_all(env: &[(String, String)]) -> [Service; 3] {
    [Service::start("audio-processor", env), Service::start("provider-gateway", env), Service::start("call-api", env)]
}

/// Polls `url` until it answers 200 (or panics after `timeout`).
pub async fn wait_ready(url: &str, timeout: Duration) {
    let client = client();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not ready within {timeout:?}{}", started_report());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format strictly enough to catch malformed output.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(rest.starts_with("HELP ") || rest.starts_with("TYPE "), "bad comment line: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), HashMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = HashMap::new();
                for pair in split_labels(body) {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line}"));
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).expect("quoted label");
                    labels.insert(k.to_string(), v.to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad metric name {name}");
        out.push(Sample { name, labels, value });
    }
    out
}

fn split_labels(body: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in body.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                cur.push(c);
                quoted = !quoted;
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

pub async fn scrape(url: &str) -> (String, Vec<Sample>) {
    let text = client().get(url).send().await.unwrap().text().await.unwrap();
    let samples = parse_metrics(&text);
    (text, samples)
}
