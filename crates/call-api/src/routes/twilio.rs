//! The Twilio webhooks (SPEC §4): `POST /v1/twilio/voice` answers an inbound call with TwiML
//! that connects its media stream to the call's media WebSocket, and `POST /v1/twilio/status`
//! applies call status callbacks. Neither takes an API key: `X-Twilio-Signature` is their proof
//! (`twilio::webhooks::SignedForm`), so without Twilio credentials they answer 503.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    twilio::webhooks::{self, SignedForm},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(voice)).routes(routes!(status))
}

fn twiml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

/// The parameters of Twilio's voice webhook that are used (Twilio sends more; all are signed).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct VoiceWebhook {
    /// Twilio's id of the call; a retried webhook with the same `CallSid` answers for the same call.
    #[schema(example = "CA0123456789abcdef0123456789abcdef")]
    CallSid: String,
    /// The caller; stored when it is E.164, else stored empty (e.g. `anonymous`, `client:…`).
    #[schema(example = "+14155550100")]
    From: Option<String>,
    /// The number called; stored when it is E.164, else stored empty.
    #[schema(example = "+420123456789")]
    To: Option<String>,
}

/// The parameters of Twilio's status callback that are used.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct StatusCallback {
    #[schema(example = "CA0123456789abcdef0123456789abcdef")]
    CallSid: String,
    /// `completed` ends the call (outcome `completed`); `busy`, `no-answer`, `canceled`, `failed`
    /// end it with outcome `failed`; `queued`, `initiated`, `ringing`, `in-progress` change nothing.
    #[schema(example = "completed")]
    CallStatus: String,
}

/// Inbound call webhook: creates the call and connects its media stream.
#[utoipa::path(
    post, path = "/v1/twilio/voice", tag = "twilio", security(("twilio_signature" = [])),
    request_body(content = VoiceWebhook, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "TwiML `<Connect><Stream>` to the call's media WebSocket (the media token is the \
                                      stream's `token` parameter); `<Hangup/>` when the call has already ended; `<Reject reason=\"busy\"/>` when \
                                      this replica is at LIVE_MAX_CALLS or shutting down",
         content_type = "text/xml", body = String),
        (status = 400, description = "CallSid missing or malformed", body = ErrorBody),
        (status = 403, description = "X-Twilio-Signature missing or wrong", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, description = "Not a form", body = ErrorBody),
        (status = 503, description = "Twilio is not configured, or the database is unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
async fn voice(State(state): State<AppState>, form: SignedForm) -> Result<Response, ApiError> {
    webhooks::answer_voice(&state, form).await.map(twiml)
}

/// Call status callback: ends the call when Twilio reports it over.
#[utoipa::path(
    post, path = "/v1/twilio/status", tag = "twilio", security(("twilio_signature" = [])),
    request_body(content = StatusCallback, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 204, description = "Applied (or nothing to change: the call had already ended)"),
        (status = 400, description = "CallSid or CallStatus missing or malformed", body = ErrorBody),
        (status = 403, description = "X-Twilio-Signature missing or wrong", body = ErrorBody),
        (status = 404, description = "No call has this CallSid", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, description = "Not a form", body = ErrorBody),
        (status = 503, description = "Twilio is not configured, or the database is unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
async fn status(State(state): State<AppState>, form: SignedForm) -> Result<StatusCode, ApiError> {
    webhooks::apply_status(&state, form).await.map(|()| StatusCode::NO_CONTENT)
}
