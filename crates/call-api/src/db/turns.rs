//! The turns of a live conversation, stored as they happen: who spoke, what was said, when,
//! and for the agent's turns the latency stages and whether the caller interrupted.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Row as _, types::Json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Database, DbError, with_pool};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Caller,
    Agent,
}

impl Role {
    /// As stored and returned: `caller` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Agent => "agent",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "caller" => Some(Self::Caller),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }
}

/// One turn as stored and returned by `GET /v1/calls/{id}/turns`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Turn {
    /// Order in the call: caller turns are odd (1, 3, …), each answered by the agent turn after
    /// it; `0` is the agent's greeting (`LIVE_GREETING`), when there is one.
    pub seq: i64,
    /// `caller` or `agent`.
    #[schema(value_type = String)]
    pub role: Role,
    pub text: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Agent replies: latency stages in seconds (`end_of_turn`, `stt`, `llm_first_token`,
    /// `llm_first_sentence`, `tts_first_byte`, `overhead`, `total`) and `interrupted`.
    #[schema(value_type = Option<Object>)]
    pub latency: Option<serde_json::Value>,
    /// Agent turns: the caller talked over it (barge-in) and the rest was not played.
    pub interrupted: bool,
}

const INSERT: &str = "INSERT INTO call_turns (call_id, seq, role, text, started_at, ended_at, latency, interrupted) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (call_id, seq) DO UPDATE SET text = excluded.text, \
     ended_at = excluded.ended_at, latency = excluded.latency";
const INTERRUPTED: &str = "INSERT INTO call_turns (call_id, seq, role, text, started_at, interrupted) \
     VALUES ($1, $2, 'agent', '', $3, TRUE) ON CONFLICT (call_id, seq) DO UPDATE SET interrupted = TRUE";
const LIST: &str = "SELECT t.seq, t.role, t.text, t.started_at, t.ended_at, t.latency, t.interrupted FROM call_turns t \
     JOIN calls c ON c.id = t.call_id WHERE t.call_id = $1 AND c.tenant = $2 ORDER BY t.seq";

impl Database {
    pub async fn insert_turn(&self, call_id: Uuid, turn: &Turn) -> Result<(), DbError> {
        self.observe("insert_turn", INSERT, async {
            with_pool!(self, pool => sqlx::query(INSERT)
                .bind(call_id)
                .bind(turn.seq)
                .bind(turn.role.as_str())
                .bind(turn.text.as_str())
                .bind(turn.started_at)
                .bind(turn.ended_at)
                .bind(turn.latency.as_ref().map(Json))
                .bind(turn.interrupted)
                .execute(pool)
                .await
                .map(drop))
        })
        .await
    }

    /// Marks agent turn `seq` interrupted (creating it empty if its reply had not started).
    pub async fn mark_turn_interrupted(&self, call_id: Uuid, seq: i64) -> Result<(), DbError> {
        let now = crate::model::now();
        self.observe("mark_turn_interrupted", INTERRUPTED, async {
            with_pool!(self, pool => sqlx::query(INTERRUPTED).bind(call_id).bind(seq).bind(now).execute(pool).await.map(drop))
        })
        .await
    }

    /// The turns of call `id` of `tenant`, in order.
    pub async fn list_turns(&self, tenant: &str, id: Uuid) -> Result<Vec<Turn>, DbError> {
        self.observe("list_turns", LIST, async {
            with_pool!(self, pool => {
                let rows = sqlx::query(LIST).bind(id).bind(tenant).fetch_all(pool).await?;
                rows.iter()
                    .map(|row| {
                        let latency: Option<Json<serde_json::Value>> = row.try_get("latency")?;
                        Ok(Turn {
                            seq: i64::from(row.try_get::<i32, _>("seq")?),
                            role: Role::parse(row.try_get("role")?).ok_or_else(|| {
                                sqlx::Error::Decode("call_turns.role is neither caller nor agent".into())
                            })?,
                            text: row.try_get("text")?,
                            started_at: row.try_get("started_at")?,
                            ended_at: row.try_get("ended_at")?,
                            latency: latency.map(|j| j.0),
                            interrupted: row.try_get("interrupted")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            })
        })
        .await
    }
}
