//! Provider failures as gRPC statuses, and the one place they are logged and sent to Sentry.

use providers::{ErrorCode, ProviderError};
use telemetry::ErrorContext;
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

/// Logs a final provider failure (after retries and failover) once, captures it to Sentry
/// when it is worth it, and returns the status the caller gets: the error's code and its
/// client-safe message, never a provider's body.
pub fn failed(operation: &'static str, error: &ProviderError) -> Status {
    let code = error.code();
    let provider = provider_of(error);
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
    Status::new(grpc_code(code), error.client_message())
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
        }
        assert!(!failed("chat", &ProviderError::Internal("lock poisoned at x.rs:3".into())).message().contains("x.rs"));
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
