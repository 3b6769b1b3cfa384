//! Serving with the shared behaviour: listeners that stop when shutdown reaches its stopping
//! phase, drains bounded by `SHUTDOWN_TIMEOUT_SECONDS`, and — for gRPC services — the standard
//! health and reflection services next to the service's own.

use std::time::Duration;

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt as _;

use crate::{Health, MetricsHandle, ServiceInfo, Shutdown, Telemetry};

/// What a running service shares with telemetry: who it is, its health, its metrics and its
/// shutdown sequence. Tests build one with [`ServiceContext::new`] directly.
#[derive(Clone)]
pub struct ServiceContext {
    pub info: ServiceInfo,
    pub health: Health,
    pub metrics: Option<MetricsHandle>,
    pub shutdown: Shutdown,
}

impl ServiceContext {
    pub fn new(info: ServiceInfo, environment: &str, metrics: Option<MetricsHandle>, shutdown: Shutdown) -> Self {
        let health = Health::new(&info, environment);
        shutdown.attach(&health);
        Self { info, health, metrics, shutdown }
    }

    /// The context of the service that `telemetry` was started for, listening for signals.
    pub fn from_telemetry(telemetry: &Telemetry) -> Self {
        let shutdown = telemetry.shutdown_sequence();
        shutdown.listen_for_signals();
        Self::new(telemetry.info().clone(), &telemetry.config().environment, telemetry.metrics(), shutdown)
    }
}

/// Limits the HTTP server enforces before any handler runs.
#[derive(Clone)]
pub struct HttpServerLimits {
    /// Time a client has to send a request's line and headers (HTTP/1). It also bounds silence:
    /// a connection (HTTP/1 or HTTP/2) with no request in flight on which nothing was read or
    /// written for this long — from accept, so a client that never sends a byte too — is closed.
    pub header_read_timeout: Duration,
    /// Request line plus headers, in bytes: HTTP/1's read buffer (at least 8 KiB) and HTTP/2's
    /// header list. Larger requests are answered `431` by the server itself.
    pub max_header_bytes: usize,
    /// Connections served at once; one more is closed at accept (upgraded WebSockets leave the
    /// count once upgraded: they have their own limits).
    pub max_connections: usize,
    /// Called for each connection refused at `max_connections` (the service counts it).
    pub on_refused: Option<std::sync::Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for HttpServerLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServerLimits")
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Default for HttpServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            on_refused: None,
        }
    }
}

/// A connection's last read or write, and its requests in flight: what tells an idle connection.
struct Activity {
    started: std::time::Instant,
    /// Milliseconds since `started` of the last byte read or written.
    last: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
}

impl Activity {
    fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            started: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(std::sync::atomic::Ordering::Relaxed)))
    }

    fn is_idle(&self, timeout: Duration) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed) == 0 && self.idle_for() >= timeout
    }
}

/// Decrements a connection's requests in flight when the response (head) is ready or dropped.
struct InFlight(std::sync::Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A socket that records when it last read or wrote a byte.
    struct Watched<S> {
        #[pin]
        inner: S,
        activity: std::sync::Arc<Activity>,
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if matches!(result, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if matches!(result, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves an axum router until shutdown stops listeners, then drains within the bound.
pub async fn serve_http(listener: TcpListener, router: axum::Router, shutdown: &Shutdown) -> std::io::Result<()> {
    serve_http_with(listener, router, shutdown, HttpServerLimits::default()).await
}

/// [`serve_http`] with explicit server limits. Each connection is served by hyper (HTTP/1 with
/// upgrades for WebSockets, or HTTP/2), with a timer so that the header read timeout applies.
/// Handlers see the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve_http_with(
    listener: TcpListener,
    router: axum::Router,
    shutdown: &Shutdown,
    limits: HttpServerLimits,
) -> std::io::Result<()> {
    // Each connection holds a sender clone and waits for it to close (all receivers gone) to
    // start its graceful shutdown; the server waits for every connection's receiver clone.
    let (signal_tx, signal_rx) = watch::channel(());
    let (close_tx, close_rx) = watch::channel(());
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let stop = shutdown.clone();
    let serve = async move {
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Per-connection errors (reset before accept) are not the listener's;
                        // others (out of file descriptors) get a pause instead of a busy loop.
                        if !is_connection_error(&e) {
                            tracing::error!(error = %e, "accepting an HTTP connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    }
                },
                () = stop.stopping() => break,
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                drop(stream); // closed at once: the server is at max_connections
                if let Some(refused) = &limits.on_refused {
                    refused();
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            let activity = Activity::new();
            let counted = activity.clone();
            let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(remote));
                counted.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let guard = InFlight(counted.clone());
                let response = router.clone().oneshot(req.map(axum::body::Body::new));
                async move {
                    let response = response.await;
                    drop(guard);
                    response
                }
            });
            let signal_tx = signal_tx.clone();
            let close_rx = close_rx.clone();
            let limits = limits.clone();
            let stream = Watched { inner: stream, activity: activity.clone() };
            tokio::spawn(async move {
                let _permit = permit;
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192));
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                    .enable_connect_protocol();
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                // Fused: after it fired, the loop polls it again until the connection has closed.
                let mut signalled = std::pin::pin!(futures_util::FutureExt::fuse(signal_tx.closed()));
                let idle_limit = limits.header_read_timeout;
                let mut idle_check =
                    tokio::time::interval(idle_limit.min(Duration::from_secs(1)).max(Duration::from_millis(50)));
                // Set when the connection was asked to close for idleness: dropped if it has not
                // closed a while later (a client that ignores GOAWAY or never sent a byte).
                let mut closing_since: Option<tokio::time::Instant> = None;
                loop {
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::trace!(error = %e, "HTTP connection ended with an error");
                            }
                            break;
                        }
                        () = &mut signalled => conn.as_mut().graceful_shutdown(),
                        _ = idle_check.tick() => match closing_since {
                            None if activity.is_idle(idle_limit) => {
                                tracing::trace!("closing an idle HTTP connection");
                                conn.as_mut().graceful_shutdown();
                                closing_since = Some(tokio::time::Instant::now());
                            }
                            Some(since) if since.elapsed() >= Duration::from_secs(1) && activity.is_idle(idle_limit) => break,
                            _ => {}
                        },
                    }
                }
                drop(close_rx);
            });
        }
        drop(signal_rx);
        drop(close_rx);
        close_tx.closed().await;
        Ok(())
    };
    shutdown.run_bounded(serve).await.unwrap_or(Ok(()))
}

/// Served on every gRPC port besides the service's own.
const REFLECTED_ALWAYS: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Serves gRPC `routes` plus `grpc.health.v1` (for `""` and each of `service_names`) and server
/// reflection on `grpc`, and the admin router (health, readiness, metrics, pprof) on `admin`,
/// until shutdown; readiness turns on once both listen. With `internal_auth_token`, every call
/// but health and reflection must carry it (see [`crate::auth`]).
pub async fn serve_grpc_service(
    ctx: &ServiceContext,
    grpc: TcpListener,
    admin: TcpListener,
    routes: tonic::service::Routes,
    service_names: &[&str],
    internal_auth_token: Option<&crate::Secret>,
) -> Result<(), ServeError> {
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux, macOS). Without it, Nagle's
    // algorithm holds the server's small HTTP/2 frames (window updates, response headers)
    // behind the client's delayed ACK: about 40 ms added to every large request.
    if let Err(e) = socket2::SockRef::from(&grpc).set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on the gRPC listener");
    }
    let health_server = ctx.health.grpc_server(service_names).await;
    // Each port advertises its own services only (and health and reflection), not every
    // descriptor in the workspace.
    let advertised = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kraliki_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in service_names.iter().copied().chain(REFLECTED_ALWAYS) {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let reflection = advertised().build_v1().map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = advertised().build_v1alpha().map_err(|e| ServeError::Reflection(e.to_string()))?;
    let routes = routes.add_service(health_server).add_service(reflection).add_service(reflection_alpha);

    let stop = ctx.shutdown.clone();
    let grpc_server = tonic::transport::Server::builder()
        .layer(crate::grpc_server_layers())
        // Inside the metrics layer, so refused calls are counted (`Unauthenticated`).
        .layer(crate::auth::InternalAuthLayer::new(internal_auth_token))
        .add_routes(routes)
        .serve_with_incoming_shutdown(crate::incoming(grpc), async move { stop.stopping().await });
    let admin_router = crate::admin_router(&ctx.health, ctx.metrics.clone(), true);
    ctx.health.set_started().await;
    tracing::info!(service = %ctx.info.name, "serving");
    let (grpc_result, admin_result) =
        tokio::join!(ctx.shutdown.run_bounded(grpc_server), serve_http(admin, admin_router, &ctx.shutdown));
    if let Some(Err(e)) = grpc_result {
        return Err(e.into());
    }
    Ok(admin_result?)
}

/// Why a service stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("build the reflection service: {0}")]
    Reflection(String),
    #[error("serve gRPC: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("serve HTTP: {0}")]
    Http(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn start(
        limits: HttpServerLimits,
        delay_ms: u64,
    ) -> (std::net::SocketAddr, Shutdown, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                "ok"
            }),
        );
        let shutdown = Shutdown::new(Duration::ZERO, Duration::from_secs(10));
        let s = shutdown.clone();
        let server = tokio::spawn(async move {
            serve_http_with(listener, router, &s, limits).await.unwrap();
        });
        (addr, shutdown, server)
    }

    async fn read_all(stream: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn shutdown_finishes_the_request_in_flight_and_closes_idle_keep_alive_connections() {
        let (addr, shutdown, server) = start(HttpServerLimits::default(), 300).await;
        // An idle keep-alive connection that already made a request.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // A request in flight when the shutdown starts.
        let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.trigger();
        let answer = read_all(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
        // Bound generous: only a hang (or a panic in a connection task) fails this.
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("drained").unwrap();
        assert_eq!(read_all(&mut idle).await, "", "the idle connection is closed");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }

    #[tokio::test]
    async fn oversized_and_slow_headers_are_refused_by_the_server() {
        let limits = HttpServerLimits {
            header_read_timeout: Duration::from_millis(300),
            max_header_bytes: 8192,
            ..Default::default()
        };
        let (addr, _shutdown, _server) = start(limits, 0).await;
        let mut big = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
        let _ = big.write_all(request.as_bytes()).await;
        assert!(read_all(&mut big).await.starts_with("HTTP/1.1 431"));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let seen = read_all(&mut slow).await;
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "closed by the header timeout, not the test's bound: {seen}"
        );
    }

    /// Whether the server closed `stream` (EOF or reset) within `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue, // the server's SETTINGS or GOAWAY
            }
        }
    }

    #[tokio::test]
    async fn silent_and_preface_only_connections_are_closed_and_a_slow_answer_is_not() {
        let limits = HttpServerLimits { header_read_timeout: Duration::from_millis(300), ..Default::default() };
        let (addr, _shutdown, _server) = start(limits, 1000).await;
        // 100 connections that never send a byte.
        let mut silent = Vec::new();
        for _ in 0..100 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // An HTTP/2 (h2c) preface and empty SETTINGS, then silence.
        let mut h2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
        // A request whose answer takes 1 s (> the idle bound): in flight, not idle.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let started = std::time::Instant::now();
        for s in &mut silent {
            assert!(closed_within(s, Duration::from_secs(5)).await, "a silent connection stays open");
        }
        assert!(closed_within(&mut h2, Duration::from_secs(5)).await, "a preface-only connection stays open");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let answer = read_all(&mut slow).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_accept_and_counted() {
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = refused.clone();
        let limits = HttpServerLimits {
            max_connections: 2,
            on_refused: Some(std::sync::Arc::new(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })),
            ..Default::default()
        };
        let (addr, _shutdown, _server) = start(limits, 0).await;
        let _a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(2)).await, "the third connection is closed");
        assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(_a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut d = tokio::net::TcpStream::connect(addr).await.unwrap();
        d.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        assert!(read_all(&mut d).await.starts_with("HTTP/1.1 200"), "room again once one closed");
    }
}
