//! audio-processor: decodes, resamples and analyses call audio, after the call and in real
//! time, behind `kraliki.audio.v1.AudioProcessor`. The signal processing itself is the
//! `audio-dsp` crate; this crate adds gRPC, limits, metrics and spans.
//!
//! - `config.rs`: environment variables
//! - `service.rs`: the gRPC service (limits, permits, deadlines)
//! - `convert.rs`: request checks and proto ↔ audio-dsp mapping
//! - `recording.rs`: recording analysis on a blocking thread
//! - `stream.rs`: one live stream's task
//! - `metrics.rs`: the metrics this service records

pub mod config;
mod convert;
mod legs;
pub mod metrics;
mod recording;
pub mod service;
mod stream;

use std::process::ExitCode;

use kraliki_proto::audio::v1::{SERVICE_NAME, audio_processor_server::AudioProcessorServer};
use telemetry::{ServiceContext, ServiceInfo};
use tokio::net::TcpListener;

pub use config::Config;

/// This service's identity for telemetry, with its histograms' buckets.
pub fn service_info() -> ServiceInfo {
    metrics::HISTOGRAM_BUCKETS
        .iter()
        .fold(ServiceInfo::new("audio-processor", env!("CARGO_PKG_VERSION")), |info, (name, buckets)| {
            info.with_histogram(name, buckets)
        })
}

/// Serves on the given listeners until shutdown (tests pass listeners bound to port 0).
pub async fn run(
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    ctx: ServiceContext,
) -> Result<(), telemetry::serve::ServeError> {
    metrics::describe();
    let processor = service::Processor::new(&config, ctx.shutdown.stopping_token());
    // The unary call carries the whole recording in one message.
    let message_limit = config.max_recording_bytes + service::HEADER_SLACK;
    let server = AudioProcessorServer::new(processor).max_decoding_message_size(message_limit);
    let routes = tonic::service::Routes::new(service::OversizeIsResourceExhausted::new(server, message_limit));
    telemetry::serve_grpc_service(
        &ctx,
        grpc,
        admin,
        routes,
        &[SERVICE_NAME],
        config.telemetry.internal_auth_token.as_ref(),
    )
    .await
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
