//! A final provider failure reaches Sentry once, tagged with provider, operation and code, and
//! carrying no key and no prompt; its message is ours, not the provider's body. Sentry is global to the process: this file
//! holds one test.

use std::time::Duration;

use crate::common::{Fake, OPENAI_KEY, Reply, env, spawn_app};
use kraliki_proto::provider::v1::{ChatMessage, Role, StreamChatRequest};
use telemetry::TelemetryConfig;
use telemetry::testing::SentrySink;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_final_provider_failure_is_captured_with_tags_and_nothing_secret() {
    let sink = SentrySink::start().await;
    let openai = Fake::scripted().await;
    openai.on("/v1/chat/completions", vec![Reply::text(502, "bad gateway upstream-body-marker")]);
    let mut env = env(Some(&openai), None, &[("PROVIDER_MAX_RETRIES", "0"), ("SENTRY_TRACES_SAMPLE_RATE", "0")]);
    env.set("SENTRY_DSN", sink.dsn());
    let telemetry =
        telemetry::init(&provider_gateway::service_info(), &TelemetryConfig::from_env(&env).unwrap()).unwrap();
    let mut app = spawn_app(&env, None).await;

    let prompt = "my account number is prompt-marker-7731";
    let request = StreamChatRequest {
        messages: vec![ChatMessage { role: Role::User as i32, content: prompt.into() }],
        ..Default::default()
    };
    let status = app.client.stream_chat(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // A caller mistake is not an event.
    let status = app.client.stream_chat(StreamChatRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    telemetry.shutdown().await;
    let items = sink.wait_for(Duration::from_secs(10), |items| items.iter().any(|i| i.kind == "event")).await;
    let events: Vec<_> = items.iter().filter(|i| i.kind == "event").map(|i| &i.payload).collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    let tags = &events[0]["tags"];
    assert_eq!(tags["provider"], "openai", "{tags}");
    assert_eq!(tags["operation"], "chat", "{tags}");
    assert_eq!(tags["code"], "unavailable", "{tags}");
    assert_eq!(tags["service"], "provider-gateway", "{tags}");
    let raw = sink.raw().concat();
    for secret in [OPENAI_KEY, "prompt-marker-7731"] {
        assert!(!raw.contains(secret), "{secret} reached Sentry: {raw}");
    }
    // The exception itself carries our words only. (The providers crate's `warn` log of the
    // scrubbed, truncated provider body still travels as a breadcrumb of the request.)
    let mut event = events[0].clone();
    event.as_object_mut().unwrap().remove("breadcrumbs");
    assert!(!event.to_string().contains("upstream-body-marker"), "{event}");
    assert_eq!(event["exception"]["values"][0]["value"], "openai failed with http 502", "{event}");
}
