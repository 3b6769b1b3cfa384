//! call-api: the public REST and WebSocket edge of Voice Kraliki; owns the call records.
//!
//! Each feature is a folder whose `mod.rs` says what lives where; `routes/` holds only the thin
//! HTTP handlers, and no route module calls another.
//!
//! ```text
//! config.rs          assembles the settings of every section (SPEC §3); each section lives
//!                    with the module that reads it
//! auth.rs            bearer API keys (hashed, constant-time), tenants, the gate
//! error.rs           the error type, the SPEC error body, and what each lower error becomes
//! extract.rs         JSON/query extractors whose rejections use that body
//! limits.rs          header names and sizes, body deadlines, per-key rate limits, CORS; LimitsConfig
//! model.rs           the call record, its states and outcomes, input validation
//! metrics.rs         every metric call-api exports
//! openapi.rs         the OpenAPI 3 document header, security scheme, operational endpoints
//! peers.rs           balanced gRPC clients for audio-processor and provider-gateway
//! pricing.rs         the prices file, usage accumulated per call, the cost breakdown
//! db/                the pool (SQLite or PostgreSQL), migrations, instrumentation, DatabaseConfig;
//!                    calls.rs, analysis.rs, turns.rs, leases.rs: the repositories
//! media/             live calls: the media WebSocket, sessions, turns, playback, replicas
//! events/            call events for integrators: WEBHOOK_* config, the signed-webhook worker
//!                    (the outbox rows are written by db/ with the changes they describe)
//! recording/         recording analysis: upload (claim → spool → run → store), pipeline, document
//! twilio/            the Twilio carrier: signature, TwiML, webhooks, dialling and hanging up
//! routes/            one router per resource (calls.rs, recording.rs, providers.rs, twilio.rs)
//! ```

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod extract;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod peers;
pub mod pricing;
pub mod recording;
pub mod routes;
pub mod twilio;

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::Router;
use telemetry::{ServiceContext, ServiceInfo};
use tokio::net::TcpListener;

pub use config::Config;

/// This service's identity for telemetry, with the buckets of its histograms (the default
/// turn objective, `LIVE_TURN_SLO_SECONDS` unset).
pub fn service_info() -> ServiceInfo {
    service_info_with_turn_slo(config::DEFAULT_TURN_SLO_SECONDS)
}

/// [`service_info`] with `turn_slo_seconds` (`LIVE_TURN_SLO_SECONDS`) a boundary of
/// `voice_turn_latency_seconds`.
pub fn service_info_with_turn_slo(turn_slo_seconds: f64) -> ServiceInfo {
    ServiceInfo::new("call-api", env!("CARGO_PKG_VERSION"))
        .with_histogram(metrics::CALL_DURATION_SECONDS, metrics::CALL_DURATION_BUCKETS)
        .with_histogram(metrics::DB_QUERY_DURATION_SECONDS, metrics::DB_QUERY_BUCKETS)
        .with_histogram(metrics::CALL_ANALYSIS_STAGE_SECONDS, metrics::CALL_ANALYSIS_BUCKETS)
        .with_histogram(metrics::VOICE_TURN_LATENCY_SECONDS, &metrics::turn_latency_buckets(turn_slo_seconds))
        .with_histogram(metrics::VOICE_INBOUND_JITTER_SECONDS, metrics::JITTER_BUCKETS)
        .with_histogram(metrics::VOICE_PLAYBACK_DELAY_SECONDS, metrics::PLAYBACK_DELAY_BUCKETS)
        .with_histogram(metrics::VOICE_CALL_MOS, metrics::MOS_BUCKETS)
        .with_histogram(metrics::VOICE_CALL_COST, metrics::CALL_COST_BUCKETS)
        .with_histogram(metrics::WEBHOOK_DELIVERY_SECONDS, metrics::WEBHOOK_DELIVERY_BUCKETS)
}

/// How media URLs are made.
#[derive(Clone, Debug)]
pub struct MediaUrls {
    /// `PUBLIC_BASE_URL` with `ws`/`wss` for `http`/`https`.
    pub ws_base: Arc<str>,
    pub token_ttl: Duration,
}

impl MediaUrls {
    pub fn new(public_base_url: &str, token_ttl: Duration) -> Self {
        let base = public_base_url.trim_end_matches('/');
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_string()
        };
        Self { ws_base: ws_base.into(), token_ttl }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// API keys and their rate limits.
    pub gate: auth::Gate,
    pub limits: limits::LimitsConfig,
    pub peers: peers::Peers,
    pub db: db::Database,
    pub media: MediaUrls,
    /// The console's configuration (`TRACE_URL_TEMPLATE`).
    pub console: routes::console::ConsoleConfig,
    pub recording: recording::RecordingConfig,
    pub live_config: media::LiveConfig,
    /// The shared audio streams of this replica's calls (`LIVE_AUDIO_GATHER_MS` > 0), else each
    /// call opens its own.
    pub shared_audio: Option<Arc<media::legs::SharedAudio>>,
    /// The live calls of this replica.
    pub live: media::LiveCalls,
    /// This replica among the others: leases of its live calls, hang-up anywhere.
    pub replica: media::replicas::Replica,
    /// Recording uploads being received, per replica and per tenant.
    pub uploads: recording::upload::Uploads,
    /// The service's shutdown: once it drains, no new live call is accepted.
    pub shutdown: telemetry::Shutdown,
    /// New call events for the event streams open on this replica.
    pub events: events::stream::EventBus,
    /// The Twilio carrier; `None` when `TWILIO_ACCOUNT_SID`/`TWILIO_AUTH_TOKEN` are not set.
    pub twilio: Option<twilio::Twilio>,
    /// `PROVIDER_PRICES_FILE`: what provider usage costs; `None` leaves call costs unknown.
    pub prices: Option<Arc<pricing::Prices>>,
}

/// The whole HTTP application: API, OpenAPI document, health, readiness and metrics.
pub fn app(state: AppState, ctx: &ServiceContext) -> Router {
    let mut router = routes::api(state).merge(ctx.health.router());
    if let Some(metrics) = ctx.metrics.clone() {
        router = router.merge(telemetry::metrics_router(metrics));
    }
    router
}

/// Serves on `listener` until shutdown (tests pass a listener bound to port 0), and on
/// `CALL_API_ADMIN_ADDR` when it is set.
pub async fn run(config: Config, listener: TcpListener, ctx: ServiceContext) -> anyhow::Result<()> {
    let admin = match config.admin_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("bind CALL_API_ADMIN_ADDR {addr}"))?),
        None => None,
    };
    run_with_admin(config, listener, admin, ctx).await
}

/// [`run`] with the admin listener given (tests pass one bound to port 0): with `admin`, it
/// serves `/health`, `/ready`, `/metrics` and `/debug/pprof/profile`, and `listener` serves no
/// `/metrics`; without, `listener` serves `/metrics` as well.
pub async fn run_with_admin(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    ctx: ServiceContext,
) -> anyhow::Result<()> {
    if config.api_keys.is_empty() {
        tracing::warn!("API_KEYS is not set: every /v1 request will be refused with 401");
    }
    metrics::init();
    metrics::cost_init(config.prices.as_deref());
    // The error never includes the URL, which may hold a password.
    let db = db::Database::connect(&config.database).await.context("open the database at DATABASE_URL")?;
    metrics::db_up(true);
    let check_db = db.clone();
    ctx.health.add_check("database", move || {
        let db = check_db.clone();
        async move { db.check().await }
    });
    let peers = peers::Peers::start(&config.peers).await;
    let live = media::LiveCalls::new(config.limits.live_max_calls, config.limits.media_unauthenticated_per_ip);
    let replica = media::replicas::Replica::new(&config.replica, db.clone(), live.clone());
    let background = tokio_util::sync::CancellationToken::new();
    replica.spawn(background.clone());
    events::Worker::new(config.webhooks.clone(), db.clone(), replica.lease_owner.clone())?.spawn(background.clone());
    db.spawn_probe(config.database.probe_interval, background.clone());
    metrics::event_streams_init();
    let event_bus = events::stream::EventBus::new(db.clone());
    event_bus.start(background.clone()).await;
    let state = AppState {
        gate: auth::Gate::new(config.api_keys.clone(), config.limits.rate_per_second, config.limits.rate_burst),
        limits: config.limits.clone(),
        peers,
        db: db.clone(),
        media: MediaUrls::new(&config.public_base_url, config.media_token_ttl),
        console: config.console.clone(),
        recording: config.recording.clone(),
        live_config: config.live.clone(),
        shared_audio: (!config.live.audio_gather.is_zero())
            .then(|| media::legs::SharedAudio::new(config.live.audio_gather)),
        live: live.clone(),
        replica,
        uploads: recording::upload::Uploads::new(
            config.recording.max_uploads,
            config.recording.max_uploads_per_tenant,
            config.recording.max_concurrent_analyses,
        ),
        shutdown: ctx.shutdown.clone(),
        events: event_bus,
        twilio: match config.twilio.clone() {
            Some(t) => Some(twilio::Twilio::new(t, &config.public_base_url)?),
            None => None,
        },
        prices: config.prices.clone(),
    };
    let peers = state.peers.clone();
    if state.twilio.is_none() {
        tracing::info!("Twilio is not configured: no outbound dialling, the Twilio webhooks answer 503");
    }
    let mut router = match &admin {
        Some(_) => routes::api(state).merge(ctx.health.router()),
        None => app(state, &ctx),
    };
    let admin_router = admin.as_ref().map(|_| telemetry::admin_router(&ctx.health, ctx.metrics.clone(), true));
    if config.pprof {
        tracing::info!("CALL_API_PPROF=true: CPU profiles at /debug/pprof/profile");
        router = router.merge(telemetry::pprof::router());
    }
    ctx.health.set_started().await;
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    tracing::info!(
        addr = %listener.local_addr()?,
        admin_addr = admin_addr.map(|a| a.to_string()),
        database = db.system(),
        "serving"
    );
    let server_limits = telemetry::HttpServerLimits {
        header_read_timeout: config.limits.header_timeout,
        // The server's own hard bound; the API answers over HTTP_HEADER_MAX_BYTES itself (431,
        // counted) below this.
        max_header_bytes: config.limits.header_max_bytes.saturating_mul(2).max(8192),
        max_connections: config.limits.max_connections,
        on_refused: Some(std::sync::Arc::new(|| {
            metrics::request_limited("connections");
        })),
    };
    // On SIGTERM, HTTP requests (SHUTDOWN_TIMEOUT_SECONDS) and live calls, whose upgraded
    // WebSockets the HTTP drain does not wait for (LIVE_DRAIN_TIMEOUT_SECONDS), drain at the same
    // time; leases, the reaper and the peers keep working until both are done.
    let serve = async {
        let served = telemetry::serve_http_with(listener, router, &ctx.shutdown, server_limits).await;
        if served.is_err() {
            ctx.shutdown.trigger();
        }
        served
    };
    // The admin listener stops with the public one (shutdown's stopping phase).
    let serve_admin = async {
        let (Some(admin), Some(router)) = (admin, admin_router) else { return Ok(()) };
        let served = telemetry::serve_http(admin, router, &ctx.shutdown).await;
        if served.is_err() {
            ctx.shutdown.trigger();
        }
        served
    };
    let drain_live = async {
        ctx.shutdown.draining().await;
        live.drain(config.replica.drain_timeout, ctx.shutdown.forced()).await;
    };
    let (served, admin_served, ()) = tokio::join!(serve, serve_admin, drain_live);
    background.cancel();
    peers.close();
    db.close().await;
    served?;
    admin_served.context("serve CALL_API_ADMIN_ADDR")?;
    Ok(())
}

/// Binds the configured address and serves until shutdown.
pub async fn serve(config: Config, ctx: ServiceContext) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(config.addr).await.with_context(|| format!("bind CALL_API_ADDR {}", config.addr))?;
    run(config, listener, ctx).await
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    telemetry::entry::run_service_configured(
        service_info(),
        Config::from_env,
        |_, c| service_info_with_turn_slo(c.turn_slo_seconds),
        |c| &c.telemetry,
        serve,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_urls_use_websocket_schemes() {
        let ttl = Duration::from_secs(1);
        assert_eq!(&*MediaUrls::new("http://127.0.0.1:8000", ttl).ws_base, "ws://127.0.0.1:8000");
        assert_eq!(&*MediaUrls::new("https://api.example.com/", ttl).ws_base, "wss://api.example.com");
    }
}
