//! In-test receivers for telemetry that leaves the process: a real OTLP/gRPC collector (traces
//! and logs) and a real Sentry envelope endpoint, both on loopback. Tests point `OTEL_EXPORTER_OTLP_ENDPOINT`
//! and `SENTRY_DSN` at them and assert on what arrives. Also [`FakeHttp`], the one fake HTTP
//! peer, and [`browser`], a headless Chromium for the console's tests.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use serde_json::Value;

pub mod browser;

/// One span as received by the collector.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// 1 internal, 2 server, 3 client…
    pub kind: i32,
    /// The span's status: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub attributes: Vec<(String, String)>,
}

/// One log record as received by the collector.
#[derive(Debug, Clone)]
pub struct ReceivedLog {
    /// The resource's `service.name`.
    pub service_name: String,
    /// The instrumentation scope: the event's target.
    pub scope: String,
    /// 1–24: TRACE 1, DEBUG 5, INFO 9, WARN 13, ERROR 17.
    pub severity_number: i32,
    pub severity_text: String,
    /// The message.
    pub body: String,
    /// Lowercase hex; empty outside a traced span.
    pub trace_id: String,
    pub span_id: String,
    /// The event's fields.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedLog {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Collector {
    logs: Arc<Mutex<Vec<ReceivedLog>>>,
    /// Every logs export request, whole (`Debug`).
    raw_logs: Arc<Mutex<Vec<String>>>,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Every export request, whole (`Debug`), for scans of everything that was sent.
    raw: Arc<Mutex<Vec<String>>>,
    /// When each export arrived and how many spans it carried.
    arrivals: Arc<Mutex<Vec<(std::time::Instant, usize)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        self.raw.lock().expect("collector lock").push(format!("{request:?}"));
        let mut spans = self.spans.lock().expect("collector lock");
        let before = spans.len();
        for rs in request.resource_spans {
            let service_name = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| any_value(a.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        name: s.name.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        kind: s.kind,
                        status_code: s.status.as_ref().map_or(0, |st| st.code),
                        attributes: s.attributes.iter().map(|a| (a.key.clone(), any_value(a.value.as_ref()))).collect(),
                    });
                }
            }
        }
        let received = spans.len() - before;
        self.arrivals.lock().expect("collector lock").push((std::time::Instant::now(), received));
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        self.raw_logs.lock().expect("collector lock").push(format!("{request:?}"));
        let mut logs = self.logs.lock().expect("collector lock");
        for rl in request.resource_logs {
            let service_name = rl
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| any_value(a.value.as_ref()))
                .unwrap_or_default();
            for sl in rl.scope_logs {
                let scope = sl.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                for r in sl.log_records {
                    logs.push(ReceivedLog {
                        service_name: service_name.clone(),
                        scope: scope.clone(),
                        severity_number: r.severity_number,
                        severity_text: r.severity_text.clone(),
                        body: any_value(r.body.as_ref()),
                        trace_id: hex(&r.trace_id),
                        span_id: hex(&r.span_id),
                        attributes: r.attributes.iter().map(|a| (a.key.clone(), any_value(a.value.as_ref()))).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        Some(V::StringValue(s)) => s.clone(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::DoubleValue(d)) => d.to_string(),
        // A string array as JSON-like text: `["stop"]`.
        Some(V::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(|v| format!("{:?}", any_value(Some(v)))).collect();
            format!("[{}]", items.join(","))
        }
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A real OTLP/gRPC collector on loopback that keeps every span and log record it receives.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    collector: Collector,
    _task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind otlp receiver");
        let addr = listener.local_addr().expect("local addr");
        let collector = Collector::default();
        let svc = TraceServiceServer::new(collector.clone());
        let logs = LogsServiceServer::new(collector.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .add_service(logs)
                .serve_with_incoming(crate::incoming(listener))
                .await;
        });
        Self { addr, collector, _task: task }
    }

    /// `http://127.0.0.1:port`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans.lock().expect("collector lock").clone()
    }

    /// Spans received so far.
    pub fn total(&self) -> usize {
        self.collector.arrivals.lock().expect("collector lock").iter().map(|(_, n)| n).sum()
    }

    /// Spans received at or after `t`.
    pub fn since(&self, t: std::time::Instant) -> usize {
        self.collector.arrivals.lock().expect("collector lock").iter().filter(|(at, _)| *at >= t).map(|(_, n)| n).sum()
    }

    /// Every export request received, whole: resources, spans, attributes and events.
    pub fn raw(&self) -> Vec<String> {
        self.collector.raw.lock().expect("collector lock").clone()
    }

    /// Every log record received.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.collector.logs.lock().expect("collector lock").clone()
    }

    /// Every logs export request received, whole: resources, records, attributes.
    pub fn raw_logs(&self) -> Vec<String> {
        self.collector.raw_logs.lock().expect("collector lock").clone()
    }

    /// Waits (up to `timeout`) until `pred` holds for the received log records; returns them.
    pub async fn wait_for_logs(&self, timeout: Duration, pred: impl Fn(&[ReceivedLog]) -> bool) -> Vec<ReceivedLog> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if pred(&logs) || tokio::time::Instant::now() >= deadline {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to `timeout`) until `pred` holds for the received spans; returns them.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One item of a Sentry envelope.
#[derive(Debug, Clone)]
pub struct EnvelopeItem {
    /// `event`, `transaction`, `session`…
    pub kind: String,
    pub payload: Value,
}

/// A real HTTP endpoint that accepts Sentry envelopes (`POST /api/<project>/envelope/`).
pub struct SentrySink {
    pub addr: SocketAddr,
    bodies: Bodies,
    _task: tokio::task::JoinHandle<()>,
}

/// Envelope bodies with when each arrived.
type Bodies = Arc<Mutex<Vec<(std::time::Instant, Vec<u8>)>>>;

async fn envelope(State(bodies): State<Bodies>, body: Bytes) -> &'static str {
    bodies.lock().expect("sink lock").push((std::time::Instant::now(), body.to_vec()));
    "{}"
}

/// The items of one envelope body.
fn envelope_items(body: &[u8]) -> Vec<EnvelopeItem> {
    let mut items = Vec::new();
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines().skip(1); // envelope header
    while let Some(header) = lines.next() {
        let Ok(header) = serde_json::from_str::<Value>(header) else { continue };
        let kind = header.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        let Some(payload) = lines.next() else { break };
        let payload = serde_json::from_str(payload).unwrap_or(Value::Null);
        items.push(EnvelopeItem { kind, payload });
    }
    items
}

impl SentrySink {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind sentry sink");
        let addr = listener.local_addr().expect("local addr");
        let bodies: Bodies = Arc::default();
        let app = Router::new()
            .route("/api/{project}/envelope/", post(envelope))
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
            .with_state(bodies.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, bodies, _task: task }
    }

    /// A DSN pointing at this sink.
    pub fn dsn(&self) -> String {
        format!("http://public@{}/1", self.addr)
    }

    /// Every envelope body received, raw (to scan for data that must not be sent).
    pub fn raw(&self) -> Vec<String> {
        self.bodies.lock().expect("sink lock").iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect()
    }

    /// Every item of every envelope received.
    pub fn items(&self) -> Vec<EnvelopeItem> {
        self.bodies.lock().expect("sink lock").iter().flat_map(|(_, body)| envelope_items(body)).collect()
    }

    /// Items received so far.
    pub fn total(&self) -> usize {
        self.items().len()
    }

    /// Items received at or after `t`.
    pub fn since(&self, t: std::time::Instant) -> usize {
        self.bodies
            .lock()
            .expect("sink lock")
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, b)| envelope_items(b).len())
            .sum()
    }

    /// Waits (up to `timeout`) until `pred` holds for the received items; returns them.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[EnvelopeItem]) -> bool) -> Vec<EnvelopeItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let items = self.items();
            if pred(&items) || tokio::time::Instant::now() >= deadline {
                return items;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One request received by a [`FakeHttp`].
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: String,
    pub path: String,
    /// The query string's `name=value` pairs, as sent (not percent-decoded).
    pub query: std::collections::HashMap<String, String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON (a test's assertion).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }

    /// The parts of a `multipart/form-data` body.
    pub fn multipart(&self) -> Vec<FormPart> {
        let Some(boundary) = self.header("content-type").and_then(|ct| ct.split("boundary=").nth(1)) else {
            return Vec::new();
        };
        let delimiter = format!("--{}", boundary.trim_matches('"'));
        let mut parts = Vec::new();
        for raw in split_bytes(&self.body, delimiter.as_bytes()).into_iter().skip(1) {
            let raw = raw.strip_prefix(b"\r\n").unwrap_or(raw);
            if raw.starts_with(b"--") {
                break;
            }
            let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
            let data = raw[head_end + 4..].strip_suffix(b"\r\n").unwrap_or(&raw[head_end + 4..]).to_vec();
            let param = |key: &str| {
                head.split(';')
                    .map(str::trim)
                    .find_map(|p| p.strip_prefix(&format!("{key}=\"")))
                    .and_then(|v| v.split('"').next())
                    .map(str::to_string)
            };
            let content_type = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().starts_with("content-type:").then(|| l[13..].trim().to_string()));
            parts.push(FormPart {
                name: param("name").unwrap_or_default(),
                filename: param("filename"),
                content_type,
                data,
            });
        }
        parts
    }
}

fn split_bytes<'a>(haystack: &'a [u8], needle: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        if &haystack[i..i + needle.len()] == needle {
            out.push(&haystack[start..i]);
            i += needle.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&haystack[start..]);
    out
}

/// One part of a multipart form.
#[derive(Debug, Clone)]
pub struct FormPart {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

/// What a [`FakeHttp`] answers to one request.
#[derive(Debug, Clone)]
pub enum FakeReply {
    /// A complete answer.
    Full { status: u16, headers: Vec<(&'static str, String)>, body: Bytes },
    /// A streamed answer: each chunk after its delay; then the end or, with `hang_after`, the
    /// response kept open, sending that keep-alive every 50 ms (an empty one sends nothing)
    /// until the client goes away.
    Stream { content_type: &'static str, chunks: Vec<(Duration, Bytes)>, hang_after: Option<Bytes> },
    /// Wait, then answer (a client that goes away meanwhile gets no answer).
    Delayed(Duration, Box<FakeReply>),
    /// Accept the request and never send a response head.
    Hang,
}

impl FakeReply {
    pub fn json(status: u16, body: Value) -> Self {
        Self::raw(status, "application/json", body.to_string().into_bytes())
    }

    pub fn raw(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self::Full { status, headers: vec![("content-type", content_type.to_string())], body: Bytes::from(body) }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self::raw(status, "text/plain", body.as_bytes().to_vec())
    }

    /// The same answer after `delay`.
    pub fn after(self, delay: Duration) -> Self {
        if delay.is_zero() { self } else { Self::Delayed(delay, Box::new(self)) }
    }

    /// A complete answer with one more header.
    pub fn with_header(self, name: &'static str, value: &str) -> Self {
        match self {
            Self::Full { status, mut headers, body } => {
                headers.push((name, value.to_owned()));
                Self::Full { status, headers, body }
            }
            other => other,
        }
    }

    /// An SSE answer split into `piece`-byte chunks, to exercise a parser's boundaries.
    pub fn sse_split(text: &str, piece: usize) -> Self {
        let chunks =
            text.as_bytes().chunks(piece).map(|c| (Duration::from_millis(1), Bytes::copy_from_slice(c))).collect();
        Self::Stream { content_type: "text/event-stream", chunks, hang_after: None }
    }
}

type Responder = Arc<dyn Fn(&FakeRequest) -> FakeReply + Send + Sync>;

/// Answers by path, in order, then the last one for ever (see [`FakeHttp::on`]).
#[derive(Default)]
struct Script {
    replies: std::collections::HashMap<String, std::collections::VecDeque<FakeReply>>,
    fallback: std::collections::HashMap<String, FakeReply>,
}

struct FakeState {
    requests: Mutex<Vec<FakeRequest>>,
    answered: Mutex<Vec<String>>,
    script: Mutex<Script>,
    respond: Responder,
    closed: tokio::sync::watch::Sender<usize>,
}

/// The one fake HTTP server of the tests: a real server on loopback standing in for an AI
/// provider, a carrier's API, or any HTTP peer. It records every request and answers each from
/// a script of replies per path ([`FakeHttp::on`]) or, for paths without one, with the
/// function it was started with. Streams, delays and hangs are replies like any other, and it
/// counts streamed answers the client cut off.
pub struct FakeHttp {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeHttp {
    /// A server answering every request with `respond` (unless a path is scripted).
    pub async fn start(respond: impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake provider");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(FakeState {
            requests: Mutex::default(),
            answered: Mutex::default(),
            script: Mutex::default(),
            respond: Arc::new(respond),
            closed: tokio::sync::watch::channel(0).0,
        });
        let app = Router::new().fallback(fake_handler).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, _task: task }
    }

    /// A server that answers only scripted paths ([`FakeHttp::on`]), and 404 elsewhere.
    pub async fn scripted() -> Self {
        Self::start(|_| FakeReply::json(404, serde_json::json!({"error": {"message": "no route"}}))).await
    }

    /// Answer requests to `path` with `replies` in order, then with the last one for ever.
    pub fn on(&self, path: &str, replies: Vec<FakeReply>) {
        let mut script = self.state.script.lock().expect("fake lock");
        let mut queue: std::collections::VecDeque<FakeReply> = replies.into();
        if let Some(last) = queue.pop_back() {
            script.fallback.insert(path.to_owned(), last);
        }
        script.replies.insert(path.to_owned(), queue);
    }

    /// Paths of the requests answered in full, in order.
    pub fn answered(&self) -> Vec<String> {
        self.state.answered.lock().expect("fake lock").clone()
    }

    /// `http://127.0.0.1:port/v1`, the form of an OpenAI-compatible base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:port` followed by `suffix`.
    pub fn url(&self, suffix: &str) -> String {
        format!("http://{}{suffix}", self.addr)
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.state.requests.lock().expect("fake lock").clone()
    }

    /// How many requests went to `path`.
    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }

    /// Waits until `n` streamed answers were cut off by the client.
    ///
    /// # Panics
    /// When the server is gone.
    pub async fn wait_closed(&self, n: usize) {
        let mut rx = self.state.closed.subscribe();
        rx.wait_for(|count| *count >= n).await.expect("fake server");
    }

    /// Streamed answers cut off by the client so far.
    pub fn closed_count(&self) -> usize {
        *self.state.closed.borrow()
    }
}

async fn fake_handler(
    State(state): State<Arc<FakeState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 256 << 20).await.unwrap_or_default();
    let query = parts
        .uri
        .query()
        .map(|q| {
            q.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
        })
        .unwrap_or_default();
    let recorded = FakeRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body,
    };
    state.requests.lock().expect("fake lock").push(recorded.clone());
    let scripted = {
        let mut script = state.script.lock().expect("fake lock");
        let path = recorded.path.as_str();
        script
            .replies
            .get_mut(path)
            .and_then(std::collections::VecDeque::pop_front)
            .or_else(|| script.fallback.get(path).cloned())
    };
    let reply = scripted.unwrap_or_else(|| (state.respond)(&recorded));
    let response = fake_response(reply, &state).await;
    state.answered.lock().expect("fake lock").push(recorded.path);
    response
}

/// Counts a streamed body dropped before its end.
struct CloseWatch {
    state: Arc<FakeState>,
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
            self.state.closed.send_modify(|n| *n += 1);
        }
    }
}

fn fake_response<'a>(
    reply: FakeReply,
    state: &'a Arc<FakeState>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send + 'a>> {
    use axum::{body::Body, http::StatusCode, response::Response};
    Box::pin(async move {
        match reply {
            FakeReply::Full { status, headers, body } => {
                let mut response = Response::builder()
                    .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                response.body(Body::from(body)).unwrap_or_default()
            }
            FakeReply::Stream { content_type, chunks, hang_after } => {
                let watch = CloseWatch { state: state.clone(), finished: false };
                let chunks: std::collections::VecDeque<(Duration, Bytes)> = chunks.into();
                let stream = futures_util::stream::unfold(
                    (chunks, hang_after, watch),
                    |(mut chunks, hang, mut watch)| async move {
                        if let Some((delay, chunk)) = chunks.pop_front() {
                            tokio::time::sleep(delay).await;
                            return Some((Ok::<_, std::convert::Infallible>(chunk), (chunks, hang, watch)));
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
                    },
                );
                Response::builder()
                    .status(200)
                    .header("content-type", content_type)
                    .body(Body::from_stream(stream))
                    .unwrap_or_default()
            }
            FakeReply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                fake_response(*inner, state).await
            }
            FakeReply::Hang => std::future::pending().await,
        }
    })
}
