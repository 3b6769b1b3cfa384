//! OpenTelemetry tracing: the tracer provider (exporting over OTLP when configured) and W3C
//! `traceparent` propagation through HTTP headers and gRPC metadata.
//!
//! A tracer provider is installed even without an exporter, so trace and span ids exist in every
//! log line and propagate between services whether or not spans leave the process.

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::{
    KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler as SdkSampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    ServiceInfo,
    config::{OtlpProtocol, Sampler, TelemetryConfig},
};

/// Builds the tracer provider for this service.
pub(crate) fn tracer_provider(
    info: &ServiceInfo,
    config: &TelemetryConfig,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let service_name = config.otel_service_name.clone().unwrap_or_else(|| info.name.clone());
    let mut attributes = vec![
        KeyValue::new("service.version", config.release.clone().unwrap_or_else(|| info.version.clone())),
        KeyValue::new("deployment.environment.name", config.environment.clone()),
        KeyValue::new("vcs.ref.head.revision", info.git_sha.clone()),
    ];
    for (k, v) in &config.resource_attributes {
        attributes.push(KeyValue::new(k.clone(), v.clone()));
    }
    let resource = Resource::builder_empty().with_service_name(service_name).with_attributes(attributes).build();

    let mut builder = SdkTracerProvider::builder().with_resource(resource).with_sampler(sampler(config.sampler));
    if config.otlp_enabled() {
        let endpoint = config.otlp_endpoint.clone().unwrap_or_default();
        // Each export attempt is bounded, so a dead collector never holds a flush for long.
        let timeout = Duration::from_secs(3);
        let exporter = match config.otlp_protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .build()?,
            OtlpProtocol::HttpProtobuf => {
                let endpoint = if endpoint.ends_with("/v1/traces") {
                    endpoint
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(endpoint)
                    .with_timeout(timeout)
                    .build()?
            }
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(8192)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build());
    }
    Ok(builder.build())
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
