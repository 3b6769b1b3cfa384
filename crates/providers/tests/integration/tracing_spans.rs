//! The client span of a provider call: its attributes, and what it must never hold.

use std::sync::{Arc, Mutex};

use crate::common::{Fake, Reply, config, openai_sse};
use futures_util::StreamExt;
use providers::{ChatMessage, ChatRequest, Gateway, Role};
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// (span or event name, field, value)
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

struct Capture(Seen);

struct Visitor<'a>(&'a Seen, String);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.lock().unwrap().push((self.1.clone(), field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.lock().unwrap().push((self.1.clone(), field.name().to_owned(), value.to_owned()));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        attrs.record(&mut Visitor(&self.0, attrs.metadata().name().to_owned()));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let name = ctx.span(id).map(|s| s.name().to_owned()).unwrap_or_default();
        values.record(&mut Visitor(&self.0, name));
    }
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        event.record(&mut Visitor(&self.0, "event".to_owned()));
    }
}

fn capture() -> (Seen, tracing::subscriber::DefaultGuard) {
    let seen: Seen = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&seen)));
    (seen, tracing::subscriber::set_default(subscriber))
}

fn field(seen: &Seen, field: &str) -> Option<String> {
    seen.lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(owner, f, _)| owner == "provider_call" && f == field)
        .map(|(_, _, v)| v.clone())
}

const PROMPT: &str = "My card number is 4111 and I am very upset";

fn request() -> ChatRequest {
    ChatRequest { messages: vec![ChatMessage::new(Role::User, PROMPT)], ..ChatRequest::default() }
}

#[tokio::test]
async fn client_span_has_http_and_usage_attributes_but_no_secrets_or_content() {
    let (seen, _guard) = capture();
    let fake = Fake::scripted().await;
    fake.on("/v1/chat/completions", vec![Reply::sse_split(&openai_sse(&["I am ", "sorry"], (21, 7)), 9)]);
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let stream = gateway.chat(request(), None).await.unwrap();
    let _: Vec<_> = stream.collect().await;

    for (name, want) in [
        ("otel.kind", "client"),
        ("http.request.method", "POST"),
        ("server.address", "127.0.0.1"),
        ("http.response.status_code", "200"),
        ("otel.name", "chat gpt-4o-mini"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
        ("gen_ai.usage.input_tokens", "21"),
        ("gen_ai.usage.output_tokens", "7"),
        ("response_tokens", "7"),
        ("otel.status_code", "OK"),
    ] {
        assert_eq!(field(&seen, name).as_deref(), Some(want), "{name}");
    }
    let all = seen.lock().unwrap().clone();
    for (owner, name, value) in &all {
        assert!(!value.contains("sk-test"), "{owner}.{name} leaks the key");
        assert!(!value.contains("very upset"), "{owner}.{name} leaks the prompt");
        assert!(!value.contains("I am sorry"), "{owner}.{name} leaks the completion");
    }
}

#[tokio::test]
async fn content_is_captured_only_when_enabled() {
    let (seen, _guard) = capture();
    let fake = Fake::scripted().await;
    fake.on("/v1/chat/completions", vec![Reply::sse_split(&openai_sse(&["I am ", "sorry"], (21, 7)), 9)]);
    let gateway = Gateway::new(config(Some(&fake), None, &[("PROVIDER_CAPTURE_CONTENT", "true")])).unwrap();
    let _: Vec<_> = gateway.chat(request(), None).await.unwrap().collect().await;
    // The conventions' message JSON.
    let input: serde_json::Value = serde_json::from_str(&field(&seen, "gen_ai.input.messages").unwrap()).unwrap();
    assert_eq!(input, json!([{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]));
    let output: serde_json::Value = serde_json::from_str(&field(&seen, "gen_ai.output.messages").unwrap()).unwrap();
    assert_eq!(
        output,
        json!([{"role": "assistant", "parts": [{"type": "text", "content": "I am sorry"}], "finish_reason": "stop"}])
    );
}

#[tokio::test]
async fn provider_error_body_is_logged_as_codes_and_as_scrubbed_text_only_with_capture() {
    let body = json!({"error": {"message": "Incorrect API key provided: sk-test-0123456789abcdef. You said: my PIN is 4321",
                                "code": "invalid_api_key"}});
    // Default: the codes and the size, no provider text (it may quote what it was sent).
    {
        let (seen, _guard) = capture();
        let fake = Fake::scripted().await;
        fake.on("/v1/chat/completions", vec![Reply::json(401, body.clone())]);
        let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
        assert!(gateway.chat(request(), None).await.is_err());
        let all = seen.lock().unwrap().clone();
        let logged = all.iter().find(|(owner, name, _)| owner == "event" && name == "body").expect("error body logged");
        assert!(logged.2.starts_with("error.code=invalid_api_key "), "{}", logged.2);
        assert!(all.iter().all(|(_, _, v)| !v.contains("sk-test-0123456789abcdef") && !v.contains("PIN")));
        assert_eq!(field(&seen, "error.type").as_deref(), Some("unauthorized"));
        assert_eq!(field(&seen, "otel.status_code").as_deref(), Some("ERROR"));
    }
    // With PROVIDER_CAPTURE_CONTENT: the text, with the key still scrubbed.
    let (seen, _guard) = capture();
    let fake = Fake::scripted().await;
    fake.on("/v1/chat/completions", vec![Reply::json(401, body)]);
    let gateway = Gateway::new(config(Some(&fake), None, &[("PROVIDER_CAPTURE_CONTENT", "true")])).unwrap();
    assert!(gateway.chat(request(), None).await.is_err());
    let all = seen.lock().unwrap().clone();
    let logged = all
        .iter()
        .find(|(owner, name, value)| owner == "event" && name == "body" && value.contains("Incorrect API key"))
        .expect("error text logged");
    assert!(logged.2.contains("[redacted]") && logged.2.contains("PIN"), "{}", logged.2);
    assert!(all.iter().all(|(_, _, v)| !v.contains("sk-test-0123456789abcdef")));
}

#[tokio::test]
async fn a_model_the_request_names_is_on_the_span_and_other_in_the_gen_ai_metrics() {
    let (seen, _guard) = capture();
    let (metrics, _recorder) = crate::common::Metrics::install();
    let fake = Fake::scripted().await;
    fake.on("/v1/chat/completions", vec![Reply::sse_split(&openai_sse(&["Hi"], (5, 1)), 64)]);
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let asked = ChatRequest {
        model: Some("gpt-4.1-nano".into()),
        conversation_id: Some("call-\u{7}0190f0a0".into()),
        ..request()
    };
    let _: Vec<_> = gateway.chat(asked, None).await.unwrap().collect().await;
    assert_eq!(fake.requests()[0].json()["model"], "gpt-4.1-nano", "the named model is asked for");
    assert_eq!(field(&seen, "otel.name").as_deref(), Some("chat gpt-4.1-nano"));
    assert_eq!(field(&seen, "gen_ai.request.model").as_deref(), Some("gpt-4.1-nano"));
    assert_eq!(field(&seen, "gen_ai.conversation.id").as_deref(), Some("call-0190f0a0"), "control characters dropped");
    let base = [("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "openai")];
    let other = [base.as_slice(), &[("gen_ai_request_model", "_OTHER")]].concat();
    assert_eq!(metrics.histogram_count("gen_ai_client_operation_duration_seconds", &other), 1);
    assert_eq!(metrics.histogram_count("gen_ai_client_operation_time_to_first_chunk_seconds", &other), 1);
    assert_eq!(metrics.histogram_count("gen_ai_client_token_usage", &other), 2, "input and output");
    let named = [base.as_slice(), &[("gen_ai_request_model", "gpt-4.1-nano")]].concat();
    assert_eq!(metrics.histogram_count("gen_ai_client_operation_duration_seconds", &named), 0);
}
