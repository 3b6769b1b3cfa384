//! The metrics this service records itself; the provider metrics (`provider_requests_total`,
//! latency, time to first byte, tokens, failovers, circuit state, in-flight calls) are recorded
//! by the `providers` crate, and the gRPC RED metrics by `telemetry`.

use metrics::{describe_gauge, gauge};
use providers::{Gateway, ProviderInfo};

use crate::convert::capability_name;

/// `provider_configured{provider,capability}`: 1 when the provider is in the capability's
/// failover order and has what it needs (a key, or a keyless base URL), else 0. Set at start:
/// the configuration does not change while the process runs.
pub const PROVIDER_CONFIGURED: &str = "provider_configured";

/// Registers help texts (ours and the providers crate's) with the installed recorder.
pub fn describe() {
    providers::metrics::describe();
    describe_gauge!(
        PROVIDER_CONFIGURED,
        "1 when the provider is listed for the capability and has its credentials or a keyless endpoint, else 0"
    );
}

/// Sets `provider_configured` for every provider that offers each capability.
pub fn record_configuration(rows: &[ProviderInfo]) {
    for row in rows {
        let configured = row.order.is_some() && row.configured;
        gauge!(PROVIDER_CONFIGURED, "provider" => row.name.clone(), "capability" => capability_name(row.capability))
            .set(if configured { 1.0 } else { 0.0 });
    }
}

/// One log line saying, per capability, which providers will serve it and in what order.
pub fn log_configuration(gateway: &Gateway) {
    let rows = gateway.list_providers();
    let serving = |capability| {
        let mut names: Vec<(usize, &str)> = rows
            .iter()
            .filter(|r| r.capability == capability && r.configured)
            .filter_map(|r| r.order.map(|o| (o, r.name.as_str())))
            .collect();
        names.sort_unstable();
        if names.is_empty() { "none".to_owned() } else { names.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(",") }
    };
    use providers::Capability::{Llm, Sentiment, Stt, Tts};
    tracing::info!(
        speech_to_text = %serving(Stt),
        chat = %serving(Llm),
        text_to_speech = %serving(Tts),
        sentiment = %serving(Sentiment),
        "providers configured"
    );
}
