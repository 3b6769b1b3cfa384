//! Twilio's Calls REST API: dialling an outbound call with its media stream and status
//! callback, and hanging up a line.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;

use super::{
    TwilioConfig, is_call_sid,
    signature::{url_variants, verify_signature},
    twiml::{StreamTarget, connect_stream},
};

/// Bound on the whole REST request (connect, send, answer).
pub const API_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on connecting to the REST API.
pub const API_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The status callback events requested for outbound calls.
pub const STATUS_CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];
/// Path of the status callback webhook.
pub const STATUS_PATH: &str = "/v1/twilio/status";
/// Path of the inbound voice webhook.
pub const VOICE_PATH: &str = "/v1/twilio/voice";

/// What the webhooks and the dialler need: the credentials, where Twilio reaches us, and an
/// HTTP client for the REST API. Cheap to clone.
#[derive(Clone)]
pub struct Twilio {
    config: Arc<TwilioConfig>,
    /// `PUBLIC_BASE_URL`, without a trailing `/`.
    public_base_url: Arc<str>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Twilio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Twilio").field("account_sid", &self.config.account_sid).finish_non_exhaustive()
    }
}

impl Twilio {
    pub fn new(config: TwilioConfig, public_base_url: &str) -> anyhow::Result<Self> {
        telemetry::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(API_CONNECT_TIMEOUT)
            .timeout(API_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("voice-kraliki-call-api/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("build the Twilio HTTP client: {e}"))?;
        Ok(Self { config: Arc::new(config), public_base_url: public_base_url.trim_end_matches('/').into(), http })
    }

    /// The tenant of calls created by the inbound webhook.
    pub fn tenant(&self) -> &str {
        &self.config.tenant
    }

    /// The public URL Twilio requested for `path_and_query` (as received, e.g. `/v1/twilio/voice`).
    pub fn public_url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.public_base_url)
    }

    /// Whether `signature` (the `X-Twilio-Signature` header) signs this request.
    pub fn verify(&self, path_and_query: &str, params: &[(String, String)], signature: &str) -> bool {
        let url = self.public_url(path_and_query);
        url_variants(&url).iter().any(|u| verify_signature(self.config.auth_token.expose(), u, params, signature))
    }

    /// Places an outbound call whose audio is streamed to `media` and whose status is reported
    /// to the status webhook; returns Twilio's call SID.
    pub async fn dial(&self, from: &str, to: &str, media: &StreamTarget) -> Result<String, DialError> {
        let url = format!("{}/2010-04-01/Accounts/{}/Calls.json", self.config.api_base_url, self.config.account_sid);
        let twiml = connect_stream(media);
        let status_callback = self.public_url(STATUS_PATH);
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("To", to)
                .append_pair("From", from)
                .append_pair("Twiml", &twiml)
                .append_pair("StatusCallback", &status_callback)
                .append_pair("StatusCallbackMethod", "POST");
            for event in STATUS_CALLBACK_EVENTS {
                form.append_pair("StatusCallbackEvent", event);
            }
            form.finish()
        };
        let (status, body) = self.post_form(url, form).await?;
        if !status.is_success() {
            // Twilio's error document carries a numeric code; its text may repeat the numbers
            // dialled, so only the code is kept.
            let code = serde_json::from_slice::<ApiErrorDoc>(&body).ok().and_then(|d| d.code);
            return Err(DialError::Rejected { status: status.as_u16(), code });
        }
        let created: CreatedCall = serde_json::from_slice(&body).map_err(|_| DialError::BadAnswer)?;
        if !is_call_sid(&created.sid) {
            return Err(DialError::BadAnswer);
        }
        Ok(created.sid)
    }
}

impl Twilio {
    /// Hangs up call `call_sid` through the Calls API (`Status=completed`): the phone line of a
    /// call ended through our API drops too. A call Twilio already ended is not an error.
    pub async fn hang_up(&self, call_sid: &str) -> Result<(), DialError> {
        if !is_call_sid(call_sid) {
            return Err(DialError::BadAnswer);
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls/{call_sid}.json",
            self.config.api_base_url, self.config.account_sid
        );
        let (status, body) = self.post_form(url, "Status=completed".to_string()).await?;
        if status.is_success() {
            return Ok(());
        }
        let code = serde_json::from_slice::<ApiErrorDoc>(&body).ok().and_then(|d| d.code);
        // 21220: the call is not in progress (it ended already): nothing left to hang up.
        if code == Some(21220) {
            return Ok(());
        }
        Err(DialError::Rejected { status: status.as_u16(), code })
    }
}

impl Twilio {
    /// POSTs a form to Twilio's REST API with the account's credentials; the status and the
    /// (small: a larger one is not Twilio's) answer.
    async fn post_form(&self, url: String, form: String) -> Result<(reqwest::StatusCode, Vec<u8>), DialError> {
        let response = self
            .http
            .post(url)
            .basic_auth(&self.config.account_sid, Some(self.config.auth_token.expose()))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| DialError::Unreachable(if e.is_timeout() { "timed out" } else { "connection failed" }))?;
        let status = response.status();
        let body = read_limited(response, 64 * 1024).await.map_err(|_| DialError::Unreachable("answer cut off"))?;
        Ok((status, body))
    }
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ()> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(drop)? {
        if body.len() + chunk.len() > limit {
            return Err(());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct CreatedCall {
    sid: String,
}

#[derive(Deserialize)]
struct ApiErrorDoc {
    code: Option<u32>,
}

/// Why Twilio did not place a call.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("Twilio's API could not be reached ({0})")]
    Unreachable(&'static str),
    #[error("Twilio refused the call (HTTP {status}, Twilio error {code:?})")]
    Rejected { status: u16, code: Option<u32> },
    #[error("Twilio's answer was not a call")]
    BadAnswer,
}
