//! Every metric this crate records, in one place, with its help text and buckets.
//!
//! The service installs the global Prometheus recorder; it should register
//! [`HISTOGRAM_BUCKETS`] (the exporter renders histograms as summaries otherwise) and may call
//! [`describe`] once for the help texts. Label values are bounded: provider and operation
//! names are fixed, `outcome` comes from [`crate::ProviderError::outcome`], `model` is cut to
//! 64 characters.
//!
//! The `gen_ai_client_*` metrics follow the OpenTelemetry GenAI semantic conventions
//! ([`SEMCONV_VERSION`], development status) as Prometheus names: `gen_ai.client.token.usage`
//! → `gen_ai_client_token_usage`, `gen_ai.client.operation.duration` →
//! `gen_ai_client_operation_duration_seconds`, `gen_ai.client.operation.time_to_first_chunk`
//! → `gen_ai_client_operation_time_to_first_chunk_seconds`, with the conventions' bucket
//! boundaries. Their `gen_ai_request_model` is the configured model of the provider for the
//! operation, or `_OTHER` when a request named another one: a request never adds a series.

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

/// The OpenTelemetry semantic conventions release the `gen_ai` spans and metrics follow.
pub const SEMCONV_VERSION: &str = "1.38.0";

/// `gen_ai_client_token_usage{gen_ai_operation_name,gen_ai_provider_name,gen_ai_request_model,gen_ai_token_type}`:
/// tokens per chat completion, `gen_ai_token_type` = `input` | `output` (as the provider reports
/// them).
pub const GEN_AI_TOKEN_USAGE: &str = "gen_ai_client_token_usage";
/// `gen_ai_client_operation_duration_seconds{gen_ai_operation_name,gen_ai_provider_name,gen_ai_request_model[,error_type]}`:
/// one per attempt, start → result (streams: → end of stream); `error_type` (the `outcome` of
/// `provider_requests_total`) only on failure.
pub const GEN_AI_OPERATION_DURATION_SECONDS: &str = "gen_ai_client_operation_duration_seconds";
/// `gen_ai_client_operation_time_to_first_chunk_seconds{gen_ai_operation_name,gen_ai_provider_name,gen_ai_request_model}`:
/// streaming operations only (`chat`, `speech`), attempt start → first token / audio chunk.
pub const GEN_AI_TIME_TO_FIRST_CHUNK_SECONDS: &str = "gen_ai_client_operation_time_to_first_chunk_seconds";
/// `gen_ai_request_model` of a request that named a model other than the configured one.
pub const OTHER_MODEL: &str = "_OTHER";

/// The conventions' boundaries for `gen_ai.client.token.usage`.
const GEN_AI_TOKEN_BUCKETS: &[f64] = &[
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// The conventions' boundaries for `gen_ai.client.operation.duration` and
/// `gen_ai.client.operation.time_to_first_chunk`.
const GEN_AI_DURATION_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];

const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0];
const TTFB_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];

/// Each histogram this crate records and its explicit buckets (seconds). Alert thresholds
/// should be one of these boundaries.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (REQUEST_DURATION_SECONDS, LATENCY_BUCKETS),
    (TIME_TO_FIRST_BYTE_SECONDS, TTFB_BUCKETS),
    (GEN_AI_TOKEN_USAGE, GEN_AI_TOKEN_BUCKETS),
    (GEN_AI_OPERATION_DURATION_SECONDS, GEN_AI_DURATION_BUCKETS),
    (GEN_AI_TIME_TO_FIRST_CHUNK_SECONDS, GEN_AI_DURATION_BUCKETS),
];

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
    describe_histogram!(
        GEN_AI_TOKEN_USAGE,
        "Number of input and output tokens used per chat completion (OpenTelemetry gen_ai.client.token.usage)"
    );
    describe_histogram!(
        GEN_AI_OPERATION_DURATION_SECONDS,
        Unit::Seconds,
        "GenAI operation duration per provider attempt; streams until their end (OpenTelemetry gen_ai.client.operation.duration)"
    );
    describe_histogram!(
        GEN_AI_TIME_TO_FIRST_CHUNK_SECONDS,
        Unit::Seconds,
        "Time from sending a streaming request to its first chunk (OpenTelemetry gen_ai.client.operation.time_to_first_chunk)"
    );
}

/// The `gen_ai_*` labels of one attempt, fixed when it starts.
#[derive(Debug, Clone)]
pub(crate) struct GenAiLabels {
    pub operation: &'static str,
    pub provider: &'static str,
    /// The configured model, or [`OTHER_MODEL`].
    pub model: String,
}

impl GenAiLabels {
    /// Labels for an attempt that uses `model` where `configured` is the provider's model for
    /// the operation: any other model is [`OTHER_MODEL`], so that requests cannot add series.
    pub(crate) fn new(operation: &'static str, provider: &'static str, model: &str, configured: Option<&str>) -> Self {
        let model = if configured == Some(model) { model.chars().take(64).collect() } else { OTHER_MODEL.to_owned() };
        Self { operation, provider, model }
    }

    fn base(&self) -> [(&'static str, String); 3] {
        [
            ("gen_ai_operation_name", self.operation.to_owned()),
            ("gen_ai_provider_name", self.provider.to_owned()),
            ("gen_ai_request_model", self.model.clone()),
        ]
    }
}

pub(crate) fn gen_ai_duration(labels: &GenAiLabels, elapsed: Duration, error_type: Option<&'static str>) {
    let mut all: Vec<(&'static str, String)> = labels.base().into();
    if let Some(error_type) = error_type {
        all.push(("error_type", error_type.to_owned()));
    }
    histogram!(GEN_AI_OPERATION_DURATION_SECONDS, &all).record(elapsed.as_secs_f64());
}

pub(crate) fn gen_ai_first_chunk(labels: &GenAiLabels, elapsed: Duration) {
    histogram!(GEN_AI_TIME_TO_FIRST_CHUNK_SECONDS, &labels.base()).record(elapsed.as_secs_f64());
}

pub(crate) fn gen_ai_tokens(labels: &GenAiLabels, input: u64, output: u64) {
    for (kind, count) in [("input", input), ("output", output)] {
        let mut all: Vec<(&'static str, String)> = labels.base().into();
        all.push(("gen_ai_token_type", kind.to_owned()));
        histogram!(GEN_AI_TOKEN_USAGE, &all).record(count as f64);
    }
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
