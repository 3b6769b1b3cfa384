//! Database settings (`DATABASE_*`).

use std::{str::FromStr as _, time::Duration};

use sqlx::{postgres::PgConnectOptions, sqlite::SqliteConnectOptions};
use telemetry::{Reader, Secret};

/// Where the call records live and how the pool behaves.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`: `sqlite://path` (created if missing) or `postgres://…`; default
    /// `sqlite://voice-kraliki.db`. A secret: it may carry a password.
    pub url: Secret,
    /// Which database `url` names, parsed from it once.
    pub backend: Backend,
    /// `DATABASE_MAX_CONNECTIONS`: pool size, default 10.
    pub max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT_SECONDS`: how long a request waits for a connection before it
    /// answers 503, default 2.
    pub acquire_timeout: Duration,
    /// `DATABASE_STATEMENT_TIMEOUT_SECONDS`: longest statement (PostgreSQL `statement_timeout`,
    /// SQLite busy timeout), default 5.
    pub statement_timeout: Duration,
    /// `DATABASE_PROBE_INTERVAL_SECONDS`: how often a background `SELECT 1` keeps `db_up`
    /// current, default 5 (0.1 to 3600).
    pub probe_interval: Duration,
    /// How long an embedded SQLite connection is kept before it is closed and, when needed,
    /// opened again (not a variable): 30 s. Each holds its own page cache, prepared statements
    /// and, on its own thread, a malloc arena (about 0.7 MiB in all). A burst opens the whole
    /// pool, and the pool hands its connections out in turn, so without a lifetime none is ever
    /// idle long enough to close and the burst's memory stays.
    pub sqlite_connection_lifetime: Duration,
}

/// See [`DatabaseConfig::sqlite_connection_lifetime`]: reopening a SQLite connection is a file
/// open and a few pragmas.
const SQLITE_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

impl DatabaseConfig {
    /// `sqlite://…` (or `sqlite:…`) vs `postgres://…`/`postgresql://…`.
    pub fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// A configuration for `url` with the default pool settings (tests, tools).
    ///
    /// # Panics
    /// When `url` is not a valid `DATABASE_URL`.
    pub fn with_url(url: &str) -> Self {
        Self {
            backend: Backend::of_url(url).expect("a valid database URL"),
            url: Secret::new(url),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(5),
            sqlite_connection_lifetime: SQLITE_CONNECTION_LIFETIME,
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Self {
        let url = r.secret("DATABASE_URL").unwrap_or_else(|| Secret::new("sqlite://voice-kraliki.db"));
        let (url, backend) = match Backend::of_url(url.expose()) {
            Ok(backend) => (url, backend),
            Err(message) => {
                // The URL may hold a password: the message never repeats it.
                r.error("DATABASE_URL", message);
                (Secret::new("sqlite://voice-kraliki.db"), Backend::Sqlite)
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
        let probe_interval = r.seconds_or("DATABASE_PROBE_INTERVAL_SECONDS", Duration::from_secs(5), 3600.0);
        if probe_interval < Duration::from_millis(100) {
            r.error("DATABASE_PROBE_INTERVAL_SECONDS", "must be at least 0.1 seconds");
        }
        Self {
            url,
            backend,
            max_connections,
            acquire_timeout,
            statement_timeout,
            probe_interval,
            sqlite_connection_lifetime: SQLITE_CONNECTION_LIFETIME,
        }
    }
}

/// The database a `DATABASE_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Parses `DATABASE_URL` (`sqlite:…`, `postgres://…`, `postgresql://…`) without echoing it:
    /// it may hold a password.
    pub fn of_url(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            PgConnectOptions::from_str(url).map_err(|_| "is not a valid PostgreSQL URL".to_string())?;
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url).map_err(|_| "is not a valid SQLite URL".to_string())?;
            Ok(Self::Sqlite)
        } else {
            Err("must start with sqlite:// or postgres://".to_string())
        }
    }
}
