//! Provider failures as gRPC statuses, and the one place they are logged and sent to Sentry.

use kraliki_proto::errors::{self, Reason};
use providers::{ErrorCode, ProviderError};
use telemetry::{ErrorContext, sentry_support::first_time};
use tonic::{Code, Status};

/// The gRPC code of a provider error.
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Internal => Code::Internal,
    }
}

/// The provider an error is about, `none` when it is about no provider in particular.
fn provider_of(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Rejected { provider, .. }
        | ProviderError::Unauthorized { provider, .. }
        | ProviderError::RateLimited { provider, .. }
        | ProviderError::Upstream { provider, .. }
        | ProviderError::Connect { provider, .. }
        | ProviderError::FirstByteTimeout { provider, .. }
        | ProviderError::Stalled { provider, .. }
        | ProviderError::Interrupted { provider, .. }
        | ProviderError::Malformed { provider, .. }
        | ProviderError::CircuitOpen { provider, .. }
        | ProviderError::Saturated { provider, .. } => provider,
        ProviderError::SimulatedFault => "simulated",
        ProviderError::InvalidArgument(_)
        | ProviderError::NotConfigured(_)
        | ProviderError::DeadlineExceeded
        | ProviderError::Internal(_) => "none",
    }
}

/// Is this worth a Sentry event? Not the caller's own mistakes or deadline, a capability left
/// unconfigured on purpose (logged at start) or our own concurrency limit (a load signal, in
/// metrics): under load those would flood Sentry with events nobody can act on.
fn is_reportable(error: &ProviderError) -> bool {
    !matches!(
        error,
        ProviderError::InvalidArgument(_)
            | ProviderError::DeadlineExceeded
            | ProviderError::NotConfigured(_)
            | ProviderError::Saturated { .. }
    )
}

/// A refusal that stays the same until someone changes the configuration (a provider not
/// configured, credentials or requests refused): one Sentry event per process for each.
fn is_configuration(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::NotConfigured(_) | ProviderError::Unauthorized { .. } | ProviderError::Rejected { .. }
    )
}

/// The capability an operation uses, as providers name it in errors (`stt`, `llm`, `tts`,
/// `sentiment`).
fn capability_of(operation: &str) -> &'static str {
    match operation {
        "transcribe" => "stt",
        "chat" => "llm",
        "synthesize" => "tts",
        _ => "sentiment",
    }
}

/// The structured reason a provider failure carries to callers (`google.rpc.ErrorInfo`).
fn reason_of(error: &ProviderError) -> Reason {
    match error {
        ProviderError::NotConfigured(_) => Reason::ProviderNotConfigured,
        ProviderError::Unauthorized { .. } | ProviderError::Rejected { .. } => Reason::ProviderRejected,
        ProviderError::InvalidArgument(_) => Reason::InvalidInput,
        ProviderError::Saturated { .. } => Reason::Busy,
        ProviderError::Internal(_) => Reason::Internal,
        _ => Reason::ProviderFailed,
    }
}

/// Logs a final provider failure (after retries and failover) once, captures it to Sentry
/// when it is worth it (a configuration refusal once per process and reason), and returns the
/// status the caller gets: the error's code, its client-safe message (never a provider's body)
/// and an `ErrorInfo` with the reason, `capability` and `provider`.
pub fn failed(operation: &'static str, error: &ProviderError) -> Status {
    let code = error.code();
    let provider = provider_of(error);
    let capability = capability_of(operation);
    let status = errors::status_with(
        grpc_code(code),
        error.client_message(),
        reason_of(error),
        [("capability", capability.to_string()), ("provider", provider.to_string())],
    );
    if is_configuration(error) {
        if first_time(format!("provider/{capability}/{provider}/{}", error.outcome())) {
            tracing::warn!(operation, provider, code = code.as_str(), error = %error, "provider refused by configuration");
            telemetry::capture_exception(
                error,
                ErrorContext::default()
                    .tag("provider", provider)
                    .tag("capability", capability)
                    .tag("operation", operation)
                    .tag("code", code.as_str()),
            );
        } else {
            tracing::info!(operation, provider, code = code.as_str(), error = %error, "provider refused by configuration");
        }
        return status;
    }
    if is_reportable(error) {
        // `Display` names the provider and the HTTP status, never a body, a key or a prompt.
        tracing::warn!(operation, provider, code = code.as_str(), error = %error, "provider request failed");
        telemetry::capture_exception(
            error,
            ErrorContext::default().tag("provider", provider).tag("operation", operation).tag("code", code.as_str()),
        );
    } else {
        tracing::info!(operation, provider, code = code.as_str(), error = %error, "provider request refused");
    }
    status
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn codes_and_messages_are_the_client_safe_ones() {
        let cases = [
            (ProviderError::Upstream { provider: "openai", status: 500, retry_after: None }, Code::Unavailable),
            (ProviderError::DeadlineExceeded, Code::DeadlineExceeded),
            (ProviderError::Saturated { provider: "deepgram", limit: 4 }, Code::ResourceExhausted),
            (ProviderError::InvalidArgument("audio is empty".into()), Code::InvalidArgument),
            (ProviderError::Unauthorized { provider: "openai", status: 401 }, Code::FailedPrecondition),
            (ProviderError::Malformed { provider: "openai", detail: "expected `:` at 1:9".into() }, Code::Internal),
            (ProviderError::Stalled { provider: "openai", timeout: Duration::from_secs(1) }, Code::Unavailable),
        ];
        for (error, code) in cases {
            let status = failed("chat", &error);
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(status.message(), error.client_message());
            let (_, metadata) = errors::info(&status).expect("an ErrorInfo");
            assert_eq!(metadata.get("capability").map(String::as_str), Some("llm"));
        }
        let not_configured = failed("transcribe", &ProviderError::NotConfigured(providers::Capability::Stt));
        assert_eq!(errors::reason(&not_configured), Some(Reason::ProviderNotConfigured));
        assert_eq!(errors::info(&not_configured).expect("info").1.get("capability").map(String::as_str), Some("stt"));
        assert!(!failed("chat", &ProviderError::Internal("lock poisoned at x.rs:3".into())).message().contains("x.rs"));
    }

    #[test]
    fn configuration_refusals_are_reported_once_per_process() {
        assert!(first_time("tts/openai/unauthorized".into()));
        assert!(!first_time("tts/openai/unauthorized".into()));
        assert!(first_time("stt/none/not_configured".into()));
        assert!(is_configuration(&ProviderError::Unauthorized { provider: "openai", status: 401 }));
        assert!(!is_configuration(&ProviderError::Upstream { provider: "openai", status: 500, retry_after: None }));
    }

    #[test]
    fn only_provider_faults_are_reported() {
        assert!(is_reportable(&ProviderError::Connect { provider: "openai", detail: "refused".into() }));
        assert!(!is_reportable(&ProviderError::DeadlineExceeded));
        assert!(!is_reportable(&ProviderError::NotConfigured(providers::Capability::Llm)));
        assert_eq!(
            provider_of(&ProviderError::CircuitOpen { provider: "deepgram", capability: providers::Capability::Stt }),
            "deepgram"
        );
    }
}
