//! gRPC server and client layers: a span per call (the server continues the caller's trace from
//! the `traceparent` metadata; the client injects it) and the RED metrics `grpc_server_*` /
//! `grpc_client_*` with `grpc_type`, `grpc_service`, `grpc_method` and `grpc_code`.
//!
//! The status of a gRPC call arrives in the trailers, after the response body, so the call is
//! counted when the body ends (or is dropped: `Cancelled`).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty};

use crate::metrics::{
    GRPC_CLIENT_HANDLED_TOTAL, GRPC_CLIENT_HANDLING_SECONDS, GRPC_CLIENT_STARTED_TOTAL, GRPC_SERVER_HANDLED_TOTAL,
    GRPC_SERVER_HANDLING_SECONDS, GRPC_SERVER_STARTED_TOTAL,
};

/// What is known about one gRPC method.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    pub service: String,
    pub method: String,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub kind: &'static str,
    /// Health checks and reflection: counted but not traced.
    pub infrastructure: bool,
}

/// Every method this product serves or calls, keyed by HTTP/2 path (`/pkg.Service/Method`):
/// label values come from here only, so a client cannot create label values at will.
pub fn known_methods() -> &'static HashMap<String, Arc<MethodInfo>> {
    static METHODS: OnceLock<HashMap<String, Arc<MethodInfo>>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut map = HashMap::new();
        let mut add = |service: &str, method: &str, cs: bool, ss: bool, infrastructure: bool| {
            let kind = match (cs, ss) {
                (false, false) => "unary",
                (true, false) => "client_stream",
                (false, true) => "server_stream",
                (true, true) => "bidi_stream",
            };
            map.insert(
                format!("/{service}/{method}"),
                Arc::new(MethodInfo { service: service.into(), method: method.into(), kind, infrastructure }),
            );
        };
        if let Ok(fds) = prost_types::FileDescriptorSet::decode(kraliki_proto::FILE_DESCRIPTOR_SET) {
            for file in &fds.file {
                for svc in &file.service {
                    let service = format!("{}.{}", file.package(), svc.name());
                    for m in &svc.method {
                        add(&service, m.name(), m.client_streaming(), m.server_streaming(), false);
                    }
                }
            }
        }
        add("grpc.health.v1.Health", "Check", false, false, true);
        add("grpc.health.v1.Health", "Watch", false, true, true);
        add("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo", true, true, true);
        add("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", true, true, true);
        map
    })
}

fn unknown_method() -> Arc<MethodInfo> {
    static UNKNOWN: OnceLock<Arc<MethodInfo>> = OnceLock::new();
    UNKNOWN
        .get_or_init(|| {
            Arc::new(MethodInfo {
                service: "unknown".into(),
                method: "unknown".into(),
                kind: "unknown",
                infrastructure: false,
            })
        })
        .clone()
}

fn lookup(path: &str) -> Arc<MethodInfo> {
    known_methods().get(path).cloned().unwrap_or_else(unknown_method)
}

/// The conventional name of a gRPC status code, as used in `grpc_code` labels.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

fn status_in(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// One call being measured; records exactly once, when the status is known or the call is
/// abandoned.
struct CallRecord {
    side: Side,
    info: Arc<MethodInfo>,
    start: Instant,
    span: Span,
    done: bool,
}

impl CallRecord {
    fn new(side: Side, info: Arc<MethodInfo>, span: Span) -> Self {
        let (service, method, kind) = (info.service.clone(), info.method.clone(), info.kind);
        let name = if side == Side::Server { GRPC_SERVER_STARTED_TOTAL } else { GRPC_CLIENT_STARTED_TOTAL };
        metrics::counter!(name, "grpc_type" => kind, "grpc_service" => service, "grpc_method" => method).increment(1);
        Self { side, info, start: Instant::now(), span, done: false }
    }

    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let code_label = code_name(code);
        self.span.record("rpc.grpc.status_code", code);
        if code != 0 {
            self.span.record("otel.status_code", "ERROR");
        }
        let (handled, seconds) = match self.side {
            Side::Server => (GRPC_SERVER_HANDLED_TOTAL, GRPC_SERVER_HANDLING_SECONDS),
            Side::Client => (GRPC_CLIENT_HANDLED_TOTAL, GRPC_CLIENT_HANDLING_SECONDS),
        };
        let i = &self.info;
        if !i.infrastructure {
            let side = if self.side == Side::Server { "server" } else { "client" };
            tracing::info!(
                parent: &self.span,
                side,
                grpc_service = %i.service,
                grpc_method = %i.method,
                grpc_code = code_label,
                duration_ms = (elapsed * 1000.0).round() as u64,
                "grpc call completed"
            );
        }
        metrics::counter!(handled, "grpc_type" => i.kind, "grpc_service" => i.service.clone(), "grpc_method" => i.method.clone(), "grpc_code" => code_label)
            .increment(1);
        metrics::histogram!(seconds, "grpc_type" => i.kind, "grpc_service" => i.service.clone(), "grpc_method" => i.method.clone())
            .record(elapsed);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // The body was dropped before its trailers: the peer went away or the call was abandoned.
        self.finish(1);
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call when its trailers (or its end) go by.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        record: Option<CallRecord>,
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(mut record) = this.record.take()
                {
                    record.finish(status_in(trailers).unwrap_or(2));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut record) = this.record.take() {
                    record.finish(2);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut record) = this.record.take() {
                    // A stream that ends without trailers ended without a status.
                    record.finish(2);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Server side: wrap a tonic server with `Server::builder().layer(GrpcServerLayer)`.
#[derive(Clone, Copy, Default)]
pub struct GrpcServerLayer;

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcService { inner, side: Side::Server }
    }
}

/// Client side: wrap a `tonic::transport::Channel` with `GrpcClientLayer.layer(channel)`.
#[derive(Clone, Copy, Default)]
pub struct GrpcClientLayer;

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcService { inner, side: Side::Client }
    }
}

#[derive(Clone)]
pub struct GrpcService<S> {
    inner: S,
    side: Side,
}

impl<S, B, RB> Service<Request<B>> for GrpcService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Body<Data = Bytes>,
{
    type Response = Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let info = lookup(req.uri().path());
        let span = if info.infrastructure {
            Span::none()
        } else {
            let name = format!("{}/{}", info.service, info.method);
            match self.side {
                Side::Server => tracing::info_span!(
                    "grpc server",
                    otel.name = %name,
                    otel.kind = "server",
                    otel.status_code = Empty,
                    rpc.system = "grpc",
                    rpc.service = %info.service,
                    rpc.method = %info.method,
                    rpc.grpc.status_code = Empty,
                    sentry.op = "grpc.server",
                ),
                Side::Client => tracing::info_span!(
                    "grpc client",
                    otel.name = %name,
                    otel.kind = "client",
                    otel.status_code = Empty,
                    rpc.system = "grpc",
                    rpc.service = %info.service,
                    rpc.method = %info.method,
                    rpc.grpc.status_code = Empty,
                    sentry.op = "grpc.client",
                ),
            }
        };
        match self.side {
            Side::Server => crate::otel::set_parent_from_headers(&span, req.headers()),
            Side::Client => crate::otel::inject_context(&span, req.headers_mut()),
        }
        let mut record = CallRecord::new(self.side, info, span.clone());
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                match fut.await {
                    Ok(res) => {
                        // A trailers-only response carries the status in its headers.
                        let record = match status_in(res.headers()) {
                            Some(code) => {
                                record.finish(code);
                                None
                            }
                            None => Some(record),
                        };
                        Ok(res.map(|inner| MeteredBody { inner, record }))
                    }
                    Err(e) => {
                        record.finish(14);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// Server-side helper: the caller's remaining deadline from `grpc-timeout`, if any.
pub fn deadline_of<T>(request: &tonic::Request<T>) -> Option<std::time::Duration> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (value, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let value: u64 = value.parse().ok()?;
    Some(match unit {
        "H" => std::time::Duration::from_secs(value * 3600),
        "M" => std::time::Duration::from_secs(value * 60),
        "S" => std::time::Duration::from_secs(value),
        "m" => std::time::Duration::from_millis(value),
        "u" => std::time::Duration::from_micros(value),
        "n" => std::time::Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_contract() {
        let m = known_methods();
        let stream = &m["/kraliki.audio.v1.AudioProcessor/StreamAudio"];
        assert_eq!((stream.service.as_str(), stream.kind), ("kraliki.audio.v1.AudioProcessor", "bidi_stream"));
        assert_eq!(m["/kraliki.provider.v1.ProviderGateway/ListProviders"].kind, "unary");
        assert_eq!(m["/kraliki.provider.v1.ProviderGateway/StreamChat"].kind, "server_stream");
        assert!(m["/grpc.health.v1.Health/Check"].infrastructure);
        assert_eq!(lookup("/evil.Service/0123456789").service, "unknown");
    }

    #[test]
    fn deadline_header_parses() {
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(deadline_of(&r), Some(std::time::Duration::from_millis(1500)));
        r.metadata_mut().insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(deadline_of(&r), None);
    }
}

/// Wraps the generated server: a unary request over the message size limit is refused by
/// tonic with `OutOfRange` before our handler runs; this answers `ResourceExhausted` instead,
/// the code the contract promises for oversized payloads.
#[derive(Clone)]
pub struct OversizeIsResourceExhausted<S> {
    inner: S,
    /// `grpc-status`, `grpc-message` and `grpc-status-details-bin` (reason `INPUT_TOO_LARGE`).
    headers: http::HeaderMap,
}

impl<S> OversizeIsResourceExhausted<S> {
    /// Wraps `inner`, whose message size limit is `limit_bytes`.
    pub fn new(inner: S, limit_bytes: usize) -> Self {
        let status = kraliki_proto::errors::status(
            tonic::Code::ResourceExhausted,
            format!("request exceeds the message size limit of {limit_bytes} bytes"),
            kraliki_proto::errors::Reason::InputTooLarge,
        );
        let mut headers = http::HeaderMap::new();
        if status.add_header(&mut headers).is_err() {
            headers.clear();
        }
        Self { inner, headers }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for OversizeIsResourceExhausted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for OversizeIsResourceExhausted<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(request);
        let replacement = self.headers.clone();
        Box::pin(async move {
            let mut response = fut.await?;
            let headers = response.headers_mut();
            if headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11") {
                for (name, value) in &replacement {
                    headers.insert(name, value.clone());
                }
            }
            Ok(response)
        })
    }
}
