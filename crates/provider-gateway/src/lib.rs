//! provider-gateway: the only Voice Kraliki service that talks to AI providers (speech-to-text,
//! chat, text-to-speech, sentiment), behind `kraliki.provider.v1.ProviderGateway`.
//!
//! - `config.rs`: environment variables
//! - `registry.rs`: which providers are configured per capability
//! - `service.rs`: the gRPC service

pub mod config;
pub mod registry;
pub mod service;

use std::process::ExitCode;

use kraliki_proto::provider::v1::{SERVICE_NAME, provider_gateway_server::ProviderGatewayServer};
use telemetry::{ServiceContext, ServiceInfo};
use tokio::net::TcpListener;

pub use config::Config;

/// This service's identity for telemetry.
pub fn service_info() -> ServiceInfo {
    ServiceInfo::new("provider-gateway", env!("CARGO_PKG_VERSION"))
}

/// Serves on the given listeners until shutdown (tests pass listeners bound to port 0).
pub async fn run(
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    ctx: ServiceContext,
) -> Result<(), telemetry::serve::ServeError> {
    let gateway = service::Gateway::new(config.providers.clone());
    let routes = tonic::service::Routes::new(ProviderGatewayServer::new(gateway));
    telemetry::serve_grpc_service(&ctx, grpc, admin, routes, &[SERVICE_NAME]).await
}

/// Binds the configured addresses and serves until shutdown.
pub async fn serve(config: Config, ctx: ServiceContext) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("bind PROVIDER_GATEWAY_GRPC_ADDR {}", config.grpc_addr))?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("bind PROVIDER_GATEWAY_ADMIN_ADDR {}", config.admin_addr))?;
    Ok(run(config, grpc, admin, ctx).await?)
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    telemetry::entry::run_service(service_info(), Config::from_env, |c| &c.telemetry, serve)
}
