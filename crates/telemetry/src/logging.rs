//! Log lines: one JSON object per line (or readable text), with the service's identity and the
//! current trace and span ids, written to stdout and optionally appended to `LOG_FILE`.
//!
//! Redaction is one function, [`redact`], applied to every text value of every event on every
//! path: the line here, the OTLP log record (`otel.rs`) and Sentry (`sentry_support.rs`). Keys
//! and tokens never reach an event as text (`Secret` prints `[redacted]`); transcript text is
//! not put on events; phone numbers that slip into a message or field become `[phone]`.

use std::{
    borrow::Cow,
    fmt::Write as _,
    fs::File,
    io::{self, Write},
    path::Path,
    sync::{Arc, Mutex},
};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer},
    registry::LookupSpan,
};

use crate::ServiceInfo;

/// The current span's trace and span ids as lowercase hex, when inside a traced span.
pub fn current_trace_ids() -> Option<(String, String)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

fn ids_for<S>(ctx: &FmtContext<'_, S, impl for<'w> FormatFields<'w> + 'static>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // The event's parent: explicit (`parent: &span`) or the current span.
    let span = ctx.parent_span()?;
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Formats an event as one JSON object: `timestamp`, `level`, `message`, `target`, the event's
/// fields, `service`, `version`, `environment`, `trace_id`/`span_id` inside a traced span, and
/// the names of the enclosing spans.
pub struct JsonFormat {
    static_fields: Map<String, Value>,
}

impl JsonFormat {
    pub fn new(info: &ServiceInfo, environment: &str) -> Self {
        let mut static_fields = Map::new();
        static_fields.insert("service".into(), Value::from(info.name.clone()));
        static_fields.insert("version".into(), Value::from(info.version.clone()));
        static_fields.insert("environment".into(), Value::from(environment));
        Self { static_fields }
    }
}

/// The redaction every log path applies to text: phone numbers become `[phone]`.
pub fn redact(text: &str) -> Cow<'_, str> {
    crate::sentry_support::scrub_phone_numbers(text)
}

/// [`redact`] for an owned string, copying only when something was redacted.
pub fn redact_owned(text: String) -> String {
    let clean = match redact(&text) {
        Cow::Owned(clean) => Some(clean),
        Cow::Borrowed(_) => None,
    };
    clean.unwrap_or(text)
}

fn redacted(text: &str) -> Value {
    Value::from(redact(text).into_owned())
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), redacted(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), Value::from(redact_owned(value.to_string())));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), Value::from(redact_owned(format!("{value:?}"))));
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let message = fields.remove("message").unwrap_or(Value::from(""));

        let mut obj = Map::with_capacity(fields.len() + 10);
        obj.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        obj.insert("level".into(), Value::from(meta.level().as_str()));
        obj.insert("message".into(), message);
        obj.insert("target".into(), Value::from(meta.target()));
        for (k, v) in fields {
            // Never let an event field overwrite the line's own keys.
            obj.entry(k).or_insert(v);
        }
        for (k, v) in &self.static_fields {
            obj.insert(k.clone(), v.clone());
        }
        if let Some((trace_id, span_id)) = ids_for(ctx) {
            obj.insert("trace_id".into(), Value::from(trace_id));
            obj.insert("span_id".into(), Value::from(span_id));
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope.from_root().map(|s| Value::from(s.name())).collect();
            if !spans.is_empty() {
                obj.insert("spans".into(), Value::Array(spans));
            }
        }
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Readable one-line format for local use, still carrying the trace id.
pub struct TextFormat;

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let message = fields.remove("message").and_then(|m| m.as_str().map(str::to_string)).unwrap_or_default();
        let mut line = format!(
            "{} {:>5} {}: {}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            meta.level(),
            meta.target(),
            message
        );
        for (k, v) in fields {
            let _ = write!(line, " {k}={v}");
        }
        if let Some((trace_id, _)) = ids_for(ctx) {
            let _ = write!(line, " trace_id={trace_id}");
        }
        writeln!(writer, "{line}")
    }
}

/// Writes every line to stdout and, when configured, appends it to a file too.
#[derive(Clone)]
pub struct LogWriter {
    file: Option<Arc<Mutex<File>>>,
    stdout: bool,
}

impl LogWriter {
    pub fn new(file: Option<&Path>) -> io::Result<Self> {
        let file = match file {
            None => None,
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Some(Arc::new(Mutex::new(File::options().create(true).append(true).open(path)?)))
            }
        };
        Ok(Self { file, stdout: true })
    }
}

/// One formatted line; written in one call on drop so lines never interleave.
pub struct LineWriter {
    buf: Vec<u8>,
    target: LogWriter,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.target.stdout {
            let _ = io::stdout().lock().write_all(&self.buf);
        }
        if let Some(file) = &self.target.file
            && let Ok(mut f) = file.lock()
        {
            let _ = f.write_all(&self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { buf: Vec::with_capacity(256), target: self.clone() }
    }
}
