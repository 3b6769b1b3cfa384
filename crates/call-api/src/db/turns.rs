//! The turns of a live conversation, stored as they happen: who spoke, what was said, when,
//! how each caller turn ended (and at which stage and why when it failed), and for the agent's
//! turns the latency stages, whether the caller interrupted and whether it was the fallback line.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Row as _, types::Json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    Database, DbError,
    events::{EventType, NewEvent, insert_event},
    with_pool,
};

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

/// How a caller's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// The agent's reply reached the caller: its first frame was sent (the caller may talk
    /// over the rest: the agent turn's `interrupted` says so).
    Answered,
    /// The caller talked over the turn, or hung up, before any of its reply was sent.
    Interrupted,
    /// The utterance held no words (a cough, noise).
    NoSpeech,
    /// Transcription, the reply or speech synthesis failed (`stage`, `reason`).
    Failed,
}

impl TurnOutcome {
    /// As stored, returned and used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Interrupted => "interrupted",
            Self::NoSpeech => "no_speech",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Answered, Self::Interrupted, Self::NoSpeech, Self::Failed].into_iter().find(|o| o.as_str() == s)
    }
}

/// The stage of a turn that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Speech-to-text: hearing the caller.
    Stt,
    /// The chat completion: the reply.
    Llm,
    /// Text-to-speech: saying the reply.
    Tts,
}

impl Stage {
    /// As stored, returned and used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stt => "stt",
            Self::Llm => "llm",
            Self::Tts => "tts",
        }
    }

    /// The capability, as `GET /v1/providers` names it.
    pub fn capability(self) -> &'static str {
        match self {
            Self::Stt => "speech_to_text",
            Self::Llm => "chat",
            Self::Tts => "text_to_speech",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Stt, Self::Llm, Self::Tts].into_iter().find(|o| o.as_str() == s)
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
    /// Caller turns: how the turn ended; `null` while it is in progress (or when the replica
    /// carrying the call was lost during it). Agent turns: `null`.
    pub outcome: Option<TurnOutcome>,
    /// Failed caller turns: the stage that failed.
    pub stage: Option<Stage>,
    /// Failed and `no_speech` caller turns: why, in words safe to show a client.
    pub reason: Option<String>,
    /// Agent turns: this is the fallback line (`LIVE_FALLBACK_TEXT`) said after a failed turn.
    pub fallback: bool,
}

impl Turn {
    /// A turn of `role` at `seq` saying `text`, started at `started_at` and ended now.
    pub fn new(seq: i64, role: Role, text: String, started_at: DateTime<Utc>) -> Self {
        Self {
            seq,
            role,
            text,
            started_at,
            ended_at: Some(crate::model::now()),
            latency: None,
            interrupted: false,
            outcome: None,
            stage: None,
            reason: None,
            fallback: false,
        }
    }
}

const INSERT: &str = "INSERT INTO call_turns (call_id, seq, role, text, started_at, ended_at, latency, interrupted, \
     outcome, stage, reason, fallback) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (call_id, seq) DO UPDATE SET text = excluded.text, ended_at = excluded.ended_at, \
     latency = excluded.latency, outcome = excluded.outcome, stage = excluded.stage, reason = excluded.reason, \
     fallback = excluded.fallback";
const INTERRUPTED: &str = "INSERT INTO call_turns (call_id, seq, role, text, started_at, interrupted) \
     VALUES ($1, $2, 'agent', '', $3, TRUE) ON CONFLICT (call_id, seq) DO UPDATE SET interrupted = TRUE";
const LIST: &str = "SELECT t.seq, t.role, t.text, t.started_at, t.ended_at, t.latency, t.interrupted, t.outcome, \
     t.stage, t.reason, t.fallback FROM call_turns t \
     JOIN calls c ON c.id = t.call_id WHERE t.call_id = $1 AND c.tenant = $2 ORDER BY t.seq";

/// `INSERT` of `turn` of call `call_id`, bound (a macro: the query's type is each backend's).
macro_rules! bind_turn {
    ($call_id:expr, $turn:expr) => {{
        let turn: &Turn = $turn;
        sqlx::query(INSERT)
            .bind($call_id)
            .bind(turn.seq)
            .bind(turn.role.as_str())
            .bind(turn.text.as_str())
            .bind(turn.started_at)
            .bind(turn.ended_at)
            .bind(turn.latency.as_ref().map(Json))
            .bind(turn.interrupted)
            .bind(turn.outcome.map(TurnOutcome::as_str))
            .bind(turn.stage.map(Stage::as_str))
            .bind(turn.reason.as_deref())
            .bind(turn.fallback)
    }};
}

impl Database {
    /// Stores `turn` of call `call_id` of `tenant` (or completes it: a caller turn is stored
    /// when heard and again with its outcome). A completed turn (an agent turn, or a caller turn
    /// with its outcome) writes its `turn.completed` event in the same transaction
    /// ([`Database::insert_completed_turns`]); a caller turn stored as heard is one statement,
    /// without a transaction. The tenant comes from the caller (a live call knows it), which
    /// saves a query per completed turn.
    pub async fn insert_turn(&self, tenant: &str, call_id: Uuid, turn: &Turn) -> Result<(), DbError> {
        if turn.role == Role::Agent || turn.outcome.is_some() {
            return self.insert_completed_turns(tenant, call_id, &[turn]).await;
        }
        let write = async {
            // One statement is atomic by itself: no BEGIN and COMMIT (two round trips).
            with_pool!(self, pool => bind_turn!(call_id, turn).execute(pool).await.map(drop))
        };
        // No event: this replica's webhook worker is not woken to look for one.
        Box::pin(self.observe("insert_turn", INSERT, write)).await
    }

    /// Stores completed turns of call `call_id` of `tenant` in one transaction, in order, each
    /// with its `turn.completed` event: an answered turn's reply and the caller's turn with its
    /// outcome are one `BEGIN` and `COMMIT` (two round trips to the database fewer than two
    /// writes) and one wake-up of this replica's webhook worker.
    pub async fn insert_completed_turns(&self, tenant: &str, call_id: Uuid, turns: &[&Turn]) -> Result<(), DbError> {
        let write = async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                for &turn in turns {
                    bind_turn!(call_id, turn).execute(&mut *tx).await?;
                    let event =
                        NewEvent::new(tenant, call_id, EventType::TurnCompleted, serde_json::json!({ "turn": turn }));
                    insert_event!(&mut *tx, &event)?;
                }
                tx.commit().await
            })
        };
        Box::pin(self.observe_events("insert_turn", INSERT, write)).await
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
                            outcome: row
                                .try_get::<Option<&str>, _>("outcome")?
                                .map(|o| {
                                    TurnOutcome::parse(o)
                                        .ok_or_else(|| sqlx::Error::Decode("call_turns.outcome is unknown".into()))
                                })
                                .transpose()?,
                            stage: row
                                .try_get::<Option<&str>, _>("stage")?
                                .map(|o| {
                                    Stage::parse(o).ok_or_else(|| sqlx::Error::Decode("call_turns.stage is unknown".into()))
                                })
                                .transpose()?,
                            reason: row.try_get("reason")?,
                            fallback: row.try_get("fallback")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{
        DatabaseConfig,
        calls::{NewCall, new_media_token},
    };
    use crate::model::{Direction, Provider};

    /// A caller turn stored as heard is the turn alone: no `turn.completed` event, and the
    /// webhook worker (`events_written`) is not woken to look for one. Stored again with its
    /// outcome, and an agent turn, each write their event and wake it.
    #[tokio::test]
    async fn only_a_completed_turn_writes_an_event_and_wakes_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect(&DatabaseConfig::with_url(&format!("sqlite://{}/t.db", dir.path().display())))
            .await
            .unwrap();
        let call = db
            .insert_call(NewCall {
                tenant: "default".into(),
                provider: Provider::Websocket,
                direction: Direction::Inbound,
                from: String::new(),
                to: String::new(),
                metadata: serde_json::json!({}),
                media_token_hash: new_media_token().1,
                media_token_expires_at: crate::model::now(),
            })
            .await
            .unwrap();
        let mut written = db.events_written();
        written.mark_unchanged();
        let kinds = async || -> Vec<String> {
            db.call_events("default", call.id).await.unwrap().into_iter().map(|e| e.kind).collect()
        };
        let before = kinds().await;

        let mut heard = Turn::new(1, Role::Caller, "hello".into(), crate::model::now());
        heard.ended_at = None;
        db.insert_turn("default", call.id, &heard).await.unwrap();
        assert!(!written.has_changed().unwrap(), "a heard turn woke the webhook worker");
        assert_eq!(kinds().await, before, "a heard turn wrote an event");
        assert_eq!(db.list_turns("default", call.id).await.unwrap()[0].text, "hello");

        let mut answered = Turn::new(1, Role::Caller, "hello there".into(), heard.started_at);
        answered.outcome = Some(TurnOutcome::Answered);
        db.insert_turn("default", call.id, &answered).await.unwrap();
        assert!(written.has_changed().unwrap(), "the completed turn did not wake the webhook worker");
        written.mark_unchanged();
        db.insert_turn("default", call.id, &Turn::new(2, Role::Agent, "hi".into(), crate::model::now())).await.unwrap();
        assert!(written.has_changed().unwrap(), "the agent turn did not wake the webhook worker");
        let after = kinds().await;
        assert_eq!(&after[before.len()..], ["turn.completed", "turn.completed"]);
        let turns = db.list_turns("default", call.id).await.unwrap();
        assert_eq!(turns.len(), 2);
        assert_eq!((turns[0].text.as_str(), turns[0].outcome), ("hello there", Some(TurnOutcome::Answered)));

        // An answered turn's reply and the caller's outcome: one transaction, their events in
        // the order given (the reply first), the worker woken.
        written.mark_unchanged();
        let mut asked = Turn::new(3, Role::Caller, "and then".into(), crate::model::now());
        asked.outcome = Some(TurnOutcome::Answered);
        let reply = Turn::new(4, Role::Agent, "then this".into(), crate::model::now());
        db.insert_completed_turns("default", call.id, &[&reply, &asked]).await.unwrap();
        assert!(written.has_changed().unwrap(), "the completed turns did not wake the webhook worker");
        let events = db.call_events("default", call.id).await.unwrap();
        let last: Vec<_> =
            events[events.len() - 2..].iter().map(|e| (e.kind.as_str(), e.data["turn"]["seq"].clone())).collect();
        assert_eq!(last, [("turn.completed", serde_json::json!(4)), ("turn.completed", serde_json::json!(3))]);
        let turns = db.list_turns("default", call.id).await.unwrap();
        assert_eq!(
            turns.iter().map(|t| (t.seq, t.text.as_str())).collect::<Vec<_>>()[2..],
            [(3, "and then"), (4, "then this")]
        );
        assert_eq!(turns[2].outcome, Some(TurnOutcome::Answered));
    }
}
