//! The call repository: every read and write of `calls`, scoped to a tenant, with the state
//! machine `queued → in_progress → ended` enforced by conditional updates so concurrent requests
//! cannot end a call twice.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, types::Json};
use uuid::Uuid;

use super::{
    Database, DbError,
    events::{EventType, NewEvent, insert_event},
    with_pool,
};
use crate::{
    media::quality::CallQuality,
    model::{self, Call, Direction, Outcome, Provider, Status},
};

/// The columns of a [`Call`], in the order [`decode_call!`] reads them.
macro_rules! call_columns {
    () => {
        "id, tenant, provider, direction, from_number, to_number, status, outcome, metadata, \
         created_at, started_at, ended_at, duration_seconds, analysis_status, end_reason, cost_live, cost_recording"
    };
}

/// Reads a [`Call`] from a row of either engine.
macro_rules! decode_call {
    ($row:expr) => {{
        use sqlx::Row as _;
        use $crate::db::calls::name;
        use $crate::model::{AnalysisStatus, Call, Direction, Outcome, Provider, Status};
        let row = $row;
        (|| -> Result<Call, sqlx::Error> {
            let sqlx::types::Json(metadata): sqlx::types::Json<serde_json::Value> = row.try_get("metadata")?;
            Ok(Call {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
                provider: name(row.try_get("provider")?, Provider::parse)?,
                direction: name(row.try_get("direction")?, Direction::parse)?,
                from: row.try_get("from_number")?,
                to: row.try_get("to_number")?,
                status: name(row.try_get("status")?, Status::parse)?,
                outcome: row.try_get::<Option<String>, _>("outcome")?.map(|o| name(o, Outcome::parse)).transpose()?,
                metadata,
                created_at: row.try_get("created_at")?,
                started_at: row.try_get("started_at")?,
                ended_at: row.try_get("ended_at")?,
                duration_seconds: row.try_get("duration_seconds")?,
                analysis_status: row
                    .try_get::<Option<String>, _>("analysis_status")?
                    .map(|s| name(s, AnalysisStatus::parse))
                    .transpose()?,
                end_reason: row.try_get("end_reason")?,
                cost: $crate::db::calls::stored_cost(row.try_get("cost_live")?, row.try_get("cost_recording")?),
            })
        })()
    }};
}
pub(crate) use {call_columns, decode_call};

/// The cost shown for a call from its two stored parts (a part that no longer reads as a
/// breakdown is left out).
pub(crate) fn stored_cost(
    live: Option<Json<serde_json::Value>>,
    recording: Option<Json<serde_json::Value>>,
) -> Option<Box<crate::pricing::CostBreakdown>> {
    let part = |v: Option<Json<serde_json::Value>>| v.and_then(|Json(v)| serde_json::from_value(v).ok());
    crate::pricing::CostBreakdown::of_parts(part(live), part(recording)).map(Box::new)
}

pub(crate) fn name<T>(value: String, parse: fn(&str) -> Option<T>) -> Result<T, sqlx::Error> {
    parse(&value).ok_or_else(|| sqlx::Error::Decode(format!("unexpected value {value:?} in calls").into()))
}

/// What a client asked for when creating a call.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub tenant: String,
    pub provider: Provider,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    pub metadata: serde_json::Value,
    /// SHA-256 (hex) of the media URL token; the token itself is never stored.
    pub media_token_hash: String,
    pub media_token_expires_at: DateTime<Utc>,
}

impl NewCall {
    /// The `queued` call this creates (its token stays out of the record).
    fn into_record(self) -> Call {
        Call {
            id: Uuid::now_v7(),
            tenant: self.tenant,
            provider: self.provider,
            direction: self.direction,
            from: self.from,
            to: self.to,
            status: Status::Queued,
            outcome: None,
            metadata: self.metadata,
            created_at: model::now(),
            started_at: None,
            ended_at: None,
            duration_seconds: None,
            analysis_status: None,
            end_reason: None,
            cost: None,
        }
    }
}

/// Filters and page of `GET /v1/calls`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub direction: Option<Direction>,
    pub provider: Option<Provider>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// Position after the last call of a page: calls are ordered by `(created_at, id)` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients: base64url of `v1:<created_at µs>:<id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.created_at.timestamp_micros(), self.id.simple()))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
        let raw = std::str::from_utf8(&raw).ok()?;
        let mut parts = raw.split(':');
        if parts.next()? != "v1" {
            return None;
        }
        let created_at = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
        if !model::is_storable_instant(&created_at) {
            return None;
        }
        let id = Uuid::try_parse(parts.next()?).ok()?;
        parts.next().is_none().then_some(Self { created_at, id })
    }
}

/// One page of calls.
#[derive(Debug)]
pub struct Page {
    pub calls: Vec<Call>,
    pub next: Option<Cursor>,
}

/// Why a call could not be ended.
#[derive(Debug, thiserror::Error)]
pub enum EndError {
    #[error("call not found")]
    NotFound,
    #[error("call has already ended")]
    AlreadyEnded,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A bound value of a dynamically built statement.
enum Bind {
    Text(&'static str),
    Time(DateTime<Utc>),
    Id(Uuid),
    Int(i64),
    Owned(String),
}

macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut q = $query;
        for b in $binds {
            q = match b {
                Bind::Text(v) => q.bind(*v),
                Bind::Time(v) => q.bind(*v),
                Bind::Id(v) => q.bind(*v),
                Bind::Int(v) => q.bind(*v),
                Bind::Owned(v) => q.bind(v.clone()),
            };
        }
        q
    }};
}

/// Binds a new call's columns in the order of [`INSERT`] (`$1`…`$11`); [`INSERT_CARRIER`] adds
/// the carrier's call id as `$12`.
macro_rules! bind_new_call {
    ($query:expr, $c:expr, $token_hash:expr, $token_expires_at:expr) => {
        $query
            .bind($c.id)
            .bind($c.tenant.as_str())
            .bind($c.provider.as_str())
            .bind($c.direction.as_str())
            .bind($c.from.as_str())
            .bind($c.to.as_str())
            .bind(Json(&$c.metadata))
            .bind($c.created_at)
            .bind($token_hash)
            .bind($token_expires_at)
            .bind($c.created_at)
    };
}

const INSERT: &str = "INSERT INTO calls (id, tenant, provider, direction, from_number, to_number, status, metadata, \
     created_at, media_token_hash, media_token_expires_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11)";
const GET: &str = concat!("SELECT ", call_columns!(), " FROM calls WHERE id = $1 AND tenant = $2");
const END: &str = concat!(
    "UPDATE calls SET status = 'ended', outcome = $1, ended_at = $2, duration_seconds = $3, updated_at = $4, \
     end_reason = $8 WHERE id = $5 AND tenant = $6 AND status <> 'ended' AND started_at IS NOT DISTINCT FROM $7 RETURNING ",
    call_columns!()
);
const START: &str = concat!(
    "UPDATE calls SET status = 'in_progress', started_at = $1, updated_at = $2, lease_owner = $4, \
     lease_expires_at = $5 WHERE id = $3 AND status = 'queued' RETURNING ",
    call_columns!()
);
const BY_MEDIA_TOKEN: &str = concat!(
    "SELECT ",
    call_columns!(),
    " FROM calls WHERE id = $1 AND media_token_hash = $2 AND media_token_expires_at > $3"
);
const LIST: &str =
    "SELECT ... FROM calls WHERE tenant = $1 [filters] ORDER BY created_at DESC, id DESC LIMIT CAST($n AS INTEGER)";

impl Database {
    /// Stores a new `queued` call and its `call.created` event (one transaction: both are
    /// there whole or not at all).
    pub async fn insert_call(&self, new: NewCall) -> Result<Call, DbError> {
        let (token_hash, token_expires_at) = (new.media_token_hash.clone(), new.media_token_expires_at);
        let call = new.into_record();
        let c = &call;
        let event = call_event(c, EventType::CallCreated, None);
        Box::pin(self.observe_events("insert_call", INSERT, async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                bind_new_call!(sqlx::query(INSERT), c, token_hash.as_str(), token_expires_at).execute(&mut *tx).await?;
                insert_event!(&mut *tx, &event)?;
                tx.commit().await
            })
        }))
        .await?;
        Ok(call)
    }

    /// The call `id` of `tenant`; `None` when it does not exist or belongs to another tenant.
    pub async fn get_call(&self, tenant: &str, id: Uuid) -> Result<Option<Call>, DbError> {
        self.observe("get_call", GET, async {
            with_pool!(self, pool => {
                match sqlx::query(GET).bind(id).bind(tenant).fetch_optional(pool).await? {
                    Some(row) => decode_call!(&row).map(Some),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    /// A page of `tenant`'s calls, newest first.
    pub async fn list_calls(&self, tenant: &str, filter: &ListFilter) -> Result<Page, DbError> {
        let mut sql = String::from(concat!("SELECT ", call_columns!(), " FROM calls WHERE tenant = $1"));
        let mut binds = vec![Bind::Owned(tenant.to_string())];
        let mut push = |sql: &mut String, condition: &str, bind: Bind| {
            binds.push(bind);
            sql.push_str(&condition.replace('?', &format!("${}", binds.len())));
        };
        if let Some(s) = filter.status {
            push(&mut sql, " AND status = ?", Bind::Text(s.as_str()));
        }
        if let Some(d) = filter.direction {
            push(&mut sql, " AND direction = ?", Bind::Text(d.as_str()));
        }
        if let Some(p) = filter.provider {
            push(&mut sql, " AND provider = ?", Bind::Text(p.as_str()));
        }
        if let Some(t) = filter.created_after {
            push(&mut sql, " AND created_at > ?", Bind::Time(t));
        }
        if let Some(t) = filter.created_before {
            push(&mut sql, " AND created_at < ?", Bind::Time(t));
        }
        if let Some(c) = filter.after {
            push(&mut sql, " AND (created_at < ?", Bind::Time(c.created_at));
            push(&mut sql, " OR (created_at = ?", Bind::Time(c.created_at));
            push(&mut sql, " AND id < ?))", Bind::Id(c.id));
        }
        // One more than asked tells whether another page follows.
        push(
            &mut sql,
            " ORDER BY created_at DESC, id DESC LIMIT CAST(? AS INTEGER)",
            Bind::Int(i64::from(filter.limit) + 1),
        );
        let sql = sql;
        let mut calls = self
            .observe("list_calls", LIST, async {
                with_pool!(self, pool => {
                    let rows = bind_all!(sqlx::query(AssertSqlSafe(sql.as_str())), binds.iter())
                        .fetch_all(pool)
                        .await?;
                    rows.iter().map(|row| decode_call!(row)).collect::<Result<Vec<_>, _>>()
                })
            })
            .await?;
        let next = if calls.len() > filter.limit as usize {
            calls.truncate(filter.limit as usize);
            calls.last().map(|c| Cursor { created_at: c.created_at, id: c.id })
        } else {
            None
        };
        Ok(Page { calls, next })
    }

    /// Ends the call with `outcome`; the duration runs from media start, else from creation.
    /// Exactly one of any number of concurrent ends succeeds; the others see `AlreadyEnded`.
    pub async fn end_call(&self, tenant: &str, id: Uuid, outcome: Outcome) -> Result<Call, EndError> {
        self.end(tenant, id, outcome, None).await
    }

    /// Ends a live call with `outcome` and why (media connection lost, shutdown…), in the same
    /// statement. `AlreadyEnded` when something else ended it first.
    pub async fn end_call_with_reason(
        &self,
        tenant: &str,
        id: Uuid,
        outcome: Outcome,
        reason: &str,
    ) -> Result<Call, EndError> {
        self.end(tenant, id, outcome, Some(reason)).await
    }

    async fn end(&self, tenant: &str, id: Uuid, outcome: Outcome, reason: Option<&str>) -> Result<Call, EndError> {
        // The update is conditional on the state read here; if media starts in between, read
        // again (a bounded number of times: a call starts at most once).
        for _ in 0..3 {
            let current = self.get_call(tenant, id).await?.ok_or(EndError::NotFound)?;
            if current.status == Status::Ended {
                return Err(EndError::AlreadyEnded);
            }
            let ended_at = model::now();
            let duration = model::seconds_between(current.started_at.unwrap_or(current.created_at), ended_at);
            let updated = Box::pin(self.observe_events("end_call", END, async {
                with_pool!(self, pool => {
                    let mut tx = pool.begin().await?;
                    let row = sqlx::query(END)
                        .bind(outcome.as_str())
                        .bind(ended_at)
                        .bind(duration)
                        .bind(ended_at)
                        .bind(id)
                        .bind(tenant)
                        .bind(current.started_at)
                        .bind(reason)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(call) = row.as_ref().map(|row| decode_call!(row)).transpose()? else {
                        return Ok(None);
                    };
                    // The line quality is stored before the end (by the session's replica).
                    let quality: Option<Json<serde_json::Value>> =
                        sqlx::query_scalar(QUALITY_FIGURES).bind(id).fetch_optional(&mut *tx).await?;
                    insert_event!(&mut *tx, &call_event(&call, EventType::CallEnded, Some(quality.map(|q| q.0))))?;
                    tx.commit().await?;
                    Ok(Some(call))
                })
            }))
            .await?;
            if let Some(call) = updated {
                return Ok(call);
            }
        }
        Err(EndError::AlreadyEnded)
    }

    /// Media started: `queued → in_progress`, recording the start time and the replica that
    /// carries the call (`lease_owner`, with its first lease until `lease_expires_at`). `None`
    /// when the call does not exist or is not queued (already started or ended). Used by the
    /// media stream.
    pub async fn mark_in_progress(
        &self,
        id: Uuid,
        lease_owner: &str,
        lease_expires_at: DateTime<Utc>,
    ) -> Result<Option<Call>, DbError> {
        let started_at = model::now();
        Box::pin(self.observe_events("mark_in_progress", START, async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                let row = sqlx::query(START)
                    .bind(started_at)
                    .bind(started_at)
                    .bind(id)
                    .bind(lease_owner)
                    .bind(lease_expires_at)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(call) = row.as_ref().map(|row| decode_call!(row)).transpose()? else {
                    return Ok(None);
                };
                insert_event!(&mut *tx, &call_event(&call, EventType::CallStarted, None))?;
                tx.commit().await?;
                Ok(Some(call))
            })
        }))
        .await
    }

    /// The call whose media URL carries `token`, while the token is valid. Used by the media
    /// stream, which carriers reach without an API key.
    pub async fn call_for_media_token(&self, id: Uuid, token: &str) -> Result<Option<Call>, DbError> {
        let hash = media_token_hash(token);
        let now = model::now();
        self.observe("call_for_media_token", BY_MEDIA_TOKEN, async {
            with_pool!(self, pool => {
                match sqlx::query(BY_MEDIA_TOKEN).bind(id).bind(hash.as_str()).bind(now).fetch_optional(pool).await? {
                    Some(row) => decode_call!(&row).map(Some),
                    None => Ok(None),
                }
            })
        })
        .await
    }
}

// ---- Cost -----------------------------------------------------------------------------------------

const SET_LIVE_COST: &str = "UPDATE calls SET cost_live = $1 WHERE id = $2";
const GET_RECORDING_COST: &str = "SELECT cost_recording FROM calls WHERE id = $1 AND analysis_attempt = $2";
const SET_RECORDING_COST: &str = "UPDATE calls SET cost_recording = $1 WHERE id = $2 AND analysis_attempt = $3";

impl Database {
    /// Stores what call `id`'s live session cost (once, by the replica that carried it, when
    /// the session ends).
    pub async fn set_live_cost(&self, id: Uuid, cost: &crate::pricing::CostBreakdown) -> Result<(), DbError> {
        self.observe("set_live_cost", SET_LIVE_COST, async {
            with_pool!(self, pool => sqlx::query(SET_LIVE_COST).bind(Json(cost)).bind(id).execute(pool).await.map(drop))
        })
        .await
    }

    /// Adds what a recording analysis cost to call `id`'s recording cost, while `attempt` owns
    /// the analysis (no other attempt writes meanwhile). Whether it was added.
    pub async fn add_recording_cost(
        &self,
        id: Uuid,
        attempt: &str,
        cost: &crate::pricing::CostBreakdown,
    ) -> Result<bool, DbError> {
        let stored: Option<Option<Json<serde_json::Value>>> = self
            .observe("get_recording_cost", GET_RECORDING_COST, async {
                with_pool!(self, pool => sqlx::query_scalar(GET_RECORDING_COST)
                    .bind(id)
                    .bind(attempt)
                    .fetch_optional(pool)
                    .await)
            })
            .await?;
        let Some(stored) = stored else { return Ok(false) };
        let before = stored.and_then(|Json(v)| serde_json::from_value::<crate::pricing::CostBreakdown>(v).ok());
        let total = match before {
            Some(before) => before.merge(cost),
            None => cost.clone(),
        };
        let updated = self
            .observe("set_recording_cost", SET_RECORDING_COST, async {
                with_pool!(self, pool => sqlx::query(SET_RECORDING_COST)
                    .bind(Json(&total))
                    .bind(id)
                    .bind(attempt)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()))
            })
            .await?;
        Ok(updated == 1)
    }
}

// ---- Carrier call ids (Twilio's CallSid) -------------------------------------------------------

const INSERT_CARRIER: &str = "INSERT INTO calls (id, tenant, provider, direction, from_number, to_number, status, \
     metadata, created_at, media_token_hash, media_token_expires_at, updated_at, carrier_call_id) \
     VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (provider, carrier_call_id) DO NOTHING";
const BY_CARRIER_ID: &str =
    concat!("SELECT ", call_columns!(), " FROM calls WHERE provider = $1 AND carrier_call_id = $2");
const SET_CARRIER_ID: &str = "UPDATE calls SET carrier_call_id = $1, updated_at = $2 WHERE id = $3";
const RENEW_MEDIA_TOKEN: &str =
    "UPDATE calls SET media_token_hash = $1, media_token_expires_at = $2, updated_at = $3 WHERE id = $4";

impl Database {
    /// Stores a new `queued` call that a carrier reported with its own id, unless a call with
    /// that carrier id exists already (a retried webhook): then that call is returned and
    /// `created` is false. Concurrent retries create one call.
    pub async fn insert_carrier_call(&self, new: NewCall, carrier_call_id: &str) -> Result<(Call, bool), DbError> {
        let (token_hash, token_expires_at) = (new.media_token_hash.clone(), new.media_token_expires_at);
        let call = new.into_record();
        let c = &call;
        let event = call_event(c, EventType::CallCreated, None);
        let inserted = Box::pin(self.observe_events("insert_carrier_call", INSERT_CARRIER, async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                let inserted = bind_new_call!(sqlx::query(INSERT_CARRIER), c, token_hash.as_str(), token_expires_at)
                    .bind(carrier_call_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if inserted == 1 {
                    insert_event!(&mut *tx, &event)?;
                }
                tx.commit().await?;
                Ok(inserted)
            })
        }))
        .await?;
        if inserted == 1 {
            return Ok((call, true));
        }
        match self.call_by_carrier_id(call.provider, carrier_call_id).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(DbError::Query(sqlx::Error::RowNotFound)),
        }
    }

    /// The call a carrier knows as `carrier_call_id`, whatever its tenant (carrier webhooks are
    /// authenticated by the carrier's signature, not by a tenant's key).
    pub async fn call_by_carrier_id(&self, provider: Provider, carrier_call_id: &str) -> Result<Option<Call>, DbError> {
        self.observe("call_by_carrier_id", BY_CARRIER_ID, async {
            with_pool!(self, pool => {
                match sqlx::query(BY_CARRIER_ID).bind(provider.as_str()).bind(carrier_call_id).fetch_optional(pool).await? {
                    Some(row) => decode_call!(&row).map(Some),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    /// Records the carrier's id of call `id` (after the carrier accepted an outbound call).
    pub async fn set_carrier_call_id(&self, id: Uuid, carrier_call_id: &str) -> Result<(), DbError> {
        let now = model::now();
        self.observe("set_carrier_call_id", SET_CARRIER_ID, async {
            with_pool!(self, pool => sqlx::query(SET_CARRIER_ID)
                .bind(carrier_call_id)
                .bind(now)
                .bind(id)
                .execute(pool)
                .await
                .map(drop))
        })
        .await
    }

    /// Replaces the media token of call `id` (a retried webhook gets a fresh media URL; the
    /// previous token stops working).
    pub async fn renew_media_token(&self, id: Uuid, hash: &str, expires_at: DateTime<Utc>) -> Result<(), DbError> {
        let now = model::now();
        self.observe("renew_media_token", RENEW_MEDIA_TOKEN, async {
            with_pool!(self, pool => sqlx::query(RENEW_MEDIA_TOKEN)
                .bind(hash)
                .bind(expires_at)
                .bind(now)
                .bind(id)
                .execute(pool)
                .await
                .map(drop))
        })
        .await
    }

    /// Stores the line quality of call `id` (its media session's replica, when the session
    /// ends; a second write replaces the first).
    pub async fn store_quality(&self, id: Uuid, q: &CallQuality) -> Result<(), DbError> {
        self.observe("store_quality", STORE_QUALITY, async {
            with_pool!(self, pool => sqlx::query(STORE_QUALITY)
                .bind(id)
                .bind(q.measured_at)
                .bind(q.estimate.as_ref().map(|e| e.mos))
                .bind(q.inbound.jitter_seconds)
                .bind(i64::try_from(q.inbound.frames_lost).unwrap_or(i64::MAX))
                .bind(q.playback.delay_mean_seconds)
                .bind(Json(q))
                .execute(pool)
                .await
                .map(drop))
        })
        .await
    }

    /// The stored line quality of call `id` of `tenant`, if any.
    pub async fn get_quality(&self, tenant: &str, id: Uuid) -> Result<Option<CallQuality>, DbError> {
        self.observe("get_quality", GET_QUALITY, async {
            with_pool!(self, pool => {
                let row = sqlx::query(GET_QUALITY).bind(id).bind(tenant).fetch_optional(pool).await?;
                row.map(|row| {
                    use sqlx::Row as _;
                    row.try_get::<Json<CallQuality>, _>("figures").map(|j| j.0)
                })
                .transpose()
            })
        })
        .await
    }
}

const STORE_QUALITY: &str = "INSERT INTO call_quality \
     (call_id, measured_at, mos, jitter_seconds, frames_lost, playback_delay_seconds, figures) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (call_id) DO UPDATE SET measured_at = excluded.measured_at, \
     mos = excluded.mos, jitter_seconds = excluded.jitter_seconds, frames_lost = excluded.frames_lost, \
     playback_delay_seconds = excluded.playback_delay_seconds, figures = excluded.figures";
const QUALITY_FIGURES: &str = "SELECT figures FROM call_quality WHERE call_id = $1";
const GET_QUALITY: &str =
    "SELECT q.figures FROM call_quality q JOIN calls c ON c.id = q.call_id WHERE q.call_id = $1 AND c.tenant = $2";

/// The event `kind` about `call`: the call record as the API returns it (no media token), and
/// for `call.ended` its line quality (`null` when none was measured).
fn call_event(call: &Call, kind: EventType, quality: Option<Option<serde_json::Value>>) -> NewEvent {
    let mut data = serde_json::json!({ "call": call });
    if let Some(quality) = quality {
        data["quality"] = quality.unwrap_or(serde_json::Value::Null);
    }
    NewEvent::new(&call.tenant, call.id, kind, data)
}

/// A fresh media URL token (256 random bits, base64url) and the hash stored for it.
pub fn new_media_token() -> (String, String) {
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let hash = media_token_hash(&token);
    (token, hash)
}

/// SHA-256 (hex) of a media token: what the database keeps.
pub fn media_token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor { created_at: model::now(), id: Uuid::now_v7() };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "!!", "djE6", &URL_SAFE_NO_PAD.encode("v2:1:00000000000000000000000000000000")] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode(format!("{}:x", c.encode()))), None);
    }

    #[test]
    fn media_tokens_are_random_and_hashed() {
        let (a, ha) = new_media_token();
        let (b, hb) = new_media_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(a.len(), 43);
        assert_eq!(media_token_hash(&a), ha);
        assert_eq!(ha.len(), 64);
    }
}
