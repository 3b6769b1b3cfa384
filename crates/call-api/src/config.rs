//! call-api configuration, read once at start from the environment. Each section lives with
//! the module that uses it (`db::DatabaseConfig`, `limits::LimitsConfig`, `media::LiveConfig`,
//! `media::replicas::ReplicaConfig`, `peers::PeersConfig`, `recording::RecordingConfig`,
//! `twilio::TwilioConfig`); this file only assembles them.

use std::{net::SocketAddr, time::Duration};

use telemetry::{ConfigErrors, Env, Reader, TelemetryConfig};

use crate::{
    auth::ApiKeys, db::DatabaseConfig, limits::LimitsConfig, media::LiveConfig, recording::RecordingConfig,
    twilio::TwilioConfig,
};

/// `LIVE_TURN_SLO_SECONDS` when unset.
pub const DEFAULT_TURN_SLO_SECONDS: f64 = 1.5;

/// Everything call-api reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CALL_API_ADDR`: API, health, readiness and (without an admin address) metrics; default
    /// `0.0.0.0:8000`.
    pub addr: SocketAddr,
    /// `CALL_API_ADMIN_ADDR`: when set, `/metrics` and `/debug/pprof/profile` (with `/health` and
    /// `/ready`) are served there and `/metrics` no longer on `CALL_API_ADDR`; unset by default.
    pub admin_addr: Option<SocketAddr>,
    /// `LIVE_TURN_SLO_SECONDS`: the caller-perceived turn latency objective (end of caller
    /// speech to first reply audio), a boundary of `voice_turn_latency_seconds`; default 1.5,
    /// more than 0 and at most 60.
    pub turn_slo_seconds: f64,
    /// `AUDIO_PROCESSOR_URL`, `PROVIDER_GATEWAY_URL` (lists) and `PEER_RESOLVE_INTERVAL_SECONDS`.
    pub peers: crate::peers::PeersConfig,
    /// `PUBLIC_BASE_URL`: how carriers reach this service, default `http://127.0.0.1:8000`.
    pub public_base_url: String,
    /// `API_KEYS`: comma-separated bearer keys, each optionally `tenant:key`.
    pub api_keys: ApiKeys,
    pub database: DatabaseConfig,
    /// `MEDIA_TOKEN_TTL_SECONDS`: how long a call's media URL token is accepted, default 300.
    pub media_token_ttl: Duration,
    pub recording: RecordingConfig,
    pub live: LiveConfig,
    /// `REPLICA_ID`, `LIVE_LEASE_SECONDS`, `LIVE_DRAIN_TIMEOUT_SECONDS`.
    pub replica: crate::media::replicas::ReplicaConfig,
    pub limits: LimitsConfig,
    /// `TWILIO_*`: the Twilio carrier integration; `None` when no credentials are set.
    pub twilio: Option<TwilioConfig>,
    /// `CALL_API_PPROF`: serve `GET /debug/pprof/profile?seconds=N` (a CPU profile) on
    /// `CALL_API_ADDR`, default `false`. Unauthenticated like `/metrics`: turn it on where that
    /// port is private. The admin address (`CALL_API_ADMIN_ADDR`) always serves it.
    pub pprof: bool,
    /// `PROVIDER_PRICES_FILE`: prices of provider usage (YAML), read at start; unset leaves
    /// call costs unknown. A bad file stops the service.
    pub prices: Option<std::sync::Arc<crate::pricing::Prices>>,
    /// `WEBHOOK_*`: where each tenant's call events are delivered, signed with which secret.
    pub webhooks: crate::events::WebhookConfig,
    /// `TRACE_URL_TEMPLATE`: what the console at `/console` links traces to.
    pub console: crate::routes::console::ConsoleConfig,
    pub telemetry: TelemetryConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let telemetry = TelemetryConfig::read(&mut r);
        let addr = r.addr_or("CALL_API_ADDR", "0.0.0.0:8000");
        let admin_addr = match r.string("CALL_API_ADMIN_ADDR").map(|v| v.trim().to_string()) {
            None => None,
            Some(raw) if raw.is_empty() => None,
            Some(raw) => match raw.parse::<SocketAddr>() {
                Ok(a) if a == addr => {
                    r.error("CALL_API_ADMIN_ADDR", "must differ from CALL_API_ADDR");
                    None
                }
                Ok(a) => Some(a),
                Err(_) => {
                    r.error("CALL_API_ADMIN_ADDR", format!("{raw:?} is not a socket address such as 0.0.0.0:9090"));
                    None
                }
            },
        };
        let turn_slo_seconds = r.f64_in("LIVE_TURN_SLO_SECONDS", DEFAULT_TURN_SLO_SECONDS, 0.0, 60.0);
        if turn_slo_seconds <= 0.0 {
            r.error("LIVE_TURN_SLO_SECONDS", "must be more than 0 seconds");
        }
        let peers = crate::peers::PeersConfig::read(&mut r);
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
        let database = DatabaseConfig::read(&mut r);
        let media_token_ttl = r.seconds_or("MEDIA_TOKEN_TTL_SECONDS", Duration::from_secs(300), 86_400.0);
        if media_token_ttl < Duration::from_secs(1) {
            r.error("MEDIA_TOKEN_TTL_SECONDS", "must be at least 1 second");
        }
        let recording = RecordingConfig::read(&mut r);
        let live = LiveConfig::read(&mut r);
        let replica = crate::media::replicas::ReplicaConfig::read(&mut r);
        let limits = LimitsConfig::read(&mut r);
        let twilio = TwilioConfig::read(&mut r);
        let pprof = r.bool_or("CALL_API_PPROF", false);
        let prices = crate::pricing::Prices::read(&mut r);
        let webhooks = crate::events::WebhookConfig::read(&mut r);
        let console = crate::routes::console::ConsoleConfig::read(&mut r);
        r.errors.into_result(Self {
            addr,
            admin_addr,
            turn_slo_seconds,
            peers,
            public_base_url,
            api_keys,
            database,
            media_token_ttl,
            recording,
            live,
            replica,
            limits,
            twilio,
            pprof,
            prices,
            webhooks,
            console,
            telemetry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_variables(pairs: &[(&str, &str)]) -> Vec<String> {
        match Config::from_env(&Env::from_pairs(pairs.iter().copied())) {
            Ok(_) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.variable).collect(),
        }
    }

    #[test]
    fn database_defaults() {
        let c = Config::from_env(&Env::default()).unwrap();
        assert_eq!(c.database.url.expose(), "sqlite://voice-kraliki.db");
        assert!(!c.database.is_postgres());
        assert_eq!(c.database.max_connections, 10);
        assert_eq!(c.database.acquire_timeout, Duration::from_secs(2));
        assert_eq!(c.media_token_ttl, Duration::from_secs(300));
        let c = Config::from_env(&Env::from_pairs([("DATABASE_URL", "postgres://u:pw@db:5432/vk")])).unwrap();
        assert!(c.database.is_postgres());
    }

    #[test]
    fn each_bad_database_variable_is_named_once() {
        assert_eq!(bad_variables(&[("DATABASE_URL", "mysql://u:hunter2@db/vk")]), ["DATABASE_URL"]);
        assert_eq!(bad_variables(&[("DATABASE_URL", "postgres://u:hunter2@db:notaport/vk")]), ["DATABASE_URL"]);
        assert_eq!(bad_variables(&[("DATABASE_MAX_CONNECTIONS", "0")]), ["DATABASE_MAX_CONNECTIONS"]);
        assert_eq!(bad_variables(&[("DATABASE_MAX_CONNECTIONS", "many")]), ["DATABASE_MAX_CONNECTIONS"]);
        assert_eq!(bad_variables(&[("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "0")]), ["DATABASE_ACQUIRE_TIMEOUT_SECONDS"]);
        assert_eq!(
            bad_variables(&[("DATABASE_STATEMENT_TIMEOUT_SECONDS", "-1")]),
            ["DATABASE_STATEMENT_TIMEOUT_SECONDS"]
        );
        assert_eq!(bad_variables(&[("MEDIA_TOKEN_TTL_SECONDS", "soon")]), ["MEDIA_TOKEN_TTL_SECONDS"]);
        assert_eq!(bad_variables(&[("RECORDING_MAX_BYTES", "0")]), ["RECORDING_MAX_BYTES"]);
        assert_eq!(bad_variables(&[("RECORDING_MAX_BYTES", "2147483648")]), ["RECORDING_MAX_BYTES"]);
        assert_eq!(
            bad_variables(&[("RECORDING_ANALYSIS_TIMEOUT_SECONDS", "0.5")]),
            ["RECORDING_ANALYSIS_TIMEOUT_SECONDS"]
        );
        assert_eq!(bad_variables(&[("RECORDING_TRANSCRIBE_CONCURRENCY", "65")]), ["RECORDING_TRANSCRIBE_CONCURRENCY"]);
        let errors = Config::from_env(&Env::from_pairs([("DATABASE_URL", "mysql://u:hunter2@db/vk")])).unwrap_err();
        assert!(!format!("{errors:?}").contains("hunter2"), "the password must not be echoed");
    }

    #[test]
    fn replicas_and_peer_lists() {
        let c = Config::from_env(&Env::default()).unwrap();
        assert_eq!(c.peers.audio, crate::peers::PeerTarget::parse_list("http://127.0.0.1:50051").unwrap());
        assert_eq!(c.peers.resolve_interval, Duration::from_secs(5));
        assert_eq!(c.replica.lease, Duration::from_secs(15));
        assert_eq!(c.replica.drain_timeout, Duration::from_secs(300));
        assert!(c.replica.id.ends_with(&format!("-{}", std::process::id())), "{}", c.replica.id);
        let c = Config::from_env(&Env::from_pairs([
            ("AUDIO_PROCESSOR_URL", "http://audio-processor:50051,http://10.0.0.7:50051"),
            ("PEER_RESOLVE_INTERVAL_SECONDS", "0.5"),
            ("REPLICA_ID", "call-api-7d9f-x2"),
            ("LIVE_LEASE_SECONDS", "30"),
            ("LIVE_DRAIN_TIMEOUT_SECONDS", "3300"),
        ]))
        .unwrap();
        assert_eq!(c.peers.audio.len(), 2);
        assert_eq!(c.peers.resolve_interval, Duration::from_millis(500));
        assert_eq!(c.replica.id, "call-api-7d9f-x2");
        assert_eq!(c.replica.lease, Duration::from_secs(30));
        assert_eq!(c.replica.drain_timeout, Duration::from_secs(3300));
        for (name, bad) in [
            ("AUDIO_PROCESSOR_URL", "http://a:1,"),
            ("PROVIDER_GATEWAY_URL", "https://gateway:50052"),
            ("PEER_RESOLVE_INTERVAL_SECONDS", "0.01"),
            ("REPLICA_ID", "two words"),
            ("LIVE_LEASE_SECONDS", "0.2"),
            ("LIVE_DRAIN_TIMEOUT_SECONDS", "soon"),
        ] {
            assert_eq!(bad_variables(&[(name, bad)]), [name], "{name}={bad}");
        }
    }

    #[test]
    fn admin_address_and_turn_objective() {
        let c = Config::from_env(&Env::default()).unwrap();
        assert_eq!((c.admin_addr, c.turn_slo_seconds), (None, 1.5));
        assert_eq!(c.database.probe_interval, Duration::from_secs(5));
        let c = Config::from_env(&Env::from_pairs([
            ("CALL_API_ADMIN_ADDR", "127.0.0.1:9090"),
            ("LIVE_TURN_SLO_SECONDS", "1.2"),
            ("DATABASE_PROBE_INTERVAL_SECONDS", "0.2"),
        ]))
        .unwrap();
        assert_eq!(c.admin_addr, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.turn_slo_seconds, 1.2);
        assert_eq!(c.database.probe_interval, Duration::from_millis(200));
        assert_eq!(Config::from_env(&Env::from_pairs([("CALL_API_ADMIN_ADDR", "")])).unwrap().admin_addr, None);
        for (name, bad) in [
            ("CALL_API_ADMIN_ADDR", "localhost"),
            ("CALL_API_ADMIN_ADDR", "0.0.0.0:8000"),
            ("LIVE_TURN_SLO_SECONDS", "0"),
            ("LIVE_TURN_SLO_SECONDS", "-1"),
            ("LIVE_TURN_SLO_SECONDS", "61"),
            ("LIVE_TURN_SLO_SECONDS", "NaN"),
            ("LIVE_TURN_SLO_SECONDS", "inf"),
            ("LIVE_TURN_SLO_SECONDS", "fast"),
            ("DATABASE_PROBE_INTERVAL_SECONDS", "0.01"),
            ("DATABASE_PROBE_INTERVAL_SECONDS", "often"),
        ] {
            assert_eq!(bad_variables(&[(name, bad)]), [name], "{name}={bad}");
        }
    }

    const SID: &str = "AC0123456789abcdef0123456789ABCDEF";

    #[test]
    fn twilio_is_off_without_credentials_and_on_with_both() {
        let c = Config::from_env(&Env::default()).unwrap();
        assert!(c.twilio.is_none());
        let c =
            Config::from_env(&Env::from_pairs([("TWILIO_ACCOUNT_SID", SID), ("TWILIO_AUTH_TOKEN", "s3cret")])).unwrap();
        let t = c.twilio.expect("configured");
        assert_eq!(t.account_sid, SID);
        assert_eq!(t.auth_token.expose(), "s3cret");
        assert_eq!(t.api_base_url, "https://api.twilio.com");
        assert_eq!(t.tenant, "default");
        let c = Config::from_env(&Env::from_pairs([
            ("TWILIO_ACCOUNT_SID", SID),
            ("TWILIO_AUTH_TOKEN", "s3cret"),
            ("TWILIO_API_BASE_URL", "http://127.0.0.1:9999/"),
            ("TWILIO_TENANT", "acme"),
        ]))
        .unwrap();
        let t = c.twilio.expect("configured");
        assert_eq!(t.api_base_url, "http://127.0.0.1:9999");
        assert_eq!(t.tenant, "acme");
    }

    #[test]
    fn turn_bounds_default_and_are_checked() {
        let t = Config::from_env(&Env::default()).unwrap().live.turn;
        assert_eq!(
            (t.transcribe_timeout, t.reply_timeout, t.speech_timeout, t.max_tokens),
            (Duration::from_secs(15), Duration::from_secs(30), Duration::from_secs(30), 300)
        );
        let c = Config::from_env(&Env::from_pairs([
            ("LIVE_TRANSCRIBE_TIMEOUT_SECONDS", "5"),
            ("LIVE_REPLY_TIMEOUT_SECONDS", "12.5"),
            ("LIVE_SPEECH_TIMEOUT_SECONDS", "8"),
            ("LIVE_MAX_TOKENS", "120"),
        ]))
        .unwrap();
        assert_eq!(c.live.turn.transcribe_timeout, Duration::from_secs(5));
        assert_eq!(c.live.turn.reply_timeout, Duration::from_millis(12_500));
        assert_eq!(c.live.turn.speech_timeout, Duration::from_secs(8));
        assert_eq!(c.live.turn.max_tokens, 120);
        for (name, bad) in [
            ("LIVE_TRANSCRIBE_TIMEOUT_SECONDS", "0.5"),
            ("LIVE_REPLY_TIMEOUT_SECONDS", "soon"),
            ("LIVE_SPEECH_TIMEOUT_SECONDS", "601"),
            ("LIVE_MAX_TOKENS", "0"),
        ] {
            assert_eq!(bad_variables(&[(name, bad)]), [name], "{name}={bad}");
        }
    }

    #[test]
    fn greeting_is_optional_trimmed_and_bounded() {
        assert_eq!(Config::from_env(&Env::default()).unwrap().live.greeting, None);
        let c = Config::from_env(&Env::from_pairs([("LIVE_GREETING", "  Hello.  ")])).unwrap();
        assert_eq!(c.live.greeting.as_deref(), Some("Hello."));
        assert_eq!(Config::from_env(&Env::from_pairs([("LIVE_GREETING", " ")])).unwrap().live.greeting, None);
        let long = "a".repeat(crate::media::config::MAX_GREETING_BYTES + 1);
        assert_eq!(bad_variables(&[("LIVE_GREETING", long.as_str())]), ["LIVE_GREETING"]);
    }

    #[test]
    fn the_fallback_line_has_a_default_and_an_empty_value_turns_it_off() {
        let fallback = |pairs: &[(&str, &str)]| {
            Config::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap().live.fallback.map(|f| f.to_string())
        };
        assert_eq!(fallback(&[]).as_deref(), Some(crate::media::DEFAULT_FALLBACK_TEXT));
        assert_eq!(fallback(&[("LIVE_FALLBACK_TEXT", "")]), None);
        assert_eq!(fallback(&[("LIVE_FALLBACK_TEXT", "  ")]), None);
        assert_eq!(fallback(&[("LIVE_FALLBACK_TEXT", " One moment. ")]).as_deref(), Some("One moment."));
        let long = "a".repeat(crate::media::config::MAX_GREETING_BYTES + 1);
        assert_eq!(bad_variables(&[("LIVE_FALLBACK_TEXT", long.as_str())]), ["LIVE_FALLBACK_TEXT"]);
    }

    #[test]
    fn each_bad_twilio_variable_is_named_once() {
        assert_eq!(bad_variables(&[("TWILIO_ACCOUNT_SID", SID)]), ["TWILIO_AUTH_TOKEN"]);
        assert_eq!(bad_variables(&[("TWILIO_AUTH_TOKEN", "s3cret")]), ["TWILIO_ACCOUNT_SID"]);
        for bad in ["AC123", "XX0123456789abcdef0123456789abcdef", "AC0123456789abcdef0123456789abcdeg"] {
            assert_eq!(
                bad_variables(&[("TWILIO_ACCOUNT_SID", bad), ("TWILIO_AUTH_TOKEN", "s3cret")]),
                ["TWILIO_ACCOUNT_SID"],
                "{bad}"
            );
        }
        assert_eq!(
            bad_variables(&[("TWILIO_ACCOUNT_SID", SID), ("TWILIO_AUTH_TOKEN", "two words")]),
            ["TWILIO_AUTH_TOKEN"]
        );
        assert_eq!(bad_variables(&[("TWILIO_API_BASE_URL", "ftp://api.twilio.com")]), ["TWILIO_API_BASE_URL"]);
        assert_eq!(bad_variables(&[("TWILIO_TENANT", "a b")]), ["TWILIO_TENANT"]);
        let errors = Config::from_env(&Env::from_pairs([("TWILIO_ACCOUNT_SID", "ACsecret-token-here")])).unwrap_err();
        assert!(!format!("{errors}").contains("secret-token-here"), "the value is not echoed: {errors}");
    }
}
