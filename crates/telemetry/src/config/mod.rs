//! Configuration from the environment: loading it ([`env`]), the generic [`reader`] every
//! service reuses for its own variables, and telemetry's own settings of SPEC §3 (here).

pub mod env;
pub mod reader;

use std::time::Duration;

pub use env::Env;
pub use reader::{ConfigError, ConfigErrors, Reader, Secret, check_url};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Trace sampling, from `OTEL_TRACES_SAMPLER(_ARG)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

/// The common telemetry configuration of every service (SPEC §3).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `SENTRY_DSN`: unset means Sentry is off.
    pub sentry_dsn: Option<sentry::types::Dsn>,
    /// `SENTRY_TRACES_SAMPLE_RATE`, 0..1, default 0.1.
    pub sentry_traces_sample_rate: f32,
    /// `SENTRY_PROFILES_SAMPLE_RATE`: accepted; the Rust SDK has no profiler (pprof instead).
    pub sentry_profiles_sample_rate: f32,
    /// `RELEASE_VERSION`, default the crate version.
    pub release: Option<String>,
    /// `APM_ENABLED`: master switch for Sentry and OTLP export.
    pub apm_enabled: bool,
    /// `APM_ENVIRONMENT`, falling back to `ENVIRONMENT`, default `development`.
    pub environment: String,
    /// `ENABLE_METRICS`: `false` removes `/metrics` and all recording.
    pub metrics_enabled: bool,
    /// `LOG_LEVEL`: a level (`info`, `DEBUG`…) or `RUST_LOG`-style directives.
    pub log_filter: String,
    /// `LOG_FORMAT`: json (default) or text.
    pub log_format: LogFormat,
    /// `LOG_FILE`: also append log lines to this file.
    pub log_file: Option<std::path::PathBuf>,
    /// `WORKERS`: async worker threads; default the CPU count.
    pub workers: usize,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP export is on when set.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (default) or `http/protobuf`.
    pub otlp_protocol: OtlpProtocol,
    /// `OTEL_LOGS_EXPORTER`: `none` (default, logs go to stdout and `LOG_FILE` only) or `otlp`
    /// (log records are also exported to `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub logs_exporter_otlp: bool,
    /// `OTEL_SERVICE_NAME`: overrides the service's own name in traces.
    pub otel_service_name: Option<String>,
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, default parent-based always-on.
    pub sampler: Sampler,
    /// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,…` added to the trace resource.
    pub resource_attributes: Vec<(String, String)>,
    /// `SHUTDOWN_DELAY_SECONDS`: serve on with readiness failing before draining (default 0).
    pub shutdown_delay: Duration,
    /// `SHUTDOWN_TIMEOUT_SECONDS`: longest drain of in-flight work (default 20).
    pub shutdown_timeout: Duration,
    /// `TELEMETRY_FLUSH_TIMEOUT_SECONDS`: longest flush of Sentry and OTLP at exit (default 5).
    pub flush_timeout: Duration,
    /// `INTERNAL_AUTH_TOKEN`: unset = the gRPC ports trust the network. Set, every gRPC call
    /// except health and reflection must carry `authorization: Bearer <token>`, and call-api
    /// sends it on every call to its peers.
    pub internal_auth_token: Option<Secret>,
}

impl TelemetryConfig {
    /// Reads the common variables, recording bad ones in `reader`.
    pub fn read(reader: &mut Reader<'_>) -> Self {
        let sentry_dsn = match reader.string("SENTRY_DSN") {
            None => None,
            Some(raw) => match raw.parse::<sentry::types::Dsn>() {
                Ok(dsn) => Some(dsn),
                Err(_) => {
                    // The DSN's public key is not a secret, but keep it out of the message anyway.
                    reader.error("SENTRY_DSN", "is not a valid Sentry DSN (https://<key>@<host>/<project>)");
                    None
                }
            },
        };
        let sentry_traces_sample_rate = reader.f64_in("SENTRY_TRACES_SAMPLE_RATE", 0.1, 0.0, 1.0) as f32;
        let sentry_profiles_sample_rate = reader.f64_in("SENTRY_PROFILES_SAMPLE_RATE", 0.0, 0.0, 1.0) as f32;
        let release = reader.string("RELEASE_VERSION");
        let apm_enabled = reader.bool_or("APM_ENABLED", true);
        let environment = reader
            .string("APM_ENVIRONMENT")
            .or_else(|| reader.string("ENVIRONMENT"))
            .unwrap_or_else(|| "development".to_string());
        let metrics_enabled = reader.bool_or("ENABLE_METRICS", true);

        let log_filter = reader.string_or("LOG_LEVEL", "info");
        let log_filter = match normalise_log_filter(&log_filter) {
            Ok(f) => f,
            Err(message) => {
                reader.error("LOG_LEVEL", format!("{log_filter:?} {message}"));
                "info".to_string()
            }
        };
        let log_format = match reader.string_or("LOG_FORMAT", "json").to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "text" | "pretty" | "plain" => LogFormat::Text,
            other => {
                reader.error("LOG_FORMAT", format!("{other:?} is not json or text"));
                LogFormat::Json
            }
        };
        let log_file = reader.string("LOG_FILE").map(std::path::PathBuf::from);
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let workers = reader.positive_or("WORKERS", cpus, 1024);

        let otlp_endpoint = reader.string("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(endpoint) = &otlp_endpoint
            && let Err(message) = check_url(endpoint, &["http", "https"])
        {
            reader.error("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{endpoint:?} {message}"));
        }
        let otlp_protocol = match reader.string_or("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").as_str() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            other => {
                reader.error("OTEL_EXPORTER_OTLP_PROTOCOL", format!("{other:?} is not grpc or http/protobuf"));
                OtlpProtocol::Grpc
            }
        };
        let logs_exporter_otlp = match reader.string_or("OTEL_LOGS_EXPORTER", "none").as_str() {
            "none" => false,
            "otlp" => true,
            other => {
                reader.error("OTEL_LOGS_EXPORTER", format!("{other:?} is not none or otlp"));
                false
            }
        };
        let otel_service_name = reader.string("OTEL_SERVICE_NAME");
        let sampler = read_sampler(reader);
        let resource_attributes = match reader.string("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(raw) => {
                let mut out = Vec::new();
                for pair in raw.split(',').filter(|p| !p.trim().is_empty()) {
                    match pair.split_once('=') {
                        Some((k, v)) if !k.trim().is_empty() => out.push((k.trim().to_string(), v.trim().to_string())),
                        _ => reader.error("OTEL_RESOURCE_ATTRIBUTES", format!("{pair:?} is not key=value")),
                    }
                }
                out
            }
        };
        let shutdown_delay = reader.seconds_or("SHUTDOWN_DELAY_SECONDS", Duration::ZERO, 300.0);
        let shutdown_timeout = reader.seconds_or("SHUTDOWN_TIMEOUT_SECONDS", Duration::from_secs(20), 3600.0);
        let flush_timeout = reader.seconds_or("TELEMETRY_FLUSH_TIMEOUT_SECONDS", Duration::from_secs(5), 60.0);
        let internal_auth_token = read_internal_auth_token(reader);

        Self {
            sentry_dsn,
            sentry_traces_sample_rate,
            sentry_profiles_sample_rate,
            release,
            apm_enabled,
            environment,
            metrics_enabled,
            log_filter,
            log_format,
            log_file,
            workers,
            otlp_endpoint,
            otlp_protocol,
            logs_exporter_otlp,
            otel_service_name,
            sampler,
            resource_attributes,
            shutdown_delay,
            shutdown_timeout,
            flush_timeout,
            internal_auth_token,
        }
    }

    /// Reads the common variables alone.
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut reader = Reader::new(env);
        let config = Self::read(&mut reader);
        reader.errors.into_result(config)
    }

    /// Whether Sentry events are sent.
    pub fn sentry_enabled(&self) -> bool {
        self.apm_enabled && self.sentry_dsn.is_some()
    }

    /// Whether spans are exported over OTLP.
    pub fn otlp_enabled(&self) -> bool {
        self.apm_enabled && self.otlp_endpoint.is_some()
    }

    /// Whether log records are exported over OTLP (`OTEL_LOGS_EXPORTER=otlp` and an endpoint).
    pub fn otlp_logs_enabled(&self) -> bool {
        self.otlp_enabled() && self.logs_exporter_otlp
    }
}

/// Shortest `INTERNAL_AUTH_TOKEN` accepted.
pub const INTERNAL_AUTH_TOKEN_MIN_CHARS: usize = 32;

/// `INTERNAL_AUTH_TOKEN`: 32 to 512 printable ASCII characters without spaces (it travels in a
/// header). The value never appears in an error message.
pub fn read_internal_auth_token(reader: &mut Reader<'_>) -> Option<Secret> {
    let token = reader.secret("INTERNAL_AUTH_TOKEN")?;
    let value = token.expose();
    if value.len() < INTERNAL_AUTH_TOKEN_MIN_CHARS || value.len() > 512 {
        reader.error(
            "INTERNAL_AUTH_TOKEN",
            format!("must be {INTERNAL_AUTH_TOKEN_MIN_CHARS} to 512 characters long (e.g. `openssl rand -hex 32`)"),
        );
        return None;
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        reader.error("INTERNAL_AUTH_TOKEN", "must be printable ASCII without spaces");
        return None;
    }
    Some(token)
}

fn read_sampler(reader: &mut Reader<'_>) -> Sampler {
    let name = reader.string_or("OTEL_TRACES_SAMPLER", "parentbased_always_on");
    // Read (and checked) whatever the sampler, so a bad value is never silently ignored.
    let ratio = reader.f64_in("OTEL_TRACES_SAMPLER_ARG", 1.0, 0.0, 1.0);
    match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio),
        "parentbased_always_on" => Sampler::ParentBasedAlwaysOn,
        "parentbased_always_off" => Sampler::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => Sampler::ParentBasedTraceIdRatio(ratio),
        other => {
            reader.error(
                "OTEL_TRACES_SAMPLER",
                format!(
                    "{other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio"
                ),
            );
            Sampler::ParentBasedAlwaysOn
        }
    }
}

/// Accepts `DEBUG`, `info`… (any case) or `RUST_LOG`-style directives; a bare level applies to
/// everything, with the noisiest dependencies held at `warn` unless named explicitly.
pub fn normalise_log_filter(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let level = raw.to_ascii_lowercase();
    let level = match level.as_str() {
        "warning" => "warn".to_string(),
        "critical" | "fatal" => "error".to_string(),
        other => other.to_string(),
    };
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let filter = if LEVELS.contains(&level.as_str()) {
        let quiet = if matches!(level.as_str(), "trace" | "debug") { "info" } else { "warn" };
        format!(
            "{level},h2={quiet},hyper={quiet},hyper_util={quiet},tower={quiet},reqwest={quiet},rustls={quiet},opentelemetry_sdk={quiet},tonic={quiet},opentelemetry={quiet}"
        )
    } else {
        raw.to_string()
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map(|_| filter)
        .map_err(|e| format!("is not a log level or filter ({e})"))
}

#[cfg(test)]
mod tests {
    use super::env::parse_dotenv;
    use super::*;

    fn errors(pairs: &[(&str, &str)]) -> Vec<String> {
        match TelemetryConfig::from_env(&Env::from_pairs(pairs.iter().copied())) {
            Ok(_) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.variable).collect(),
        }
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = TelemetryConfig::from_env(&Env::default()).unwrap();
        assert!((c.sentry_traces_sample_rate - 0.1).abs() < 1e-6);
        assert_eq!(c.sentry_profiles_sample_rate, 0.0);
        assert!(c.apm_enabled && c.metrics_enabled);
        assert_eq!(c.environment, "development");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.log_filter.starts_with("info"));
        assert_eq!(c.otlp_protocol, OtlpProtocol::Grpc);
        assert!(!c.sentry_enabled() && !c.otlp_enabled());
        assert!(!c.logs_exporter_otlp && !c.otlp_logs_enabled());
        assert!(c.workers >= 1);
    }

    #[test]
    fn each_bad_variable_is_named_once() {
        let bad = errors(&[
            ("SENTRY_TRACES_SAMPLE_RATE", "2"),
            ("WORKERS", "zero"),
            ("APM_ENABLED", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
            ("SENTRY_DSN", "not a dsn"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
            ("OTEL_LOGS_EXPORTER", "console"),
        ]);
        assert_eq!(
            bad,
            [
                "SENTRY_DSN",
                "SENTRY_TRACES_SAMPLE_RATE",
                "APM_ENABLED",
                "LOG_FORMAT",
                "WORKERS",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_LOGS_EXPORTER"
            ]
        );
    }

    #[test]
    fn otlp_logs_need_the_exporter_and_an_endpoint() {
        let on = |pairs: &[(&str, &str)]| {
            TelemetryConfig::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap().otlp_logs_enabled()
        };
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert!(on(&[endpoint, ("OTEL_LOGS_EXPORTER", "otlp")]));
        assert!(!on(&[endpoint]), "default none");
        assert!(!on(&[endpoint, ("OTEL_LOGS_EXPORTER", "none")]));
        assert!(!on(&[("OTEL_LOGS_EXPORTER", "otlp")]), "no endpoint, nothing to export to");
        assert!(!on(&[endpoint, ("OTEL_LOGS_EXPORTER", "otlp"), ("APM_ENABLED", "false")]));
    }

    #[test]
    fn environment_falls_back_and_log_level_accepts_guide_spelling() {
        let c =
            TelemetryConfig::from_env(&Env::from_pairs([("ENVIRONMENT", "staging"), ("LOG_LEVEL", "DEBUG")])).unwrap();
        assert_eq!(c.environment, "staging");
        assert!(c.log_filter.starts_with("debug,"));
        let c = TelemetryConfig::from_env(&Env::from_pairs([
            ("ENVIRONMENT", "staging"),
            ("APM_ENVIRONMENT", "production"),
            ("LOG_LEVEL", "call_api=debug,warn"),
        ]))
        .unwrap();
        assert_eq!(c.environment, "production");
        assert_eq!(c.log_filter, "call_api=debug,warn");
        assert_eq!(errors(&[("LOG_LEVEL", "loud=[")]), ["LOG_LEVEL"]);
    }

    #[test]
    fn sampler_and_resource_attributes() {
        let c = TelemetryConfig::from_env(&Env::from_pairs([
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.region=eu, team=voice"),
        ]))
        .unwrap();
        assert_eq!(c.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
        assert_eq!(c.resource_attributes[1], ("team".to_string(), "voice".to_string()));
        assert_eq!(
            errors(&[("OTEL_TRACES_SAMPLER_ARG", "3"), ("OTEL_TRACES_SAMPLER", "traceidratio")]),
            ["OTEL_TRACES_SAMPLER_ARG"]
        );
    }

    #[test]
    fn addresses_urls_and_secrets() {
        let env = Env::from_pairs([("A", "0.0.0.0:80"), ("B", "nonsense"), ("K", "sk-123")]);
        let mut r = Reader::new(&env);
        assert_eq!(r.addr_or("A", "127.0.0.1:1").port(), 80);
        assert_eq!(r.addr_or("B", "127.0.0.1:1").port(), 1);
        assert_eq!(format!("{:?} {}", r.secret("K").unwrap(), r.secret("K").unwrap()), "[redacted] [redacted]");
        assert_eq!(r.errors.0.len(), 1);
        assert!(r.errors.to_string().contains("B: \"nonsense\""));
        assert!(check_url("http://127.0.0.1:4317", &["http"]).is_ok());
        assert!(check_url("http://127.0.0.1:99999", &["http"]).is_err());
        assert!(check_url("ftp://x", &["http"]).is_err());
    }

    #[test]
    fn dotenv_lines() {
        let v = parse_dotenv("# c\nA=1\nexport B=\"two words\"\n\nC='x'\nbad line\n");
        assert_eq!(v, vec![("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "x".into())]);
    }
}
