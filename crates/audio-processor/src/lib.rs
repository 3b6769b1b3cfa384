//! audio-processor: decodes, resamples and analyses call audio, after the call and in real
//! time, behind `kraliki.audio.v1.AudioProcessor`.
//!
//! - `config.rs`: environment variables
//! - `service.rs`: the gRPC service

pub mod config;
pub mod service;

use std::process::ExitCode;

use kraliki_proto::audio::v1::{SERVICE_NAME, audio_processor_server::AudioProcessorServer};
use telemetry::{ServiceContext, ServiceInfo};
use tokio::net::TcpListener;

pub use config::Config;

/// This service's identity for telemetry.
pub fn service_info() -> ServiceInfo {
    ServiceInfo::new("audio-processor", env!("CARGO_PKG_VERSION"))
}

/// Serves on the given listeners until shutdown (tests pass listeners bound to port 0).
pub async fn run(
    _config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    ctx: ServiceContext,
) -> Result<(), telemetry::serve::ServeError> {
    let routes = tonic::service::Routes::new(AudioProcessorServer::new(service::Processor));
    telemetry::serve_grpc_service(&ctx, grpc, admin, routes, &[SERVICE_NAME]).await
}

/// Binds the configured addresses and serves until shutdown.
pub async fn serve(config: Config, ctx: ServiceContext) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("bind AUDIO_PROCESSOR_GRPC_ADDR {}", config.grpc_addr))?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("bind AUDIO_PROCESSOR_ADMIN_ADDR {}", config.admin_addr))?;
    Ok(run(config, grpc, admin, ctx).await?)
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    telemetry::entry::run_service(service_info(), Config::from_env, |c| &c.telemetry, serve)
}
