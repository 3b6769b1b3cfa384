//! call-api configuration, read once at start from the environment.

use std::net::SocketAddr;

use telemetry::{ConfigErrors, Env, Reader, TelemetryConfig};

use crate::auth::ApiKeys;

/// Everything call-api reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CALL_API_ADDR`: API, health, readiness and metrics; default `0.0.0.0:8000`.
    pub addr: SocketAddr,
    /// `AUDIO_PROCESSOR_URL`, default `http://127.0.0.1:50051`.
    pub audio_processor_url: String,
    /// `PROVIDER_GATEWAY_URL`, default `http://127.0.0.1:50052`.
    pub provider_gateway_url: String,
    /// `PUBLIC_BASE_URL`: how carriers reach this service, default `http://127.0.0.1:8000`.
    pub public_base_url: String,
    /// `API_KEYS`: comma-separated bearer keys, each optionally `tenant:key`.
    pub api_keys: ApiKeys,
    pub telemetry: TelemetryConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let telemetry = TelemetryConfig::read(&mut r);
        let addr = r.addr_or("CALL_API_ADDR", "0.0.0.0:8000");
        let audio_processor_url = r.url_or("AUDIO_PROCESSOR_URL", "http://127.0.0.1:50051", &["http", "https"]);
        let provider_gateway_url = r.url_or("PROVIDER_GATEWAY_URL", "http://127.0.0.1:50052", &["http", "https"]);
        let public_base_url = r.url_or("PUBLIC_BASE_URL", "http://127.0.0.1:8000", &["http", "https"]);
        let api_keys = match r.secret("API_KEYS") {
            None => ApiKeys::default(),
            Some(raw) => match ApiKeys::parse(raw.expose()) {
                Ok(keys) => keys,
                Err(message) => {
                    r.error("API_KEYS", message);
                    ApiKeys::default()
                }
            },
        };
        r.errors.into_result(Self {
            addr,
            audio_processor_url,
            provider_gateway_url,
            public_base_url,
            api_keys,
            telemetry,
        })
    }
}
