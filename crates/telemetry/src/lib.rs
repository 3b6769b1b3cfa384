//! The services' common runtime: configuration, the common `main`, serving, health, shutdown,
//! and observability — JSON logs carrying trace ids, Sentry errors and transactions, OTLP
//! traces with W3C propagation across gRPC, Prometheus metrics with explicit buckets, and CPU
//! profiles — wired in one place so that no service does it by hand.
//!
//! ```text
//! config/            env.rs (process environment after .env, or a map), reader.rs (typed
//!                    parsers every service reuses, ConfigErrors, Secret), mod.rs (telemetry's
//!                    own variables of SPEC §3, INTERNAL_AUTH_TOKEN)
//! entry.rs           run_service: the three-line mains (config, init, serve, flush, exit code)
//! serve.rs           HTTP serving with connection limits and idle bounds; gRPC serving with
//!                    health, per-service reflection and the admin port
//! auth.rs            INTERNAL_AUTH_TOKEN on gRPC (health and reflection stay open)
//! logging.rs         JSON/text line formats, stdout + LOG_FILE, redaction
//! otel.rs            tracer provider, OTLP exporter, traceparent inject/extract; logger
//!                    provider (OTLP log records, bounded and counted queue)
//! sentry_support.rs  Sentry client, scrubbing, capture_exception, transactions
//! metrics.rs         Prometheus recorder, metric names, build_info, process_*
//! http.rs            axum layer: server span + http_requests_* RED metrics
//! grpc.rs            tonic layers: server/client spans + grpc_server_*/grpc_client_* metrics,
//!                    deadlines, oversize → ResourceExhausted (INPUT_TOO_LARGE)
//! health.rs          readiness registry, /health, /ready, grpc.health.v1
//! memory.rs          freed heap memory back to the system (malloc_trim every 10 s)
//! pprof.rs           /debug/pprof/profile
//! shutdown.rs        SIGTERM → not ready → drain (bounded) → flush (bounded); a second signal forces
//! testing.rs         in-test OTLP receiver, Sentry sink and fake HTTP servers (feature `testing`)
//! ```
//!
//! A service's `main` is `telemetry::entry::run_service(...)`; tests call the same `run`.

pub mod auth;
pub mod config;
pub mod entry;
pub mod grpc;
pub mod health;
pub mod http;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod otel;
pub mod pprof;
pub mod sentry_support;
pub mod serve;
pub mod shutdown;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use opentelemetry_sdk::{logs::SdkLoggerProvider, trace::SdkTracerProvider};
use tracing_subscriber::{Layer as _, layer::SubscriberExt, util::SubscriberInitExt};

pub use config::{ConfigErrors, Env, Reader, Secret, TelemetryConfig};
pub use health::Health;
pub use metrics::MetricsHandle;
pub use sentry_support::{ErrorContext, capture_exception};
pub use serve::{HttpServerLimits, ServiceContext, serve_grpc_service, serve_http, serve_http_with};
pub use shutdown::Shutdown;

/// A `TcpListener` as the connection stream tonic's `serve_with_incoming` takes.
pub fn incoming(listener: tokio::net::TcpListener) -> tokio_stream::wrappers::TcpListenerStream {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

/// Who is reporting: the service's name and version, and the histograms it records (each needs
/// explicit buckets, or the exporter renders it as a summary).
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    pub name: String,
    pub version: String,
    pub git_sha: String,
    pub histograms: Vec<(String, Vec<f64>)>,
}

impl ServiceInfo {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            git_sha: option_env!("VK_GIT_SHA").unwrap_or("unknown").to_string(),
            histograms: Vec::new(),
        }
    }

    /// Declares a histogram and its buckets.
    pub fn with_histogram(mut self, name: &str, buckets: &[f64]) -> Self {
        self.histograms.push((name.to_string(), buckets.to_vec()));
        self
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("open LOG_FILE: {0}")]
    LogFile(#[source] std::io::Error),
    #[error("build the OTLP exporter for OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Otlp(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Everything telemetry holds for the life of the process; flush it with [`Telemetry::shutdown`].
pub struct Telemetry {
    info: ServiceInfo,
    config: TelemetryConfig,
    metrics: Option<MetricsHandle>,
    tracer_provider: Option<SdkTracerProvider>,
    logger_provider: Option<SdkLoggerProvider>,
    sentry: Option<sentry::ClientInitGuard>,
}

/// Installs the crypto provider that every TLS client here (reqwest, Sentry, OTLP) shares.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts logging, the panic hook, Sentry and OTLP (in that order) and the metrics recorder.
///
/// Must run inside a Tokio runtime (the OTLP gRPC exporter binds to it). Only the first call in
/// a process installs the global subscriber; later calls (several services in one test) reuse it.
pub fn init(info: &ServiceInfo, config: &TelemetryConfig) -> Result<Telemetry, InitError> {
    install_crypto_provider();
    let release = config.release.clone().unwrap_or_else(|| info.version.clone());
    let writer = logging::LogWriter::new(config.log_file.as_deref()).map_err(InitError::LogFile)?;

    let sentry = config.sentry_enabled().then(|| sentry_support::init(info, config, &release));
    let provider = otel::tracer_provider(info, config)?;
    let tracer = otel::tracer(&provider, info);
    let logger_provider = if config.otlp_logs_enabled() { Some(otel::logger_provider(info, config)?) } else { None };

    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&config.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = match config.log_format {
        config::LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(logging::JsonFormat::new(info, &config.environment))
            .with_writer(writer)
            .boxed(),
        config::LogFormat::Text => {
            tracing_subscriber::fmt::layer().event_format(logging::TextFormat).with_writer(writer).boxed()
        }
    };
    let otel_layer = tracing_opentelemetry::layer().with_tracer(tracer).with_tracked_inactivity(false);
    let sentry_layers = sentry.as_ref().map(|_| {
        use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer, SpanLayer};
        use tracing_subscriber::filter::LevelFilter;
        SpanLayer::new()
            .with_filter(LevelFilter::INFO)
            .and_then(ErrorLayer::new().with_filter(LevelFilter::ERROR))
            .and_then(BreadcrumbLayer::new().with_filter(LevelFilter::INFO))
    });
    // The same events, with the same fields and the same redaction, as the log line.
    let otlp_logs = logger_provider.as_ref().map(|p| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(&otel::RedactingLoggerProvider(
            p.clone(),
        ))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| otel::exported_log_target(meta.target())))
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(fmt)
        .with(otlp_logs)
        .with(sentry_layers)
        .try_init();
    if installed.is_err() {
        tracing::debug!(service = %info.name, "tracing subscriber already installed in this process");
    }
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let metrics = config.metrics_enabled.then(|| metrics::install(info, &release));
    if logger_provider.is_some() {
        // Present from the start, so "nothing dropped" reads 0 rather than absent.
        ::metrics::counter!(otel::LOG_RECORDS_DROPPED_TOTAL, "reason" => "queue_full").absolute(0);
        ::metrics::counter!(otel::LOG_RECORDS_DROPPED_TOTAL, "reason" => "export_failed").absolute(0);
        ::metrics::counter!(otel::LOG_RECORDS_EXPORTED_TOTAL).absolute(0);
    }

    if config.sentry_profiles_sample_rate > 0.0 {
        tracing::warn!(
            "SENTRY_PROFILES_SAMPLE_RATE is set but the Rust Sentry SDK has no profiler; \
             take CPU profiles from GET /debug/pprof/profile?seconds=N instead"
        );
    }
    if !config.apm_enabled && (config.sentry_dsn.is_some() || config.otlp_endpoint.is_some()) {
        tracing::info!("APM_ENABLED=false: Sentry and OTLP export are off although configured");
    }
    tracing::info!(
        service = %info.name,
        version = %release,
        environment = %config.environment,
        sentry = config.sentry_enabled(),
        otlp = config.otlp_enabled(),
        otlp_logs = config.otlp_logs_enabled(),
        metrics = config.metrics_enabled,
        "telemetry started"
    );
    Ok(Telemetry {
        info: info.clone(),
        config: config.clone(),
        metrics,
        tracer_provider: Some(provider),
        logger_provider,
        sentry,
    })
}

impl Telemetry {
    /// The metrics handle, `None` when `ENABLE_METRICS=false`.
    pub fn metrics(&self) -> Option<MetricsHandle> {
        self.metrics.clone()
    }

    pub fn info(&self) -> &ServiceInfo {
        &self.info
    }

    pub fn config(&self) -> &TelemetryConfig {
        &self.config
    }

    /// A health registry for this service.
    pub fn health(&self) -> Health {
        Health::new(&self.info, &self.config.environment)
    }

    /// The shutdown sequence configured by `SHUTDOWN_DELAY_SECONDS`/`SHUTDOWN_TIMEOUT_SECONDS`.
    pub fn shutdown_sequence(&self) -> Shutdown {
        Shutdown::new(self.config.shutdown_delay, self.config.shutdown_timeout)
    }

    /// Flushes spans, log records and Sentry events, waiting at most
    /// `TELEMETRY_FLUSH_TIMEOUT_SECONDS` whatever the state of the collector or Sentry.
    pub async fn shutdown(mut self) {
        let timeout = self.config.flush_timeout;
        let provider = self.tracer_provider.take();
        let logger_provider = self.logger_provider.take();
        let sentry = self.sentry.take();
        // Log records flush beside spans (not after them), under the same bound.
        let logs = logger_provider.map(|p| {
            tokio::task::spawn_blocking(move || {
                let _ = p.shutdown_with_timeout(timeout);
            })
        });
        // Exporters may block on a dead peer: flush off the runtime and stop waiting at the bound.
        let flush = tokio::task::spawn_blocking(move || {
            if let Some(provider) = provider {
                let _ = provider.shutdown_with_timeout(timeout);
            }
            if let Some(guard) = sentry {
                if let Some(client) = sentry::Hub::main().client() {
                    client.close(Some(timeout));
                }
                drop(guard);
            }
        });
        let both = async move {
            let _ = flush.await;
            if let Some(logs) = logs {
                let _ = logs.await;
            }
        };
        if tokio::time::timeout(timeout + Duration::from_millis(500), both).await.is_err() {
            eprintln!("telemetry flush did not finish within {timeout:?}; exiting anyway");
        }
    }
}

/// The admin router: `/health`, `/ready`, `/metrics` (unless metrics are off) and, when
/// `with_pprof`, `/debug/pprof/profile`.
pub fn admin_router(health: &Health, metrics: Option<MetricsHandle>, with_pprof: bool) -> Router {
    let mut router = health.router();
    if let Some(handle) = metrics {
        router = router.merge(metrics_router(handle));
    }
    if with_pprof {
        router = router.merge(pprof::router());
    }
    router
}

/// `GET /metrics` in the Prometheus text format.
pub fn metrics_router(handle: MetricsHandle) -> Router {
    Router::new().route("/metrics", get(render_metrics)).with_state(handle)
}

async fn render_metrics(State(handle): State<MetricsHandle>) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
}

/// Wraps an API router with the request layers every HTTP service uses: a Sentry hub per request
/// and a transaction named by route template, the server span and RED metrics, and panic
/// recovery (a panicking handler answers 500 and is still reported).
pub fn http_layers(router: Router) -> Router {
    router
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(http::HttpLayer)
        .layer(sentry::integrations::tower::SentryHttpLayer::new().enable_transaction())
        .layer(sentry::integrations::tower::NewSentryLayer::<axum::extract::Request>::new_from_top())
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({"error": {"code": "internal", "message": "internal error"}})),
    )
        .into_response()
}

type GrpcRequest = ::http::Request<tonic::body::Body>;

/// The tower stack of every gRPC server: a Sentry hub per call, a transaction named by method,
/// then the server span and RED metrics.
pub type GrpcServerLayers = tower::ServiceBuilder<
    tower::layer::util::Stack<
        grpc::GrpcServerLayer,
        tower::layer::util::Stack<
            sentry::integrations::tower::SentryHttpLayer,
            tower::layer::util::Stack<
                sentry::integrations::tower::NewSentryLayer<GrpcRequest>,
                tower::layer::util::Identity,
            >,
        >,
    >,
>;

/// The tower stack for a tonic server: `Server::builder().layer(telemetry::grpc_server_layers())`.
pub fn grpc_server_layers() -> GrpcServerLayers {
    tower::ServiceBuilder::new()
        .layer(sentry::integrations::tower::NewSentryLayer::<GrpcRequest>::new_from_top())
        .layer(sentry::integrations::tower::SentryHttpLayer::new().enable_transaction())
        .layer(grpc::GrpcServerLayer)
}
