//! The real service on port 0 and fake providers that are real HTTP servers on loopback,
//! recording every request and answering from a script.

#![allow(dead_code)]

use std::time::Duration;

use kraliki_proto::provider::v1::provider_gateway_client::ProviderGatewayClient;
use telemetry::{Env, MetricsHandle, ServiceContext, Shutdown};
use tonic::transport::Channel;

/// Catches hangs; never a performance assertion.
pub const HANG: Duration = Duration::from_secs(20);
pub const OPENAI_KEY: &str = "sk-test-0123456789abcdef";
pub const DEEPGRAM_KEY: &str = "dg-test-key-0123456789";

// ---------------------------------------------------------------------------------------------
// Fake providers

/// The one fake HTTP server of the tests (`telemetry::testing`), scripted per path.
pub use telemetry::testing::{FakeHttp as Fake, FakeReply as Reply};

/// An OpenAI chat completion as SSE: one event per token, a finish event, a usage event, `[DONE]`.
pub fn openai_sse(tokens: &[&str], usage: (u64, u64)) -> Vec<String> {
    let mut events = Vec::new();
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
    };
    events.push(chunk(serde_json::json!({"role": "assistant", "content": ""}), serde_json::Value::Null));
    for token in tokens {
        events.push(chunk(serde_json::json!({"content": token}), serde_json::Value::Null));
    }
    events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    events.push(serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}
    }));
    let mut out: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push("data: [DONE]\n\n".to_owned());
    out
}

// ---------------------------------------------------------------------------------------------
// The service

/// Environment for a test gateway: the fakes as providers (with keys), short timeouts and
/// backoff, then `extra`.
pub fn env(openai: Option<&Fake>, deepgram: Option<&Fake>, extra: &[(&str, &str)]) -> Env {
    let mut env = Env::from_pairs([
        ("LOG_LEVEL", "warn"),
        ("PROVIDER_CONNECT_TIMEOUT_SECONDS", "2"),
        ("PROVIDER_FIRST_BYTE_TIMEOUT_SECONDS", "5"),
        ("PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS", "5"),
        ("PROVIDER_IDLE_TIMEOUT_SECONDS", "5"),
        ("PROVIDER_RETRY_BASE_SECONDS", "0.005"),
        ("PROVIDER_RETRY_MAX_SECONDS", "0.02"),
    ]);
    if let Some(f) = openai {
        env.set("OPENAI_BASE_URL", f.url("/v1"));
        env.set("OPENAI_API_KEY", OPENAI_KEY);
    }
    if let Some(f) = deepgram {
        env.set("DEEPGRAM_BASE_URL", f.url(""));
        env.set("DEEPGRAM_API_KEY", DEEPGRAM_KEY);
    }
    for (k, v) in extra {
        env.set(*k, *v);
    }
    env
}

/// A running gateway.
pub struct App {
    pub client: ProviderGatewayClient<Channel>,
    pub grpc_url: String,
    pub admin_url: String,
    pub ctx: ServiceContext,
}

/// Starts the real service on port 0 with `env` and connects a generated client to it.
pub async fn spawn_app(env: &Env, metrics: Option<MetricsHandle>) -> App {
    let config = provider_gateway::Config::from_env(env).expect("valid test configuration");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let shutdown = Shutdown::new(Duration::ZERO, Duration::from_secs(5));
    let ctx = ServiceContext::new(provider_gateway::service_info(), "test", metrics, shutdown);
    let run_ctx = ctx.clone();
    tokio::spawn(async move {
        provider_gateway::run(config, grpc, admin, run_ctx).await.expect("service runs");
    });
    let channel = tonic::transport::Endpoint::from_shared(grpc_url.clone()).unwrap().connect_lazy();
    App { client: ProviderGatewayClient::new(channel), grpc_url, admin_url, ctx }
}

/// A request carrying a `grpc-timeout`, as a real caller sends.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}
