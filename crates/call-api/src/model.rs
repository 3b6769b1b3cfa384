//! The call record and its vocabulary (SPEC §4): carriers, directions, states, outcomes, and the
//! validation of what a client may send.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Declares a closed set of lowercase names stored as text and sent as JSON strings.
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(
    /// The carrier the call runs through.
    Provider { Twilio => "twilio", Telnyx => "telnyx", Vonage => "vonage", Plivo => "plivo", Sip => "sip", Websocket => "websocket" }
);
names!(
    /// Who placed the call.
    Direction { Inbound => "inbound", Outbound => "outbound" }
);
names!(
    /// `queued` → `in_progress` (media started) → `ended`.
    Status { Queued => "queued", InProgress => "in_progress", Ended => "ended" }
);
names!(
    /// How an ended call ended.
    Outcome { Completed => "completed", CallbackRequested => "callback_requested", Voicemail => "voicemail", Failed => "failed" }
);
names!(
    /// State of the recording analysis attached to a call.
    AnalysisStatus { Pending => "pending", Done => "done", Failed => "failed" }
);

/// A call as stored and as returned by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Call {
    pub id: Uuid,
    pub provider: Provider,
    pub direction: Direction,
    /// Caller, E.164.
    pub from: String,
    /// Callee, E.164.
    pub to: String,
    pub status: Status,
    /// Set once the call has ended.
    pub outcome: Option<Outcome>,
    /// Client-supplied JSON object, returned as sent.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// When media started (status `in_progress`).
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Seconds from media start (or from creation when there was no media) to the end.
    pub duration_seconds: Option<f64>,
    /// Recording analysis state; absent until a recording is uploaded.
    pub analysis_status: Option<AnalysisStatus>,
    /// Why the service ended a live call (e.g. `media connection lost`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// What the call cost, by capability (its live session and recording analyses together);
    /// `null` when no prices file (`PROVIDER_PRICES_FILE`) was configured while it ran, or it
    /// has not used a provider yet.
    pub cost: Option<Box<crate::pricing::CostBreakdown>>,
    #[serde(skip)]
    pub tenant: String,
}

/// The current time, at the precision both databases store (microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `+` then 2 to 15 digits, the first not zero (ITU-T E.164).
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else { return false };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// Limits on client `metadata`.
pub const METADATA_MAX_BYTES: usize = 16 * 1024;
pub const METADATA_MAX_KEYS: usize = 64;
pub const METADATA_MAX_KEY_LEN: usize = 64;
pub const METADATA_MAX_DEPTH: usize = 4;

/// Checks `metadata`: an object of at most 64 keys (each 1–64 characters), nested at most four
/// levels, at most 16 KiB as JSON.
pub fn check_metadata(value: &serde_json::Value) -> Result<(), String> {
    let Some(object) = value.as_object() else { return Err("metadata must be a JSON object".into()) };
    if object.len() > METADATA_MAX_KEYS {
        return Err(format!("metadata has more than {METADATA_MAX_KEYS} keys"));
    }
    if let Some(k) = object.keys().find(|k| k.is_empty() || k.chars().count() > METADATA_MAX_KEY_LEN) {
        let shown: String = k.chars().take(16).collect();
        return Err(format!("metadata key {shown:?} must be 1 to {METADATA_MAX_KEY_LEN} characters"));
    }
    if depth(value) > METADATA_MAX_DEPTH {
        return Err(format!("metadata is nested deeper than {METADATA_MAX_DEPTH} levels"));
    }
    // PostgreSQL's JSONB cannot hold U+0000; SQLite could: refused on both, the same way.
    if has_nul(value) {
        return Err("metadata must not contain the NUL character (\\u0000)".into());
    }
    let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > METADATA_MAX_BYTES {
        return Err(format!("metadata is larger than {METADATA_MAX_BYTES} bytes"));
    }
    Ok(())
}

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        _ => false,
    }
}

/// Whether `t` lies in the years 1–9999: what both databases store and compare alike
/// (PostgreSQL refuses instants far outside it).
pub fn is_storable_instant(t: &DateTime<Utc>) -> bool {
    use chrono::Datelike as _;
    (1..=9999).contains(&t.year())
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Seconds between two instants, never negative (clocks of two replicas may disagree).
pub fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn e164() {
        for ok in ["+14155550100", "+420123456789", "+12345678", "+123456789012345"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in
            ["14155550100", "+0123", "+1", "+12", "+1234567", "+1234567890123456", "+1 415", "+1-415", "", "+", "+١٢٣"]
        {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn metadata_limits() {
        assert!(check_metadata(&json!({})).is_ok());
        assert!(check_metadata(&json!({"crm": {"id": 7, "tags": ["a"]}})).is_ok());
        assert!(check_metadata(&json!([1])).is_err());
        assert!(check_metadata(&json!("x")).is_err());
        assert!(check_metadata(&json!({"": 1})).is_err());
        assert!(check_metadata(&json!({"a": {"b": {"c": {"d": {"e": 1}}}}})).is_err());
        let many: serde_json::Map<_, _> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(check_metadata(&serde_json::Value::Object(many)).is_err());
        assert!(check_metadata(&json!({"big": "x".repeat(METADATA_MAX_BYTES)})).is_err());
    }

    #[test]
    fn names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(*p));
            assert_eq!(serde_json::to_value(p).unwrap(), json!(p.as_str()));
        }
        assert_eq!(Outcome::parse("callback_requested"), Some(Outcome::CallbackRequested));
        assert_eq!(Status::parse("in_progress"), Some(Status::InProgress));
        assert_eq!(Provider::parse("skype"), None);
    }
}
