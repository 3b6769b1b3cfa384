//! Placing and ending the Twilio side of call-api's calls: dialling an outbound call created
//! with `provider: "twilio"`, hanging up the line of a call ended through the API, and ending a
//! call once whatever reports it first.

use super::{DialError, Twilio, twiml::StreamTarget};
use crate::{
    AppState,
    db::calls::EndError,
    error::ApiError,
    metrics,
    model::{Call, Direction, Outcome, Provider},
};

/// Ends `call` with `outcome` unless something ended it first; counts it once, and stops its
/// media session wherever it runs.
pub(crate) async fn end_once(state: &AppState, call: &Call, outcome: Outcome) -> Result<(), ApiError> {
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
