//! provider-gateway: the only Voice Kraliki service that talks to AI providers. It serves
//! `kraliki.provider.v1.ProviderGateway` over gRPC — speech-to-text (`Transcribe`), streamed
//! chat completions (`StreamChat`), streamed speech (`SynthesizeSpeech`), sentiment
//! (`AnalyzeSentiment`) and `ListProviders` — on top of the `providers` crate, which owns the
//! provider wire formats, timeouts, retries, circuit breakers, failover and provider metrics.
//!
//! # Layout
//! - `config.rs`: environment variables (the service's addresses, the telemetry variables and
//!   every variable of the `providers` crate, all errors reported at once, exit 2).
//! - `service.rs`: the gRPC methods; deadlines, provider pinning, stream mapping.
//! - `convert.rs`: proto ↔ `providers` types and the input checks of this boundary.
//! - `error.rs`: provider errors → gRPC status (client-safe message), logging and Sentry.
//! - `metrics.rs`: `provider_configured` and the start-up configuration report.
//!
//! # Behaviour
//! - The caller's `grpc-timeout` bounds every attempt, backoff, failover and the whole stream;
//!   the gateway answers `DEADLINE_EXCEEDED` slightly before it (a tenth, at most 50 ms).
//! - A `provider` field in a request pins that provider (no failover); it must be listed in the
//!   capability's `*_PROVIDERS` order and configured, else `FAILED_PRECONDITION`.
//! - Only configured models are used: a `model` field must be empty or name the configured
//!   model of a provider in the capability's order (of the pinned provider, when pinned), else
//!   `INVALID_ARGUMENT`; each provider then uses its own configured model. `max_tokens` is
//!   clamped to `LLM_MAX_TOKENS_CAP` (0 = the cap). A `Transcribe` request's audio is at most
//!   `TRANSCRIBE_MAX_BYTES` (`RESOURCE_EXHAUSTED` beyond, refused from the message's length
//!   prefix before its body is read), and `Transcribe` requests in flight hold at most
//!   `TRANSCRIBE_BUDGET_BYTES` of audio (`ResourceExhausted` beyond, before the body is read;
//!   `budget.rs`).
//! - Streams start only once the first token / audio chunk arrived (earlier failures were
//!   retried or failed over); a later failure ends the stream with its status. A caller that
//!   drops a stream cancels the provider request.
//! - Errors carry `providers`' client-safe message only. Final provider failures are logged
//!   once and captured to Sentry with `provider`, `operation` and `code` tags.
//! - `/ready` means "started and not draining": a provider that is missing or failing is not a
//!   readiness failure. Availability is reported by `ListProviders`, the
//!   `provider_configured{provider,capability}` gauge and one log line at start.

pub mod budget;
pub mod config;
pub mod convert;
pub mod error;
pub mod metrics;
pub mod service;

use std::process::ExitCode;

use kraliki_proto::provider::v1::{SERVICE_NAME, provider_gateway_server::ProviderGatewayServer};
use telemetry::{ServiceContext, ServiceInfo};
use tokio::net::TcpListener;

pub use config::Config;
pub use service::ProviderGatewayService;

/// Bytes a request may carry besides a `Transcribe` request's audio (format, language, ids).
pub const REQUEST_SLACK_BYTES: usize = 64 * 1024;

/// This service's identity for telemetry, with the provider histograms' buckets.
pub fn service_info() -> ServiceInfo {
    providers::HISTOGRAM_BUCKETS
        .iter()
        .fold(ServiceInfo::new("provider-gateway", env!("CARGO_PKG_VERSION")), |info, (name, buckets)| {
            info.with_histogram(name, buckets)
        })
}

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("build the provider clients: {0}")]
    Providers(#[from] providers::ProviderError),
    #[error(transparent)]
    Serve(#[from] telemetry::serve::ServeError),
}

/// Serves on the given listeners until shutdown (tests pass listeners bound to port 0).
pub async fn run(config: Config, grpc: TcpListener, admin: TcpListener, ctx: ServiceContext) -> Result<(), RunError> {
    let gateway = providers::Gateway::new(config.providers)?;
    metrics::describe();
    metrics::record_configuration(&gateway.list_providers());
    providers::metrics::register_known(&gateway.list_providers());
    metrics::log_configuration(&gateway);
    let limits = service::Limits {
        max_tokens_cap: config.llm_max_tokens_cap,
        transcribe_max_bytes: config.transcribe_max_bytes,
    };
    // The largest message is a `Transcribe` request: tonic refuses a larger one from its length
    // prefix, before reading its body (answered `ResourceExhausted`).
    let message_limit = config.transcribe_max_bytes + REQUEST_SLACK_BYTES;
    let server = ProviderGatewayServer::new(ProviderGatewayService::with_limits(gateway, limits))
        .max_decoding_message_size(message_limit);
    let server = budget::TranscribeBudget::new(server, config.transcribe_budget_bytes);
    let routes = tonic::service::Routes::new(telemetry::grpc::OversizeIsResourceExhausted::new(server, message_limit));
    let token = config.telemetry.internal_auth_token.as_ref();
    Ok(telemetry::serve_grpc_service(&ctx, grpc, admin, routes, &[SERVICE_NAME], token).await?)
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
