//! Fake providers: real HTTP servers on loopback that record every request and answer from a
//! script, plus helpers for configuration and metrics.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics::{Key, KeyName, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use providers::ProvidersConfig;

/// The one fake HTTP server of the tests (`telemetry::testing`), scripted per path.
pub use telemetry::testing::{FakeHttp as Fake, FakeReply as Reply};

/// Test configuration: both remote providers pointed at fakes, short timeouts and backoff.
pub fn config(openai: Option<&Fake>, deepgram: Option<&Fake>, extra: &[(&str, &str)]) -> ProvidersConfig {
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut set = |k: &str, v: String| {
        vars.insert(k.to_owned(), v);
    };
    if let Some(f) = openai {
        set("OPENAI_BASE_URL", f.url("/v1"));
        set("OPENAI_API_KEY", "sk-test-0123456789abcdef".into());
    }
    if let Some(f) = deepgram {
        set("DEEPGRAM_BASE_URL", f.url(""));
        set("DEEPGRAM_API_KEY", "dg-test-key-0123456789".into());
    }
    for (k, v) in [
        ("PROVIDER_CONNECT_TIMEOUT_SECONDS", "1"),
        ("PROVIDER_FIRST_BYTE_TIMEOUT_SECONDS", "1"),
        ("PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS", "1"),
        ("PROVIDER_IDLE_TIMEOUT_SECONDS", "1"),
        ("PROVIDER_RETRY_BASE_SECONDS", "0.01"),
        ("PROVIDER_RETRY_MAX_SECONDS", "0.04"),
        ("PROVIDER_DEFAULT_DEADLINE_SECONDS", "20"),
    ] {
        set(k, v.into());
    }
    for (k, v) in extra {
        set(k, (*v).to_owned());
    }
    ProvidersConfig::from_env(&providers::config::Env::from_pairs(vars)).expect("valid test config")
}

/// A recorder whose values can be read without draining them (the debugging recorder resets
/// counters and gauges on every snapshot).
struct ReadableRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for ReadableRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        self.0.get_or_create_counter(key, |c| metrics::Counter::from_arc(Arc::clone(c)))
    }
    fn register_gauge(&self, key: &Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0.get_or_create_gauge(key, |g| metrics::Gauge::from_arc(Arc::clone(g)))
    }
    fn register_histogram(&self, key: &Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        self.0.get_or_create_histogram(key, |h| metrics::Histogram::from_arc(Arc::clone(h)))
    }
}

/// Metrics recorded on this thread (tests run on a current-thread runtime).
pub struct Metrics {
    registry: Arc<Registry<Key, AtomicStorage>>,
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name && labels.iter().all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

impl Metrics {
    /// Install a recorder for the current thread; keep the guard alive for the test.
    pub fn install() -> (Self, metrics::LocalRecorderGuard<'static>) {
        let registry = Arc::new(Registry::atomic());
        let recorder: &'static ReadableRecorder = Box::leak(Box::new(ReadableRecorder(Arc::clone(&registry))));
        let guard = metrics::set_default_local_recorder(recorder);
        (Self { registry }, guard)
    }

    /// Sum over the series that carry these labels.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.registry
            .get_counter_handles()
            .into_iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }

    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.registry
            .get_gauge_handles()
            .into_iter()
            .find(|(k, _)| matches(k, name, labels))
            .map(|(_, g)| f64::from_bits(g.load(Ordering::SeqCst)))
    }

    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.registry
            .get_histogram_handles()
            .into_iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, h)| h.data().len())
            .sum()
    }
}

pub type Part = (String, Option<String>, Option<String>, Vec<u8>);

/// Parse a multipart/form-data body: (name, filename, content type, data) per part.
pub fn multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = content_type.split("boundary=").nth(1).expect("boundary").trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let text = body;
    let positions: Vec<usize> =
        text.windows(delimiter.len()).enumerate().filter(|(_, w)| *w == delimiter.as_bytes()).map(|(i, _)| i).collect();
    for pair in positions.windows(2) {
        let part = &text[pair[0] + delimiter.len() + 2..pair[1] - 2];
        let split = part.windows(4).position(|w| w == b"\r\n\r\n").expect("part head");
        let head = String::from_utf8_lossy(&part[..split]).into_owned();
        let data = part[split + 4..].to_vec();
        let mut name = String::new();
        let mut filename = None;
        let mut ctype = None;
        for line in head.lines() {
            if let Some(rest) = line.strip_prefix("Content-Disposition: form-data; ") {
                for attr in rest.split("; ") {
                    if let Some(v) = attr.strip_prefix("name=") {
                        name = v.trim_matches('"').to_owned();
                    }
                    if let Some(v) = attr.strip_prefix("filename=") {
                        filename = Some(v.trim_matches('"').to_owned());
                    }
                }
            }
            if let Some(v) = line.strip_prefix("Content-Type: ") {
                ctype = Some(v.to_owned());
            }
        }
        parts.push((name, filename, ctype, data));
    }
    assert!(text.ends_with(format!("{delimiter}--\r\n").as_bytes()), "closing delimiter");
    parts
}

/// A realistic OpenAI chat stream: role chunk, content chunks, finish, usage, `[DONE]`.
pub fn openai_sse(tokens: &[&str], usage: (u64, u64)) -> String {
    let mut out = String::new();
    let head = r#""id":"chatcmpl-123","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1""#;
    out.push_str(&format!(
        "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    ));
    for t in tokens {
        let t = serde_json::to_string(t).unwrap();
        out.push_str(&format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{t}}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    out.push_str(&format!(
        "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    ));
    out.push_str(&format!(
        "data: {{{head},\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0}}}}}}\n\n",
        usage.0,
        usage.1,
        usage.0 + usage.1
    ));
    out.push_str("data: [DONE]\n\n");
    out
}
