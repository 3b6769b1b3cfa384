//! The TwiML call-api answers with: connect a call's media stream, hang up, refuse busy.

use uuid::Uuid;

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
