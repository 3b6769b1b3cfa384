//! call-api configuration, read once at start from the environment.

use std::{net::SocketAddr, time::Duration};

use telemetry::{ConfigErrors, Env, Reader, Secret, TelemetryConfig};

use crate::auth::ApiKeys;

/// Everything call-api reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CALL_API_ADDR`: API, health, readiness and metrics; default `0.0.0.0:8000`.
    pub addr: SocketAddr,
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
    pub telemetry: TelemetryConfig,
}

/// Live calls on the media WebSocket.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// `LIVE_SYSTEM_PROMPT`: the agent's instructions, unless the call's metadata has a
    /// `system_prompt` string.
    pub system_prompt: String,
    /// `LIVE_LANGUAGE`: language hint for transcription (BCP-47), detected when unset.
    pub language: Option<String>,
    /// `LIVE_BARGE_IN_SECONDS`: how long the caller must keep talking over the agent (after the
    /// detector's minimum speech) before the agent stops; shorter sounds are ignored. Default 0.3.
    pub barge_in: Duration,
    /// `LIVE_GREETING`: what the agent says as soon as a live call's media starts, before the
    /// caller speaks; unset, the agent waits for the caller. A call's `metadata.greeting` string
    /// overrides it (an empty one turns it off for that call).
    pub greeting: Option<String>,
    /// `LIVE_END_OF_TURN_SECONDS`: silence after the caller's speech that ends their turn,
    /// default 0.7. Shorter answers sooner but cuts callers who pause mid-sentence.
    pub end_of_turn: Duration,
}

/// Longest greeting, in bytes (a few sentences).
pub const MAX_GREETING_BYTES: usize = 1024;

/// The agent's default instructions.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are the voice agent of a company on a phone call. Answer briefly \
     and clearly, in one or two short sentences, without lists or formatting, as you would speak.";

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            language: None,
            barge_in: Duration::from_millis(300),
            greeting: None,
            end_of_turn: Duration::from_millis(700),
        }
    }
}

impl LiveConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let d = Self::default();
        let system_prompt = r.string("LIVE_SYSTEM_PROMPT").map(|p| p.trim().to_string()).filter(|p| !p.is_empty());
        if system_prompt.as_ref().is_some_and(|p| p.len() > 16 * 1024) {
            r.error("LIVE_SYSTEM_PROMPT", "must be at most 16 KiB");
        }
        let language = r.string("LIVE_LANGUAGE").map(|l| l.trim().to_string()).filter(|l| !l.is_empty());
        if language.as_ref().is_some_and(|l| l.len() > 35 || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            r.error("LIVE_LANGUAGE", "must be a BCP-47 tag such as en or en-US");
        }
        let barge_in = r.seconds_or("LIVE_BARGE_IN_SECONDS", d.barge_in, 5.0);
        let greeting = r.string("LIVE_GREETING").map(|g| g.trim().to_string()).filter(|g| !g.is_empty());
        if greeting.as_ref().is_some_and(|g| g.len() > MAX_GREETING_BYTES) {
            r.error("LIVE_GREETING", "must be at most 1 KiB");
        }
        let end_of_turn = r.seconds_or("LIVE_END_OF_TURN_SECONDS", d.end_of_turn, 10.0);
        if end_of_turn < Duration::from_millis(100) {
            r.error("LIVE_END_OF_TURN_SECONDS", "must be at least 0.1 seconds");
        }
        Self { system_prompt: system_prompt.unwrap_or(d.system_prompt), language, barge_in, greeting, end_of_turn }
    }
}

/// What one client may send and how fast: the API's limits (each rejection is counted in
/// `api_requests_limited_total{limit}`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `HTTP_JSON_MAX_BYTES`: largest JSON request body (413 beyond), default 64 KiB. Recordings
    /// have their own `RECORDING_MAX_BYTES`.
    pub json_max_bytes: usize,
    /// `HTTP_HEADER_MAX_BYTES`: request line plus headers (431 beyond), default 16 KiB.
    pub header_max_bytes: usize,
    /// `HTTP_HEADER_TIMEOUT_SECONDS`: time to send a request's headers, and the longest an idle
    /// keep-alive connection stays open, default 10.
    pub header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_SECONDS`: a JSON body must arrive whole within this, and a recording
    /// upload may not pause longer than this between bytes (408 otherwise), default 30.
    pub body_timeout: Duration,
    /// `API_RATE_LIMIT_PER_SECOND`: sustained requests per second per API key on this replica
    /// (429 with `Retry-After` beyond), default 50; `0` turns rate limiting off.
    pub rate_per_second: f64,
    /// `API_RATE_LIMIT_BURST`: requests a key may make at once above the sustained rate,
    /// default 100.
    pub rate_burst: u32,
    /// `LIVE_MAX_CALLS`: live calls this replica carries at once; one more is refused (503 on
    /// the media WebSocket, a busy signal for Twilio) instead of slowing every call, default 100.
    pub live_max_calls: usize,
    /// `MEDIA_WS_MAX_MESSAGE_BYTES`: largest media WebSocket message (the call ends, close 1008,
    /// beyond),
    /// default 64 KiB; a carrier's `media` message is about 300 bytes.
    pub ws_max_message_bytes: usize,
    /// `MEDIA_IDLE_TIMEOUT_SECONDS`: a live call whose carrier sends nothing for this long ends
    /// (`failed`, reason `media idle`), freeing its slot, default 30 (carriers send a frame
    /// every 20 ms).
    pub media_idle_timeout: Duration,
    /// `MEDIA_UNAUTHENTICATED_PER_IP`: media WebSockets without a URL token that one client
    /// address may hold while they prove their token in `start` (5 s at most each), default 32;
    /// a carrier's media servers connect many calls from one address, each proving at once.
    pub media_unauthenticated_per_ip: usize,
    /// `HTTP_MAX_CONNECTIONS`: connections this replica serves at once; one more is closed at
    /// accept (counted as `connections`), default 10000. Upgraded media WebSockets are not
    /// counted (`LIVE_MAX_CALLS` bounds them).
    pub max_connections: usize,
    /// `CORS_ALLOWED_ORIGINS`: comma-separated origins browsers may call the API from (exact
    /// `scheme://host[:port]`); unset, no CORS headers are sent and browsers refuse cross-origin
    /// calls.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            json_max_bytes: 64 * 1024,
            header_max_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            rate_per_second: 50.0,
            rate_burst: 100,
            live_max_calls: 100,
            ws_max_message_bytes: 64 * 1024,
            media_idle_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            media_unauthenticated_per_ip: 32,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl LimitsConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let d = Self::default();
        let json_max_bytes = r.positive_or("HTTP_JSON_MAX_BYTES", d.json_max_bytes, 16 << 20);
        let header_max_bytes = r.positive_or("HTTP_HEADER_MAX_BYTES", d.header_max_bytes, 1 << 20);
        if header_max_bytes < 1024 {
            r.error("HTTP_HEADER_MAX_BYTES", "must be at least 1024");
        }
        let header_timeout = r.seconds_or("HTTP_HEADER_TIMEOUT_SECONDS", d.header_timeout, 3600.0);
        let body_timeout = r.seconds_or("HTTP_BODY_TIMEOUT_SECONDS", d.body_timeout, 3600.0);
        for (name, value) in
            [("HTTP_HEADER_TIMEOUT_SECONDS", header_timeout), ("HTTP_BODY_TIMEOUT_SECONDS", body_timeout)]
        {
            if value < Duration::from_millis(100) {
                r.error(name, "must be at least 0.1 seconds");
            }
        }
        let rate_per_second = r.f64_in("API_RATE_LIMIT_PER_SECOND", d.rate_per_second, 0.0, 1_000_000.0);
        let rate_burst = r.positive_or("API_RATE_LIMIT_BURST", d.rate_burst as usize, 1_000_000) as u32;
        let live_max_calls = r.positive_or("LIVE_MAX_CALLS", d.live_max_calls, 100_000);
        let ws_max_message_bytes = r.positive_or("MEDIA_WS_MAX_MESSAGE_BYTES", d.ws_max_message_bytes, 16 << 20);
        if ws_max_message_bytes < 1024 {
            r.error("MEDIA_WS_MAX_MESSAGE_BYTES", "must be at least 1024");
        }
        let media_idle_timeout = r.seconds_or("MEDIA_IDLE_TIMEOUT_SECONDS", d.media_idle_timeout, 3600.0);
        if media_idle_timeout < Duration::from_secs(1) {
            r.error("MEDIA_IDLE_TIMEOUT_SECONDS", "must be at least 1 second");
        }
        let max_connections = r.positive_or("HTTP_MAX_CONNECTIONS", d.max_connections, 1_000_000);
        let media_unauthenticated_per_ip =
            r.positive_or("MEDIA_UNAUTHENTICATED_PER_IP", d.media_unauthenticated_per_ip, 100_000);
        let mut cors_allowed_origins = Vec::new();
        for origin in r.string("CORS_ALLOWED_ORIGINS").unwrap_or_default().split(',').map(str::trim) {
            if origin.is_empty() {
                continue;
            }
            let valid = telemetry::config::check_url(origin, &["http", "https"]).is_ok()
                && !origin.trim_start_matches("https://").trim_start_matches("http://").contains('/')
                && axum::http::HeaderValue::from_str(origin).is_ok();
            if valid {
                cors_allowed_origins.push(origin.to_string());
            } else {
                r.error("CORS_ALLOWED_ORIGINS", format!("{origin:?} is not an origin such as https://app.example.com"));
            }
        }
        Self {
            json_max_bytes,
            header_max_bytes,
            header_timeout,
            body_timeout,
            rate_per_second,
            rate_burst,
            live_max_calls,
            ws_max_message_bytes,
            media_idle_timeout,
            max_connections,
            media_unauthenticated_per_ip,
            cors_allowed_origins,
        }
    }
}

/// Recording uploads and their analysis.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// `RECORDING_MAX_BYTES`: largest recording body accepted (413 beyond), default 64 MiB.
    pub max_bytes: u64,
    /// `RECORDING_ANALYSIS_TIMEOUT_SECONDS`: the whole pipeline's bound (upload, audio analysis,
    /// transcription, sentiment), default 600; an attempt older than this is abandoned.
    pub analysis_timeout: Duration,
    /// `RECORDING_TRANSCRIBE_CONCURRENCY`: transcription requests of one recording in flight at
    /// once, default 4.
    pub transcribe_concurrency: usize,
    /// `RECORDING_SPOOL_DIR`: where an upload is received whole before it is analysed (so that a
    /// slow client holds no analysis capacity), default the system's temporary directory. Needs
    /// `RECORDING_MAX_BYTES` × `RECORDING_MAX_UPLOADS` of space.
    pub spool_dir: std::path::PathBuf,
    /// `RECORDING_MAX_UPLOADS`: uploads this replica receives at once, default 16 (one more: 503
    /// with `Retry-After`).
    pub max_uploads: usize,
    /// `RECORDING_MAX_UPLOADS_PER_TENANT`: uploads one tenant may have in progress on this
    /// replica at once, default 4 (one more: 429 with `Retry-After`).
    pub max_uploads_per_tenant: usize,
    /// `RECORDING_MAX_CONCURRENT_ANALYSES`: spooled uploads this replica analyses at once,
    /// default 2. Each holds its speech audio (up to four times the recording) in memory until
    /// its transcription ends, so this and `RECORDING_MAX_BYTES` size the memory limit; the
    /// others wait on disk, within `RECORDING_ANALYSIS_TIMEOUT_SECONDS`.
    pub max_concurrent_analyses: usize,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            analysis_timeout: Duration::from_secs(600),
            transcribe_concurrency: 4,
            spool_dir: std::env::temp_dir(),
            max_uploads: 16,
            max_uploads_per_tenant: 4,
            max_concurrent_analyses: 2,
        }
    }
}

impl RecordingConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let d = Self::default();
        let max_bytes = r.positive_or("RECORDING_MAX_BYTES", d.max_bytes as usize, 1 << 30) as u64;
        let analysis_timeout = r.seconds_or("RECORDING_ANALYSIS_TIMEOUT_SECONDS", d.analysis_timeout, 86_400.0);
        if analysis_timeout < Duration::from_secs(1) {
            r.error("RECORDING_ANALYSIS_TIMEOUT_SECONDS", "must be at least 1 second");
        }
        let transcribe_concurrency = r.positive_or("RECORDING_TRANSCRIBE_CONCURRENCY", d.transcribe_concurrency, 64);
        let spool_dir = r.string("RECORDING_SPOOL_DIR").map(std::path::PathBuf::from).unwrap_or(d.spool_dir);
        if !spool_dir.is_dir() {
            r.error("RECORDING_SPOOL_DIR", "must be an existing directory");
        }
        let max_uploads = r.positive_or("RECORDING_MAX_UPLOADS", d.max_uploads, 10_000);
        let max_uploads_per_tenant =
            r.positive_or("RECORDING_MAX_UPLOADS_PER_TENANT", d.max_uploads_per_tenant, 10_000);
        let max_concurrent_analyses =
            r.positive_or("RECORDING_MAX_CONCURRENT_ANALYSES", d.max_concurrent_analyses, 1_000);
        Self {
            max_bytes,
            analysis_timeout,
            transcribe_concurrency,
            spool_dir,
            max_uploads,
            max_uploads_per_tenant,
            max_concurrent_analyses,
        }
    }
}

/// Where the call records live and how the pool behaves.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`: `sqlite://path` (created if missing) or `postgres://…`; default
    /// `sqlite://voice-kraliki.db`. A secret: it may carry a password.
    pub url: Secret,
    /// `DATABASE_MAX_CONNECTIONS`: pool size, default 10.
    pub max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT_SECONDS`: how long a request waits for a connection before it
    /// answers 503, default 2.
    pub acquire_timeout: Duration,
    /// `DATABASE_STATEMENT_TIMEOUT_SECONDS`: longest statement (PostgreSQL `statement_timeout`,
    /// SQLite busy timeout), default 5.
    pub statement_timeout: Duration,
}

impl DatabaseConfig {
    /// `sqlite://…` (or `sqlite:…`) vs `postgres://…`/`postgresql://…`.
    pub fn is_postgres(&self) -> bool {
        is_postgres_url(self.url.expose())
    }

    /// A configuration for `url` with the default pool settings (tests, tools).
    pub fn with_url(url: &str) -> Self {
        Self {
            url: Secret::new(url),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
        }
    }

    fn read(r: &mut Reader<'_>) -> Self {
        let url = r.secret("DATABASE_URL").unwrap_or_else(|| Secret::new("sqlite://voice-kraliki.db"));
        let url = match crate::db::check_url(url.expose()) {
            Ok(()) => url,
            Err(message) => {
                // The URL may hold a password: the message never repeats it.
                r.error("DATABASE_URL", message);
                Secret::new("sqlite://voice-kraliki.db")
            }
        };
        let max_connections = r.positive_or("DATABASE_MAX_CONNECTIONS", 10, 1000) as u32;
        let acquire_timeout = r.seconds_or("DATABASE_ACQUIRE_TIMEOUT_SECONDS", Duration::from_secs(2), 300.0);
        let statement_timeout = r.seconds_or("DATABASE_STATEMENT_TIMEOUT_SECONDS", Duration::from_secs(5), 3600.0);
        if acquire_timeout.is_zero() {
            r.error("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "must be more than 0 seconds");
        }
        if statement_timeout.is_zero() {
            r.error("DATABASE_STATEMENT_TIMEOUT_SECONDS", "must be more than 0 seconds");
        }
        Self { url, max_connections, acquire_timeout, statement_timeout }
    }
}

pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let telemetry = TelemetryConfig::read(&mut r);
        let addr = r.addr_or("CALL_API_ADDR", "0.0.0.0:8000");
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
        r.errors.into_result(Self {
            addr,
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
            telemetry,
        })
    }
}

// ---- Twilio (carrier) -----------------------------------------------------------------------

/// The Twilio carrier integration: outbound dialling through the Calls REST API and the
/// `/v1/twilio/*` webhooks. Present only when both credentials are set.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    /// `TWILIO_ACCOUNT_SID`: `AC` followed by 32 hexadecimal characters.
    pub account_sid: String,
    /// `TWILIO_AUTH_TOKEN`: signs the webhooks (`X-Twilio-Signature`) and authenticates calls to
    /// the REST API.
    pub auth_token: Secret,
    /// `TWILIO_API_BASE_URL`: the REST API, default `https://api.twilio.com`.
    pub api_base_url: String,
    /// `TWILIO_TENANT`: the tenant that calls created by Twilio's inbound webhook belong to,
    /// default `default` (the tenant of API keys configured without one).
    pub tenant: String,
}

impl TwilioConfig {
    pub const DEFAULT_API_BASE_URL: &'static str = "https://api.twilio.com";

    /// Whether `sid` is a Twilio account SID: `AC` and 32 hexadecimal characters.
    pub fn is_account_sid(sid: &str) -> bool {
        sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
    }

    fn read(r: &mut Reader<'_>) -> Option<Self> {
        // Every name is read even when Twilio is off, so deployments may set them all.
        let sid = r.string("TWILIO_ACCOUNT_SID");
        let token = r.secret("TWILIO_AUTH_TOKEN");
        let api_base_url = r.url_or("TWILIO_API_BASE_URL", Self::DEFAULT_API_BASE_URL, &["http", "https"]);
        let tenant = r.string_or("TWILIO_TENANT", crate::auth::DEFAULT_TENANT);
        if tenant.is_empty() || !tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            r.error("TWILIO_TENANT", "must be letters, digits, - and _ only");
        }
        // The SID is not echoed: a token pasted into the wrong variable must not reach the log.
        if let Some(sid) = &sid
            && !Self::is_account_sid(sid)
        {
            r.error("TWILIO_ACCOUNT_SID", "must be AC followed by 32 hexadecimal characters (an account SID)");
        }
        match (sid, token) {
            (None, None) => None,
            (Some(_), None) => {
                r.error("TWILIO_AUTH_TOKEN", "must be set when TWILIO_ACCOUNT_SID is set");
                None
            }
            (None, Some(_)) => {
                r.error("TWILIO_ACCOUNT_SID", "must be set when TWILIO_AUTH_TOKEN is set");
                None
            }
            (Some(account_sid), Some(auth_token)) => {
                if auth_token.expose().chars().any(char::is_whitespace) {
                    r.error("TWILIO_AUTH_TOKEN", "must not contain whitespace");
                }
                Some(Self { account_sid, auth_token, api_base_url, tenant })
            }
        }
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
    fn greeting_is_optional_trimmed_and_bounded() {
        assert_eq!(Config::from_env(&Env::default()).unwrap().live.greeting, None);
        let c = Config::from_env(&Env::from_pairs([("LIVE_GREETING", "  Hello.  ")])).unwrap();
        assert_eq!(c.live.greeting.as_deref(), Some("Hello."));
        assert_eq!(Config::from_env(&Env::from_pairs([("LIVE_GREETING", " ")])).unwrap().live.greeting, None);
        let long = "a".repeat(MAX_GREETING_BYTES + 1);
        assert_eq!(bad_variables(&[("LIVE_GREETING", long.as_str())]), ["LIVE_GREETING"]);
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
