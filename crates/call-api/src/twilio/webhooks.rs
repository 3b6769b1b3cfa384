//! The signed webhooks: the extractor that proves `X-Twilio-Signature`, answering the voice
//! webhook (an inbound call) and applying status callbacks.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
};

use super::{Twilio, calls::end_once, twiml, twiml::StreamTarget};
use crate::{
    AppState,
    db::calls::{NewCall, new_media_token},
    error::ApiError,
    model::{self, Direction, Outcome, Provider, Status},
};

/// Largest webhook body accepted (Twilio's are a few KiB).
pub const FORM_LIMIT: usize = 64 * 1024;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

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
        if self.get("AccountSid").is_some_and(|a| !super::is_account_sid(a)) {
            return Err(ApiError::BadRequest("AccountSid is not an account SID (AC and 32 lowercase hex)".into()));
        }
        self.get("CallSid").filter(|s| super::is_call_sid(s)).ok_or_else(|| {
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
        let params = super::parse_form(&body);
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

/// Answers Twilio's voice webhook for an inbound call: the TwiML that connects its media stream.
pub async fn answer_voice(state: &AppState, form: SignedForm) -> Result<String, ApiError> {
    let call_sid = form.call_sid()?.to_string();
    if state.shutdown.is_draining() {
        // Readiness has failed and Kubernetes stops routing here; Twilio tries again elsewhere.
        tracing::info!(carrier_call_id = %call_sid, "inbound Twilio call refused: this replica is shutting down");
        return Ok(twiml::reject_busy());
    }
    if state.live.is_full() {
        // Refused before anything is stored: the caller hears busy, not a call that degrades.
        crate::metrics::request_limited("live_calls");
        tracing::warn!(carrier_call_id = %call_sid, "inbound Twilio call refused: this replica is at LIVE_MAX_CALLS");
        return Ok(twiml::reject_busy());
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
            return Ok(twiml::hangup());
        }
        if call.status == Status::InProgress {
            // Media connected already: Twilio used the first answer, so this is a replay. It gets
            // the same call's stream and no token (one stream per call; the live one is kept).
            tracing::warn!(call_id = %call.id, carrier_call_id = %call_sid, "voice webhook replayed after media connected; no new token");
            let target = StreamTarget::new(&state.media.ws_base, call.id, String::new());
            return Ok(twiml::connect_stream_without_token(&target.url));
        }
        // A retry before media connected: Twilio did not use the first answer; this one carries
        // a fresh token and the previous one stops working. (A replay of a captured, signed
        // request in that window can do the same; the stream it gets is the call's own, and
        // the carrier's retry then gets a fresh token in turn.)
        state.db.renew_media_token(call.id, &media_token_hash, expires).await?;
        tracing::info!(call_id = %call.id, carrier_call_id = %call_sid, "Twilio retried the voice webhook");
    }
    Ok(twiml::connect_stream(&StreamTarget::new(&state.media.ws_base, call.id, token)))
}

/// Applies a status callback: ends the call when Twilio reports it over.
pub async fn apply_status(state: &AppState, form: SignedForm) -> Result<(), ApiError> {
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
        end_once(state, &call, outcome).await?;
    }
    Ok(())
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
