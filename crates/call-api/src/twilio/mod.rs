//! The Twilio carrier (SPEC §4).
//!
//! ```text
//! config.rs      TWILIO_* settings
//! signature.rs   X-Twilio-Signature, call and account SIDs, the signed form
//! twiml.rs       the TwiML answers (connect the media stream, hang up, refuse busy)
//! client.rs      the Calls REST API: dial, hang up
//! calls.rs       placing and ending the Twilio side of call-api's calls
//! webhooks.rs    the signed webhook extractor; answering the voice webhook, applying status callbacks
//! ```
//!
//! `routes/twilio.rs` holds only the two HTTP handlers.

pub mod calls;
pub mod client;
pub mod config;
pub mod signature;
pub mod twiml;
pub mod webhooks;

pub use client::{
    API_CONNECT_TIMEOUT, API_TIMEOUT, DialError, STATUS_CALLBACK_EVENTS, STATUS_PATH, Twilio, VOICE_PATH,
};
pub use config::TwilioConfig;
pub use signature::{is_account_sid, is_call_sid, parse_form, signature, verify_signature};
pub use twiml::{StreamTarget, connect_stream, connect_stream_without_token, hangup, reject_busy, xml_escape};

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::signature::url_variants;
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
