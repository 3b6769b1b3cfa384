//! The real service on port 0 and fake providers that are real HTTP servers on loopback,
//! recording every request and answering from a script.

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
use kraliki_proto::provider::v1::provider_gateway_client::ProviderGatewayClient;
use telemetry::{Env, MetricsHandle, ServiceContext, Shutdown};
use tokio::sync::watch;
use tonic::transport::Channel;

/// Catches hangs; never a performance assertion.
pub const HANG: Duration = Duration::from_secs(20);
pub const OPENAI_KEY: &str = "sk-test-0123456789abcdef";
pub const DEEPGRAM_KEY: &str = "dg-test-key-0123456789";

// ---------------------------------------------------------------------------------------------
// Fake providers

/// What the fake answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A complete answer.
    Full { status: u16, content_type: &'static str, body: Bytes },
    /// A streamed answer: each chunk after its delay; then end, or keep the response open
    /// (sending `keepalive` every 50 ms, so a closed connection is noticed) when `hang_after`.
    Stream { content_type: &'static str, chunks: Vec<(Duration, Bytes)>, hang_after: Option<Bytes> },
    /// Wait, then answer.
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Reply::Full { status, content_type: "application/json", body: Bytes::from(body.to_string()) }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Reply::Full { status, content_type: "text/plain", body: Bytes::from(body.to_owned()) }
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
    /// Counts streamed response bodies that were dropped before they ended: the client closed
    /// the connection (or reset the stream) while the fake was still answering.
    closed: Arc<watch::Sender<usize>>,
}

struct Shared {
    script: Arc<Mutex<Script>>,
    closed: Arc<watch::Sender<usize>>,
}

impl Fake {
    pub async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let closed = Arc::new(watch::channel(0).0);
        let shared = Arc::new(Shared { script: Arc::clone(&script), closed: Arc::clone(&closed) });
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, script, closed }
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

    /// Waits until `n` streamed answers were cut off by the client.
    pub async fn wait_closed(&self, n: usize) {
        let mut rx = self.closed.subscribe();
        rx.wait_for(|count| *count >= n).await.unwrap();
    }

    pub fn closed_count(&self) -> usize {
        *self.closed.borrow()
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
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
        let mut s = shared.script.lock().unwrap();
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
    respond(reply, Arc::clone(&shared.closed)).await
}

/// Counts a streamed body dropped before its end.
struct CloseWatch {
    closed: Arc<watch::Sender<usize>>,
    finished: bool,
}

impl CloseWatch {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for CloseWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.closed.send_modify(|n| *n += 1);
        }
    }
}

async fn respond(reply: Reply, closed: Arc<watch::Sender<usize>>) -> Response {
    match reply {
        Reply::Full { status, content_type, body } => Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap(),
        Reply::Stream { content_type, chunks, hang_after } => {
            let watch = CloseWatch { closed, finished: false };
            let chunks: VecDeque<(Duration, Bytes)> = chunks.into();
            let stream =
                futures_util::stream::unfold((chunks, hang_after, watch), |(mut chunks, hang, mut watch)| async move {
                    if let Some((delay, chunk)) = chunks.pop_front() {
                        tokio::time::sleep(delay).await;
                        return Some((Ok::<_, Infallible>(chunk), (chunks, hang, watch)));
                    }
                    match hang {
                        Some(keepalive) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Some((Ok(keepalive.clone()), (chunks, Some(keepalive), watch)))
                        }
                        None => {
                            watch.finish();
                            None
                        }
                    }
                });
            Response::builder()
                .status(200)
                .header("content-type", content_type)
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Reply::Delayed(delay, inner) => {
            tokio::time::sleep(delay).await;
            Box::pin(respond(*inner, closed)).await
        }
    }
}

/// An OpenAI chat completion as SSE: one event per token, a finish event, a usage event, `[DONE]`.
pub fn openai_sse(tokens: &[&str], usage: (u64, u64)) -> Vec<String> {
    let mut events = Vec::new();
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
    };
    events.push(chunk(serde_json::json!({"role": "assistant", "content": ""}), serde_json::Value::Null));
    for token in tokens {
        events.push(chunk(serde_json::json!({"content": token}), serde_json::Value::Null));
    }
    events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    events.push(serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}
    }));
    let mut out: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push("data: [DONE]\n\n".to_owned());
    out
}

// ---------------------------------------------------------------------------------------------
// The service

/// Environment for a test gateway: the fakes as providers (with keys), short timeouts and
/// backoff, then `extra`.
pub fn env(openai: Option<&Fake>, deepgram: Option<&Fake>, extra: &[(&str, &str)]) -> Env {
    let mut env = Env::from_pairs([
        ("LOG_LEVEL", "warn"),
        ("PROVIDER_CONNECT_TIMEOUT_SECONDS", "2"),
        ("PROVIDER_FIRST_BYTE_TIMEOUT_SECONDS", "5"),
        ("PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS", "5"),
        ("PROVIDER_IDLE_TIMEOUT_SECONDS", "5"),
        ("PROVIDER_RETRY_BASE_SECONDS", "0.005"),
        ("PROVIDER_RETRY_MAX_SECONDS", "0.02"),
    ]);
    if let Some(f) = openai {
        env.set("OPENAI_BASE_URL", f.url("/v1"));
        env.set("OPENAI_API_KEY", OPENAI_KEY);
    }
    if let Some(f) = deepgram {
        env.set("DEEPGRAM_BASE_URL", f.url(""));
        env.set("DEEPGRAM_API_KEY", DEEPGRAM_KEY);
    }
    for (k, v) in extra {
        env.set(*k, *v);
    }
    env
}

/// A running gateway.
pub struct App {
    pub client: ProviderGatewayClient<Channel>,
    pub grpc_url: String,
    pub admin_url: String,
    pub ctx: ServiceContext,
}

/// Starts the real service on port 0 with `env` and connects a generated client to it.
pub async fn spawn_app(env: &Env, metrics: Option<MetricsHandle>) -> App {
    let config = provider_gateway::Config::from_env(env).expect("valid test configuration");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let shutdown = Shutdown::new(Duration::ZERO, Duration::from_secs(5));
    let ctx = ServiceContext::new(provider_gateway::service_info(), "test", metrics, shutdown);
    let run_ctx = ctx.clone();
    tokio::spawn(async move {
        provider_gateway::run(config, grpc, admin, run_ctx).await.expect("service runs");
    });
    let channel = tonic::transport::Endpoint::from_shared(grpc_url.clone()).unwrap().connect_lazy();
    App { client: ProviderGatewayClient::new(channel), grpc_url, admin_url, ctx }
}

/// A request carrying a `grpc-timeout`, as a real caller sends.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}
