//! Serving with the shared behaviour: listeners that stop when shutdown reaches its stopping
//! phase, drains bounded by `SHUTDOWN_TIMEOUT_SECONDS`, and — for gRPC services — the standard
//! health and reflection services next to the service's own.

use tokio::net::TcpListener;

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

/// Serves an axum router until shutdown stops listeners, then drains within the bound.
pub async fn serve_http(listener: TcpListener, router: axum::Router, shutdown: &Shutdown) -> std::io::Result<()> {
    let stop = shutdown.clone();
    let server = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move { stop.stopping().await });
    shutdown.run_bounded(async { server.await }).await.unwrap_or(Ok(()))
}

/// Serves gRPC `routes` plus `grpc.health.v1` (for `""` and each of `service_names`) and server
/// reflection on `grpc`, and the admin router (health, readiness, metrics, pprof) on `admin`,
/// until shutdown; readiness turns on once both listen.
pub async fn serve_grpc_service(
    ctx: &ServiceContext,
    grpc: TcpListener,
    admin: TcpListener,
    routes: tonic::service::Routes,
    service_names: &[&str],
) -> Result<(), ServeError> {
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux, macOS). Without it, Nagle's
    // algorithm holds the server's small HTTP/2 frames (window updates, response headers)
    // behind the client's delayed ACK: about 40 ms added to every large request.
    if let Err(e) = socket2::SockRef::from(&grpc).set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on the gRPC listener");
    }
    let health_server = ctx.health.grpc_server(service_names).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kraliki_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kraliki_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let routes = routes.add_service(health_server).add_service(reflection).add_service(reflection_alpha);

    let stop = ctx.shutdown.clone();
    let grpc_server = tonic::transport::Server::builder()
        .layer(crate::grpc_server_layers())
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
