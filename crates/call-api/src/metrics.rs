//! Every metric call-api records beyond the shared HTTP/gRPC ones (SPEC §6), with help text and
//! buckets. Labels are bounded: carrier names, outcomes, operation names, pool states.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::model::{Outcome, Provider};

/// Counter, +1 when a call ends: `provider` (carrier), `status` (the outcome).
pub const VOICE_CALLS_TOTAL: &str = "voice_calls_total";
/// Histogram observed when a call ends: `provider`.
pub const CALL_DURATION_SECONDS: &str = "call_duration_seconds";
/// Gauge of live media sessions on this replica: `provider`.
pub const ACTIVE_CALLS: &str = "active_calls";
/// Histogram of database statement latency: `operation`.
pub const DB_QUERY_DURATION_SECONDS: &str = "db_query_duration_seconds";
/// Counter of failed database statements: `operation`, `kind` (`unavailable` or `query`).
pub const DB_ERRORS_TOTAL: &str = "db_errors_total";
/// Gauge of pool connections: `state` (`idle`, `in_use`, `max`).
pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";
/// Gauge, 1 when the last database probe (every `DATABASE_PROBE_INTERVAL_SECONDS`, and each
/// readiness check) reached the database, else 0.
pub const DB_UP: &str = "db_up";

/// Histogram of recording analysis time per stage: `stage` (`audio`, `transcription`,
/// `sentiment`, `store`, `total`).
pub const CALL_ANALYSIS_STAGE_SECONDS: &str = "call_analysis_stage_seconds";
/// Counter of recording uploads by `result`: `done`, `failed` (ours or a provider's, retryable),
/// `rejected` (the upload was at fault), `replayed` (an Idempotency-Key answered from storage).
pub const CALL_ANALYSES_TOTAL: &str = "call_analyses_total";

/// Histogram of live-call turn latency: `stage` (`end_of_turn`, `stt`, `llm_first_token`,
/// `llm_first_sentence`, `tts_first_byte`, `overhead`, and `total`, their sum).
pub const VOICE_TURN_LATENCY_SECONDS: &str = "voice_turn_latency_seconds";
/// Counter of live-call caller turns by how they ended: `outcome` (`answered`, `interrupted`,
/// `no_speech`, `failed`); failed turns also carry `stage` (`stt`, `llm`, `tts`).
pub const VOICE_TURNS_TOTAL: &str = "voice_turns_total";
/// Counter of barge-ins (the caller talked over the agent, which stopped).
pub const VOICE_BARGE_INS_TOTAL: &str = "voice_barge_ins_total";
/// Counter of inbound media frames dropped because audio-processor fell behind.
pub const VOICE_MEDIA_FRAMES_DROPPED_TOTAL: &str = "voice_media_frames_dropped_total";

/// Turn latency: the default turn objective (`LIVE_TURN_SLO_SECONDS`, 1.5 s) is a boundary;
/// [`turn_latency_buckets`] adds another objective.
pub const TURN_LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];

/// [`TURN_LATENCY_BUCKETS`] with `slo` (seconds) among the boundaries, so that the share of
/// turns within the objective is exact: `le="<slo>"`.
pub fn turn_latency_buckets(slo: f64) -> Vec<f64> {
    let mut buckets = TURN_LATENCY_BUCKETS.to_vec();
    if slo.is_finite() && slo > 0.0 && !buckets.iter().any(|b| (b - slo).abs() < 1e-9) {
        buckets.push(slo);
        buckets.sort_by(f64::total_cmp);
    }
    buckets
}

/// Outcomes of a caller turn that carry no stage; `failed` carries one of [`TURN_FAILED_STAGES`].
pub const TURN_OUTCOMES: &[&str] = &["answered", "interrupted", "no_speech"];
/// Stages a failed turn is counted by.
pub const TURN_FAILED_STAGES: &[&str] = &["stt", "llm", "tts"];

/// Pipeline stages, from a few milliseconds (sentiment) to minutes (long transcriptions).
pub const CALL_ANALYSIS_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Phone calls last seconds to an hour; alert thresholds sit on these boundaries.
pub const CALL_DURATION_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0];
/// Requests refused by a limit, by limit.
pub const API_REQUESTS_LIMITED_TOTAL: &str = "api_requests_limited_total";
/// The limits counted in [`API_REQUESTS_LIMITED_TOTAL`].
pub const LIMITS: &[&str] = &[
    "header_size",
    "body_size",
    "body_timeout",
    "rate",
    "live_calls",
    "ws_message",
    "media_unauthenticated",
    "connections",
    "uploads",
    "analyses",
];
/// Live calls whose audio stream was reopened after audio-processor went away.
pub const VOICE_AUDIO_RECONNECTS_TOTAL: &str = "voice_audio_reconnects_total";
/// Live calls this replica accepts at once (`LIVE_MAX_CALLS`).
pub const VOICE_LIVE_CALLS_MAX: &str = "voice_live_calls_max";

/// Gauge of live calls still running while this replica drains (0 otherwise).
pub const VOICE_LIVE_CALLS_DRAINING: &str = "voice_live_calls_draining";
/// Counter of live calls ended because the drain bound passed or a second signal came.
pub const VOICE_CALLS_CUT_BY_SHUTDOWN_TOTAL: &str = "voice_calls_cut_by_shutdown_total";
/// Gauge of how long this replica has been draining, in seconds (0 when it is not).
pub const SHUTDOWN_DRAIN_SECONDS: &str = "shutdown_drain_seconds";
/// Counter of calls ended by the reaper: `reason` (`replica_lost`, `media_never_connected`).
pub const VOICE_CALLS_REAPED_TOTAL: &str = "voice_calls_reaped_total";
/// Gauge of a peer's endpoints in rotation (serving): `peer`.
pub const PEER_ENDPOINTS: &str = "peer_endpoints";
/// Gauge, 1 when at least one of a peer's endpoints serves: `peer`.
pub const PEER_UP: &str = "peer_up";
/// Counter of gRPC calls sent to another endpoint because the first could not be reached: `peer`.
pub const PEER_RETRIES_TOTAL: &str = "peer_retries_total";

/// Statement latency, from an in-process SQLite read to a slow network round trip.
pub const DB_QUERY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Describes the metrics and starts the gauges, and the counters whose label values are known in
/// advance (carriers × outcomes, turn outcomes, limits, …; never per-call values), at zero: a
/// first event then shows in `increase()` and dashboards see the series from the start.
pub fn init() {
    describe_counter!(VOICE_CALLS_TOTAL, "Calls ended, by carrier and outcome");
    describe_histogram!(CALL_DURATION_SECONDS, Unit::Seconds, "Call duration observed when a call ends, by carrier");
    describe_gauge!(ACTIVE_CALLS, "Live media sessions on this replica, by carrier");
    describe_histogram!(DB_QUERY_DURATION_SECONDS, Unit::Seconds, "Database statement latency, by operation");
    describe_counter!(DB_ERRORS_TOTAL, "Failed database statements, by operation and kind");
    describe_gauge!(DB_POOL_CONNECTIONS, "Database pool connections, by state (idle, in_use, max)");
    describe_gauge!(DB_UP, "1 when the last database probe or readiness check reached the database, else 0");
    describe_histogram!(CALL_ANALYSIS_STAGE_SECONDS, Unit::Seconds, "Recording analysis time, by pipeline stage");
    describe_counter!(CALL_ANALYSES_TOTAL, "Recording uploads, by result (done, failed, rejected, replayed)");
    describe_histogram!(
        VOICE_TURN_LATENCY_SECONDS,
        Unit::Seconds,
        "Live-call turn latency, end of caller speech to first reply audio, by stage"
    );
    describe_counter!(
        VOICE_TURNS_TOTAL,
        "Live-call caller turns by outcome (answered, interrupted, no_speech, failed); failed ones by stage too"
    );
    describe_counter!(VOICE_BARGE_INS_TOTAL, "Times the caller talked over the agent and the agent stopped");
    describe_counter!(
        VOICE_MEDIA_FRAMES_DROPPED_TOTAL,
        "Inbound media frames dropped because audio-processor fell behind"
    );
    describe_counter!(
        API_REQUESTS_LIMITED_TOTAL,
        "Requests refused by a limit: header_size, body_size, body_timeout, rate, live_calls, ws_message, media_unauthenticated, connections, uploads, analyses"
    );
    describe_gauge!(VOICE_LIVE_CALLS_MAX, "Live calls this replica accepts at once (LIVE_MAX_CALLS)");
    describe_counter!(
        VOICE_AUDIO_RECONNECTS_TOTAL,
        "Live calls whose audio-processor stream ended mid-call and was reopened"
    );
    counter!(VOICE_AUDIO_RECONNECTS_TOTAL).absolute(0);
    describe_gauge!(VOICE_LIVE_CALLS_DRAINING, "Live calls still running while this replica drains (0 otherwise)");
    describe_counter!(
        VOICE_CALLS_CUT_BY_SHUTDOWN_TOTAL,
        "Live calls ended by shutdown: the drain bound passed or a second signal came"
    );
    describe_gauge!(SHUTDOWN_DRAIN_SECONDS, Unit::Seconds, "How long this replica has been draining (0 when not)");
    describe_counter!(
        VOICE_CALLS_REAPED_TOTAL,
        "Calls ended by the reaper: replica_lost (lease expired), media_never_connected (token expired unused)"
    );
    describe_gauge!(PEER_ENDPOINTS, "Endpoints of a gRPC peer in rotation (serving), by peer");
    describe_gauge!(PEER_UP, "1 when at least one endpoint of a gRPC peer serves, else 0, by peer");
    describe_counter!(PEER_RETRIES_TOTAL, "gRPC calls sent to another endpoint because the first was unreachable");
    gauge!(VOICE_LIVE_CALLS_DRAINING).set(0.0);
    gauge!(SHUTDOWN_DRAIN_SECONDS).set(0.0);
    counter!(VOICE_CALLS_CUT_BY_SHUTDOWN_TOTAL).absolute(0);
    for reason in ["replica_lost", "media_never_connected"] {
        counter!(VOICE_CALLS_REAPED_TOTAL, "reason" => reason).absolute(0);
    }
    for peer in [crate::peers::AUDIO_PROCESSOR, crate::peers::PROVIDER_GATEWAY] {
        counter!(PEER_RETRIES_TOTAL, "peer" => peer).absolute(0);
    }
    for limit in LIMITS {
        counter!(API_REQUESTS_LIMITED_TOTAL, "limit" => *limit).absolute(0);
    }
    counter!(VOICE_BARGE_INS_TOTAL).absolute(0);
    counter!(VOICE_MEDIA_FRAMES_DROPPED_TOTAL).absolute(0);
    for result in ["done", "failed", "rejected", "replayed"] {
        counter!(CALL_ANALYSES_TOTAL, "result" => result).absolute(0);
    }
    for provider in Provider::ALL {
        gauge!(ACTIVE_CALLS, "provider" => provider.as_str()).set(0.0);
        for outcome in Outcome::ALL {
            counter!(VOICE_CALLS_TOTAL, "provider" => provider.as_str(), "status" => outcome.as_str()).absolute(0);
        }
    }
    for outcome in TURN_OUTCOMES {
        counter!(VOICE_TURNS_TOTAL, "outcome" => *outcome).absolute(0);
    }
    for stage in TURN_FAILED_STAGES {
        counter!(VOICE_TURNS_TOTAL, "outcome" => "failed", "stage" => *stage).absolute(0);
    }
}

/// Counts a request refused by `limit` (one of [`LIMITS`]).
pub fn request_limited(limit: &'static str) {
    counter!(API_REQUESTS_LIMITED_TOTAL, "limit" => limit).increment(1);
}

/// Counts a reopened audio stream.
pub fn audio_reconnected() {
    counter!(VOICE_AUDIO_RECONNECTS_TOTAL).increment(1);
}

/// Publishes the live-call cap.
pub fn live_calls_max(max: usize) {
    gauge!(VOICE_LIVE_CALLS_MAX).set(max as f64);
}

/// While draining: live calls still running and seconds spent.
pub fn drain_progress(live_calls: usize, elapsed: Duration) {
    gauge!(VOICE_LIVE_CALLS_DRAINING).set(live_calls as f64);
    gauge!(SHUTDOWN_DRAIN_SECONDS).set(elapsed.as_secs_f64());
}

/// Counts a live call ended by shutdown.
pub fn call_cut_by_shutdown() {
    counter!(VOICE_CALLS_CUT_BY_SHUTDOWN_TOTAL).increment(1);
}

/// Counts a call ended by the reaper.
pub fn call_reaped(reason: &'static str) {
    counter!(VOICE_CALLS_REAPED_TOTAL, "reason" => reason).increment(1);
}

/// Records one stage of a turn's latency.
pub fn turn_latency(stage: &'static str, seconds: f64) {
    histogram!(VOICE_TURN_LATENCY_SECONDS, "stage" => stage).record(seconds);
}

/// Counts one caller turn by how it ended (`stage` for failed ones).
pub fn turn_outcome(outcome: &'static str, stage: Option<&'static str>) {
    match stage {
        Some(stage) => counter!(VOICE_TURNS_TOTAL, "outcome" => outcome, "stage" => stage).increment(1),
        None => counter!(VOICE_TURNS_TOTAL, "outcome" => outcome).increment(1),
    }
}

pub fn barge_in() {
    counter!(VOICE_BARGE_INS_TOTAL).increment(1);
}

pub fn media_frame_dropped(frames: u64) {
    counter!(VOICE_MEDIA_FRAMES_DROPPED_TOTAL).increment(frames);
}

/// Records the time one pipeline stage took.
pub fn analysis_stage(stage: &'static str, seconds: f64) {
    histogram!(CALL_ANALYSIS_STAGE_SECONDS, "stage" => stage).record(seconds);
}

/// Counts a recording upload by its result.
pub fn analysis_result(result: &'static str) {
    counter!(CALL_ANALYSES_TOTAL, "result" => result).increment(1);
}

/// Records a call that has just ended (exactly once per call).
pub fn call_ended(provider: Provider, outcome: Outcome, duration_seconds: f64) {
    counter!(VOICE_CALLS_TOTAL, "provider" => provider.as_str(), "status" => outcome.as_str()).increment(1);
    histogram!(CALL_DURATION_SECONDS, "provider" => provider.as_str()).record(duration_seconds);
}

/// A live media session: `active_calls{provider}` counts it from [`ActiveCall::start`] until
/// the value is dropped, so a session that ends by error or panic is still uncounted.
#[derive(Debug)]
#[must_use = "the session counts as active only while this value lives"]
pub struct ActiveCall {
    provider: Provider,
}

impl ActiveCall {
    pub fn start(provider: Provider) -> Self {
        gauge!(ACTIVE_CALLS, "provider" => provider.as_str()).increment(1.0);
        Self { provider }
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        gauge!(ACTIVE_CALLS, "provider" => self.provider.as_str()).decrement(1.0);
    }
}

pub(crate) fn db_query(operation: &'static str, elapsed: Duration, error: Option<&'static str>) {
    histogram!(DB_QUERY_DURATION_SECONDS, "operation" => operation).record(elapsed.as_secs_f64());
    if let Some(kind) = error {
        counter!(DB_ERRORS_TOTAL, "operation" => operation, "kind" => kind).increment(1);
    }
}

pub(crate) fn db_pool(idle: usize, size: u32, max: u32) {
    let idle = idle as f64;
    gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set((f64::from(size) - idle).max(0.0));
    gauge!(DB_POOL_CONNECTIONS, "state" => "max").set(f64::from(max));
}

pub(crate) fn db_up(up: bool) {
    gauge!(DB_UP).set(if up { 1.0 } else { 0.0 });
}

/// Histogram of a live call's inbound interarrival jitter (RFC 3550), observed when it ends.
pub const VOICE_INBOUND_JITTER_SECONDS: &str = "voice_inbound_jitter_seconds";
/// Histogram of playback delay, observed per mark the carrier echoes (see SPEC "Call quality").
pub const VOICE_PLAYBACK_DELAY_SECONDS: &str = "voice_playback_delay_seconds";
/// Histogram of a live call's MOS estimate (simplified E-model), observed when it ends.
pub const VOICE_CALL_MOS: &str = "voice_call_mos";
/// Counter of a live call's inbound frames, added when it ends: `result` (`received`, `lost`,
/// `late`, `duplicated`, `unknown`).
pub const VOICE_INBOUND_FRAMES_TOTAL: &str = "voice_inbound_frames_total";
/// Counter of dead-air periods (neither side spoke for `LIVE_DEAD_AIR_SECONDS`).
pub const VOICE_DEAD_AIR_TOTAL: &str = "voice_dead_air_total";

/// Jitter: a few ms on a good line; a jitter buffer of 2 × 50 ms is a bad one.
pub const JITTER_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5];
/// Playback delay: tens of ms on a good line; above 300 ms callers talk over the agent.
pub const PLAYBACK_DELAY_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0];
/// MOS: 4.3–4.4 is G.711 at its best, below 3.6 many callers are dissatisfied (G.107 Annex B).
pub const MOS_BUCKETS: &[f64] = &[1.0, 1.5, 2.0, 2.5, 3.0, 3.3, 3.6, 3.8, 4.0, 4.1, 4.2, 4.3, 4.4, 4.5];
/// The `result`s of [`VOICE_INBOUND_FRAMES_TOTAL`].
pub const INBOUND_FRAME_RESULTS: &[&str] = &["received", "lost", "late", "duplicated", "unknown"];

/// Describes the line-quality metrics and starts their counters at zero (once per process).
pub fn quality_init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_histogram!(
            VOICE_INBOUND_JITTER_SECONDS,
            Unit::Seconds,
            "Inbound interarrival jitter (RFC 3550) of a live call, observed when it ends"
        );
        describe_histogram!(
            VOICE_PLAYBACK_DELAY_SECONDS,
            Unit::Seconds,
            "How much later than due the carrier finished playing a sentence (its mark's echo), per mark"
        );
        describe_histogram!(VOICE_CALL_MOS, "MOS estimate (simplified E-model) of a live call, observed when it ends");
        describe_counter!(
            VOICE_INBOUND_FRAMES_TOTAL,
            "Inbound media frames of ended live calls, by result (received, lost, late, duplicated, unknown)"
        );
        describe_counter!(
            VOICE_DEAD_AIR_TOTAL,
            "Periods where neither the caller nor the agent spoke for LIVE_DEAD_AIR_SECONDS"
        );
        for result in INBOUND_FRAME_RESULTS {
            counter!(VOICE_INBOUND_FRAMES_TOTAL, "result" => *result).absolute(0);
        }
        counter!(VOICE_DEAD_AIR_TOTAL).absolute(0);
    });
}

/// A mark came back `seconds` later than its audio was due to end.
pub fn playback_delay(seconds: f64) {
    histogram!(VOICE_PLAYBACK_DELAY_SECONDS).record(seconds);
}

/// A live call's line quality, when it ends.
pub fn call_quality(q: &crate::media::quality::CallQuality) {
    histogram!(VOICE_INBOUND_JITTER_SECONDS).record(q.inbound.jitter_seconds);
    if let Some(e) = &q.estimate {
        histogram!(VOICE_CALL_MOS).record(e.mos);
    }
    let i = &q.inbound;
    for (result, n) in [
        ("received", i.frames_received),
        ("lost", i.frames_lost),
        ("late", i.frames_late),
        ("duplicated", i.frames_duplicated),
        ("unknown", i.frames_unknown),
    ] {
        counter!(VOICE_INBOUND_FRAMES_TOTAL, "result" => result).increment(n);
    }
    counter!(VOICE_DEAD_AIR_TOTAL).increment(q.conversation.dead_air_count);
}

/// Counter of money spent on providers, in the prices file's currency (`PROVIDER_PRICES_FILE`):
/// `provider`, `model` (the prices file's entry, so the labels are the file's), `capability`
/// (`speech_to_text`, `chat`, `text_to_speech`), `currency`. Added when a live call or a
/// recording analysis settles its cost; usage without a price is not counted.
pub const PROVIDER_COST_TOTAL: &str = "provider_cost_total";
/// Histogram of what a call cost, observed when a live call ends and when a recording analysis
/// finishes, when every item of it had a price: `currency`.
pub const VOICE_CALL_COST: &str = "voice_call_cost";
/// From a tenth of a cent to tens of units of the currency.
pub const CALL_COST_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0];

/// Describes the cost metrics and starts `provider_cost_total` at zero for every entry of the
/// prices file.
pub fn cost_init(prices: Option<&crate::pricing::Prices>) {
    telemetry::metrics::describe_float_counter(
        PROVIDER_COST_TOTAL,
        "Money spent on providers in the prices file's currency, by provider, priced model, capability and currency",
    );
    describe_histogram!(
        VOICE_CALL_COST,
        "What a live call or a recording analysis cost when every item had a price, by currency"
    );
    if let Some(prices) = prices {
        for (provider, model, capability) in prices.entries() {
            telemetry::metrics::add_float_counter(
                PROVIDER_COST_TOTAL,
                &[
                    ("provider", provider),
                    ("model", model),
                    ("capability", capability.as_str()),
                    ("currency", prices.currency.as_str()),
                ],
                0.0,
            );
        }
    }
}

/// Records a settled cost: each priced item in `provider_cost_total`, the whole in
/// `voice_call_cost` when it is complete.
pub fn cost_settled(cost: &crate::pricing::CostBreakdown) {
    for item in &cost.items {
        if let (Some(amount), Some(model)) = (item.cost, item.priced_as.as_deref()) {
            telemetry::metrics::add_float_counter(
                PROVIDER_COST_TOTAL,
                &[
                    ("provider", item.provider.as_str()),
                    ("model", model),
                    ("capability", item.capability.as_str()),
                    ("currency", cost.currency.as_str()),
                ],
                amount,
            );
        }
    }
    if let Some(total) = cost.total {
        histogram!(VOICE_CALL_COST, "currency" => cost.currency.clone()).record(total);
    }
}

// ---- Webhooks ------------------------------------------------------------------------------------

/// Counter of webhook delivery attempts: `result` (`delivered`, `error`: will be retried,
/// `gave_up`: the event is 24 hours old).
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "webhook_deliveries_total";
/// Histogram of the time from an event to its successful delivery to an endpoint.
pub const WEBHOOK_DELIVERY_SECONDS: &str = "webhook_delivery_seconds";
/// Gauge: webhook deliveries not yet made (and events not yet fanned out to endpoints), all
/// replicas together.
pub const WEBHOOK_OUTBOX_PENDING: &str = "webhook_outbox_pending";
/// Gauge: age of the oldest event among those, 0 when none.
pub const WEBHOOK_OLDEST_PENDING_SECONDS: &str = "webhook_oldest_pending_seconds";
/// From a local receiver's few milliseconds to a day of retries.
pub const WEBHOOK_DELIVERY_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0];

/// Describes the webhook metrics and starts them at zero.
pub fn webhooks_init() {
    describe_counter!(
        WEBHOOK_DELIVERIES_TOTAL,
        "Webhook delivery attempts, by result (delivered, error: retried later, gave_up: after 24 hours)"
    );
    describe_histogram!(
        WEBHOOK_DELIVERY_SECONDS,
        Unit::Seconds,
        "Time from a call event to its delivery to an endpoint"
    );
    describe_gauge!(WEBHOOK_OUTBOX_PENDING, "Webhook deliveries (and events to fan out) not yet made, all replicas");
    describe_gauge!(
        WEBHOOK_OLDEST_PENDING_SECONDS,
        Unit::Seconds,
        "Age of the oldest event not yet delivered (0 when none)"
    );
    for result in ["delivered", "error", "gave_up"] {
        counter!(WEBHOOK_DELIVERIES_TOTAL, "result" => result).absolute(0);
    }
    gauge!(WEBHOOK_OUTBOX_PENDING).set(0.0);
    gauge!(WEBHOOK_OLDEST_PENDING_SECONDS).set(0.0);
}

/// Counts one delivery attempt.
pub fn webhook_attempt(result: &'static str) {
    counter!(WEBHOOK_DELIVERIES_TOTAL, "result" => result).increment(1);
}

/// Records a delivery made `seconds` after its event.
pub fn webhook_delivered(seconds: f64) {
    histogram!(WEBHOOK_DELIVERY_SECONDS).record(seconds.max(0.0));
}

/// The backlog gauges.
pub fn webhook_backlog(pending: i64, oldest_seconds: f64) {
    gauge!(WEBHOOK_OUTBOX_PENDING).set(pending as f64);
    gauge!(WEBHOOK_OLDEST_PENDING_SECONDS).set(oldest_seconds.max(0.0));
}

/// Gauge: event streams (`GET /v1/calls/{id}/events`) open on this replica.
pub const EVENT_STREAMS_OPEN: &str = "event_streams_open";
/// Counter: events deleted from the outbox after `EVENTS_RETENTION_DAYS`.
pub const EVENTS_DELETED_TOTAL: &str = "events_deleted_total";

/// Describes the event stream metrics and starts them at zero.
pub fn event_streams_init() {
    describe_gauge!(EVENT_STREAMS_OPEN, "Call event streams (Server-Sent Events) open on this replica");
    describe_counter!(EVENTS_DELETED_TOTAL, "Call events deleted from the outbox after EVENTS_RETENTION_DAYS");
    gauge!(EVENT_STREAMS_OPEN).set(0.0);
    counter!(EVENTS_DELETED_TOTAL).absolute(0);
}

/// Counts `n` events deleted by the retention.
pub fn events_deleted(n: u64) {
    counter!(EVENTS_DELETED_TOTAL).increment(n);
}

/// One open event stream: counted in [`EVENT_STREAMS_OPEN`] while it lives.
pub struct EventStreamOpen(());

impl EventStreamOpen {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        gauge!(EVENT_STREAMS_OPEN).increment(1.0);
        Self(())
    }
}

impl Drop for EventStreamOpen {
    fn drop(&mut self) {
        gauge!(EVENT_STREAMS_OPEN).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_turn_objective_is_a_bucket_boundary() {
        assert_eq!(turn_latency_buckets(1.5), TURN_LATENCY_BUCKETS, "1.5 is one already");
        let buckets = turn_latency_buckets(1.2);
        assert_eq!(buckets.len(), TURN_LATENCY_BUCKETS.len() + 1);
        let at = buckets.iter().position(|b| *b == 1.2).expect("1.2 inserted");
        assert_eq!((buckets[at - 1], buckets[at + 1]), (1.0, 1.5), "in order: {buckets:?}");
        assert_eq!(*turn_latency_buckets(60.0).last().unwrap(), 60.0);
    }
}
