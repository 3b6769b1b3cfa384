//! The recording analysis stored on a call. An upload first *claims* the analysis (a
//! compare-and-swap on `analysis_attempt`, so two uploads never run at once), then runs without
//! holding any connection or transaction while providers work, then stores the result with one
//! statement that only lands if its attempt still owns the analysis. An upload the client got
//! wrong (too large, not audio) *releases* its claim, restoring what was there before.

use chrono::{DateTime, Utc};
use sqlx::{Row as _, types::Json};
use uuid::Uuid;

use super::{
    Database, DbError,
    events::{EventType, NewEvent, insert_event},
    with_pool,
};
use crate::{
    model::{self, AnalysisStatus},
    recording::document::{AnalysisResults, Transcript},
};

/// The analysis columns of one call.
#[derive(Debug, Clone, Default)]
pub struct AnalysisRow {
    pub status: Option<AnalysisStatus>,
    pub error: Option<String>,
    /// The attempt that owns the analysis (a UUID), if any ever ran.
    pub attempt: Option<String>,
    pub idempotency_key: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub results: Option<AnalysisResults>,
    pub transcript: Option<Transcript>,
    /// SHA-256 (hex) of the recording a finished analysis was made from.
    pub body_sha256: Option<String>,
}

/// What a finished attempt stores.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: AnalysisStatus,
    pub error: Option<String>,
    pub results: Option<AnalysisResults>,
    pub transcript: Option<Transcript>,
}

const GET: &str = "SELECT analysis_status, analysis_error, analysis_attempt, analysis_idempotency_key, \
     analysis_started_at, analysis_completed_at, analysis, transcript, analysis_body_sha256 FROM calls \
     WHERE id = $1 AND tenant = $2";
const CLAIM: &str = "UPDATE calls SET analysis_status = 'pending', analysis_error = NULL, analysis_attempt = $1, \
     analysis_idempotency_key = $2, analysis_started_at = $3, analysis_completed_at = NULL, updated_at = $3, \
     analysis_body_sha256 = NULL WHERE id = $4 AND tenant = $5 AND analysis_attempt IS NOT DISTINCT FROM $6";
const RELEASE: &str = "UPDATE calls SET analysis_status = $1, analysis_error = $2, analysis_attempt = $3, \
     analysis_idempotency_key = $4, analysis_started_at = $5, analysis_completed_at = $6, updated_at = $7, \
     analysis_body_sha256 = $10 WHERE id = $8 AND analysis_attempt = $9";
const BODY_DIGEST: &str = "UPDATE calls SET analysis_body_sha256 = $1 WHERE id = $2 AND analysis_attempt = $3";
const FINISH: &str = "UPDATE calls SET analysis_status = $1, analysis_error = $2, analysis = $3, transcript = $4, \
     analysis_completed_at = $5, updated_at = $5 WHERE id = $6 AND analysis_attempt = $7 RETURNING tenant";

impl Database {
    /// The analysis columns of call `id` of `tenant`; `None` when there is no such call.
    pub async fn get_analysis(&self, tenant: &str, id: Uuid) -> Result<Option<AnalysisRow>, DbError> {
        self.observe("get_analysis", GET, async {
            with_pool!(self, pool => {
                let Some(row) = sqlx::query(GET).bind(id).bind(tenant).fetch_optional(pool).await? else {
                    return Ok(None);
                };
                let status = row
                    .try_get::<Option<String>, _>("analysis_status")?
                    .map(|s| {
                        AnalysisStatus::parse(&s)
                            .ok_or_else(|| sqlx::Error::Decode(format!("unexpected analysis_status {s:?}").into()))
                    })
                    .transpose()?;
                let results: Option<Json<AnalysisResults>> = row.try_get("analysis")?;
                let transcript: Option<Json<Transcript>> = row.try_get("transcript")?;
                Ok(Some(AnalysisRow {
                    status,
                    error: row.try_get("analysis_error")?,
                    attempt: row.try_get("analysis_attempt")?,
                    idempotency_key: row.try_get("analysis_idempotency_key")?,
                    started_at: row.try_get("analysis_started_at")?,
                    completed_at: row.try_get("analysis_completed_at")?,
                    results: results.map(|j| j.0),
                    transcript: transcript.map(|j| j.0),
                    body_sha256: row.try_get("analysis_body_sha256")?,
                }))
            })
        })
        .await
    }

    /// Claims the analysis of call `id` for a new attempt, if it is still owned by `previous`
    /// (the attempt read before); returns the new attempt, or `None` when another upload got
    /// there first.
    pub async fn claim_analysis(
        &self,
        tenant: &str,
        id: Uuid,
        previous: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, DbError> {
        let attempt = Uuid::now_v7().to_string();
        let now = model::now();
        let claimed = self
            .observe("claim_analysis", CLAIM, async {
                with_pool!(self, pool => sqlx::query(CLAIM)
                    .bind(attempt.as_str())
                    .bind(idempotency_key)
                    .bind(now)
                    .bind(id)
                    .bind(tenant)
                    .bind(previous)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected() == 1))
            })
            .await?;
        Ok(claimed.then_some(attempt))
    }

    /// Gives the analysis back as it was before `attempt` claimed it (`before`), if `attempt`
    /// still owns it. Used when the upload itself was at fault, so that it changes nothing.
    pub async fn release_analysis(&self, id: Uuid, attempt: &str, before: &AnalysisRow) -> Result<bool, DbError> {
        let now = model::now();
        self.observe("release_analysis", RELEASE, async {
            with_pool!(self, pool => sqlx::query(RELEASE)
                .bind(before.status.map(AnalysisStatus::as_str))
                .bind(before.error.as_deref())
                .bind(before.attempt.as_deref())
                .bind(before.idempotency_key.as_deref())
                .bind(before.started_at)
                .bind(before.completed_at)
                .bind(now)
                .bind(id)
                .bind(attempt)
                .bind(before.body_sha256.as_deref())
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1))
        })
        .await
    }

    /// Records the digest of the recording `attempt` analysed (while it still owns the analysis).
    pub async fn set_analysis_body_digest(&self, id: Uuid, attempt: &str, sha256: &str) -> Result<(), DbError> {
        self.observe("set_analysis_body_digest", BODY_DIGEST, async {
            with_pool!(self, pool => sqlx::query(BODY_DIGEST).bind(sha256).bind(id).bind(attempt).execute(pool).await.map(drop))
        })
        .await
    }

    /// Stores what `attempt` produced, with its `analysis.completed` event (one transaction);
    /// `false` when another attempt took the analysis over meanwhile (this one had been
    /// abandoned), in which case nothing is written.
    pub async fn finish_analysis(&self, id: Uuid, attempt: &str, finished: &Finished) -> Result<bool, DbError> {
        let now = model::now();
        Box::pin(self.observe_events("finish_analysis", FINISH, async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                let tenant: Option<String> = sqlx::query_scalar(FINISH)
                .bind(finished.status.as_str())
                .bind(finished.error.as_deref())
                .bind(finished.results.as_ref().map(Json))
                .bind(finished.transcript.as_ref().map(Json))
                .bind(now)
                .bind(id)
                .bind(attempt)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(tenant) = tenant else { return Ok(false) };
                let data = serde_json::json!({ "status": finished.status.as_str(), "error": finished.error });
                insert_event!(&mut *tx, &NewEvent::new(&tenant, id, EventType::AnalysisCompleted, data))?;
                tx.commit().await?;
                Ok(true)
            })
        }))
        .await
    }
}
