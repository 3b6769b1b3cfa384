//! Sentry: errors, panics and transactions with release, environment and the service tag; no
//! personal data (`send_default_pii` off, phone numbers scrubbed from everything sent).

use std::{borrow::Cow, collections::BTreeMap};

use std::{sync::Arc, time::Duration};

use sentry::{
    Envelope, Transport, TransportFactory,
    protocol::{EnvelopeItem, Event, Request, Transaction, Value},
    transports::DefaultTransportFactory,
};

use crate::{ServiceInfo, config::TelemetryConfig};

/// Paths and methods whose transactions are never sent (probes and scrapes).
const UNSAMPLED: [&str; 5] = ["/health", "/ready", "/metrics", "grpc.health.v1", "grpc.reflection"];

pub(crate) fn init(info: &ServiceInfo, config: &TelemetryConfig, release: &str) -> sentry::ClientInitGuard {
    let rate = config.sentry_traces_sample_rate;
    let mut options = sentry::ClientOptions::new()
        .release(release.to_string())
        .environment(config.environment.clone())
        .send_default_pii(false)
        .attach_stacktrace(true)
        .shutdown_timeout(config.flush_timeout)
        .transport(ScrubbingTransportFactory)
        .traces_sampler(
            move |ctx: &sentry::TransactionContext| {
                if UNSAMPLED.iter().any(|p| ctx.name().contains(p)) { 0.0 } else { rate }
            },
        );
    options.dsn = config.sentry_dsn.clone();
    options.server_name = Some(Cow::Owned(info.name.clone()));
    let guard = sentry::init(options);
    // `init` binds the client to this thread's hub. The process hub (whose top every thread's
    // hub copies when first used) belongs to whichever thread used Sentry first, which need not
    // be this one: bind it there too, so that every thread's events are sent.
    let main = sentry::Hub::main();
    if main.client().is_none() {
        main.bind_client(sentry::Hub::current().client());
    }
    sentry::configure_scope(|scope| scope.set_tag("service", &info.name));
    main.configure_scope(|scope| scope.set_tag("service", &info.name));
    guard
}

/// A span that Sentry records as a transaction of its own, continuing the current trace: for a
/// unit of work inside a request that deserves its own transaction (e.g. `call_analysis`).
/// `make` gets the current `sentry-trace` header to put in the span's `sentry.trace` field, and
/// runs where no Sentry span is current, so the new span starts a transaction instead of
/// becoming a child. Without Sentry the span is an ordinary tracing span.
pub fn transaction_span(make: impl FnOnce(Option<&str>) -> tracing::Span) -> tracing::Span {
    let current = sentry::Hub::current();
    let header = current.configure_scope(|s| s.get_span()).and_then(|s| s.iter_headers().next().map(|(_, v)| v));
    let hub = Arc::new(sentry::Hub::new_from_top(&current));
    hub.configure_scope(|s| s.set_span(None));
    sentry::Hub::run(hub, || make(header.as_deref()))
}

/// What a captured error is about: the user (an id, never contact details), tags and extra data.
#[derive(Debug, Default, Clone)]
pub struct ErrorContext {
    pub user_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ErrorContext {
    pub fn tag(mut self, key: &str, value: impl Into<String>) -> Self {
        self.tags.insert(key.to_string(), value.into());
        self
    }
    pub fn extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
    pub fn user(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }
}

/// Whether this process meets `key` for the first time (and now has): for the errors worth one
/// Sentry event per process and reason, such as a provider left unconfigured.
pub fn first_time(key: String) -> bool {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    SEEN.get_or_init(Default::default).lock().map(|mut seen| seen.insert(key)).unwrap_or(false)
}

/// Sends an error to Sentry with its source chain and the given context; returns the event id
/// (nil when Sentry is off).
pub fn capture_exception(error: &(dyn std::error::Error + 'static), context: ErrorContext) -> sentry::types::Uuid {
    // A thread that used Sentry before `init` keeps a hub without the client; capture on the
    // main hub then, rather than lose the event.
    let current = sentry::Hub::current();
    let hub = match (current.client(), sentry::Hub::main()) {
        (None, main) if main.client().is_some() => main,
        _ => current,
    };
    hub.with_scope(
        |scope| {
            if let Some(id) = &context.user_id {
                scope.set_user(Some(sentry::User { id: Some(id.clone()), ..Default::default() }));
            }
            for (k, v) in &context.tags {
                scope.set_tag(k, v);
            }
            for (k, v) in &context.extra {
                scope.set_extra(k, v.clone());
            }
            if let Some((trace_id, _)) = crate::logging::current_trace_ids() {
                scope.set_tag("trace_id", trace_id);
            }
        },
        || hub.capture_error(error),
    )
}

/// The end of the UUID (`8-4-4-4-12` hex digits) that the token around `i` is, if it is one.
fn uuid_around(bytes: &[u8], i: usize) -> Option<usize> {
    let part = |b: &u8| b.is_ascii_hexdigit() || *b == b'-';
    let start = bytes[..i].iter().rposition(|b| !part(b)).map_or(0, |p| p + 1);
    let end = bytes[i..].iter().position(|b| !part(b)).map_or(bytes.len(), |p| i + p);
    let token = &bytes[start..end];
    let uuid = token.len() == 36
        && token
            .iter()
            .enumerate()
            .all(|(k, b)| if matches!(k, 8 | 13 | 18 | 23) { *b == b'-' } else { b.is_ascii_hexdigit() });
    let bounded = |b: Option<&u8>| !b.is_some_and(u8::is_ascii_alphanumeric);
    (uuid && bounded(start.checked_sub(1).and_then(|s| bytes.get(s))) && bounded(bytes.get(end))).then_some(end)
}

/// Replaces anything that looks like a phone number: `+` and 7–15 digits (spaces, dashes,
/// dots and brackets allowed between them), or 10 or more digits in a row — but never a part of
/// a UUID (a call id whose last group happens to be all digits stays whole).
pub fn scrub_phone_numbers(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        let starts_plus = bytes[i] == b'+' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        let starts_digit = bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if !(starts_plus || starts_digit) {
            i += 1;
            continue;
        }
        if starts_digit && let Some(end) = uuid_around(bytes, i) {
            i = end;
            continue;
        }
        let mut j = i + usize::from(starts_plus);
        let (mut digits, mut end, mut run, mut longest_run) = (0, j, 0, 0);
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                digits += 1;
                run += 1;
                longest_run = longest_run.max(run);
                end = j + 1;
            } else if starts_plus && matches!(b, b' ' | b'-' | b'.' | b'(' | b')') {
                run = 0;
            } else {
                break;
            }
            j += 1;
        }
        let alnum_after = bytes.get(end).is_some_and(u8::is_ascii_alphabetic);
        let phone = !alnum_after && ((starts_plus && (7..=15).contains(&digits)) || longest_run >= 10);
        if phone {
            out.push_str(&text[last..i]);
            out.push_str("[phone]");
            last = end;
        }
        i = end.max(i + 1);
    }
    if last == 0 {
        Cow::Borrowed(text)
    } else {
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }
}

fn scrub_string(s: &mut String) {
    if let Cow::Owned(clean) = scrub_phone_numbers(s) {
        *s = clean;
    }
}

fn scrub_value(v: &mut Value) {
    match v {
        Value::String(s) => scrub_string(s),
        Value::Array(a) => a.iter_mut().for_each(scrub_value),
        Value::Object(o) => o.values_mut().for_each(scrub_value),
        _ => {}
    }
}

fn scrub_request(req: &mut Request) {
    if let Some(url) = req.url.as_mut()
        && let Cow::Owned(clean) = scrub_phone_numbers(url.as_str())
        && let Ok(parsed) = clean.replace("[phone]", "%5Bphone%5D").parse()
    {
        *url = parsed;
    }
    for v in req.headers.values_mut() {
        scrub_string(v);
    }
    if let Some(q) = req.query_string.as_mut() {
        scrub_string(q);
    }
    req.data = None;
    req.cookies = None;
}

/// Scrubs a transaction and its spans before it leaves the process.
pub fn scrub_transaction(mut tx: Transaction<'static>) -> Transaction<'static> {
    if let Some(req) = tx.request.as_mut() {
        scrub_request(req);
    }
    for v in tx.tags.values_mut() {
        scrub_string(v);
    }
    for v in tx.extra.values_mut() {
        scrub_value(v);
    }
    for span in &mut tx.spans {
        if let Some(d) = span.description.as_mut() {
            scrub_string(d);
        }
        for v in span.tags.values_mut() {
            scrub_string(v);
        }
        for v in span.data.values_mut() {
            scrub_value(v);
        }
    }
    tx.user = tx.user.map(|u| sentry::User { id: u.id, ..Default::default() });
    tx
}

/// The one door every envelope leaves by: events and transactions are scrubbed here, whatever
/// integration produced them.
struct ScrubbingTransport(Arc<dyn Transport>);

impl Transport for ScrubbingTransport {
    fn send_envelope(&self, envelope: Envelope) {
        let mut out = Envelope::new().with_headers(envelope.headers().clone());
        for item in envelope.into_items() {
            out.add_item(match item {
                EnvelopeItem::Event(e) => EnvelopeItem::Event(Box::new(scrub_event(*e))),
                EnvelopeItem::Transaction(t) => EnvelopeItem::Transaction(Box::new(scrub_transaction(*t))),
                other => other,
            });
        }
        self.0.send_envelope(out);
    }
    fn flush(&self, timeout: Duration) -> bool {
        self.0.flush(timeout)
    }
    fn shutdown(&self, timeout: Duration) -> bool {
        self.0.shutdown(timeout)
    }
}

struct ScrubbingTransportFactory;

impl TransportFactory for ScrubbingTransportFactory {
    fn create_transport_with_options(&self, options: sentry::TransportOptions) -> Arc<dyn Transport> {
        Arc::new(ScrubbingTransport(DefaultTransportFactory.create_transport_with_options(options)))
    }
}

/// Scrubs an event before it leaves the process.
pub fn scrub_event(mut event: Event<'static>) -> Event<'static> {
    if let Some(m) = event.message.as_mut() {
        scrub_string(m);
    }
    if let Some(l) = event.logentry.as_mut() {
        scrub_string(&mut l.message);
    }
    for e in event.exception.values.iter_mut() {
        if let Some(v) = e.value.as_mut() {
            scrub_string(v);
        }
    }
    for v in event.extra.values_mut() {
        scrub_value(v);
    }
    for v in event.tags.values_mut() {
        scrub_string(v);
    }
    for b in event.breadcrumbs.values.iter_mut() {
        if let Some(m) = b.message.as_mut() {
            scrub_string(m);
        }
        for v in b.data.values_mut() {
            scrub_value(v);
        }
    }
    for ctx in event.contexts.values_mut() {
        if let sentry::protocol::Context::Other(map) = ctx {
            for v in map.values_mut() {
                scrub_value(v);
            }
        }
    }
    if let Some(req) = event.request.as_mut() {
        scrub_request(req);
    }
    event.user = event.user.map(|u| sentry::User { id: u.id, ..Default::default() });
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_scrubbed_and_ids_kept() {
        assert_eq!(scrub_phone_numbers("call to +420 777 123 456 failed"), "call to [phone] failed");
        assert_eq!(scrub_phone_numbers("from=+14155550123&x=1"), "from=[phone]&x=1");
        assert_eq!(scrub_phone_numbers("dialled 0014155550123"), "dialled [phone]");
        let id = "call 3f2b6c1e-9a7d-4c1b-8e2f-0a1b2c3d4e5f ended after 125 s, code 404";
        assert_eq!(scrub_phone_numbers(id), id);
        assert_eq!(scrub_phone_numbers("version 1.2.3"), "version 1.2.3");
        let digits_tail = "call_id=0195f0a4-1111-7222-8333-444455556666 ended";
        assert_eq!(scrub_phone_numbers(digits_tail), digits_tail, "a UUID's all-digit group is no number");
        assert_eq!(
            scrub_phone_numbers("ids 0195f0a4-1111-7222-8333-4444555566667 x"),
            "ids 0195f0a4-1111-7222-8333-[phone] x"
        );
        assert_eq!(scrub_phone_numbers("to 4155550123-x"), "to [phone]-x");
    }

    #[test]
    fn events_lose_phone_numbers_everywhere() {
        let mut event = Event { message: Some("bad number +14155550123".into()), ..Default::default() };
        event.extra.insert("to".into(), Value::from("+14155550199"));
        event.user = Some(sentry::User { id: Some("u1".into()), email: Some("a@b.c".into()), ..Default::default() });
        let event = scrub_event(event);
        let text = serde_json::to_string(&event).unwrap();
        assert!(!text.contains("4155550"), "{text}");
        assert!(!text.contains("a@b.c"));
        assert!(text.contains("u1"));
    }
}
