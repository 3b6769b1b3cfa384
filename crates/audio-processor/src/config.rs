//! audio-processor configuration, read once at start from the environment.

use std::net::SocketAddr;

use telemetry::{ConfigErrors, Env, Reader, TelemetryConfig};

/// Everything audio-processor reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AUDIO_PROCESSOR_GRPC_ADDR`, default `0.0.0.0:50051`.
    pub grpc_addr: SocketAddr,
    /// `AUDIO_PROCESSOR_ADMIN_ADDR` (health, readiness, metrics, pprof), default `0.0.0.0:9091`.
    pub admin_addr: SocketAddr,
    pub telemetry: TelemetryConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let telemetry = TelemetryConfig::read(&mut r);
        let grpc_addr = r.addr_or("AUDIO_PROCESSOR_GRPC_ADDR", "0.0.0.0:50051");
        let admin_addr = r.addr_or("AUDIO_PROCESSOR_ADMIN_ADDR", "0.0.0.0:9091");
        r.errors.into_result(Self { grpc_addr, admin_addr, telemetry })
    }
}
