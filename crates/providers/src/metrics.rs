//! Every metric this crate records, in one place, with its help text and buckets.
//!
//! The service installs the global Prometheus recorder; it should register
//! [`HISTOGRAM_BUCKETS`] (the exporter renders histograms as summaries otherwise) and may call
//! [`describe`] once for the help texts. Label values are bounded: provider and operation
//! names are fixed, `outcome` comes from [`crate::ProviderError::outcome`], `model` is cut to
//! 64 characters.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// `provider_requests_total{provider,operation,outcome}`: one per attempt (retries count).
pub const REQUESTS_TOTAL: &str = "provider_requests_total";
/// `provider_request_duration_seconds{provider,operation}`: attempt start → result (for
/// streams: → end of stream).
pub const REQUEST_DURATION_SECONDS: &str = "provider_request_duration_seconds";
/// `provider_time_to_first_byte_seconds{provider,operation}`: attempt start → response head
/// (transcription), or → first token / first audio chunk (streams).
pub const TIME_TO_FIRST_BYTE_SECONDS: &str = "provider_time_to_first_byte_seconds";
/// `provider_tokens_total{provider,model,kind}`, kind = `prompt` | `completion`.
pub const TOKENS_TOTAL: &str = "provider_tokens_total";
/// `provider_failovers_total{operation,from,to}`.
pub const FAILOVERS_TOTAL: &str = "provider_failovers_total";
/// `provider_circuit_state{provider,operation}`: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "provider_circuit_state";
/// `provider_inflight_requests{provider}`.
pub const INFLIGHT_REQUESTS: &str = "provider_inflight_requests";

const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0];
const TTFB_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];

/// Each histogram this crate records and its explicit buckets (seconds). Alert thresholds
/// should be one of these boundaries.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] =
    &[(REQUEST_DURATION_SECONDS, LATENCY_BUCKETS), (TIME_TO_FIRST_BYTE_SECONDS, TTFB_BUCKETS)];

/// Register help texts and units with the installed recorder.
pub fn describe() {
    describe_counter!(REQUESTS_TOTAL, "Provider call attempts by outcome (success or error class)");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Provider call attempt duration; streams until their end"
    );
    describe_histogram!(
        TIME_TO_FIRST_BYTE_SECONDS,
        Unit::Seconds,
        "Time from sending a provider request to the response head (transcription) or the first token/audio chunk (streams)"
    );
    describe_counter!(TOKENS_TOTAL, "LLM tokens reported by providers, by kind (prompt, completion)");
    describe_counter!(FAILOVERS_TOTAL, "Moves from one provider to the next in the failover order");
    describe_gauge!(CIRCUIT_STATE, "Circuit breaker state per provider and operation: 0 closed, 1 half-open, 2 open");
    describe_gauge!(INFLIGHT_REQUESTS, "Provider calls in flight (streams count until they end)");
}

/// Outcomes of `provider_requests_total` started at zero: success and every error class
/// ([`crate::ProviderError::outcome`]) that a serving provider can report.
pub const OUTCOMES: &[&str] = &[
    "success",
    "cancelled",
    "invalid_argument",
    "rejected",
    "unauthorized",
    "rate_limited",
    "upstream_error",
    "connect_error",
    "first_byte_timeout",
    "stalled",
    "interrupted",
    "malformed",
    "deadline_exceeded",
    "circuit_open",
    "saturated",
    "internal",
];

/// Starts at zero the counters whose labels the configuration fixes, so that a first request,
/// error or failover shows in `increase()`: `provider_requests_total` for each provider in a
/// capability's failover order and each of [`OUTCOMES`], and `provider_failovers_total` for
/// each step of each order (`rows` is [`crate::Gateway::list_providers`]).
pub fn register_known(rows: &[crate::ProviderInfo]) {
    for capability in crate::Capability::ALL {
        let operation = capability.operation();
        let mut order: Vec<(usize, &str)> = rows
            .iter()
            .filter(|r| r.capability == capability && r.configured)
            .filter_map(|r| r.order.map(|o| (o, r.name.as_str())))
            .collect();
        order.sort_unstable();
        for (_, provider) in &order {
            for outcome in OUTCOMES {
                counter!(REQUESTS_TOTAL, "provider" => provider.to_string(), "operation" => operation, "outcome" => *outcome)
                    .absolute(0);
            }
        }
        for pair in order.windows(2) {
            counter!(FAILOVERS_TOTAL, "operation" => operation, "from" => pair[0].1.to_string(), "to" => pair[1].1.to_string())
                .absolute(0);
        }
    }
}

pub(crate) fn request(provider: &'static str, operation: &'static str, outcome: &'static str) {
    counter!(REQUESTS_TOTAL, "provider" => provider, "operation" => operation, "outcome" => outcome).increment(1);
}

pub(crate) fn duration(provider: &'static str, operation: &'static str, elapsed: Duration) {
    histogram!(REQUEST_DURATION_SECONDS, "provider" => provider, "operation" => operation)
        .record(elapsed.as_secs_f64());
}

pub(crate) fn ttfb(provider: &'static str, operation: &'static str, elapsed: Duration) {
    histogram!(TIME_TO_FIRST_BYTE_SECONDS, "provider" => provider, "operation" => operation)
        .record(elapsed.as_secs_f64());
}

pub(crate) fn tokens(provider: &'static str, model: &str, prompt: u64, completion: u64) {
    let model: String = model.chars().take(64).collect();
    counter!(TOKENS_TOTAL, "provider" => provider, "model" => model.clone(), "kind" => "prompt").increment(prompt);
    counter!(TOKENS_TOTAL, "provider" => provider, "model" => model, "kind" => "completion").increment(completion);
}

pub(crate) fn failover(operation: &'static str, from: &'static str, to: &'static str) {
    counter!(FAILOVERS_TOTAL, "operation" => operation, "from" => from, "to" => to).increment(1);
}

pub(crate) fn circuit_state(provider: &'static str, operation: &'static str, value: f64) {
    gauge!(CIRCUIT_STATE, "provider" => provider, "operation" => operation).set(value);
}

pub(crate) fn inflight(provider: &'static str, delta: f64) {
    gauge!(INFLIGHT_REQUESTS, "provider" => provider).increment(delta);
}
