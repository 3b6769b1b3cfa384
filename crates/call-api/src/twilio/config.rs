//! Twilio settings (`TWILIO_*`).

use telemetry::{Reader, Secret};

/// The Twilio carrier integration: outbound dialling through the Calls REST API and the
/// `/v1/twilio/*` webhooks. Present only when both credentials are set.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    /// `TWILIO_ACCOUNT_SID`: `AC` followed by 32 hexadecimal characters.
    pub account_sid: String,
    /// `TWILIO_AUTH_TOKEN`: signs the webhooks (`X-Twilio-Signature`) and authenticates calls to
    /// the REST API.
    pub auth_token: Secret,
    /// `TWILIO_API_BASE_URL`: the REST API, default `https://api.twilio.com`.
    pub api_base_url: String,
    /// `TWILIO_TENANT`: the tenant that calls created by Twilio's inbound webhook belong to,
    /// default `default` (the tenant of API keys configured without one).
    pub tenant: String,
}

impl TwilioConfig {
    pub const DEFAULT_API_BASE_URL: &'static str = "https://api.twilio.com";

    /// Whether `sid` is a Twilio account SID: `AC` and 32 hexadecimal characters.
    pub fn is_account_sid(sid: &str) -> bool {
        sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Option<Self> {
        // Every name is read even when Twilio is off, so deployments may set them all.
        let sid = r.string("TWILIO_ACCOUNT_SID");
        let token = r.secret("TWILIO_AUTH_TOKEN");
        let api_base_url = r.url_or("TWILIO_API_BASE_URL", Self::DEFAULT_API_BASE_URL, &["http", "https"]);
        let tenant = r.string_or("TWILIO_TENANT", crate::auth::DEFAULT_TENANT);
        if tenant.is_empty() || !tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            r.error("TWILIO_TENANT", "must be letters, digits, - and _ only");
        }
        // The SID is not echoed: a token pasted into the wrong variable must not reach the log.
        if let Some(sid) = &sid
            && !Self::is_account_sid(sid)
        {
            r.error("TWILIO_ACCOUNT_SID", "must be AC followed by 32 hexadecimal characters (an account SID)");
        }
        match (sid, token) {
            (None, None) => None,
            (Some(_), None) => {
                r.error("TWILIO_AUTH_TOKEN", "must be set when TWILIO_ACCOUNT_SID is set");
                None
            }
            (None, Some(_)) => {
                r.error("TWILIO_ACCOUNT_SID", "must be set when TWILIO_AUTH_TOKEN is set");
                None
            }
            (Some(account_sid), Some(auth_token)) => {
                if auth_token.expose().chars().any(char::is_whitespace) {
                    r.error("TWILIO_AUTH_TOKEN", "must not contain whitespace");
                }
                Some(Self { account_sid, auth_token, api_base_url, tenant })
            }
        }
    }
}
