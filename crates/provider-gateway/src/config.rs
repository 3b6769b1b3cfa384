//! provider-gateway configuration, read once at start from the environment.

use std::net::SocketAddr;

use telemetry::{ConfigErrors, Env, Reader, TelemetryConfig};

/// Everything provider-gateway reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PROVIDER_GATEWAY_GRPC_ADDR`, default `0.0.0.0:50052`.
    pub grpc_addr: SocketAddr,
    /// `PROVIDER_GATEWAY_ADMIN_ADDR` (health, readiness, metrics, pprof), default `0.0.0.0:9092`.
    pub admin_addr: SocketAddr,
    pub providers: crate::registry::ProvidersConfig,
    pub telemetry: TelemetryConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let telemetry = TelemetryConfig::read(&mut r);
        let grpc_addr = r.addr_or("PROVIDER_GATEWAY_GRPC_ADDR", "0.0.0.0:50052");
        let admin_addr = r.addr_or("PROVIDER_GATEWAY_ADMIN_ADDR", "0.0.0.0:9092");
        let providers = crate::registry::ProvidersConfig::read(&mut r);
        r.errors.into_result(Self { grpc_addr, admin_addr, providers, telemetry })
    }
}
