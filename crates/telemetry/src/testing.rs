//! In-test receivers for telemetry that leaves the process: a real OTLP/gRPC trace collector
//! and a real Sentry envelope endpoint, both on loopback. Tests point `OTEL_EXPORTER_OTLP_ENDPOINT`
//! and `SENTRY_DSN` at them and assert on what arrives.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use serde_json::Value;

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
    pub attributes: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Every export request, whole (`Debug`), for scans of everything that was sent.
    raw: Arc<Mutex<Vec<String>>>,
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
                        attributes: s.attributes.iter().map(|a| (a.key.clone(), any_value(a.value.as_ref()))).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
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
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A real OTLP/gRPC collector on loopback that keeps every span it receives.
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
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
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

    /// Every export request received, whole: resources, spans, attributes and events.
    pub fn raw(&self) -> Vec<String> {
        self.collector.raw.lock().expect("collector lock").clone()
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
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn envelope(State(bodies): State<Arc<Mutex<Vec<Vec<u8>>>>>, body: Bytes) -> &'static str {
    bodies.lock().expect("sink lock").push(body.to_vec());
    "{}"
}

impl SentrySink {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind sentry sink");
        let addr = listener.local_addr().expect("local addr");
        let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let app = Router::new().route("/api/{project}/envelope/", post(envelope)).with_state(bodies.clone());
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
        self.bodies.lock().expect("sink lock").iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }

    /// Every item of every envelope received.
    pub fn items(&self) -> Vec<EnvelopeItem> {
        let mut items = Vec::new();
        for body in self.bodies.lock().expect("sink lock").iter() {
            let text = String::from_utf8_lossy(body);
            let mut lines = text.lines().skip(1); // envelope header
            while let Some(header) = lines.next() {
                let Ok(header) = serde_json::from_str::<Value>(header) else { continue };
                let kind = header.get("type").and_then(Value::as_str).unwrap_or("").to_string();
                let Some(payload) = lines.next() else { break };
                let payload = serde_json::from_str(payload).unwrap_or(Value::Null);
                items.push(EnvelopeItem { kind, payload });
            }
        }
        items
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
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
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

/// What a [`FakeHttp`] answers.
#[derive(Debug, Clone)]
pub struct FakeReply {
    pub status: u16,
    pub body: Value,
    /// Instead of `body`: these bytes with this content type (audio, an SSE stream…).
    pub raw: Option<(&'static str, Vec<u8>)>,
    /// Wait this long before answering (a slow provider).
    pub delay: Duration,
}

impl FakeReply {
    pub fn json(status: u16, body: Value) -> Self {
        Self { status, body, raw: None, delay: Duration::ZERO }
    }

    pub fn raw(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self { status, body: Value::Null, raw: Some((content_type, body)), delay: Duration::ZERO }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Responder = Arc<dyn Fn(&FakeRequest) -> FakeReply + Send + Sync>;
type FakeState = (Arc<Mutex<Vec<FakeRequest>>>, Responder, Arc<Mutex<Vec<String>>>);

/// A fake HTTP provider on loopback: records every request and answers each with `respond`.
pub struct FakeHttp {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<FakeRequest>>>,
    /// Paths of the requests answered in full (a request whose client went away during the
    /// reply's delay is missing here).
    answered: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeHttp {
    pub async fn start(respond: impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake provider");
        let addr = listener.local_addr().expect("local addr");
        let requests: Arc<Mutex<Vec<FakeRequest>>> = Arc::default();
        let answered: Arc<Mutex<Vec<String>>> = Arc::default();
        let state = (requests.clone(), Arc::new(respond) as Responder, answered.clone());
        let app = Router::new().fallback(fake_handler).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, requests, answered, _task: task }
    }

    /// Paths of the requests answered in full, in order.
    pub fn answered(&self) -> Vec<String> {
        self.answered.lock().expect("fake lock").clone()
    }

    /// `http://127.0.0.1:port/v1`, the form of an OpenAI-compatible base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.requests.lock().expect("fake lock").clone()
    }
}

async fn fake_handler(
    State((requests, respond, answered)): State<FakeState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 256 << 20).await.map(|b| b.to_vec()).unwrap_or_default();
    let recorded = FakeRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body,
    };
    requests.lock().expect("fake lock").push(recorded.clone());
    let reply = respond(&recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    answered.lock().expect("fake lock").push(recorded.path.clone());
    let status =
        axum::http::StatusCode::from_u16(reply.status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    match reply.raw {
        Some((content_type, bytes)) => (status, [("content-type", content_type)], bytes).into_response(),
        None => (status, axum::Json(reply.body)).into_response(),
    }
}
