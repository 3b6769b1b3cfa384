//! call-api: the public REST and WebSocket edge of Voice Kraliki; owns the call records.
//!
//! - `config.rs`: environment variables
//! - `auth.rs`: bearer API keys and tenants
//! - `error.rs`: the error type and the SPEC error body
//! - `peers.rs`: gRPC clients for audio-processor and provider-gateway
//! - `routes/`: one module per resource

pub mod auth;
pub mod config;
pub mod error;
pub mod peers;
pub mod routes;

use std::process::ExitCode;

use axum::Router;
use telemetry::{ServiceContext, ServiceInfo};
use tokio::net::TcpListener;

pub use config::Config;

/// This service's identity for telemetry, with the buckets of its histograms.
pub fn service_info() -> ServiceInfo {
    ServiceInfo::new("call-api", env!("CARGO_PKG_VERSION"))
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub api_keys: auth::ApiKeys,
    pub peers: peers::Peers,
}

/// The whole HTTP application: API, health, readiness and metrics.
pub fn app(state: AppState, ctx: &ServiceContext) -> Router {
    let mut router = routes::api(state).merge(ctx.health.router());
    if let Some(metrics) = ctx.metrics.clone() {
        router = router.merge(telemetry::metrics_router(metrics));
    }
    router
}

/// Serves on `listener` until shutdown (tests pass a listener bound to port 0).
pub async fn run(config: Config, listener: TcpListener, ctx: ServiceContext) -> anyhow::Result<()> {
    if config.api_keys.is_empty() {
        tracing::warn!("API_KEYS is not set: every /v1 request will be refused with 401");
    }
    let peers = peers::Peers::new(&config.audio_processor_url, &config.provider_gateway_url)?;
    peers.spawn_probes(&config.audio_processor_url, &config.provider_gateway_url, &ctx.shutdown);
    let state = AppState { api_keys: config.api_keys.clone(), peers };
    let router = app(state, &ctx);
    ctx.health.set_started().await;
    tracing::info!(addr = %listener.local_addr()?, "serving");
    telemetry::serve_http(listener, router, &ctx.shutdown).await?;
    Ok(())
}

/// Binds the configured address and serves until shutdown.
pub async fn serve(config: Config, ctx: ServiceContext) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener =
        TcpListener::bind(config.addr).await.with_context(|| format!("bind CALL_API_ADDR {}", config.addr))?;
    run(config, listener, ctx).await
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    telemetry::entry::run_service(service_info(), Config::from_env, |c| &c.telemetry, serve)
}
