//! audio-processor configuration, read once at start from the environment.

use std::{net::SocketAddr, time::Duration};

use telemetry::{ConfigErrors, Env, Reader, TelemetryConfig};

/// Default of `AUDIO_MAX_RECORDING_BYTES`: 64 MiB (about 2 h 20 min of 8 kHz μ-law).
pub const DEFAULT_MAX_RECORDING_BYTES: usize = 64 * 1024 * 1024;
/// Largest value `AUDIO_MAX_RECORDING_BYTES` accepts: 1 GiB.
const MAX_RECORDING_BYTES_CAP: usize = 1024 * 1024 * 1024;

/// Everything audio-processor reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AUDIO_PROCESSOR_GRPC_ADDR`, default `0.0.0.0:50051`.
    pub grpc_addr: SocketAddr,
    /// `AUDIO_PROCESSOR_ADMIN_ADDR` (health, readiness, metrics, pprof), default `0.0.0.0:9091`.
    pub admin_addr: SocketAddr,
    /// `AUDIO_MAX_CONCURRENT_ANALYSES`: recording analyses running (or uploading) at once;
    /// more answer `ResourceExhausted`. Default: the CPU count.
    pub max_concurrent_analyses: usize,
    /// `AUDIO_MAX_RECORDING_BYTES`: largest recording accepted, unary or streamed; larger ones
    /// answer `ResourceExhausted`. Default 64 MiB, at most 1 GiB.
    pub max_recording_bytes: usize,
    /// `AUDIO_MAX_RECORDING_SECONDS`: longest recording accepted. Default 3 hours.
    pub max_recording_seconds: f64,
    /// `AUDIO_MAX_STREAMS`: live streams open at once; more answer `ResourceExhausted`.
    /// Default 10000.
    pub max_streams: usize,
    /// `AUDIO_STREAM_STATS_INTERVAL_SECONDS`: a live stream reports `StreamStats` every this
    /// much media time (and when it ends). Default 5 s; 0.1 to 3600.
    pub stream_stats_interval: Duration,
    /// `AUDIO_STREAM_CONFIG_TIMEOUT_SECONDS`: how long a new live stream may take to send its
    /// configuration message. Default 10 s.
    pub stream_config_timeout: Duration,
    /// `AUDIO_ANALYSIS_TIMEOUT_SECONDS`: the deadline of a recording analysis (upload included)
    /// whose caller sent none; it then ends `DeadlineExceeded` and frees its permit. Default
    /// 600 s (call-api's `RECORDING_ANALYSIS_TIMEOUT_SECONDS`).
    pub analysis_timeout: Duration,
    /// `AUDIO_STREAM_IDLE_TIMEOUT_SECONDS`: a live stream that receives no message for this
    /// long ends `DeadlineExceeded` and frees its slot. Default 60 s.
    pub stream_idle_timeout: Duration,
    pub telemetry: TelemetryConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let telemetry = TelemetryConfig::read(&mut r);
        let grpc_addr = r.addr_or("AUDIO_PROCESSOR_GRPC_ADDR", "0.0.0.0:50051");
        let admin_addr = r.addr_or("AUDIO_PROCESSOR_ADMIN_ADDR", "0.0.0.0:9091");
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let max_concurrent_analyses = r.positive_or("AUDIO_MAX_CONCURRENT_ANALYSES", cpus, 4096);
        let max_recording_bytes =
            r.positive_or("AUDIO_MAX_RECORDING_BYTES", DEFAULT_MAX_RECORDING_BYTES, MAX_RECORDING_BYTES_CAP);
        let max_recording_seconds = r.f64_in("AUDIO_MAX_RECORDING_SECONDS", 3.0 * 3600.0, 1.0, 24.0 * 3600.0);
        let max_streams = r.positive_or("AUDIO_MAX_STREAMS", 10_000, 1_000_000);
        let stream_stats_interval = r.seconds_or("AUDIO_STREAM_STATS_INTERVAL_SECONDS", Duration::from_secs(5), 3600.0);
        if stream_stats_interval < Duration::from_millis(100) {
            r.error("AUDIO_STREAM_STATS_INTERVAL_SECONDS", "must be at least 0.1 seconds");
        }
        let stream_config_timeout =
            r.seconds_or("AUDIO_STREAM_CONFIG_TIMEOUT_SECONDS", Duration::from_secs(10), 3600.0);
        if stream_config_timeout.is_zero() {
            r.error("AUDIO_STREAM_CONFIG_TIMEOUT_SECONDS", "must be more than 0 seconds");
        }
        let analysis_timeout = r.seconds_or("AUDIO_ANALYSIS_TIMEOUT_SECONDS", Duration::from_secs(600), 24.0 * 3600.0);
        if analysis_timeout.is_zero() {
            r.error("AUDIO_ANALYSIS_TIMEOUT_SECONDS", "must be more than 0 seconds");
        }
        let stream_idle_timeout = r.seconds_or("AUDIO_STREAM_IDLE_TIMEOUT_SECONDS", Duration::from_secs(60), 3600.0);
        if stream_idle_timeout.is_zero() {
            r.error("AUDIO_STREAM_IDLE_TIMEOUT_SECONDS", "must be more than 0 seconds");
        }
        r.errors.into_result(Self {
            grpc_addr,
            admin_addr,
            max_concurrent_analyses,
            max_recording_bytes,
            max_recording_seconds,
            max_streams,
            stream_stats_interval,
            stream_config_timeout,
            analysis_timeout,
            stream_idle_timeout,
            telemetry,
        })
    }

    /// The configuration of a service on the given environment pairs (tests).
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::from_env(&Env::from_pairs(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_pairs(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.max_recording_bytes, DEFAULT_MAX_RECORDING_BYTES);
        assert_eq!(c.max_streams, 10_000);
        assert!(c.max_concurrent_analyses >= 1);
        assert_eq!(c.stream_stats_interval, Duration::from_secs(5));
        let c = Config::from_pairs([
            ("AUDIO_MAX_CONCURRENT_ANALYSES", "3"),
            ("AUDIO_MAX_RECORDING_BYTES", "1000"),
            ("AUDIO_MAX_STREAMS", "7"),
            ("AUDIO_STREAM_STATS_INTERVAL_SECONDS", "0.5"),
        ])
        .unwrap();
        assert_eq!((c.max_concurrent_analyses, c.max_recording_bytes, c.max_streams), (3, 1000, 7));
        assert_eq!(c.stream_stats_interval, Duration::from_millis(500));
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let err = Config::from_pairs([
            ("AUDIO_MAX_CONCURRENT_ANALYSES", "0"),
            ("AUDIO_MAX_RECORDING_BYTES", "lots"),
            ("AUDIO_MAX_RECORDING_SECONDS", "-1"),
            ("AUDIO_MAX_STREAMS", "2000000"),
            ("AUDIO_STREAM_STATS_INTERVAL_SECONDS", "0.01"),
            ("AUDIO_STREAM_CONFIG_TIMEOUT_SECONDS", "0"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for var in [
            "AUDIO_MAX_CONCURRENT_ANALYSES",
            "AUDIO_MAX_RECORDING_BYTES",
            "AUDIO_MAX_RECORDING_SECONDS",
            "AUDIO_MAX_STREAMS",
            "AUDIO_STREAM_STATS_INTERVAL_SECONDS",
            "AUDIO_STREAM_CONFIG_TIMEOUT_SECONDS",
        ] {
            assert_eq!(text.matches(var).count(), 1, "{var} in {text}");
        }
        assert_eq!(err.0.len(), 6);
    }
}
