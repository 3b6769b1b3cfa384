//! OpenTelemetry tracing: the tracer provider (exporting over OTLP when configured), the logger
//! provider (log records over OTLP when `OTEL_LOGS_EXPORTER=otlp`) and W3C `traceparent`
//! propagation through HTTP headers and gRPC metadata.
//!
//! A tracer provider is installed even without an exporter, so trace and span ids exist in every
//! log line and propagate between services whether or not spans leave the process.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::HeaderMap;
use opentelemetry::{
    KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    logs::{BatchLogProcessor, LogBatch, LogExporter, LogProcessor, SdkLogRecord, SdkLoggerProvider},
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler as SdkSampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    ServiceInfo,
    config::{OtlpProtocol, Sampler, TelemetryConfig},
};

/// The resource every span and log record of this service carries.
fn resource(info: &ServiceInfo, config: &TelemetryConfig) -> Resource {
    let service_name = config.otel_service_name.clone().unwrap_or_else(|| info.name.clone());
    let mut attributes = vec![
        KeyValue::new("service.version", config.release.clone().unwrap_or_else(|| info.version.clone())),
        KeyValue::new("deployment.environment.name", config.environment.clone()),
        KeyValue::new("vcs.ref.head.revision", info.git_sha.clone()),
    ];
    for (k, v) in &config.resource_attributes {
        attributes.push(KeyValue::new(k.clone(), v.clone()));
    }
    Resource::builder_empty().with_service_name(service_name).with_attributes(attributes).build()
}

/// Each OTLP export attempt is bounded, so a dead collector never holds a flush for long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The OTLP endpoint for one signal: gRPC takes the base; HTTP appends `/v1/traces` or `/v1/logs`.
fn signal_endpoint(config: &TelemetryConfig, path: &str) -> String {
    let endpoint = config.otlp_endpoint.clone().unwrap_or_default();
    match config.otlp_protocol {
        OtlpProtocol::Grpc => endpoint,
        OtlpProtocol::HttpProtobuf if endpoint.ends_with(path) => endpoint,
        OtlpProtocol::HttpProtobuf => format!("{}{path}", endpoint.trim_end_matches('/')),
    }
}

/// Builds the tracer provider for this service.
pub(crate) fn tracer_provider(
    info: &ServiceInfo,
    config: &TelemetryConfig,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let mut builder =
        SdkTracerProvider::builder().with_resource(resource(info, config)).with_sampler(sampler(config.sampler));
    if config.otlp_enabled() {
        let endpoint = signal_endpoint(config, "/v1/traces");
        let exporter = match config.otlp_protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()?,
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()?,
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(8192)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build());
    }
    Ok(builder.build())
}

/// Log records waiting for export at most; beyond this a record is dropped (and counted) rather
/// than held, so a slow or dead collector never costs a request more than a failed queue push.
pub const LOG_QUEUE_CAPACITY: usize = 2048;
/// Log records per OTLP export request.
const LOG_EXPORT_BATCH: usize = 512;

/// `telemetry_log_records_dropped_total{reason}`: log records that never reached the collector,
/// `reason` = `queue_full` (the export queue was at [`LOG_QUEUE_CAPACITY`]) or `export_failed`
/// (the collector refused, was unreachable, or did not answer within the export timeout).
pub const LOG_RECORDS_DROPPED_TOTAL: &str = "telemetry_log_records_dropped_total";
/// `telemetry_log_records_exported_total`: log records the collector accepted.
pub const LOG_RECORDS_EXPORTED_TOTAL: &str = "telemetry_log_records_exported_total";

/// Records accepted into the export queue and not yet handed to the exporter.
#[derive(Debug, Default)]
struct LogQueue {
    queued: AtomicUsize,
}

impl LogQueue {
    fn taken(&self, n: usize) {
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| Some(q.saturating_sub(n)));
    }
}

/// Counts what the exporter sent and what it lost.
#[derive(Debug)]
struct CountingLogExporter<E> {
    inner: E,
    queue: Arc<LogQueue>,
}

impl<E: LogExporter> LogExporter for CountingLogExporter<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        self.queue.taken(n);
        let result = self.inner.export(batch).await;
        if result.is_ok() {
            metrics::counter!(LOG_RECORDS_EXPORTED_TOTAL).increment(n as u64);
        } else {
            metrics::counter!(LOG_RECORDS_DROPPED_TOTAL, "reason" => "export_failed").increment(n as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The batch processor behind a counted bound: a record that would not fit is dropped here,
/// counted, and never waits (the batch processor behind never sees a full queue).
#[derive(Debug)]
struct BoundedLogProcessor {
    inner: BatchLogProcessor,
    queue: Arc<LogQueue>,
    capacity: usize,
}

impl LogProcessor for BoundedLogProcessor {
    fn emit(&self, record: &mut SdkLogRecord, scope: &opentelemetry::InstrumentationScope) {
        if self.queue.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queue.taken(1);
            metrics::counter!(LOG_RECORDS_DROPPED_TOTAL, "reason" => "queue_full").increment(1);
            return;
        }
        self.inner.emit(record, scope);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Builds the logger provider that exports log records over OTLP (`OTEL_LOGS_EXPORTER=otlp`):
/// batched every 500 ms, at most [`LOG_QUEUE_CAPACITY`] records queued, each export bounded.
pub(crate) fn logger_provider(
    info: &ServiceInfo,
    config: &TelemetryConfig,
) -> Result<SdkLoggerProvider, opentelemetry_otlp::ExporterBuildError> {
    let endpoint = signal_endpoint(config, "/v1/logs");
    let exporter = match config.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
    };
    let queue = Arc::new(LogQueue::default());
    let batch = opentelemetry_sdk::logs::BatchConfigBuilder::default()
        .with_max_queue_size(LOG_QUEUE_CAPACITY)
        .with_max_export_batch_size(LOG_EXPORT_BATCH)
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    let inner = BatchLogProcessor::builder(CountingLogExporter { inner: exporter, queue: queue.clone() })
        .with_batch_config(batch)
        .build();
    let processor = BoundedLogProcessor { inner, queue, capacity: LOG_QUEUE_CAPACITY };
    Ok(SdkLoggerProvider::builder().with_resource(resource(info, config)).with_log_processor(processor).build())
}

/// The logger provider the `tracing` bridge writes through: every text the bridge puts on a
/// record (body and attribute values) passes [`crate::logging::redact`] first, exactly as the
/// log line's values do.
#[derive(Clone, Debug)]
pub struct RedactingLoggerProvider(pub SdkLoggerProvider);

impl opentelemetry::logs::LoggerProvider for RedactingLoggerProvider {
    type Logger = RedactingLogger;

    fn logger_with_scope(&self, scope: opentelemetry::InstrumentationScope) -> RedactingLogger {
        RedactingLogger(self.0.logger_with_scope(scope))
    }
}

/// See [`RedactingLoggerProvider`].
#[derive(Debug)]
pub struct RedactingLogger(opentelemetry_sdk::logs::SdkLogger);

impl opentelemetry::logs::Logger for RedactingLogger {
    type LogRecord = RedactingLogRecord;

    fn create_log_record(&self) -> RedactingLogRecord {
        RedactingLogRecord(self.0.create_log_record())
    }

    fn emit(&self, record: RedactingLogRecord) {
        self.0.emit(record.0);
    }

    fn event_enabled(&self, level: opentelemetry::logs::Severity, target: &str, name: Option<&str>) -> bool {
        self.0.event_enabled(level, target, name)
    }
}

/// A log record whose text values are redacted as they are set.
pub struct RedactingLogRecord(SdkLogRecord);

fn redact_any(value: opentelemetry::logs::AnyValue) -> opentelemetry::logs::AnyValue {
    use opentelemetry::logs::AnyValue;
    match value {
        AnyValue::String(s) => match crate::logging::redact(s.as_str()) {
            std::borrow::Cow::Borrowed(_) => AnyValue::String(s),
            std::borrow::Cow::Owned(clean) => AnyValue::String(clean.into()),
        },
        AnyValue::ListAny(list) => AnyValue::ListAny(Box::new(list.into_iter().map(redact_any).collect())),
        AnyValue::Map(map) => AnyValue::Map(Box::new(map.into_iter().map(|(k, v)| (k, redact_any(v))).collect())),
        other => other,
    }
}

impl opentelemetry::logs::LogRecord for RedactingLogRecord {
    fn set_event_name(&mut self, name: &'static str) {
        self.0.set_event_name(name);
    }
    fn set_target<T: Into<std::borrow::Cow<'static, str>>>(&mut self, target: T) {
        self.0.set_target(target);
    }
    fn set_timestamp(&mut self, timestamp: std::time::SystemTime) {
        self.0.set_timestamp(timestamp);
    }
    fn set_observed_timestamp(&mut self, timestamp: std::time::SystemTime) {
        self.0.set_observed_timestamp(timestamp);
    }
    fn set_severity_text(&mut self, text: &'static str) {
        self.0.set_severity_text(text);
    }
    fn set_severity_number(&mut self, number: opentelemetry::logs::Severity) {
        self.0.set_severity_number(number);
    }
    fn set_body(&mut self, body: opentelemetry::logs::AnyValue) {
        self.0.set_body(redact_any(body));
    }
    fn add_attributes<I, K, V>(&mut self, attributes: I)
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<opentelemetry::Key>,
        V: Into<opentelemetry::logs::AnyValue>,
    {
        for (k, v) in attributes {
            self.add_attribute(k, v);
        }
    }
    fn add_attribute<K, V>(&mut self, key: K, value: V)
    where
        K: Into<opentelemetry::Key>,
        V: Into<opentelemetry::logs::AnyValue>,
    {
        self.0.add_attribute(key, redact_any(value.into()));
    }
    fn set_trace_context(
        &mut self,
        trace_id: opentelemetry::TraceId,
        span_id: opentelemetry::SpanId,
        trace_flags: Option<opentelemetry::TraceFlags>,
    ) {
        self.0.set_trace_context(trace_id, span_id, trace_flags);
    }
}

/// Whether an event of `target` goes to the OTLP log bridge: not the exporter's own transport
/// and the OpenTelemetry SDK (exporting their records would feed the export with itself).
pub(crate) fn exported_log_target(target: &str) -> bool {
    const OWN: [&str; 8] = ["opentelemetry", "tonic", "h2", "hyper", "hyper_util", "tower", "reqwest", "rustls"];
    let crate_name = target.split("::").next().unwrap_or(target);
    !OWN.iter().any(|own| crate_name == *own || crate_name.starts_with("opentelemetry"))
}

fn sampler(s: Sampler) -> SdkSampler {
    match s {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::TraceIdRatio(r) => SdkSampler::TraceIdRatioBased(r),
        Sampler::ParentBasedAlwaysOn => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOn)),
        Sampler::ParentBasedAlwaysOff => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOff)),
        Sampler::ParentBasedTraceIdRatio(r) => SdkSampler::ParentBased(Box::new(SdkSampler::TraceIdRatioBased(r))),
    }
}

/// The tracer the `tracing` layer records into.
pub(crate) fn tracer(provider: &SdkTracerProvider, info: &ServiceInfo) -> opentelemetry_sdk::trace::SdkTracer {
    provider.tracer(info.name.clone())
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes the span's context into outgoing headers (HTTP, or gRPC metadata, which travels as
/// HTTP/2 headers) as W3C `traceparent`/`tracestate`.
pub fn inject_context(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Makes `span` a child of the remote span described by incoming `traceparent`, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Injects the current span's context into tonic request metadata (for hand-built requests).
pub fn inject_into_metadata<T>(request: &mut tonic::Request<T>) {
    let mut headers = HeaderMap::new();
    inject_context(&tracing::Span::current(), &mut headers);
    for (name, value) in &headers {
        if let Ok(key) = tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes())
            && let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes())
        {
            request.metadata_mut().insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out.get("traceparent").unwrap(), headers.get("traceparent").unwrap());
    }
}
