//! The database: one pool on SQLite (default) or PostgreSQL, embedded migrations, and the
//! instrumentation every statement goes through (a `db.query` client span, latency histogram,
//! pool gauges, error classification).
//!
//! The queries are written once (`$n` placeholders work on both engines) and compiled against
//! each driver by [`with_pool!`], so the native types (UUID, TIMESTAMPTZ, JSONB on PostgreSQL)
//! are used without the `Any` driver's value conversions.
//!
//! A limit that is a parameter is written `LIMIT CAST($n AS INTEGER)`, never `LIMIT $n`: SQLite
//! plans a bare bound limit with its value, so the statement is compiled again every time it
//! runs (the event dispatcher's rounds spent more instructions compiling than running); behind a
//! cast the limit is read at run time and the cached statement is reused.
//!
//! Migrations are embedded SQL files (`migrations/{sqlite,postgres}/`), one set per engine, run
//! by sqlx's own migrator (`Migrator::with_migrations`) at start. That keeps sqlx's `macros`
//! feature off (it would compile both drivers twice) while keeping sqlx's migration table,
//! checksums and PostgreSQL advisory lock, so replicas starting together migrate once.

pub mod analysis;
pub mod calls;
pub mod config;
pub mod events;
pub mod leases;
pub mod notices;
pub mod turns;

use std::{borrow::Cow, future::Future, str::FromStr, sync::Arc, time::Instant};

use sqlx::{
    SqlSafeStr,
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};
use tracing::{Instrument, field::Empty};

pub use config::{Backend, DatabaseConfig};

use crate::metrics;

/// The pool of either engine.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool; the body is compiled once per engine.
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.pool {
            $crate::db::Pool::Sqlite($pool) => $body,
            $crate::db::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Handle on the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Database {
    pub(crate) pool: Pool,
    max_connections: u32,
    /// PostgreSQL: how to open a connection outside the pool (the call-command listener holds
    /// one for as long as it runs, which must not cost the requests a pooled connection).
    pub(crate) dedicated: Option<PgConnectOptions>,
    /// Told after each commit of events on this replica (and, on PostgreSQL, of a `NOTIFY` of
    /// events committed on any replica): wakes the webhook worker.
    events: Arc<tokio::sync::watch::Sender<()>>,
}

/// A failed database operation, classified for the client: the database being unreachable
/// (503, retry later) or anything else (500).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database statement failed: {0}")]
    Query(#[source] sqlx::Error),
    #[error("apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Query(_) | Self::Migrate(_) => "query",
        }
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) { Self::Unavailable(e) } else { Self::Query(e) }
    }
}

/// Connection-level failures: the pool could not hand out a working connection in time, or the
/// connection broke, or the server refuses work for now. Statement errors are not among them.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exceptions (08…), shutdown/cannot connect now (57P0…),
            // too many connections; SQLite: busy (5) and locked (6).
            code.starts_with("08") || code.starts_with("57P0") || code == "53300" || code == "5" || code == "6"
        }
        _ => false,
    }
}

fn migrations(postgres: bool) -> Migrator {
    let files: Vec<(i64, &str, &'static str)> = if postgres {
        vec![
            (1, "calls", include_str!("migrations/postgres/0001_calls.sql")),
            (2, "analysis attempts", include_str!("migrations/postgres/0002_analysis_attempts.sql")),
            (3, "carrier call id", include_str!("migrations/postgres/0003_carrier_call_id.sql")),
            (4, "live calls", include_str!("migrations/postgres/0004_live_calls.sql")),
            (5, "leases", include_str!("migrations/postgres/0005_leases.sql")),
            (6, "analysis body", include_str!("migrations/postgres/0006_analysis_body.sql")),
            (7, "turn outcomes", include_str!("migrations/postgres/0007_turn_outcomes.sql")),
            (8, "call quality", include_str!("migrations/postgres/0008_call_quality.sql")),
            (9, "call cost", include_str!("migrations/postgres/0009_call_cost.sql")),
            (10, "events", include_str!("migrations/postgres/0010_events.sql")),
            (11, "events notify", include_str!("migrations/postgres/0011_events_notify.sql")),
        ]
    } else {
        vec![
            (1, "calls", include_str!("migrations/sqlite/0001_calls.sql")),
            (2, "analysis attempts", include_str!("migrations/sqlite/0002_analysis_attempts.sql")),
            (3, "carrier call id", include_str!("migrations/sqlite/0003_carrier_call_id.sql")),
            (4, "live calls", include_str!("migrations/sqlite/0004_live_calls.sql")),
            (5, "leases", include_str!("migrations/sqlite/0005_leases.sql")),
            (6, "analysis body", include_str!("migrations/sqlite/0006_analysis_body.sql")),
            (7, "turn outcomes", include_str!("migrations/sqlite/0007_turn_outcomes.sql")),
            (8, "call quality", include_str!("migrations/sqlite/0008_call_quality.sql")),
            (9, "call cost", include_str!("migrations/sqlite/0009_call_cost.sql")),
            (10, "events", include_str!("migrations/sqlite/0010_events.sql")),
            (11, "events notify", include_str!("migrations/sqlite/0011_events_notify.sql")),
        ]
    };
    Migrator::with_migrations(
        files
            .into_iter()
            .map(|(version, name, sql)| {
                Migration::new(version, Cow::Borrowed(name), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

impl Database {
    /// Opens the pool (one connection up front, so a wrong URL fails at start) and applies the
    /// migrations.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbError> {
        let url = config.url.expose();
        let mut dedicated = None;
        let pool = if config.is_postgres() {
            let timeout_ms = config.statement_timeout.as_millis().to_string();
            let options = PgConnectOptions::from_str(url)?
                .application_name("call-api")
                .options([("statement_timeout", timeout_ms.as_str())]);
            dedicated = Some(options.clone().application_name("call-api-listener"));
            Pool::Postgres(
                pool_options()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.acquire_timeout)
                    .connect_with(options)
                    .await?,
            )
        } else {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(config.statement_timeout);
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(config.max_connections)
                    // An embedded connection cannot be lost as a network one can; its check before
                    // each acquire is a round trip to the connection's thread (two thread
                    // wake-ups) that finds nothing.
                    .test_before_acquire(false)
                    .acquire_timeout(config.acquire_timeout)
                    .max_lifetime(config.sqlite_connection_lifetime)
                    .connect_with(options)
                    .await?,
            )
        };
        let events = Arc::new(tokio::sync::watch::Sender::new(()));
        let db = Self { pool, max_connections: config.max_connections, dedicated, events };
        db.migrate().await?;
        db.record_pool();
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let started = Instant::now();
        let result = with_pool!(self, pool => migrations(matches!(self.pool, Pool::Postgres(_))).run(pool).await);
        metrics::db_query("migrate", started.elapsed(), result.as_ref().err().map(|_| "query"));
        Ok(result?)
    }

    /// `sqlite` or `postgresql` (OpenTelemetry `db.system`).
    pub fn system(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgresql",
        }
    }

    /// Keeps `db_up` current whether or not anyone asks `/ready`: a [`Database::check`] every
    /// `interval` until `stop` is cancelled (at shutdown).
    pub fn spawn_probe(&self, interval: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
        let db = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    up = db.probe() => metrics::db_up(up),
                }
            }
        });
    }

    /// `SELECT 1` within 1.5 s, outside any span: a root span every few seconds would be a trace
    /// (and a Sentry transaction) of its own.
    async fn probe(&self) -> bool {
        let ping = async { with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop)) };
        let up = matches!(tokio::time::timeout(std::time::Duration::from_millis(1500), ping).await, Ok(Ok(())));
        self.record_pool();
        up
    }

    /// The readiness check: `SELECT 1` within 1.5 s; keeps `db_up` current.
    pub async fn check(&self) -> Result<(), String> {
        let ping = self.observe("ping", "SELECT 1", async {
            with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
        });
        let result = match tokio::time::timeout(std::time::Duration::from_millis(1500), ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("unreachable".to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        metrics::db_up(result.is_ok());
        result
    }

    /// Closes every connection (at shutdown).
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await);
    }

    fn record_pool(&self) {
        let (idle, size) = with_pool!(self, pool => (pool.num_idle(), pool.size()));
        metrics::db_pool(idle, size, self.max_connections);
    }

    /// Events were committed (here, or on any replica as a `NOTIFY` said): wakes whoever waits on
    /// [`Database::events_written`].
    pub(crate) fn wake_event_readers(&self) {
        self.events.send_replace(());
    }

    /// Resolves (`changed()`) after each [`Database::wake_event_readers`] from now on.
    pub(crate) fn events_written(&self) -> tokio::sync::watch::Receiver<()> {
        self.events.subscribe()
    }

    /// [`Database::observe`] for a write that stores events: a success wakes their readers.
    pub(crate) async fn observe_events<T>(
        &self,
        operation: &'static str,
        statement: &'static str,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, DbError> {
        let result = self.observe(operation, statement, query).await;
        if result.is_ok() {
            self.wake_event_readers();
        }
        result
    }

    /// Runs one statement inside a `db.query` client span and records its latency and outcome.
    pub(crate) async fn observe<T>(
        &self,
        operation: &'static str,
        statement: &'static str,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, DbError> {
        let span = tracing::info_span!(
            "db.query",
            otel.name = %format!("{operation} {}", self.system()),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system = self.system(),
            db.operation = operation,
            db.statement = statement,
            sentry.op = "db.sql.query",
            sentry.name = statement,
        );
        let started = Instant::now();
        let result = query.instrument(span.clone()).await.map_err(DbError::from);
        let error = result.as_ref().err().map(DbError::kind);
        if error.is_some() {
            span.record("otel.status_code", "ERROR");
        }
        metrics::db_query(operation, started.elapsed(), error);
        self.record_pool();
        result
    }
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .min_connections(0)
        .idle_timeout(std::time::Duration::from_secs(600))
        .max_lifetime(std::time::Duration::from_secs(1800))
        .test_before_acquire(true)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The connections a burst opened on the embedded SQLite close once their lifetime is over,
    /// while light use (the event dispatcher's, say) goes on through the pool.
    #[tokio::test]
    async fn sqlite_connections_a_burst_opened_close_after_their_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DatabaseConfig::with_url(&format!("sqlite://{}/burst.db", dir.path().display()));
        config.max_connections = 4;
        config.sqlite_connection_lifetime = Duration::from_millis(500);
        let db = Database::connect(&config).await.unwrap();
        let Pool::Sqlite(pool) = &db.pool else { unreachable!("a SQLite URL") };
        let burst = tokio::join!(pool.acquire(), pool.acquire(), pool.acquire(), pool.acquire());
        assert_eq!(pool.size(), 4, "the burst opened the whole pool");
        drop(burst);
        let deadline = Instant::now() + Duration::from_secs(20);
        while pool.size() > 1 {
            assert!(Instant::now() < deadline, "{} connections still open after 20 s", pool.size());
            sqlx::query("SELECT 1").execute(pool).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The pool still answers, on a connection of its own.
        assert_eq!(sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(pool).await.unwrap(), 1);
    }

    /// An embedded connection is handed out without a check first (a round trip to its thread
    /// per acquire); a PostgreSQL one is checked (a connection the network lost is replaced).
    #[tokio::test]
    async fn only_network_connections_are_checked_before_they_are_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect(&DatabaseConfig::with_url(&format!("sqlite://{}/c.db", dir.path().display())))
            .await
            .unwrap();
        let Pool::Sqlite(pool) = &db.pool else { unreachable!("a SQLite URL") };
        assert!(!pool.options().get_test_before_acquire());
        assert!(pool_options().get_test_before_acquire());
    }

    /// No statement binds its `LIMIT` bare (the module's header: SQLite would compile it again
    /// at every run). Read from the sources, where every statement of this module is written.
    #[test]
    fn no_statement_binds_a_bare_limit() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Built, so that this test's own text does not match.
            let patterns: Vec<String> =
                ["LIMIT", "OFFSET"].iter().flat_map(|k| ['$', '?'].map(|p| format!("{k} {p}"))).collect();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                let bare = patterns.iter().any(|p| line.contains(p.as_str()));
                assert!(!bare, "{}:{}: a bare bound LIMIT or OFFSET: {line}", path.display(), n + 1);
            }
            checked += usize::from(text.contains("LIMIT CAST("));
        }
        // The sources were found and read (events, leases and calls bind their limits).
        assert!(checked >= 3, "only {checked} files with a cast limit under {}", dir.display());
    }
}
