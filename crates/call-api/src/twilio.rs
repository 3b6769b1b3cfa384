//! The Twilio carrier: `X-Twilio-Signature` verification, the TwiML that connects a call's media
//! stream, and outbound dialling through the Calls REST API.
//!
//! Signatures follow Twilio's definition: HMAC-SHA1, keyed with the auth token, over the full
//! URL Twilio requested followed by every POST parameter sorted by name, each name immediately
//! followed by its value; base64-encoded. The URL is `PUBLIC_BASE_URL` plus the request's path
//! and query, which is why `PUBLIC_BASE_URL` must be the address Twilio is given.

use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::Deserialize;
use sha1::Sha1;
use uuid::Uuid;

use crate::config::TwilioConfig;

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

/// A Twilio call SID: `CA` and 32 lowercase hexadecimal characters, exactly (a looser rule lets
/// a signed form be re-split into other parameters).
pub fn is_call_sid(sid: &str) -> bool {
    is_sid(sid, "CA")
}

/// A Twilio account SID as Twilio sends it: `AC` and 32 lowercase hexadecimal characters.
pub fn is_account_sid(sid: &str) -> bool {
    is_sid(sid, "AC")
}

fn is_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid[2..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where a call's media stream goes: the call's media WebSocket and the token it accepts.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    /// `ws(s)://…/v1/calls/{id}/media` (Twilio accepts no query string on a stream URL; the
    /// token travels as the `token` custom parameter of `start`).
    pub url: String,
    pub token: String,
}

impl StreamTarget {
    pub fn new(ws_base: &str, call_id: Uuid, token: String) -> Self {
        Self { url: format!("{ws_base}/v1/calls/{call_id}/media"), token }
    }
}

/// `<Response><Connect><Stream url="…"><Parameter name="token" value="…"/></Stream></Connect></Response>`.
pub fn connect_stream(target: &StreamTarget) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{}"><Parameter name="token" value="{}"/></Stream></Connect></Response>"#,
        xml_escape(&target.url),
        xml_escape(&target.token)
    )
}

/// `<Response><Connect><Stream url="…"/></Connect></Response>`: the call's stream without a token
/// (a replayed webhook of a call whose media already connected: nothing new is handed out).
pub fn connect_stream_without_token(url: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{}"/></Connect></Response>"#,
        xml_escape(url)
    )
}

/// TwiML that ends the call (for a call that has already ended here).
pub fn hangup() -> String {
    r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"#.to_string()
}

/// TwiML that refuses the call with a busy signal (this replica is at `LIVE_MAX_CALLS`).
pub fn reject_busy() -> String {
    r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>"#.to_string()
}

/// Escapes text for an XML attribute or element.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The base64 `X-Twilio-Signature` of a POST to `url` with form `params`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    mac(auth_token, url, params).map(|m| STANDARD.encode(m.finalize().into_bytes())).unwrap_or_default()
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Option<Hmac<Sha1>> {
    // HMAC accepts keys of any length, so this is always `Some`.
    let mut mac = <Hmac<Sha1>>::new_from_slice(auth_token.as_bytes()).ok()?;
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name (byte order, case-sensitive), then by value for repeated names.
    sorted.sort();
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    Some(mac)
}

/// Checks `signature` in constant time; a header that is not base64 never matches.
pub fn verify_signature(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(presented) = STANDARD.decode(signature.trim()) else { return false };
    mac(auth_token, url, params).is_some_and(|m| m.verify_slice(&presented).is_ok())
}

/// The URL as given and with its default port added or removed: Twilio signs the URL as it was
/// configured, and whether that carried `:443` is not ours to know (Twilio's own libraries
/// accept both the same way).
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else { return variants };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return variants,
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let without = authority.strip_suffix(&format!(":{default_port}"));
    match without {
        Some(host) => variants.push(format!("{scheme}://{host}{tail}")),
        None if !authority.ends_with(']') && authority.contains(':') => {}
        None => variants.push(format!("{scheme}://{authority}:{default_port}{tail}")),
    }
    variants
}

/// Decodes an `application/x-www-form-urlencoded` body into its pairs, in order.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Twilio's documented example (auth token `12345`; the URL of that example is
    /// `https://mycompany.com/…`, for which the published signature is `0/KCTR6DLpKmkAf8muzZqo1nDgQ=`).
    #[test]
    fn twilio_documented_signature() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(signature("12345", url, &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify_signature("12345", url, &params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        // Order of the parameters as sent does not matter.
        let mut shuffled = params.clone();
        shuffled.reverse();
        assert!(verify_signature("12345", url, &shuffled, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        // Anything else changed does.
        assert!(!verify_signature("12346", url, &params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        assert!(!verify_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        let mut changed = params.clone();
        changed[2].1 = "1235".into();
        assert!(!verify_signature("12345", url, &changed, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        let mut extra = params.clone();
        extra.push(("X".into(), String::new()));
        assert!(!verify_signature("12345", url, &extra, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        for bad in ["", "not base64!", "0/KCTR6DLpKmkAf8muzZqo1nDgQ", "AAAA"] {
            assert!(!verify_signature("12345", url, &params, bad), "{bad}");
        }
    }

    #[test]
    fn default_ports_are_tolerated() {
        assert_eq!(url_variants("https://a.test/x?y=1"), ["https://a.test/x?y=1", "https://a.test:443/x?y=1"]);
        assert_eq!(url_variants("https://a.test:443/x"), ["https://a.test:443/x", "https://a.test/x"]);
        assert_eq!(url_variants("http://a.test:8000/x"), ["http://a.test:8000/x"]);
        assert_eq!(url_variants("http://a.test"), ["http://a.test", "http://a.test:80"]);
        assert_eq!(url_variants("no-scheme"), ["no-scheme"]);
    }

    #[test]
    fn twiml_escapes_every_value() {
        let target = StreamTarget { url: "wss://h/v1/calls/1/media".into(), token: r#"a"b<c>&'d"#.into() };
        assert_eq!(
            connect_stream(&target),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h/v1/calls/1/media"><Parameter name="token" value="a&quot;b&lt;c&gt;&amp;&apos;d"/></Stream></Connect></Response>"#
        );
        let id = Uuid::nil();
        assert_eq!(StreamTarget::new("wss://h", id, "t".into()).url, format!("wss://h/v1/calls/{id}/media"));
    }

    #[test]
    fn call_sids() {
        assert!(is_call_sid("CA0123456789abcdef0123456789abcdef"));
        assert!(is_account_sid("AC0123456789abcdef0123456789abcdef"));
        for bad in [
            "AC0123456789abcdef0123456789abcdef",
            "CA",
            "CAé",
            "CA-1",
            "",
            "CA1234567890ABCDE",
            "CA0123456789ABCDEF0123456789ABCDEF",
            // A signed form re-split into another CallSid (the probe's case).
            "CA0123456789abcdef0123456789abcdefCallStatusringing",
            &format!("CA{}", "0".repeat(63)),
        ] {
            assert!(!is_call_sid(bad), "{bad}");
        }
    }

    #[test]
    fn forms_decode_plus_and_percent() {
        assert_eq!(
            parse_form(b"From=%2B1415&Caller=a+b&Empty="),
            pairs(&[("From", "+1415"), ("Caller", "a b"), ("Empty", "")])
        );
    }
}
