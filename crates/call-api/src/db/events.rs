//! The call events outbox (`events`) and the webhook deliveries made from it
//! (`webhook_deliveries`).
//!
//! Events are written by the repositories in the same transaction as the change they describe
//! ([`insert_event!`]); the webhook worker (`crate::events`) then fans each event out to one
//! delivery row per endpoint of its tenant and claims due rows to send. A claim is a lease
//! (`claimed_until`): a replica that dies mid-delivery leaves a claim that runs out and another
//! (or the restarted one) sends again. On PostgreSQL the rows are picked with
//! `FOR UPDATE SKIP LOCKED`, so replicas never claim the same row at once; on SQLite writes are
//! serialised and one worker runs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Row as _, types::Json};
use uuid::Uuid;

use super::{Database, DbError, Pool, with_pool};

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    CallCreated,
    CallStarted,
    TurnCompleted,
    CallEnded,
    AnalysisCompleted,
}

impl EventType {
    pub const ALL: [Self; 5] =
        [Self::CallCreated, Self::CallStarted, Self::TurnCompleted, Self::CallEnded, Self::AnalysisCompleted];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallCreated => "call.created",
            Self::CallStarted => "call.started",
            Self::TurnCompleted => "turn.completed",
            Self::CallEnded => "call.ended",
            Self::AnalysisCompleted => "analysis.completed",
        }
    }
}

/// An event about to be written.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub tenant: String,
    pub call_id: Uuid,
    pub kind: EventType,
    pub created_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl NewEvent {
    pub fn new(tenant: &str, call_id: Uuid, kind: EventType, data: serde_json::Value) -> Self {
        Self {
            event_id: format!("evt_{}", Uuid::now_v7().simple()),
            tenant: tenant.to_string(),
            call_id,
            kind,
            created_at: crate::model::now(),
            data,
        }
    }
}

pub(crate) const INSERT_EVENT: &str = "INSERT INTO events (event_id, tenant, call_id, type, created_at, payload) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// Writes `$event` (a [`NewEvent`]) on `$conn` (a transaction of either engine).
macro_rules! insert_event {
    ($conn:expr, $event:expr) => {{
        let e: &$crate::db::events::NewEvent = $event;
        sqlx::query($crate::db::events::INSERT_EVENT)
            .bind(e.event_id.as_str())
            .bind(e.tenant.as_str())
            .bind(e.call_id)
            .bind(e.kind.as_str())
            .bind(e.created_at)
            .bind(sqlx::types::Json(&e.data))
            .execute($conn)
            .await
            .map(drop)
    }};
}
pub(crate) use insert_event;

/// A stored event, as sent in a webhook body, on the event stream and in the event list.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Event {
    /// The row order (grows with each event).
    #[serde(skip)]
    pub seq: i64,
    /// `evt_…`: the same on every delivery of this event (`webhook-id`), for deduplication.
    #[schema(example = "evt_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b")]
    pub id: String,
    /// `call.created`, `call.started`, `turn.completed`, `call.ended` or `analysis.completed`.
    #[serde(rename = "type")]
    #[schema(example = "turn.completed")]
    pub kind: String,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    pub tenant: String,
    pub call_id: Uuid,
    /// What the event type carries (see the SPEC's event table).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A delivery claimed by this replica: the event and where it goes.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery: i64,
    pub endpoint: String,
    pub attempts: i32,
    pub event: Event,
}

/// What became of one attempt.
#[derive(Debug, Clone)]
pub enum Attempt {
    Delivered,
    /// Try again at `next` (`status`: the receiver's HTTP status, if it answered).
    Retry {
        next: DateTime<Utc>,
        status: Option<u16>,
        error: String,
    },
    /// Given up (too old).
    Failed {
        status: Option<u16>,
        error: String,
    },
}

const UNDISPATCHED_PG: &str = "SELECT id, tenant, call_id FROM events WHERE NOT dispatched ORDER BY id LIMIT CAST($1 AS INTEGER) \
     FOR UPDATE SKIP LOCKED";
const UNDISPATCHED_SQLITE: &str =
    "SELECT id, tenant, call_id FROM events WHERE NOT dispatched ORDER BY id LIMIT CAST($1 AS INTEGER)";
const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries (event_row, endpoint, call_id, state, next_attempt_at) \
     VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT (event_row, endpoint) DO NOTHING";
/// Whether any event waits to be fanned out (the partial index `events_undispatched`): an idle
/// round reads this and takes no lock.
const ANY_UNDISPATCHED: &str = "SELECT id FROM events WHERE NOT dispatched LIMIT 1";
/// The rows fanned out in one round, in one statement (their numbers as a JSON array).
const MARK_DISPATCHED_PG: &str = "UPDATE events SET dispatched = TRUE \
     WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb) AS value)";
const MARK_DISPATCHED_SQLITE: &str =
    "UPDATE events SET dispatched = TRUE WHERE id IN (SELECT value FROM json_each($1))";

/// Due, unclaimed pending deliveries whose call has no earlier pending delivery to the same
/// endpoint (per-call order), oldest first.
macro_rules! due {
    ($lock:literal) => {
        concat!(
            "UPDATE webhook_deliveries SET claimed_by = $1, claimed_until = $2 WHERE id IN (\
             SELECT d.id FROM webhook_deliveries d WHERE d.state = 'pending' AND d.next_attempt_at <= $3 \
             AND (d.claimed_until IS NULL OR d.claimed_until <= $3) \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.state = 'pending' \
             AND p.endpoint = d.endpoint AND p.call_id = d.call_id AND p.event_row < d.event_row) \
             ORDER BY d.event_row LIMIT CAST($4 AS INTEGER)",
            $lock,
            ") RETURNING id"
        )
    };
}
const CLAIM_PG: &str = due!(" FOR UPDATE SKIP LOCKED");
const CLAIM_SQLITE: &str = due!("");
const CLAIMED: &str = "SELECT d.id AS delivery, d.endpoint, d.attempts, e.id, e.event_id, e.type, e.created_at, \
     e.tenant, e.call_id, e.payload FROM webhook_deliveries d JOIN events e ON e.id = d.event_row \
     WHERE d.claimed_by = $1 AND d.state = 'pending' AND d.claimed_until > $2 ORDER BY e.id";
const DELIVERED: &str = "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = $1, \
     last_status = $2, last_error = NULL, claimed_by = NULL, claimed_until = NULL WHERE id = $3 AND claimed_by = $4";
const RETRY: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = $1, last_status = $2, \
     last_error = $3, claimed_by = NULL, claimed_until = NULL WHERE id = $4 AND claimed_by = $5";
const FAILED: &str = "UPDATE webhook_deliveries SET state = 'failed', attempts = attempts + 1, last_status = $1, \
     last_error = $2, claimed_by = NULL, claimed_until = NULL WHERE id = $3 AND claimed_by = $4";
const BACKLOG: &str = "SELECT (SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending') AS pending, \
     (SELECT MIN(e.created_at) FROM webhook_deliveries d JOIN events e ON e.id = d.event_row \
     WHERE d.state = 'pending') AS oldest_delivery, \
     (SELECT MIN(created_at) FROM events WHERE NOT dispatched) AS oldest_event, \
     (SELECT COUNT(*) FROM events WHERE NOT dispatched) AS undispatched";
const CALL_EVENTS: &str = "SELECT id, event_id, type, created_at, tenant, call_id, payload FROM events \
     WHERE call_id = $1 AND tenant = $2 AND id > $3 ORDER BY id";
const EVENTS_AFTER: &str = "SELECT id, event_id, type, created_at, tenant, call_id, payload FROM events \
     WHERE id > $1 ORDER BY id LIMIT CAST($2 AS INTEGER)";
const TENANT_EVENTS: &str = "SELECT id, event_id, type, created_at, tenant, call_id, payload FROM events \
     WHERE tenant = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT CAST($4 AS INTEGER)";
const EVENT_SEQ: &str = "SELECT id FROM events WHERE event_id = $1 AND tenant = $2";
const LAST_SEQ: &str = "SELECT COALESCE(MAX(id), 0) AS last FROM events";
/// Old events whose webhook deliveries are all done (delivered or given up), oldest first; their
/// delivery rows go with them (`ON DELETE CASCADE`).
const DELETE_OLD: &str = "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.created_at < $1 \
     AND e.dispatched AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_row = e.id \
     AND d.state = 'pending') ORDER BY e.id LIMIT CAST($2 AS INTEGER))";

/// The webhook backlog: deliveries pending (and events not yet fanned out), and the creation
/// time of the oldest of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    pub pending: i64,
    pub oldest: Option<DateTime<Utc>>,
}

macro_rules! decode_event {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<Event, sqlx::Error> {
            let Json(data): Json<serde_json::Value> = row.try_get("payload")?;
            Ok(Event {
                seq: row.try_get("id")?,
                id: row.try_get("event_id")?,
                kind: row.try_get("type")?,
                timestamp: row.try_get("created_at")?,
                tenant: row.try_get("tenant")?,
                call_id: row.try_get("call_id")?,
                data,
            })
        })()
    }};
}

impl Database {
    /// Writes one event on its own (for changes made without a transaction of their own).
    pub async fn insert_event(&self, event: &NewEvent) -> Result<(), DbError> {
        self.observe_events("insert_event", INSERT_EVENT, async {
            with_pool!(self, pool => insert_event!(pool, event))
        })
        .await
    }

    /// The events of call `id` of `tenant`, in order.
    pub async fn call_events(&self, tenant: &str, id: Uuid) -> Result<Vec<Event>, DbError> {
        self.call_events_after(tenant, id, 0).await
    }

    /// The events of call `id` of `tenant` after row `after` (0: all), in order.
    pub async fn call_events_after(&self, tenant: &str, id: Uuid, after: i64) -> Result<Vec<Event>, DbError> {
        self.observe("call_events", CALL_EVENTS, async {
            with_pool!(self, pool => {
                let rows = sqlx::query(CALL_EVENTS).bind(id).bind(tenant).bind(after).fetch_all(pool).await?;
                rows.iter().map(|row| decode_event!(row)).collect::<Result<Vec<_>, _>>()
            })
        })
        .await
    }

    /// Up to `limit` events of every tenant after row `after`, in order (the event stream's tail).
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<Event>, DbError> {
        self.observe("events_after", EVENTS_AFTER, async {
            with_pool!(self, pool => {
                let rows = sqlx::query(EVENTS_AFTER).bind(after).bind(limit).fetch_all(pool).await?;
                rows.iter().map(|row| decode_event!(row)).collect::<Result<Vec<_>, _>>()
            })
        })
        .await
    }

    /// Up to `limit` events of `tenant` with rows in `after < row <= upto`, in order.
    pub async fn tenant_events(&self, tenant: &str, after: i64, upto: i64, limit: i64) -> Result<Vec<Event>, DbError> {
        self.observe("tenant_events", TENANT_EVENTS, async {
            with_pool!(self, pool => {
                let rows =
                    sqlx::query(TENANT_EVENTS).bind(tenant).bind(after).bind(upto).bind(limit).fetch_all(pool).await?;
                rows.iter().map(|row| decode_event!(row)).collect::<Result<Vec<_>, _>>()
            })
        })
        .await
    }

    /// The row of event `event_id` of `tenant`, if there is one.
    pub async fn event_seq(&self, tenant: &str, event_id: &str) -> Result<Option<i64>, DbError> {
        self.observe("event_seq", EVENT_SEQ, async {
            with_pool!(self, pool => {
                let row = sqlx::query(EVENT_SEQ).bind(event_id).bind(tenant).fetch_optional(pool).await?;
                row.map(|r| r.try_get::<i64, _>("id")).transpose()
            })
        })
        .await
    }

    /// The last event row written (0 when none).
    pub async fn last_event_seq(&self) -> Result<i64, DbError> {
        self.observe("last_event_seq", LAST_SEQ, async {
            with_pool!(self, pool => sqlx::query(LAST_SEQ).fetch_one(pool).await?.try_get::<i64, _>("last"))
        })
        .await
    }

    /// Deletes up to `limit` events created before `before` whose deliveries are all done (and
    /// those deliveries). How many events.
    pub async fn delete_old_events(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, DbError> {
        self.observe("delete_old_events", DELETE_OLD, async {
            with_pool!(self, pool => sqlx::query(DELETE_OLD).bind(before).bind(limit).execute(pool).await.map(|r| r.rows_affected()))
        })
        .await
    }

    /// Fans up to `limit` events out: one pending delivery per endpoint of the event's tenant
    /// (`endpoints(tenant)`), then marks them dispatched, in one transaction. How many events.
    pub async fn dispatch_events(
        &self,
        limit: i64,
        endpoints: &(dyn Fn(&str) -> Vec<String> + Sync),
    ) -> Result<usize, DbError> {
        let now = crate::model::now();
        let postgres = matches!(self.pool, Pool::Postgres(_));
        // Nothing to fan out (the usual case between events): one indexed read, no transaction,
        // no write lock.
        let waiting = self
            .observe("any_undispatched", ANY_UNDISPATCHED, async {
                with_pool!(self, pool => sqlx::query(ANY_UNDISPATCHED).fetch_optional(pool).await.map(|r| r.is_some()))
            })
            .await?;
        if !waiting {
            return Ok(0);
        }
        let select = if postgres { UNDISPATCHED_PG } else { UNDISPATCHED_SQLITE };
        // SQLite: take the write lock first, so the writes after the read never find the
        // snapshot outdated by another connection's commit.
        let begin = if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" };
        self.observe("dispatch_events", INSERT_DELIVERY, async {
            with_pool!(self, pool => {
                let mut tx = pool.begin_with(begin).await?;
                let rows = sqlx::query(select).bind(limit).fetch_all(&mut *tx).await?;
                let mut ids = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: i64 = row.try_get("id")?;
                    let tenant: String = row.try_get("tenant")?;
                    let call_id: Uuid = row.try_get("call_id")?;
                    for endpoint in endpoints(&tenant) {
                        sqlx::query(INSERT_DELIVERY)
                            .bind(id)
                            .bind(endpoint)
                            .bind(call_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    ids.push(id);
                }
                if !ids.is_empty() {
                    // Exactly the rows read (and, on PostgreSQL, locked) above: a row another
                    // replica holds, or one that commits late with a lower number, is not marked.
                    let mark = if postgres { MARK_DISPATCHED_PG } else { MARK_DISPATCHED_SQLITE };
                    let list = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
                    sqlx::query(mark).bind(list).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(rows.len())
            })
        })
        .await
    }

    /// Claims up to `limit` due deliveries for `owner` until `until`, and returns every delivery
    /// `owner` holds. `held`: whether `owner` may hold claims from before this call (its first
    /// round, or one whose outcomes were not all stored); when not, and nothing new was claimed,
    /// the read of the held ones is skipped.
    pub async fn claim_deliveries(
        &self,
        owner: &str,
        until: DateTime<Utc>,
        limit: i64,
        held: bool,
    ) -> Result<Vec<Claimed>, DbError> {
        let now = crate::model::now();
        let claim = if matches!(self.pool, Pool::Postgres(_)) { CLAIM_PG } else { CLAIM_SQLITE };
        let claimed = self
            .observe("claim_deliveries", CLAIM_PG, async {
                with_pool!(self, pool => sqlx::query(claim).bind(owner).bind(until).bind(now).bind(limit).execute(pool).await.map(|r| r.rows_affected()))
            })
            .await?;
        if claimed == 0 && !held {
            return Ok(Vec::new());
        }
        self.observe("claimed_deliveries", CLAIMED, async {
            with_pool!(self, pool => {
                let rows = sqlx::query(CLAIMED).bind(owner).bind(now).fetch_all(pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(Claimed {
                            delivery: row.try_get("delivery")?,
                            endpoint: row.try_get("endpoint")?,
                            attempts: row.try_get("attempts")?,
                            event: decode_event!(row)?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            })
        })
        .await
    }

    /// Records what became of delivery `id` claimed by `owner`. False when the claim was lost
    /// (it ran out and another worker took the row).
    pub async fn finish_delivery(&self, id: i64, owner: &str, attempt: &Attempt) -> Result<bool, DbError> {
        let now = crate::model::now();
        let status = |s: &Option<u16>| s.map(i32::from);
        self.observe("finish_delivery", RETRY, async {
            with_pool!(self, pool => {
                let done = match attempt {
                    Attempt::Delivered => sqlx::query(DELIVERED).bind(now).bind(200_i32).bind(id).bind(owner).execute(pool).await?,
                    Attempt::Retry { next, status: s, error } => sqlx::query(RETRY)
                        .bind(*next)
                        .bind(status(s))
                        .bind(error.as_str())
                        .bind(id)
                        .bind(owner)
                        .execute(pool)
                        .await?,
                    Attempt::Failed { status: s, error } => sqlx::query(FAILED)
                        .bind(status(s))
                        .bind(error.as_str())
                        .bind(id)
                        .bind(owner)
                        .execute(pool)
                        .await?,
                };
                Ok(done.rows_affected() == 1)
            })
        })
        .await
    }

    /// The webhook backlog (for the gauges).
    pub async fn webhook_backlog(&self) -> Result<Backlog, DbError> {
        self.observe("webhook_backlog", BACKLOG, async {
            with_pool!(self, pool => {
                let row = sqlx::query(BACKLOG).fetch_one(pool).await?;
                let pending: i64 = row.try_get("pending")?;
                let undispatched: i64 = row.try_get("undispatched")?;
                let a: Option<DateTime<Utc>> = row.try_get("oldest_delivery")?;
                let b: Option<DateTime<Utc>> = row.try_get("oldest_event")?;
                let oldest = match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Ok(Backlog { pending: pending + undispatched, oldest })
            })
        })
        .await
    }
}
