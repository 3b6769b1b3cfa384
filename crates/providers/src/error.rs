//! The one error type of the provider layer and its mapping to gRPC-like codes.
//!
//! Every variant knows three things: the code the service returns (`code()`), a message that
//! is safe to show a client (`client_message()`: never a provider's raw text, a key or a
//! prompt), and how the resilience layer treats it (`is_retryable()`, `counts_against_circuit()`,
//! `allows_failover()`).

use std::fmt;
use std::time::Duration;

use crate::types::Capability;

/// gRPC-like status code names, as the service maps them onto `tonic::Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The provider (or every provider in the order) is down, rate limiting, stalled or its
    /// circuit is open: retrying later may succeed.
    Unavailable,
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// A local concurrency limit is full.
    ResourceExhausted,
    /// The request itself is wrong (empty audio, no messages, unsupported format…).
    InvalidArgument,
    /// Nothing is configured for this capability, or the provider refuses our credentials.
    FailedPrecondition,
    /// A provider answered something we could not understand, or a bug.
    Internal,
}

impl ErrorCode {
    /// The snake_case name (`unavailable`, `deadline_exceeded`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::ResourceExhausted => "resource_exhausted",
            Self::InvalidArgument => "invalid_argument",
            Self::FailedPrecondition => "failed_precondition",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in a provider call.
///
/// `Display` is meant for logs (it names the provider and the HTTP status but never includes a
/// provider's body); use [`ProviderError::client_message`] for anything a client sees.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The caller's request is unusable before any provider is asked.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No provider of the failover order for this capability is configured.
    #[error("no provider configured for {0}")]
    NotConfigured(Capability),
    /// The provider answered 400/404/413/415/422: it will reject this request again.
    #[error("{provider} rejected the request with http {status}")]
    Rejected {
        /// Provider name.
        provider: &'static str,
        /// HTTP status.
        status: u16,
    },
    /// The provider answered 401/403: our credentials are wrong.
    #[error("{provider} refused our credentials with http {status}")]
    Unauthorized {
        /// Provider name.
        provider: &'static str,
        /// HTTP status.
        status: u16,
    },
    /// The provider answered 429.
    #[error("{provider} is rate limiting (retry after {retry_after:?})")]
    RateLimited {
        /// Provider name.
        provider: &'static str,
        /// Parsed `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The provider answered 5xx (or another unexpected status).
    #[error("{provider} failed with http {status}")]
    Upstream {
        /// Provider name.
        provider: &'static str,
        /// HTTP status.
        status: u16,
        /// Parsed `Retry-After`, if any (503 may carry one).
        retry_after: Option<Duration>,
    },
    /// No connection could be made (refused, DNS, TLS, connect timeout) or it broke before
    /// the response head arrived.
    #[error("could not reach {provider}: {detail}")]
    Connect {
        /// Provider name.
        provider: &'static str,
        /// Short transport-level reason (no secrets: reqwest errors do not carry headers).
        detail: String,
    },
    /// The response head did not arrive within the first-byte timeout.
    #[error("{provider} sent no response within {timeout:?}")]
    FirstByteTimeout {
        /// Provider name.
        provider: &'static str,
        /// The timeout that fired.
        timeout: Duration,
    },
    /// A response body or stream produced no data within the idle timeout.
    #[error("{provider} stream stalled: no data for {timeout:?}")]
    Stalled {
        /// Provider name.
        provider: &'static str,
        /// The idle timeout that fired.
        timeout: Duration,
    },
    /// The connection broke while a body or stream was being read.
    #[error("{provider} connection broke mid-response: {detail}")]
    Interrupted {
        /// Provider name.
        provider: &'static str,
        /// Transport reason.
        detail: String,
    },
    /// The provider's answer was not what its API promises (bad JSON, bad SSE, error event).
    #[error("{provider} sent a malformed response: {detail}")]
    Malformed {
        /// Provider name.
        provider: &'static str,
        /// What was wrong (our words, not the provider's body).
        detail: String,
    },
    /// The caller's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// This provider's circuit breaker is open for the capability.
    #[error("{provider} circuit open for {capability}")]
    CircuitOpen {
        /// Provider name.
        provider: &'static str,
        /// Capability.
        capability: Capability,
    },
    /// This provider's local concurrency limit is full.
    #[error("{provider} concurrency limit of {limit} reached")]
    Saturated {
        /// Provider name.
        provider: &'static str,
        /// The configured limit.
        limit: usize,
    },
    /// A fault injected by the `simulated` provider.
    #[error("simulated provider fault")]
    SimulatedFault,
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProviderError {
    /// The gRPC-like code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) | Self::Rejected { .. } => ErrorCode::InvalidArgument,
            Self::NotConfigured(_) | Self::Unauthorized { .. } => ErrorCode::FailedPrecondition,
            Self::RateLimited { .. }
            | Self::Upstream { .. }
            | Self::Connect { .. }
            | Self::FirstByteTimeout { .. }
            | Self::Stalled { .. }
            | Self::Interrupted { .. }
            | Self::CircuitOpen { .. }
            | Self::SimulatedFault => ErrorCode::Unavailable,
            Self::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            Self::Saturated { .. } => ErrorCode::ResourceExhausted,
            Self::Malformed { .. } | Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// A message that is safe to return to a client: provider name and our own words only.
    pub fn client_message(&self) -> String {
        match self {
            Self::InvalidArgument(msg) => msg.clone(),
            Self::NotConfigured(cap) => format!("no {cap} provider is configured"),
            Self::Rejected { provider, status } => {
                format!("{provider} rejected the request (http {status})")
            }
            Self::Unauthorized { provider, .. } => {
                format!("{provider} is misconfigured: credentials were refused")
            }
            Self::RateLimited { provider, .. } => format!("{provider} is rate limiting requests"),
            Self::Upstream { provider, status, .. } => {
                format!("{provider} is failing (http {status})")
            }
            Self::Connect { provider, .. } => format!("{provider} could not be reached"),
            Self::FirstByteTimeout { provider, timeout } => {
                format!("{provider} did not answer within {} ms", timeout.as_millis())
            }
            Self::Stalled { provider, timeout } => {
                format!("{provider} stream stalled: no data for {} ms", timeout.as_millis())
            }
            Self::Interrupted { provider, .. } => {
                format!("{provider} connection broke mid-response")
            }
            Self::Malformed { provider, .. } => format!("{provider} sent an invalid response"),
            Self::DeadlineExceeded => "deadline exceeded".to_owned(),
            Self::CircuitOpen { provider, capability } => {
                format!("{provider} is temporarily disabled for {capability} after repeated failures")
            }
            Self::Saturated { provider, .. } => {
                format!("{provider} is at its concurrency limit, try again later")
            }
            Self::SimulatedFault => "simulated provider fault".to_owned(),
            Self::Internal(_) => "internal error".to_owned(),
        }
    }

    /// A bounded label for the `outcome` of `provider_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::NotConfigured(_) => "not_configured",
            Self::Rejected { .. } => "rejected",
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::Upstream { .. } => "upstream_error",
            Self::Connect { .. } => "connect_error",
            Self::FirstByteTimeout { .. } => "first_byte_timeout",
            Self::Stalled { .. } => "stalled",
            Self::Interrupted { .. } => "interrupted",
            Self::Malformed { .. } => "malformed",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Saturated { .. } => "saturated",
            Self::SimulatedFault => "simulated_fault",
            Self::Internal(_) => "internal",
        }
    }

    /// May the same provider be asked again (before any response byte reached the caller)?
    /// Only 429, 5xx and connection failures: a timeout means the provider is slow, so the
    /// next provider is a better bet than waiting again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Upstream { .. } | Self::Connect { .. })
    }

    /// The provider's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Upstream { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Does this outcome say something bad about the provider's health?
    /// Caller mistakes, the caller's own deadline and our local limit do not.
    pub fn counts_against_circuit(&self) -> bool {
        !matches!(
            self,
            Self::InvalidArgument(_)
                | Self::Rejected { .. }
                | Self::DeadlineExceeded
                | Self::Saturated { .. }
                | Self::CircuitOpen { .. }
                | Self::NotConfigured(_)
        )
    }

    /// Should the next provider in the order be tried? Not when our own validation refused
    /// the request or the deadline has passed. A provider's 4xx does fail over: it is often
    /// provider-specific (unknown model, unsupported parameter), and the next one may accept.
    pub fn allows_failover(&self) -> bool {
        !matches!(self, Self::InvalidArgument(_) | Self::DeadlineExceeded)
    }
}

/// Keep at most `max` characters of a provider's body and blank anything that looks like a
/// credential, so the result may be logged.
/// A provider's error body reduced to what cannot carry personal data: the machine-readable
/// `type`/`code` fields (OpenAI `error.type`/`error.code`, Deepgram `err_code`, …) when they are
/// short identifiers, and the body's size. Provider messages may quote what they were sent (a
/// prompt, a transcript), so their text is logged only with `PROVIDER_CAPTURE_CONTENT=true`.
pub(crate) fn error_summary(body: &str) -> String {
    let identifier = |v: &serde_json::Value| {
        v.as_str()
            .filter(|s| !s.is_empty() && s.len() <= 64)
            .filter(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
            .map(str::to_string)
            .or_else(|| v.as_i64().map(|n| n.to_string()))
    };
    let mut fields = Vec::new();
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(body) {
        for (path, value) in [
            ("error.type", &json["error"]["type"]),
            ("error.code", &json["error"]["code"]),
            ("type", &json["type"]),
            ("code", &json["code"]),
            ("err_code", &json["err_code"]),
        ] {
            if let Some(v) = identifier(value) {
                fields.push(format!("{path}={v}"));
            }
        }
    }
    fields.push(format!("{} bytes (text logged with PROVIDER_CAPTURE_CONTENT=true)", body.len()));
    fields.join(" ")
}

pub(crate) fn scrub_body(body: &str, secrets: &[&str], max: usize) -> String {
    let mut text: String = body.chars().take(max).collect();
    if body.chars().count() > max {
        text.push('…');
    }
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "[redacted]");
    }
    let mut out = String::with_capacity(text.len());
    let mut redact_next = false;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let lower = word.to_ascii_lowercase();
        if redact_next && word.len() >= 8 {
            out.push_str("[redacted]");
            redact_next = false;
            continue;
        }
        redact_next = lower == "bearer" || lower == "token" || lower.ends_with("key:");
        if looks_like_key(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
    }
    out
}

fn looks_like_key(word: &str) -> bool {
    let trimmed = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
    let prefixed =
        ["sk-", "sk_", "pk-", "rk-", "dg_", "key-"].iter().any(|p| trimmed.starts_with(p) && trimmed.len() >= 16);
    // Long unbroken alphanumeric runs with digits and letters are most likely tokens.
    let opaque = trimmed.len() >= 32
        && trimmed.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && trimmed.chars().any(|c| c.is_ascii_digit())
        && trimmed.chars().any(|c| c.is_ascii_alphabetic());
    prefixed || opaque
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_summaries_keep_codes_and_drop_text() {
        let openai = r#"{"error": {"message": "Incorrect API key provided: sk-abc. Caller said: my PIN is 1234",
                          "type": "invalid_request_error", "code": "invalid_api_key"}}"#;
        let s = error_summary(openai);
        assert!(s.starts_with("error.type=invalid_request_error error.code=invalid_api_key "), "{s}");
        assert!(!s.contains("PIN") && !s.contains("sk-abc"), "{s}");
        let deepgram = r#"{"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": "x"}"#;
        assert!(error_summary(deepgram).starts_with("err_code=INVALID_AUTH "));
        // Free text where a code should be is not a code.
        let sneaky = r#"{"error": {"type": "the caller said hello", "code": 429}}"#;
        assert_eq!(
            error_summary(sneaky),
            format!("error.code=429 {} bytes (text logged with PROVIDER_CAPTURE_CONTENT=true)", sneaky.len())
        );
        assert_eq!(
            error_summary("<html>Bad Gateway</html>"),
            "24 bytes (text logged with PROVIDER_CAPTURE_CONTENT=true)"
        );
    }

    #[test]
    fn codes_map_to_grpc_names() {
        assert_eq!(ProviderError::Saturated { provider: "openai", limit: 1 }.code().as_str(), "resource_exhausted");
        assert_eq!(ProviderError::DeadlineExceeded.code().as_str(), "deadline_exceeded");
        assert_eq!(ProviderError::NotConfigured(Capability::Stt).code().as_str(), "failed_precondition");
        assert_eq!(
            ProviderError::Stalled { provider: "openai", timeout: Duration::from_secs(1) }.code().as_str(),
            "unavailable"
        );
        assert_eq!(ProviderError::Rejected { provider: "openai", status: 400 }.code().as_str(), "invalid_argument");
    }

    #[test]
    fn scrub_removes_keys_and_truncates() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnop1234. Bearer abcdefgh12345678 used; secret s3cr3t-value"}}"#;
        let out = scrub_body(body, &["s3cr3t-value"], 1000);
        assert!(!out.contains("sk-proj-abcdefghijklmnop1234"), "{out}");
        assert!(!out.contains("abcdefgh12345678"), "{out}");
        assert!(!out.contains("s3cr3t-value"), "{out}");
        assert!(out.contains("Incorrect API key provided"));
        let long = "x".repeat(5000);
        assert_eq!(scrub_body(&long, &[], 100).chars().count(), 101);
    }

    #[test]
    fn client_messages_carry_no_body() {
        let err = ProviderError::Malformed { provider: "openai", detail: "expected value at line 1".into() };
        assert_eq!(err.client_message(), "openai sent an invalid response");
    }
}
