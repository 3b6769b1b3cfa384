//! The call lifecycle (SPEC §4): create, read, list and end calls. Every call belongs to the
//! tenant of the key that created it; another tenant's call is "not found", never "forbidden".

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    AppState,
    auth::Tenant,
    db::calls::{Cursor, EndError, ListFilter, NewCall, new_media_token},
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiQuery},
    metrics,
    model::{self, Call, Direction, Outcome, Provider, Status},
};

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_call))
        .routes(routes!(end))
        .routes(routes!(list_turns))
        .routes(routes!(get_quality))
}

/// `POST /v1/calls` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCall {
    pub provider: Provider,
    /// Caller in E.164, e.g. `+14155550100`.
    #[schema(example = "+14155550100")]
    pub from: String,
    /// Callee in E.164.
    #[schema(example = "+420123456789")]
    pub to: String,
    pub direction: Direction,
    /// Any JSON object: at most 64 keys of 1–64 characters, 4 levels deep, 16 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A new call with the URL its carrier streams media to.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedCall {
    #[serde(flatten)]
    pub call: Call,
    /// `ws(s)://…/v1/calls/{id}/media?token=…`: the token is valid for `MEDIA_TOKEN_TTL_SECONDS`
    /// and shown only here.
    pub media_url: String,
}

/// `POST /v1/calls/{id}/end` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndCall {
    pub outcome: Outcome,
}

/// `GET /v1/calls` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub status: Option<Status>,
    pub direction: Option<Direction>,
    pub provider: Option<Provider>,
    /// Only calls created strictly after this instant (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Only calls created strictly before this instant (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1–200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// A page of calls, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallList {
    pub calls: Vec<Call>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    // A malformed id names no call: the same answer as an unknown one.
    Uuid::try_parse(id).map_err(|_| ApiError::NotFound("call"))
}

/// Create a call.
#[utoipa::path(
    post, path = "/v1/calls", tag = "calls", security(("bearer" = [])),
    request_body = CreateCall,
    responses(
        (status = 201, description = "Created, status queued", body = CreatedCall),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field, unknown field or unknown provider; an outbound twilio call when \
                                      Twilio is not configured, or that Twilio refused (the call is then ended as failed)",
         body = ErrorBody),
        (status = 503, description = "Database unavailable; or Twilio unreachable for an outbound twilio call (the call \
                                      is then ended as failed)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiJson(body): ApiJson<CreateCall>,
) -> Result<(StatusCode, Json<CreatedCall>), ApiError> {
    // Numbers are personal data: the message names the field, never the value.
    if !model::is_e164(&body.from) {
        return Err(ApiError::Unprocessable("from must be an E.164 number: + and 8 to 15 digits".into()));
    }
    if !model::is_e164(&body.to) {
        return Err(ApiError::Unprocessable("to must be an E.164 number: + and 8 to 15 digits".into()));
    }
    let metadata = body.metadata.unwrap_or_else(|| serde_json::json!({}));
    model::check_metadata(&metadata).map_err(ApiError::Unprocessable)?;
    // Outbound Twilio calls are dialled through Twilio (refused here when it is not configured).
    let dialler = crate::twilio::calls::dialler(&state, body.provider, body.direction)?;
    let (token, media_token_hash) = new_media_token();
    let expires = chrono::Duration::from_std(state.media.token_ttl).unwrap_or(chrono::Duration::hours(1));
    let call = state
        .db
        .insert_call(NewCall {
            tenant: tenant.0,
            provider: body.provider,
            direction: body.direction,
            from: body.from,
            to: body.to,
            metadata,
            media_token_hash,
            media_token_expires_at: model::now() + expires,
        })
        .await?;
    let media_url = format!("{}/v1/calls/{}/media?token={token}", state.media.ws_base, call.id);
    tracing::info!(call_id = %call.id, "call created");
    if let Some(twilio) = dialler {
        crate::twilio::calls::dial(&state, &twilio, &call, token).await?;
    }
    Ok((StatusCode::CREATED, Json(CreatedCall { call, media_url })))
}

/// Get a call.
#[utoipa::path(
    get, path = "/v1/calls/{id}", tag = "calls", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Call id")),
    responses(
        (status = 200, body = Call),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such call for this key's tenant", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn get_call(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Call>, ApiError> {
    let id = parse_id(&id)?;
    state.db.get_call(&tenant.0, id).await?.map(Json).ok_or(ApiError::NotFound("call"))
}

/// List calls, newest first.
#[utoipa::path(
    get, path = "/v1/calls", tag = "calls", security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, body = CallList),
        (status = 400, description = "Unknown parameter, bad value or bad cursor", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 422, description = "limit out of range, or a time outside the years 1–9999", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<CallList>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Unprocessable(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    for (name, t) in [("created_after", params.created_after), ("created_before", params.created_before)] {
        if t.is_some_and(|t| !model::is_storable_instant(&t)) {
            return Err(ApiError::Unprocessable(format!("{name} must be between the years 1 and 9999")));
        }
    }
    let after = match params.cursor.as_deref() {
        None => None,
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))?),
    };
    let filter = ListFilter {
        status: params.status,
        direction: params.direction,
        provider: params.provider,
        created_after: params.created_after,
        created_before: params.created_before,
        after,
        limit,
    };
    let page = state.db.list_calls(&tenant.0, &filter).await?;
    Ok(Json(CallList { calls: page.calls, next_cursor: page.next.map(|c| c.encode()) }))
}

/// End a call with an outcome; the server records the duration.
#[utoipa::path(
    post, path = "/v1/calls/{id}/end", tag = "calls", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Call id")),
    request_body = EndCall,
    responses(
        (status = 200, description = "Ended", body = Call),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The call has already ended", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Unknown outcome or field", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
async fn end(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EndCall>,
) -> Result<Json<Call>, ApiError> {
    let id = parse_id(&id)?;
    let call = state.db.end_call(&tenant.0, id, body.outcome).await.map_err(|e| match e {
        EndError::NotFound => ApiError::NotFound("call"),
        EndError::AlreadyEnded => ApiError::Conflict("call has already ended".into()),
        EndError::Db(e) => e.into(),
    })?;
    let duration = call.duration_seconds.unwrap_or_default();
    metrics::call_ended(call.provider, body.outcome, duration);
    tracing::info!(call_id = %call.id, outcome = %body.outcome, duration_seconds = duration, "call ended");
    // A live call stops wherever its media session runs, and its phone line drops.
    state.replica.hang_up(call.id).await;
    if call.provider == Provider::Twilio {
        crate::twilio::calls::hang_up_line(&state, call.id).await;
    }
    Ok(Json(call))
}

/// The turns of a live call, in order.
#[utoipa::path(
    get, path = "/v1/calls/{id}/turns", tag = "calls", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Call id")),
    responses(
        (status = 200, body = TurnList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn list_turns(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<TurnList>, ApiError> {
    let id = parse_id(&id)?;
    state.db.get_call(&tenant.0, id).await?.ok_or(ApiError::NotFound("call"))?;
    Ok(Json(TurnList { turns: state.db.list_turns(&tenant.0, id).await? }))
}

/// A live call's conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnList {
    pub turns: Vec<crate::db::turns::Turn>,
}

/// How long after an ended call with media its line quality may still be on its way (its media
/// session stores it as it stops, which can be just after an end from the API).
const QUALITY_GRACE_SECONDS: i64 = 60;

/// A call's line quality: `pending` while the call runs (and shortly after it ends), then
/// `measured` with the figures its media session stored, or `unavailable` (the call had no live
/// media, or its replica was lost before storing them).
#[utoipa::path(
    get, path = "/v1/calls/{id}/quality", tag = "calls", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Call id")),
    responses(
        (status = 200, body = QualityReport),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn get_quality(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<QualityReport>, ApiError> {
    let id = parse_id(&id)?;
    let call = state.db.get_call(&tenant.0, id).await?.ok_or(ApiError::NotFound("call"))?;
    let quality = state.db.get_quality(&tenant.0, id).await?;
    let status = match (&quality, call.status, call.started_at, call.ended_at) {
        (Some(_), ..) => QualityStatus::Measured,
        (None, Status::Queued | Status::InProgress, ..) => QualityStatus::Pending,
        (None, Status::Ended, Some(_), Some(ended))
            if model::now() - ended < chrono::Duration::seconds(QUALITY_GRACE_SECONDS) =>
        {
            QualityStatus::Pending
        }
        (None, Status::Ended, ..) => QualityStatus::Unavailable,
    };
    Ok(Json(QualityReport { call_id: id, status, quality, cost: call.cost }))
}

/// Whether a call's line quality is there yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QualityStatus {
    /// The call is live (or ended less than a minute ago): the figures come when its media ends.
    Pending,
    /// The figures below were stored when the call's media ended.
    Measured,
    /// The call ended without figures: it never had live media, or its replica was lost.
    Unavailable,
}

/// A call's line quality (`GET /v1/calls/{id}/quality`).
#[derive(Debug, Serialize, ToSchema)]
pub struct QualityReport {
    pub call_id: Uuid,
    pub status: QualityStatus,
    /// The figures, when `status` is `measured`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::media::quality::CallQuality>,
    /// What the call cost, by capability (as on the call record): `null` when no prices file
    /// (`PROVIDER_PRICES_FILE`) was configured while it ran, or it has not used a provider yet.
    pub cost: Option<Box<crate::pricing::CostBreakdown>>,
}
