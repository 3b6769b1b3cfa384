//! The Twilio webhooks (SPEC §4): `POST /v1/twilio/voice` answers an inbound call with TwiML
//! that connects its media stream to the call's media WebSocket, and `POST /v1/twilio/status`
//! applies call status callbacks. Neither takes an API key: `X-Twilio-Signature` is their proof,
//! so without Twilio credentials they answer 503.
//!
//! Also here: dialling an outbound call created with `provider: "twilio"` (used by
//! `POST /v1/calls`).

use axum::{
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    db::calls::{EndError, NewCall, new_media_token},
    error::{ApiError, ErrorBody},
    metrics,
    model::{self, Call, Direction, Outcome, Provider, Status},
    twilio::{self, DialError, StreamTarget, Twilio},
};

/// Largest webhook body accepted (Twilio's are a few KiB).
pub const FORM_LIMIT: usize = 64 * 1024;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(voice)).routes(routes!(status))
}

/// A webhook request whose signature checked out: its form parameters, in the order sent.
pub struct SignedForm {
    pub twilio: Twilio,
    pub params: Vec<(String, String)>,
}

impl SignedForm {
    /// The first value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn call_sid(&self) -> Result<&str, ApiError> {
        if self.get("AccountSid").is_some_and(|a| !twilio::is_account_sid(a)) {
            return Err(ApiError::BadRequest("AccountSid is not an account SID (AC and 32 lowercase hex)".into()));
        }
        self.get("CallSid").filter(|s| twilio::is_call_sid(s)).ok_or_else(|| {
            ApiError::BadRequest("CallSid is missing or not a call SID (CA and 32 lowercase hex)".into())
        })
    }
}

impl FromRequest<AppState> for SignedForm {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(twilio) = state.twilio.clone() else {
            return Err(ApiError::UnavailableWith(
                "Twilio is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN): webhook signatures cannot be verified"
                    .into(),
            ));
        };
        if !is_form(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/x-www-form-urlencoded".into(),
            ));
        }
        let signature = req.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let path_and_query =
            req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |pq| pq.as_str().to_string());
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("webhook body is larger than {FORM_LIMIT} bytes"))
            } else {
                ApiError::BadRequest("could not read the request body".into())
            }
        })?;
        let Some(signature) = signature else {
            tracing::warn!(path = %path_only(&path_and_query), "Twilio webhook without X-Twilio-Signature refused");
            return Err(ApiError::Forbidden("X-Twilio-Signature is missing".into()));
        };
        let params = twilio::parse_form(&body);
        if !twilio.verify(&path_and_query, &params, &signature) {
            tracing::warn!(
                path = %path_only(&path_and_query),
                "Twilio webhook signature does not match (check TWILIO_AUTH_TOKEN and that PUBLIC_BASE_URL is the URL Twilio uses)"
            );
            return Err(ApiError::Forbidden("X-Twilio-Signature does not match this request".into()));
        }
        Ok(Self { twilio, params })
    }
}

fn path_only(path_and_query: &str) -> &str {
    path_and_query.split('?').next().unwrap_or(path_and_query)
}

/// `application/x-www-form-urlencoded`, parameters (charset) allowed.
fn is_form(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else { return false };
    ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
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
    let call_sid = form.call_sid()?.to_string();
    if state.shutdown.is_draining() {
        // Readiness has failed and Kubernetes stops routing here; Twilio tries again elsewhere.
        tracing::info!(carrier_call_id = %call_sid, "inbound Twilio call refused: this replica is shutting down");
        return Ok(twiml(twilio::reject_busy()));
    }
    if state.live.is_full() {
        // Refused before anything is stored: the caller hears busy, not a call that degrades.
        crate::metrics::request_limited("live_calls");
        tracing::warn!(carrier_call_id = %call_sid, "inbound Twilio call refused: this replica is at LIVE_MAX_CALLS");
        return Ok(twiml(twilio::reject_busy()));
    }
    // Numbers are personal data: a value that is not E.164 is dropped, not stored or logged.
    let number = |name: &str| form.get(name).filter(|n| model::is_e164(n)).unwrap_or_default().to_string();
    let (token, media_token_hash) = new_media_token();
    let expires =
        model::now() + chrono::Duration::from_std(state.media.token_ttl).unwrap_or(chrono::Duration::hours(1));
    let new = NewCall {
        tenant: form.twilio.tenant().to_string(),
        provider: Provider::Twilio,
        direction: Direction::Inbound,
        from: number("From"),
        to: number("To"),
        metadata: serde_json::json!({ "twilio": { "call_sid": call_sid } }),
        media_token_hash: media_token_hash.clone(),
        media_token_expires_at: expires,
    };
    let (call, created) = state.db.insert_carrier_call(new, &call_sid).await?;
    if created {
        tracing::info!(call_id = %call.id, carrier_call_id = %call_sid, "inbound Twilio call created");
    } else {
        if call.status == Status::Ended {
            tracing::info!(call_id = %call.id, carrier_call_id = %call_sid, "Twilio retried the voice webhook of an ended call");
            return Ok(twiml(twilio::hangup()));
        }
        if call.status == Status::InProgress {
            // Media connected already: Twilio used the first answer, so this is a replay. It gets
            // the same call's stream and no token (one stream per call; the live one is kept).
            tracing::warn!(call_id = %call.id, carrier_call_id = %call_sid, "voice webhook replayed after media connected; no new token");
            let target = StreamTarget::new(&state.media.ws_base, call.id, String::new());
            return Ok(twiml(twilio::connect_stream_without_token(&target.url)));
        }
        // A retry before media connected: Twilio did not use the first answer; this one carries
        // a fresh token and the previous one stops working. (A replay of a captured, signed
        // request in that window can do the same; the stream it gets is the call's own, and
        // the carrier's retry then gets a fresh token in turn.)
        state.db.renew_media_token(call.id, &media_token_hash, expires).await?;
        tracing::info!(call_id = %call.id, carrier_call_id = %call_sid, "Twilio retried the voice webhook");
    }
    Ok(twiml(twilio::connect_stream(&StreamTarget::new(&state.media.ws_base, call.id, token))))
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
    let call_sid = form.call_sid()?;
    let call_status = form.get("CallStatus").ok_or_else(|| ApiError::BadRequest("CallStatus is missing".into()))?;
    let outcome = match call_status {
        "completed" => Some(Outcome::Completed),
        "busy" | "no-answer" | "canceled" | "failed" => Some(Outcome::Failed),
        "queued" | "initiated" | "ringing" | "in-progress" => None,
        _ => return Err(ApiError::BadRequest("CallStatus is not a Twilio call status".into())),
    };
    let call = state.db.call_by_carrier_id(Provider::Twilio, call_sid).await?.ok_or(ApiError::NotFound("call"))?;
    tracing::info!(call_id = %call.id, carrier_call_id = %call_sid, call_status, "Twilio status callback");
    if let Some(outcome) = outcome {
        end_once(&state, &call, outcome).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Ends `call` with `outcome` unless something ended it first; counts it once, and stops its
/// media session wherever it runs.
async fn end_once(state: &AppState, call: &Call, outcome: Outcome) -> Result<(), ApiError> {
    match state.db.end_call(&call.tenant, call.id, outcome).await {
        Ok(ended) => {
            let duration = ended.duration_seconds.unwrap_or_default();
            metrics::call_ended(ended.provider, outcome, duration);
            tracing::info!(call_id = %ended.id, outcome = %outcome, duration_seconds = duration, "call ended");
            state.replica.hang_up(ended.id).await;
            Ok(())
        }
        // Already ended (by the media session, the API or an earlier callback): nothing to do.
        Err(EndError::AlreadyEnded | EndError::NotFound) => Ok(()),
        Err(EndError::Db(e)) => Err(e.into()),
    }
}

/// Hangs up the phone line of Twilio call `id` (ended through the API) through Twilio's Calls API,
/// when Twilio is configured and knows the call. The call is already ended here: a failure is
/// logged, not answered (the line then ends when the caller hangs up or Twilio's stream stops).
pub(crate) async fn hang_up_line(state: &AppState, id: uuid::Uuid) {
    let Some(twilio) = &state.twilio else { return };
    let sid = match state.db.carrier_call_id(id).await {
        Ok(Some(sid)) => sid,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(call_id = %id, error = %e, "could not read Twilio's call id to hang up the line");
            return;
        }
    };
    match twilio.hang_up(&sid).await {
        Ok(()) => tracing::info!(call_id = %id, carrier_call_id = %sid, "phone line hung up through Twilio"),
        Err(e) => tracing::warn!(call_id = %id, carrier_call_id = %sid, error = %e, "Twilio did not hang up the line"),
    }
}

/// Whether `POST /v1/calls` must dial this call through Twilio; checked before the call is
/// stored, so that an outbound Twilio call without credentials is refused and not left queued.
pub(crate) fn dialler(state: &AppState, provider: Provider, direction: Direction) -> Result<Option<Twilio>, ApiError> {
    if provider != Provider::Twilio || direction != Direction::Outbound {
        return Ok(None);
    }
    state.twilio.clone().map(Some).ok_or_else(|| {
        ApiError::Unprocessable(
            "outbound twilio calls are dialled through Twilio, which is not configured on this server \
             (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)"
                .into(),
        )
    })
}

/// Dials the stored outbound `call` through Twilio with its media stream and status callback.
/// If Twilio does not take the call, the call is ended with outcome `failed` (nothing is left
/// queued) and the error names the call; Twilio's own text is never passed on.
pub(crate) async fn dial(state: &AppState, twilio: &Twilio, call: &Call, token: String) -> Result<(), ApiError> {
    let target = StreamTarget::new(&state.media.ws_base, call.id, token);
    match twilio.dial(&call.from, &call.to, &target).await {
        Ok(sid) => {
            tracing::info!(call_id = %call.id, carrier_call_id = %sid, "outbound call placed through Twilio");
            // Twilio is dialling now: failing the request would invite a retry and a second
            // call, so a failure to store the id is logged (status callbacks then find no call;
            // the media stream still connects with its token).
            if let Err(e) = state.db.set_carrier_call_id(call.id, &sid).await {
                tracing::error!(call_id = %call.id, carrier_call_id = %sid, error = %e, "could not store Twilio's call id");
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(call_id = %call.id, error = %e, "Twilio did not place the call; ending it as failed");
            end_once(state, call, Outcome::Failed).await?;
            let ended = format!("call {} ended with outcome failed", call.id);
            Err(match e {
                DialError::Rejected { status: 401 | 403 | 404, .. } => {
                    ApiError::UnavailableWith(format!("Twilio refused this server's credentials; {ended}"))
                }
                DialError::Rejected { status, code } if (400..500).contains(&status) && status != 429 => {
                    let code = code.map_or_else(String::new, |c| format!(" (Twilio error {c})"));
                    ApiError::Unprocessable(format!("Twilio refused to place the call{code}; {ended}"))
                }
                DialError::Rejected { .. } => ApiError::UnavailableWith(format!("Twilio is unavailable; {ended}")),
                DialError::Unreachable(_) => ApiError::UnavailableWith(format!("Twilio could not be reached; {ended}")),
                DialError::BadAnswer => {
                    ApiError::UnavailableWith(format!("Twilio's answer could not be understood; {ended}"))
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_content_types() {
        let v = |s: &'static str| Some(header::HeaderValue::from_static(s));
        assert!(is_form(v("application/x-www-form-urlencoded").as_ref()));
        assert!(is_form(v("application/x-www-form-urlencoded; charset=UTF-8").as_ref()));
        assert!(!is_form(v("application/json").as_ref()));
        assert!(!is_form(v("multipart/form-data; boundary=x").as_ref()));
        assert!(!is_form(None));
    }
}
