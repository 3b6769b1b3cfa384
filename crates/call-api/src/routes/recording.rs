//! `POST /v1/calls/{id}/recording` and `GET /v1/calls/{id}/analysis`: a call's recording is
//! analysed (audio, transcript, sentiment) and the result stored on the call. The work is in
//! `recording/`; these are the HTTP handlers.

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    AppState,
    auth::Tenant,
    error::{ApiError, ErrorBody},
    extract::ApiQuery,
    metrics,
    recording::{document::AnalysisDocument, upload},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upload)).routes(routes!(get_analysis))
}

/// `POST /v1/calls/{id}/recording` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// Names of the parties per channel, comma-separated (e.g. `agent,caller`): 1–32 letters,
    /// digits, `_` or `-` each; default `channel_0`, `channel_1`.
    pub channel_labels: Option<String>,
    /// Language of the conversation for transcription (BCP-47, e.g. `en` or `en-US`); detected
    /// when absent.
    pub language: Option<String>,
}

/// Upload a call's recording; it is analysed, transcribed and scored, and the result stored.
#[utoipa::path(
    post, path = "/v1/calls/{id}/recording", tag = "calls", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Call id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: an upload with the key of a finished analysis answers with it instead of running again"),
        UploadParams,
    ),
    request_body(
        description = "A WAV file (PCM16, μ-law or A-law; mono, or stereo with one party per channel) as `audio/wav` (or `audio/x-wav`, `audio/wave`, `audio/vnd.wave`), or raw 8 kHz μ-law as `audio/basic`",
        content(("audio/wav"), ("audio/basic")),
    ),
    responses(
        (status = 200, description = "The analysis (`status` `done`); transcript and sentiment say per stage whether they were produced", body = AnalysisDocument),
        (status = 400, description = "Bad Idempotency-Key or unreadable body", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "A recording of this call is being analysed", body = ErrorBody),
        (status = 413, description = "Larger than RECORDING_MAX_BYTES", body = ErrorBody),
        (status = 415, description = "Not audio/wav or audio/basic, or not a WAV file", body = ErrorBody),
        (status = 422, description = "Empty, undecodable or unsupported audio; bad parameter; an Idempotency-Key already used with a different body (`idempotency_key_reused`)", body = ErrorBody),
        (status = 503, description = "audio-processor or a provider failed; the analysis is `failed` and may be retried", body = ErrorBody),
    )
)]
async fn upload(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.recording.max_bytes;
    let mut body = Some(body);
    let result = upload::receive(
        state,
        tenant,
        id,
        params.channel_labels.as_deref(),
        params.language.as_deref(),
        headers,
        &mut body,
    )
    .await;
    // Answered before reading the upload (conflict, replay, bad parameter): read it anyway, so
    // that the client, still sending, gets to see the answer instead of a reset connection.
    if let Some(unread) = body
        && !matches!(result, Err(ApiError::PayloadTooLarge(_)))
    {
        upload::drain(unread, limit).await;
    }
    if let Err(e) = &result
        && e.status().is_client_error()
        && !matches!(e, ApiError::NotFound(_) | ApiError::Conflict(_))
    {
        metrics::analysis_result("rejected");
    }
    // A body refused unread (too large) leaves the connection unusable: say so, so that the
    // client does not send its next request on it.
    match result {
        Err(e @ ApiError::PayloadTooLarge(_)) => {
            let mut response = e.into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok(response)
        }
        other => other,
    }
}

/// Get the analysis of a call's recording.
#[utoipa::path(
    get, path = "/v1/calls/{id}/analysis", tag = "calls", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Call id")),
    responses(
        (status = 200, description = "The analysis: pending, done, or failed with the reason", body = AnalysisDocument),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such call, or no recording uploaded for it", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn get_analysis(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<AnalysisDocument>, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::NotFound("call"))?;
    let row = state.db.get_analysis(&tenant.0, id).await?.ok_or(ApiError::NotFound("call"))?;
    upload::document(id, row, state.recording.analysis_timeout).map(Json).ok_or(ApiError::NotFound("analysis"))
}
