//! Live-call leases across replicas: the replica carrying a live call renews a lease on it (one
//! statement per tick for all its calls), and any replica ends calls whose lease expired
//! ("replica lost") and queued calls whose media token expired unused ("media never
//! connected"). Every end is a conditional update, so each call is ended once however many
//! replicas reap at the same time.

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use uuid::Uuid;

use super::{
    Database, DbError,
    calls::{call_columns, decode_call},
    with_pool,
};
use crate::model::{self, Call, Outcome};

/// Why the reaper ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// The replica carrying the live call stopped renewing its lease (crashed, killed, lost).
    ReplicaLost,
    /// The call stayed queued until its media token expired: no carrier ever connected.
    MediaNeverConnected,
}

impl Reaped {
    /// The `reason` label of `voice_calls_reaped_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::ReplicaLost => "replica_lost",
            Self::MediaNeverConnected => "media_never_connected",
        }
    }

    /// The call's `end_reason`.
    pub fn end_reason(self) -> &'static str {
        match self {
            Self::ReplicaLost => "replica lost",
            Self::MediaNeverConnected => "media never connected",
        }
    }
}

/// Live calls from before leases existed have none; one this old is surely not live any more.
const LEGACY_LIVE_CALL: chrono::Duration = chrono::Duration::hours(24);
/// Calls ended per reaper pass at most (the next pass takes the rest).
const REAP_BATCH: i64 = 200;

const RENEW: &str =
    "UPDATE calls SET lease_expires_at = $1 WHERE lease_owner = $2 AND status = 'in_progress' RETURNING id";
const EXPIRED_LIVE: &str = "SELECT id, started_at FROM calls WHERE status = 'in_progress' \
     AND (lease_expires_at < $1 OR (lease_expires_at IS NULL AND started_at < $2)) LIMIT CAST($3 AS INTEGER)";
const REAP_LIVE: &str = concat!(
    "UPDATE calls SET status = 'ended', outcome = 'failed', ended_at = $1, duration_seconds = $2, updated_at = $1, \
     end_reason = $3 WHERE id = $4 AND status = 'in_progress' \
     AND (lease_expires_at < $1 OR (lease_expires_at IS NULL AND started_at < $5)) RETURNING ",
    call_columns!()
);
// A call whose recording analysis was started is a recording's record, not a live call waiting
// for its carrier: it is left as it is.
const EXPIRED_QUEUED: &str = "SELECT id, created_at FROM calls WHERE status = 'queued' AND media_token_expires_at < $1 \
     AND analysis_status IS NULL LIMIT CAST($2 AS INTEGER)";
const REAP_QUEUED: &str = concat!(
    "UPDATE calls SET status = 'ended', outcome = 'failed', ended_at = $1, duration_seconds = $2, updated_at = $1, \
     end_reason = $3 WHERE id = $4 AND status = 'queued' AND media_token_expires_at < $1 \
     AND analysis_status IS NULL RETURNING ",
    call_columns!()
);
const CARRIER_ID: &str = "SELECT carrier_call_id FROM calls WHERE id = $1";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

impl Database {
    /// Renews the lease of every live call `owner` carries until `expires_at`; returns their ids
    /// (a call missing from them was ended elsewhere, or reaped).
    pub async fn renew_leases(&self, owner: &str, expires_at: DateTime<Utc>) -> Result<Vec<Uuid>, DbError> {
        self.observe("renew_leases", RENEW, async {
            with_pool!(self, pool => {
                let rows = sqlx::query(RENEW).bind(expires_at).bind(owner).fetch_all(pool).await?;
                rows.iter().map(|r| r.try_get::<Uuid, _>("id")).collect::<Result<Vec<_>, _>>()
            })
        })
        .await
    }

    /// Ends, once, every live call whose lease expired and every queued call whose media token
    /// expired unused (at most a batch of each per pass). Returns the calls this replica ended.
    pub async fn reap(&self, now: DateTime<Utc>) -> Result<Vec<(Call, Reaped)>, DbError> {
        let legacy = now - LEGACY_LIVE_CALL;
        let live: Vec<(Uuid, Option<DateTime<Utc>>)> = self
            .observe("expired_leases", EXPIRED_LIVE, async {
                with_pool!(self, pool => {
                    let rows = sqlx::query(EXPIRED_LIVE).bind(now).bind(legacy).bind(REAP_BATCH).fetch_all(pool).await?;
                    rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("started_at")?))).collect::<Result<Vec<_>, sqlx::Error>>()
                })
            })
            .await?;
        let queued: Vec<(Uuid, DateTime<Utc>)> = self
            .observe("expired_media_tokens", EXPIRED_QUEUED, async {
                with_pool!(self, pool => {
                    let rows = sqlx::query(EXPIRED_QUEUED).bind(now).bind(REAP_BATCH).fetch_all(pool).await?;
                    rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("created_at")?))).collect::<Result<Vec<_>, sqlx::Error>>()
                })
            })
            .await?;
        let mut ended = Vec::new();
        for (id, started_at) in live {
            let reason = Reaped::ReplicaLost;
            let duration = started_at.map(|s| model::seconds_between(s, now));
            let call = self
                .observe("reap_live_call", REAP_LIVE, async {
                    with_pool!(self, pool => {
                        let row = sqlx::query(REAP_LIVE)
                            .bind(now)
                            .bind(duration)
                            .bind(reason.end_reason())
                            .bind(id)
                            .bind(legacy)
                            .fetch_optional(pool)
                            .await?;
                        row.as_ref().map(|row| decode_call!(row)).transpose()
                    })
                })
                .await?;
            ended.extend(call.map(|c| (c, reason)));
        }
        for (id, created_at) in queued {
            let reason = Reaped::MediaNeverConnected;
            let duration = model::seconds_between(created_at, now);
            let call = self
                .observe("reap_queued_call", REAP_QUEUED, async {
                    with_pool!(self, pool => {
                        let row = sqlx::query(REAP_QUEUED)
                            .bind(now)
                            .bind(duration)
                            .bind(reason.end_reason())
                            .bind(id)
                            .fetch_optional(pool)
                            .await?;
                        row.as_ref().map(|row| decode_call!(row)).transpose()
                    })
                })
                .await?;
            ended.extend(call.map(|c| (c, reason)));
        }
        debug_assert!(ended.iter().all(|(c, _)| c.outcome == Some(Outcome::Failed)));
        Ok(ended)
    }

    /// The carrier's id of call `id` (Twilio's CallSid), when a carrier reported one.
    pub async fn carrier_call_id(&self, id: Uuid) -> Result<Option<String>, DbError> {
        self.observe("carrier_call_id", CARRIER_ID, async {
            with_pool!(self, pool => {
                let row = sqlx::query(CARRIER_ID).bind(id).fetch_optional(pool).await?;
                Ok(row.map(|r| r.try_get::<Option<String>, _>("carrier_call_id")).transpose()?.flatten())
            })
        })
        .await
    }

    /// `NOTIFY channel, payload` on PostgreSQL; nothing on SQLite (one replica: the in-process
    /// path is the only one). Returns whether a notice was sent.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<bool, DbError> {
        let super::Pool::Postgres(pool) = &self.pool else { return Ok(false) };
        self.observe("notify", NOTIFY, async {
            sqlx::query(NOTIFY).bind(channel).bind(payload).execute(pool).await.map(|_| true)
        })
        .await
    }
}
