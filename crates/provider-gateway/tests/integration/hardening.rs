//! What a caller that reaches the gateway may spend: only configured models, a bounded
//! `max_tokens`, audio within the providers' upload limits, and — with `INTERNAL_AUTH_TOKEN` —
//! nothing at all without the token.

use crate::common;
use std::time::Duration;

use axum::body::Bytes;

use crate::common::{Fake, Reply, env, openai_sse, spawn_app, with_timeout};
use futures_util::StreamExt;
use kraliki_proto::provider::v1::{
    AudioEncoding, ChatMessage, ListProvidersRequest, Role, StreamChatRequest, SynthesizeSpeechRequest,
    TranscribeRequest,
};
use serde_json::json;
use tonic::Code;

const TOKEN: &str = "internal-token-0123456789abcdef-0123456789";

fn chat(model: &str, max_tokens: u32) -> StreamChatRequest {
    StreamChatRequest {
        messages: vec![ChatMessage { role: Role::User as i32, content: "Where is my parcel?".into() }],
        model: model.into(),
        max_tokens,
        ..Default::default()
    }
}

fn transcribe(model: &str, audio: Vec<u8>) -> TranscribeRequest {
    TranscribeRequest {
        audio,
        encoding: AudioEncoding::Mulaw as i32,
        sample_rate_hz: 8000,
        model: model.into(),
        ..Default::default()
    }
}

fn sse_reply(tokens: &[&str]) -> Reply {
    let body = openai_sse(tokens, (5, 3)).concat();
    Reply::Stream {
        content_type: "text/event-stream",
        chunks: vec![(Duration::from_millis(1), Bytes::from(body))],
        hang_after: None,
    }
}

fn whisper_reply() -> Reply {
    Reply::json(200, json!({"text": "hello", "language": "english", "duration": 1.0, "segments": []}))
}

async fn chat_body(app: &mut common::App, openai: &Fake, request: StreamChatRequest) -> serde_json::Value {
    let before = openai.count("/v1/chat/completions");
    let stream = app.client.stream_chat(with_timeout(request, Duration::from_secs(10))).await.unwrap().into_inner();
    let messages: Vec<_> = stream.collect().await;
    assert!(messages.iter().all(Result::is_ok), "{messages:?}");
    let requests: Vec<_> = openai.requests().into_iter().filter(|r| r.path == "/v1/chat/completions").collect();
    assert_eq!(requests.len(), before + 1);
    requests.last().unwrap().json()
}

#[tokio::test]
async fn a_model_outside_the_configuration_is_refused_for_every_capability() {
    let openai = Fake::scripted().await;
    openai.on("/v1/chat/completions", vec![sse_reply(&["On its way."])]);
    openai.on("/v1/audio/transcriptions", vec![whisper_reply()]);
    let mut app =
        spawn_app(&env(Some(&openai), None, &[("STT_PROVIDERS", "openai"), ("TTS_PROVIDERS", "openai")]), None).await;

    let err = app.client.stream_chat(chat("o1-pro", 64)).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("model `o1-pro` is not configured for chat"), "{err:?}");
    let err = app.client.transcribe(transcribe("gpt-4o-transcribe", vec![0xff; 800])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let speech = SynthesizeSpeechRequest { text: "Hello".into(), model: "tts-1-hd".into(), ..Default::default() };
    let err = app.client.synthesize_speech(speech).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Pinned to a provider, the model must be that provider's.
    let mut pinned = chat("whisper-1", 64);
    pinned.provider = "openai".into();
    let err = app.client.stream_chat(pinned).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(openai.requests().is_empty(), "nothing reached the provider");

    // The configured model, or none, is served with the configured model.
    assert_eq!(chat_body(&mut app, &openai, chat("gpt-4o-mini", 64)).await["model"], "gpt-4o-mini");
    assert_eq!(chat_body(&mut app, &openai, chat("", 64)).await["model"], "gpt-4o-mini");
    let response = app.client.transcribe(transcribe("whisper-1", vec![0xff; 800])).await.unwrap().into_inner();
    assert_eq!(response.model, "whisper-1");
}

#[tokio::test]
async fn max_tokens_is_clamped_to_the_cap_and_set_when_absent() {
    let openai = Fake::scripted().await;
    openai.on("/v1/chat/completions", vec![sse_reply(&["Sure."])]);
    let mut app = spawn_app(&env(Some(&openai), None, &[("LLM_MAX_TOKENS_CAP", "100")]), None).await;
    assert_eq!(chat_body(&mut app, &openai, chat("", 100_000)).await["max_tokens"], 100);
    assert_eq!(chat_body(&mut app, &openai, chat("", 0)).await["max_tokens"], 100);
    assert_eq!(chat_body(&mut app, &openai, chat("", 64)).await["max_tokens"], 64);
}

#[tokio::test]
async fn transcription_audio_over_the_cap_is_refused_before_the_provider() {
    let openai = Fake::scripted().await;
    openai.on("/v1/audio/transcriptions", vec![whisper_reply()]);
    // Default cap: 25 MB, under OpenAI's upload limit.
    let mut app = spawn_app(&env(Some(&openai), None, &[("STT_PROVIDERS", "openai")]), None).await;
    let mut client = app.client.clone().max_encoding_message_size(usize::MAX);
    // Just over the cap: within the message limit, refused by the check.
    let err = client.transcribe(transcribe("", vec![0xff; 25_000_001])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("25000000"), "{err:?}");
    // Far over: refused from the length prefix (tonic's limit), still ResourceExhausted.
    let err = client.transcribe(transcribe("", vec![0xff; 40 * 1024 * 1024])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(openai.count("/v1/audio/transcriptions"), 0);
    // At the cap it goes through.
    let ok = app.client.transcribe(transcribe("", vec![0xff; 8000])).await.unwrap().into_inner();
    assert_eq!(ok.text, "hello");
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

#[tokio::test]
async fn with_an_internal_auth_token_every_call_but_health_needs_it() {
    let mut app = spawn_app(&env(None, None, &[("INTERNAL_AUTH_TOKEN", TOKEN)]), None).await;
    for token in [None, Some("wrong-token-0123456789abcdef-0123456789ab"), Some(&TOKEN[1..])] {
        let err = app.client.list_providers(with_token(ListProvidersRequest::default(), token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
        assert!(!err.message().contains(TOKEN), "{err:?}");
    }
    let err = app.client.transcribe(with_token(transcribe("", vec![0xff; 800]), None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let rows = app.client.list_providers(with_token(ListProvidersRequest::default(), Some(TOKEN))).await.unwrap();
    assert!(!rows.into_inner().providers.is_empty());

    // Health stays open (probes carry no token).
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_url.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: kraliki_proto::provider::v1::SERVICE_NAME.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[test]
fn a_short_internal_auth_token_stops_the_service_without_echoing_it() {
    let errors = provider_gateway::Config::from_env(&telemetry::Env::from_pairs([("INTERNAL_AUTH_TOKEN", "short")]))
        .unwrap_err()
        .to_string();
    assert!(errors.contains("INTERNAL_AUTH_TOKEN"), "{errors}");
    assert!(!errors.contains("short\""), "{errors}");
}

#[tokio::test]
async fn transcriptions_over_the_memory_budget_are_refused_before_they_are_read() {
    let openai = Fake::scripted().await;
    openai.on("/v1/audio/transcriptions", vec![Reply::Delayed(Duration::from_secs(1), Box::new(whisper_reply()))]);
    // Room for one 1 MB request at a time.
    let app = spawn_app(
        &env(Some(&openai), None, &[("STT_PROVIDERS", "openai"), ("TRANSCRIBE_BUDGET_BYTES", "1500000")]),
        None,
    )
    .await;
    let mut client = app.client.clone();
    let first = tokio::spawn(async move { client.transcribe(transcribe("", vec![0xff; 1_000_000])).await });
    for _ in 0..400 {
        if openai.count("/v1/audio/transcriptions") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(openai.count("/v1/audio/transcriptions"), 1);
    // While the first is with the provider, a second does not fit.
    let err = app.client.clone().transcribe(transcribe("", vec![0xff; 1_000_000])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("TRANSCRIBE_BUDGET_BYTES"), "{err:?}");
    // Small requests still fit beside it, and the budget comes back.
    let small = app.client.clone().transcribe(transcribe("", vec![0xff; 8000])).await.unwrap();
    assert_eq!(small.into_inner().text, "hello");
    assert_eq!(first.await.unwrap().unwrap().into_inner().text, "hello");
    let again = app.client.clone().transcribe(transcribe("", vec![0xff; 1_000_000])).await.unwrap();
    assert_eq!(again.into_inner().text, "hello");
}
