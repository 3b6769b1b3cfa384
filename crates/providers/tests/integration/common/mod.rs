//! Fake providers: real HTTP servers on loopback that record every request and answer from a
//! script, plus helpers for configuration and metrics.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;

use metrics::{Key, KeyName, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use providers::ProvidersConfig;

/// What the fake answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A complete answer.
    Full { status: u16, headers: Vec<(&'static str, String)>, body: Bytes },
    /// A streamed answer: each chunk after its delay; then end, or hang forever.
    Stream { content_type: &'static str, chunks: Vec<(Duration, Bytes)>, hang_after: bool },
    /// Wait, then answer.
    Delayed(Duration, Box<Reply>),
    /// Accept the request and never send a response head.
    Hang,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Reply::Full {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(body.to_string()),
        }
    }

    pub fn with_header(self, name: &'static str, value: &str) -> Self {
        match self {
            Reply::Full { status, mut headers, body } => {
                headers.push((name, value.to_owned()));
                Reply::Full { status, headers, body }
            }
            other => other,
        }
    }

    /// An SSE answer split into `piece`-byte chunks, to exercise the parser's boundaries.
    pub fn sse_split(text: &str, piece: usize) -> Self {
        let chunks =
            text.as_bytes().chunks(piece).map(|c| (Duration::from_millis(1), Bytes::copy_from_slice(c))).collect();
        Reply::Stream { content_type: "text/event-stream", chunks, hang_after: false }
    }
}

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

#[derive(Default)]
struct Script {
    replies: HashMap<String, VecDeque<Reply>>,
    fallback: HashMap<String, Reply>,
    requests: Vec<Recorded>,
}

/// A fake provider server.
#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl Fake {
    pub async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = axum::Router::new().fallback(handle).with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, script }
    }

    pub fn url(&self, suffix: &str) -> String {
        format!("http://{}{suffix}", self.addr)
    }

    /// Answer requests to `path` with `replies` in order, then with the last one forever.
    pub fn on(&self, path: &str, replies: Vec<Reply>) {
        let mut script = self.script.lock().unwrap();
        let mut queue: VecDeque<Reply> = replies.into();
        if let Some(last) = queue.pop_back() {
            script.fallback.insert(path.to_owned(), last);
        }
        script.replies.insert(path.to_owned(), queue);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.script.lock().unwrap().requests.clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

async fn handle(State(script): State<Arc<Mutex<Script>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
    let query = parts
        .uri
        .query()
        .map(|q| {
            q.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
        })
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let reply = {
        let mut s = script.lock().unwrap();
        s.requests.push(Recorded {
            method: parts.method.to_string(),
            path: path.clone(),
            query,
            headers: parts.headers.clone(),
            body,
        });
        s.replies
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .or_else(|| s.fallback.get(&path).cloned())
            .unwrap_or_else(|| Reply::json(404, serde_json::json!({"error": {"message": "no route"}})))
    };
    respond(reply).await
}

async fn respond(reply: Reply) -> Response {
    match reply {
        Reply::Full { status, headers, body } => {
            let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
            for (k, v) in headers {
                builder = builder.header(k, v);
            }
            builder.body(Body::from(body)).unwrap()
        }
        Reply::Stream { content_type, chunks, hang_after } => {
            let stream = futures_util::stream::iter(chunks)
                .then(|(delay, chunk)| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(chunk)
                })
                .chain(futures_util::stream::once(async move {
                    if hang_after {
                        std::future::pending::<()>().await;
                    }
                    Ok(Bytes::new())
                }));
            Response::builder()
                .status(200)
                .header("content-type", content_type)
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Reply::Delayed(delay, inner) => {
            tokio::time::sleep(delay).await;
            Box::pin(respond(*inner)).await
        }
        Reply::Hang => std::future::pending().await,
    }
}

/// Test configuration: both remote providers pointed at fakes, short timeouts and backoff.
pub fn config(openai: Option<&Fake>, deepgram: Option<&Fake>, extra: &[(&str, &str)]) -> ProvidersConfig {
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut set = |k: &str, v: String| {
        vars.insert(k.to_owned(), v);
    };
    if let Some(f) = openai {
        set("OPENAI_BASE_URL", f.url("/v1"));
        set("OPENAI_API_KEY", "sk-test-0123456789abcdef".into());
    }
    if let Some(f) = deepgram {
        set("DEEPGRAM_BASE_URL", f.url(""));
        set("DEEPGRAM_API_KEY", "dg-test-key-0123456789".into());
    }
    for (k, v) in [
        ("PROVIDER_CONNECT_TIMEOUT_SECONDS", "1"),
        ("PROVIDER_FIRST_BYTE_TIMEOUT_SECONDS", "1"),
        ("PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS", "1"),
        ("PROVIDER_IDLE_TIMEOUT_SECONDS", "1"),
        ("PROVIDER_RETRY_BASE_SECONDS", "0.01"),
        ("PROVIDER_RETRY_MAX_SECONDS", "0.04"),
        ("PROVIDER_DEFAULT_DEADLINE_SECONDS", "20"),
    ] {
        set(k, v.into());
    }
    for (k, v) in extra {
        set(k, (*v).to_owned());
    }
    ProvidersConfig::from_env(&providers::config::Env::from_pairs(vars)).expect("valid test config")
}

/// A recorder whose values can be read without draining them (the debugging recorder resets
/// counters and gauges on every snapshot).
struct ReadableRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for ReadableRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        self.0.get_or_create_counter(key, |c| metrics::Counter::from_arc(Arc::clone(c)))
    }
    fn register_gauge(&self, key: &Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0.get_or_create_gauge(key, |g| metrics::Gauge::from_arc(Arc::clone(g)))
    }
    fn register_histogram(&self, key: &Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        self.0.get_or_create_histogram(key, |h| metrics::Histogram::from_arc(Arc::clone(h)))
    }
}

/// Metrics recorded on this thread (tests run on a current-thread runtime).
pub struct Metrics {
    registry: Arc<Registry<Key, AtomicStorage>>,
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name && labels.iter().all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

impl Metrics {
    /// Install a recorder for the current thread; keep the guard alive for the test.
    pub fn install() -> (Self, metrics::LocalRecorderGuard<'static>) {
        let registry = Arc::new(Registry::atomic());
        let recorder: &'static ReadableRecorder = Box::leak(Box::new(ReadableRecorder(Arc::clone(&registry))));
        let guard = metrics::set_default_local_recorder(recorder);
        (Self { registry }, guard)
    }

    /// Sum over the series that carry these labels.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.registry
            .get_counter_handles()
            .into_iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }

    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.registry
            .get_gauge_handles()
            .into_iter()
            .find(|(k, _)| matches(k, name, labels))
            .map(|(_, g)| f64::from_bits(g.load(Ordering::SeqCst)))
    }

    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.registry
            .get_histogram_handles()
            .into_iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, h)| h.data().len())
            .sum()
    }
}

pub type Part = (String, Option<String>, Option<String>, Vec<u8>);

/// Parse a multipart/form-data body: (name, filename, content type, data) per part.
pub fn multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = content_type.split("boundary=").nth(1).expect("boundary").trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let text = body;
    let positions: Vec<usize> =
        text.windows(delimiter.len()).enumerate().filter(|(_, w)| *w == delimiter.as_bytes()).map(|(i, _)| i).collect();
    for pair in positions.windows(2) {
        let part = &text[pair[0] + delimiter.len() + 2..pair[1] - 2];
        let split = part.windows(4).position(|w| w == b"\r\n\r\n").expect("part head");
        let head = String::from_utf8_lossy(&part[..split]).into_owned();
        let data = part[split + 4..].to_vec();
        let mut name = String::new();
        let mut filename = None;
        let mut ctype = None;
        for line in head.lines() {
            if let Some(rest) = line.strip_prefix("Content-Disposition: form-data; ") {
                for attr in rest.split("; ") {
                    if let Some(v) = attr.strip_prefix("name=") {
                        name = v.trim_matches('"').to_owned();
                    }
                    if let Some(v) = attr.strip_prefix("filename=") {
                        filename = Some(v.trim_matches('"').to_owned());
                    }
                }
            }
            if let Some(v) = line.strip_prefix("Content-Type: ") {
                ctype = Some(v.to_owned());
            }
        }
        parts.push((name, filename, ctype, data));
    }
    assert!(text.ends_with(format!("{delimiter}--\r\n").as_bytes()), "closing delimiter");
    parts
}

/// A realistic OpenAI chat stream: role chunk, content chunks, finish, usage, `[DONE]`.
pub fn openai_sse(tokens: &[&str], usage: (u64, u64)) -> String {
    let mut out = String::new();
    let head = r#""id":"chatcmpl-123","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1""#;
    out.push_str(&format!(
        "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    ));
    for t in tokens {
        let t = serde_json::to_string(t).unwrap();
        out.push_str(&format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{t}}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    out.push_str(&format!(
        "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    ));
    out.push_str(&format!(
        "data: {{{head},\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0}}}}}}\n\n",
        usage.0,
        usage.1,
        usage.0 + usage.1
    ));
    out.push_str("data: [DONE]\n\n");
    out
}
