//! The real service on port 0, called with the generated gRPC client, in front of fake
//! OpenAI-compatible and Deepgram servers that are real HTTP servers on loopback.

use std::time::Duration;

use crate::common::{DEEPGRAM_KEY, Fake, HANG, OPENAI_KEY, Reply, env, openai_sse, spawn_app, with_timeout};
use axum::body::Bytes;
use futures_util::StreamExt;
use kraliki_proto::provider::v1::{
    AnalyzeSentimentRequest, AudioEncoding, Capability, ChatMessage, CircuitState, ListProvidersRequest, Role,
    SentimentLabel, StreamChatRequest, SynthesizeSpeechRequest, TranscribeRequest, stream_chat_response::Event,
};
use serde_json::json;
use tonic::Code;

fn deepgram_listen_body() -> serde_json::Value {
    json!({
        "metadata": {"request_id": "7c1a", "sha256": "ab", "created": "2024-01-01T00:00:00.000Z",
                      "duration": 2.5, "channels": 1, "models": ["1abfe86b"], "model_info": {}},
        "results": {
            "channels": [{"alternatives": [{"transcript": "hello I need help with my bill", "confidence": 0.98,
                "words": [
                    {"word": "hello", "start": 0.08, "end": 0.4, "confidence": 0.99, "punctuated_word": "Hello,"},
                    {"word": "i", "start": 0.5, "end": 0.6, "confidence": 0.97, "punctuated_word": "I"}
                ]}], "detected_language": "en"}],
            "utterances": [{"start": 0.08, "end": 2.4, "confidence": 0.98, "channel": 0,
                            "transcript": "Hello, I need help with my bill.", "words": [], "id": "u1"}]
        }
    })
}

fn whisper_body() -> serde_json::Value {
    json!({
        "task": "transcribe", "language": "english", "duration": 1.5, "text": " I want to cancel my order. ",
        "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 1.4, "text": " I want to cancel my order.",
                      "tokens": [50364], "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 0.9,
                      "no_speech_prob": 0.01}]
    })
}

fn mulaw_request(provider: &str) -> TranscribeRequest {
    TranscribeRequest {
        audio: vec![0xff; 8000],
        encoding: AudioEncoding::Mulaw as i32,
        sample_rate_hz: 8000,
        channels: 1,
        language: "en".into(),
        provider: provider.into(),
        call_id: "0190f0a0-0000-7000-8000-000000000001".into(),
        ..Default::default()
    }
}

fn chat_request() -> StreamChatRequest {
    StreamChatRequest {
        messages: vec![
            ChatMessage { role: Role::System as i32, content: "You are a call-centre agent.".into() },
            ChatMessage { role: Role::User as i32, content: "Where is my parcel?".into() },
        ],
        temperature: Some(0.5),
        max_tokens: 64,
        ..Default::default()
    }
}

#[tokio::test]
async fn transcribe_sends_the_real_deepgram_request_and_maps_the_transcript() {
    let deepgram = Fake::scripted().await;
    deepgram.on("/v1/listen", vec![Reply::json(200, deepgram_listen_body())]);
    let mut app = spawn_app(&env(None, Some(&deepgram), &[("STT_PROVIDERS", "deepgram")]), None).await;

    let response =
        app.client.transcribe(with_timeout(mulaw_request(""), Duration::from_secs(10))).await.unwrap().into_inner();
    assert_eq!(response.text, "hello I need help with my bill");
    assert_eq!(response.provider, "deepgram");
    assert_eq!(response.model, "nova-3");
    assert_eq!(response.language, "en");
    assert_eq!(response.duration_seconds, 2.5);
    assert_eq!(response.segments.len(), 1);
    assert_eq!(response.segments[0].text, "Hello, I need help with my bill.");
    assert_eq!((response.segments[0].start_seconds, response.segments[0].end_seconds), (0.08, 2.4));
    let confidence = response.confidence.expect("mean word confidence");
    assert!((confidence - 0.98).abs() < 1e-6, "{confidence}");

    let requests = deepgram.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/v1/listen"));
    assert_eq!(req.header("authorization"), Some(format!("Token {DEEPGRAM_KEY}").as_str()));
    for (k, v) in
        [("model", "nova-3"), ("language", "en"), ("encoding", "mulaw"), ("sample_rate", "8000"), ("channels", "1")]
    {
        assert_eq!(req.query.get(k).map(String::as_str), Some(v), "query {k}");
    }
    assert_eq!(req.body.as_ref(), vec![0xffu8; 8000].as_slice());
}

#[tokio::test]
async fn stream_chat_streams_deltas_in_order_then_done_with_usage() {
    let openai = Fake::scripted().await;
    let events = openai_sse(&["Your ", "parcel ", "is on ", "its way."], (21, 7));
    // Split into 5-byte pieces: events and JSON cross chunk boundaries.
    let joined = events.concat();
    let chunks = joined.as_bytes().chunks(5).map(|c| (Duration::from_millis(1), Bytes::copy_from_slice(c))).collect();
    openai.on(
        "/v1/chat/completions",
        vec![Reply::Stream { content_type: "text/event-stream", chunks, hang_after: None }],
    );
    let mut app = spawn_app(&env(Some(&openai), None, &[]), None).await;

    let stream =
        app.client.stream_chat(with_timeout(chat_request(), Duration::from_secs(10))).await.unwrap().into_inner();
    let messages: Vec<_> = tokio::time::timeout(HANG, stream.collect::<Vec<_>>()).await.expect("hang");
    let events: Vec<Event> = messages.into_iter().map(|m| m.unwrap().event.expect("event")).collect();
    let (last, deltas) = events.split_last().unwrap();
    let text: Vec<&str> = deltas
        .iter()
        .map(|e| match e {
            Event::Delta(d) => d.as_str(),
            Event::Done(_) => panic!("done before the end: {events:?}"),
        })
        .collect();
    assert_eq!(text.concat(), "Your parcel is on its way.");
    assert_eq!(text, ["Your ", "parcel ", "is on ", "its way."]);
    let Event::Done(done) = last else { panic!("last event is not done: {last:?}") };
    assert_eq!(done.finish_reason, "stop");
    assert_eq!((done.provider.as_str(), done.model.as_str()), ("openai", "gpt-4o-mini"));
    let usage = done.usage.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (21, 7, 28));

    let req = &openai.requests()[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.header("authorization"), Some(format!("Bearer {OPENAI_KEY}").as_str()));
    let body = req.json();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "You are a call-centre agent."}));
    assert_eq!(body["messages"][1], json!({"role": "user", "content": "Where is my parcel?"}));
}

/// `text` synthesised as μ-law 8 kHz through a fake Deepgram that streams `chunks`: the fake
/// (for its requests) and every message of the answer.
async fn synthesize_with_deepgram(
    chunks: Vec<(Duration, Bytes)>,
    text: &str,
) -> (Fake, Vec<kraliki_proto::provider::v1::SynthesizeSpeechResponse>) {
    let deepgram = Fake::scripted().await;
    deepgram.on("/v1/speak", vec![Reply::Stream { content_type: "audio/basic", chunks, hang_after: None }]);
    let mut app = spawn_app(&env(None, Some(&deepgram), &[("TTS_PROVIDERS", "deepgram")]), None).await;
    let request = SynthesizeSpeechRequest {
        text: text.into(),
        encoding: AudioEncoding::Mulaw as i32,
        sample_rate_hz: 8000,
        ..Default::default()
    };
    let stream =
        app.client.synthesize_speech(with_timeout(request, Duration::from_secs(10))).await.unwrap().into_inner();
    let messages: Vec<_> = tokio::time::timeout(HANG, stream.collect::<Vec<_>>()).await.expect("hang");
    (deepgram, messages.into_iter().map(Result::unwrap).collect())
}

#[tokio::test]
async fn synthesize_speech_returns_the_audio_bytes() {
    let audio: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let chunks = audio.chunks(640).map(|c| (Duration::from_millis(1), Bytes::copy_from_slice(c))).collect();
    let (deepgram, messages) = synthesize_with_deepgram(chunks, "Your parcel arrives tomorrow.").await;
    assert!(messages.len() > 1, "streamed in several messages");
    assert_eq!((messages[0].provider.as_str(), messages[0].model.as_str()), ("deepgram", "aura-2-thalia-en"));
    assert!(messages[1..].iter().all(|m| m.provider.is_empty() && m.model.is_empty()));
    let got: Vec<u8> = messages.iter().flat_map(|m| m.audio.iter().copied()).collect();
    assert_eq!(got, audio);

    let req = &deepgram.requests()[0];
    assert_eq!(req.path, "/v1/speak");
    for (k, v) in [("model", "aura-2-thalia-en"), ("encoding", "mulaw"), ("sample_rate", "8000"), ("container", "none")]
    {
        assert_eq!(req.query.get(k).map(String::as_str), Some(v), "query {k}");
    }
    assert_eq!(req.json(), json!({"text": "Your parcel arrives tomorrow."}));
}

/// A provider that sends a long reply at once (one 30,000-byte HTTP chunk) reaches the caller
/// in messages of at most 8,000 bytes, in order and complete: the caller never has to take a
/// whole reply in one piece.
#[tokio::test]
async fn a_reply_sent_at_once_is_split_into_bounded_messages() {
    let audio: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
    let chunks = vec![(Duration::ZERO, Bytes::copy_from_slice(&audio))];
    let (_deepgram, messages) =
        synthesize_with_deepgram(chunks, "Your parcel arrives tomorrow, between nine and noon.").await;
    let sizes: Vec<usize> = messages.iter().map(|m| m.audio.len()).collect();
    assert!(sizes.iter().all(|&n| n > 0 && n <= 8_000), "{sizes:?}");
    assert!(sizes.len() >= 4, "{sizes:?}");
    let got: Vec<u8> = messages.iter().flat_map(|m| m.audio.iter().copied()).collect();
    assert_eq!(got, audio);
}

#[tokio::test]
async fn sentiment_runs_locally_with_no_provider_configured() {
    let mut app = spawn_app(&env(None, None, &[]), None).await;
    let ask = |text: &str| AnalyzeSentimentRequest { text: text.into(), language: "en".into(), ..Default::default() };

    let happy = app
        .client
        .analyze_sentiment(with_timeout(ask("Thank you so much, that was really helpful!"), Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(happy.label, SentimentLabel::Positive as i32, "{happy:?}");
    assert!(happy.score > 0.2 && happy.score <= 1.0, "{happy:?}");
    assert_eq!(happy.provider, "local");
    assert!(!happy.keywords.is_empty());

    let angry = app
        .client
        .analyze_sentiment(ask("I was charged twice and nobody called me back, this is terrible"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(angry.label, SentimentLabel::Negative as i32, "{angry:?}");
    assert!(angry.score < -0.2, "{angry:?}");
}

#[tokio::test]
async fn a_deadline_shorter_than_the_provider_latency_is_deadline_exceeded() {
    let deepgram = Fake::scripted().await;
    deepgram.on(
        "/v1/listen",
        vec![Reply::Delayed(Duration::from_secs(30), Box::new(Reply::json(200, deepgram_listen_body())))],
    );
    let mut app = spawn_app(
        &env(None, Some(&deepgram), &[("STT_PROVIDERS", "deepgram"), ("PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS", "60")]),
        None,
    )
    .await;

    // The fake answers after 30 s; the answer must come long before that.
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        app.client.transcribe(with_timeout(mulaw_request(""), Duration::from_millis(300))),
    )
    .await
    .expect("answered within the caller's deadline, not the provider's latency")
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "deadline exceeded");
    assert_eq!(deepgram.count("/v1/listen"), 1);
}

#[tokio::test]
async fn every_provider_failing_is_unavailable_with_a_safe_message() {
    let secret_body = "upstream kaboom: sk-leaked-0123456789abcdefghij stack trace at worker.py:42";
    let (openai, deepgram) = (Fake::scripted().await, Fake::scripted().await);
    openai.on("/v1/audio/transcriptions", vec![Reply::text(500, secret_body)]);
    deepgram.on("/v1/listen", vec![Reply::text(500, secret_body)]);
    let mut app = spawn_app(
        &env(Some(&openai), Some(&deepgram), &[("STT_PROVIDERS", "deepgram,openai"), ("PROVIDER_MAX_RETRIES", "1")]),
        None,
    )
    .await;

    let status = app.client.transcribe(with_timeout(mulaw_request(""), Duration::from_secs(10))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The last provider's error, in our words.
    assert_eq!(status.message(), "openai is failing (http 500)");
    for leaked in ["kaboom", "sk-leaked", "worker.py"] {
        assert!(!status.message().contains(leaked), "{status:?}");
        assert!(!format!("{:?}", status.metadata()).contains(leaked), "{status:?}");
    }
    // One retry each, then failover, then give up.
    assert_eq!(deepgram.count("/v1/listen"), 2);
    assert_eq!(openai.count("/v1/audio/transcriptions"), 2);
}

#[tokio::test]
async fn a_failing_first_stt_provider_fails_over_to_the_second() {
    let (openai, deepgram) = (Fake::scripted().await, Fake::scripted().await);
    deepgram.on("/v1/listen", vec![Reply::json(503, json!({"err_code": "OVERLOADED"}))]);
    openai.on("/v1/audio/transcriptions", vec![Reply::json(200, whisper_body())]);
    let mut app = spawn_app(
        &env(Some(&openai), Some(&deepgram), &[("STT_PROVIDERS", "deepgram,openai"), ("PROVIDER_MAX_RETRIES", "0")]),
        None,
    )
    .await;

    let response =
        app.client.transcribe(with_timeout(mulaw_request(""), Duration::from_secs(10))).await.unwrap().into_inner();
    assert_eq!(response.provider, "openai");
    assert_eq!(response.model, "whisper-1");
    assert_eq!(response.text, "I want to cancel my order.");
    assert_eq!(response.confidence, None, "whisper gives no word confidences");
    assert_eq!(deepgram.count("/v1/listen"), 1);
    let req = &openai.requests()[0];
    assert_eq!(req.path, "/v1/audio/transcriptions");
    assert_eq!(req.header("authorization"), Some(format!("Bearer {OPENAI_KEY}").as_str()));
    assert!(req.header("content-type").unwrap().starts_with("multipart/form-data; boundary="));
}

#[tokio::test]
async fn a_named_provider_is_used_alone() {
    let (openai, deepgram) = (Fake::scripted().await, Fake::scripted().await);
    deepgram.on("/v1/listen", vec![Reply::json(200, deepgram_listen_body())]);
    openai.on("/v1/audio/transcriptions", vec![Reply::json(500, json!({"error": "down"}))]);
    let mut app = spawn_app(&env(Some(&openai), Some(&deepgram), &[("PROVIDER_MAX_RETRIES", "0")]), None).await;

    // Pinned to openai, which fails: no failover to deepgram.
    let status = app.client.transcribe(mulaw_request("openai")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(deepgram.count("/v1/listen"), 0);
    // Pinned to deepgram.
    let ok = app.client.transcribe(mulaw_request("deepgram")).await.unwrap().into_inner();
    assert_eq!(ok.provider, "deepgram");
    // A provider that cannot transcribe, and one nobody heard of.
    let status = app.client.transcribe(mulaw_request("local")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "provider `local` does not offer speech_to_text")
    );
    let status = app.client.transcribe(mulaw_request("acme")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("unknown provider `acme`"), "{status:?}");
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_and_reach_no_provider() {
    let (openai, deepgram) = (Fake::scripted().await, Fake::scripted().await);
    let mut app = spawn_app(&env(Some(&openai), Some(&deepgram), &[]), None).await;

    let empty = TranscribeRequest { audio: Vec::new(), ..mulaw_request("") };
    let status = app.client.transcribe(empty).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "audio is empty"));

    let unknown_encoding = TranscribeRequest { encoding: 17, ..mulaw_request("") };
    let status = app.client.transcribe(unknown_encoding).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "unknown audio encoding 17"));

    let bad_rate = TranscribeRequest { sample_rate_hz: 3, ..mulaw_request("") };
    let status = app.client.transcribe(bad_rate).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let long = AnalyzeSentimentRequest { text: "great ".repeat(2_000), ..Default::default() };
    let status = app.client.analyze_sentiment(long).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "text exceeds 10000 characters"));

    let blank = SynthesizeSpeechRequest { text: " ".into(), ..Default::default() };
    assert_eq!(app.client.synthesize_speech(blank).await.unwrap_err().code(), Code::InvalidArgument);

    let mut too_many = chat_request();
    too_many.messages = vec![too_many.messages[1].clone(); 101];
    let status = app.client.stream_chat(too_many).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "at most 100 messages are accepted"));

    let mut no_role = chat_request();
    no_role.messages[0].role = Role::Unspecified as i32;
    let status = app.client.stream_chat(no_role).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "messages[0].role is required"));

    let mut hot = chat_request();
    hot.temperature = Some(7.0);
    assert_eq!(app.client.stream_chat(hot).await.unwrap_err().code(), Code::InvalidArgument);

    let status = app.client.list_providers(ListProvidersRequest { capability: 99 }).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "unknown capability 99"));

    assert!(openai.requests().is_empty() && deepgram.requests().is_empty());
}

#[tokio::test]
async fn list_providers_without_keys_shows_only_local_configured() {
    let mut app = spawn_app(&env(None, None, &[]), None).await;
    let rows = app
        .client
        .list_providers(ListProvidersRequest { capability: Capability::Unspecified as i32 })
        .await
        .unwrap()
        .into_inner()
        .providers;
    let summary: Vec<(String, i32, bool, u32)> =
        rows.iter().map(|r| (r.name.clone(), r.capability, r.configured, r.priority)).collect();
    let expected = [
        ("deepgram", Capability::SpeechToText, false, 0),
        ("openai", Capability::SpeechToText, false, 1),
        ("openai", Capability::Chat, false, 0),
        ("deepgram", Capability::TextToSpeech, false, 0),
        ("openai", Capability::TextToSpeech, false, 1),
        ("local", Capability::Sentiment, true, 0),
    ];
    let mut expected: Vec<(String, i32, bool, u32)> =
        expected.iter().map(|(n, c, ok, p)| ((*n).to_owned(), *c as i32, *ok, *p)).collect();
    let mut got = summary.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{rows:#?}");
    for row in rows.iter().filter(|r| !r.configured) {
        assert!(row.reason.contains("_API_KEY is not set"), "{row:?}");
    }
    assert!(rows.iter().all(|r| r.circuit_state == CircuitState::Closed as i32));

    // Chat is not configured: asking for it says so.
    let status = app.client.stream_chat(chat_request()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "no llm provider is configured"));
}

#[tokio::test]
async fn list_providers_filters_by_capability_and_shows_models() {
    let openai = Fake::scripted().await;
    let mut app = spawn_app(
        &env(Some(&openai), None, &[("LLM_PROVIDERS", "openai,simulated"), ("OPENAI_CHAT_MODEL", "llama-3.1-8b")]),
        None,
    )
    .await;
    let rows = app
        .client
        .list_providers(ListProvidersRequest { capability: Capability::Chat as i32 })
        .await
        .unwrap()
        .into_inner()
        .providers;
    let summary: Vec<(&str, bool, u32, &str)> =
        rows.iter().map(|r| (r.name.as_str(), r.configured, r.priority, r.model.as_str())).collect();
    assert_eq!(summary.len(), 2, "{rows:#?}");
    assert!(summary.contains(&("openai", true, 0, "llama-3.1-8b")), "{rows:#?}");
    assert!(
        summary.iter().any(|(name, ok, priority, _)| (*name, *ok, *priority) == ("simulated", true, 1)),
        "{rows:#?}"
    );
    assert!(rows.iter().all(|r| r.capability == Capability::Chat as i32 && r.reason.is_empty()));
}

#[tokio::test]
async fn dropping_a_chat_stream_cancels_the_upstream_request() {
    let openai = Fake::scripted().await;
    let events = openai_sse(&["Let ", "me ", "check "], (10, 3));
    // Three deltas, then the stream stays open (as a slow model would) until the client leaves.
    let chunks = events[..4].iter().map(|e| (Duration::from_millis(5), Bytes::from(e.clone()))).collect();
    openai.on(
        "/v1/chat/completions",
        vec![Reply::Stream {
            content_type: "text/event-stream",
            chunks,
            hang_after: Some(Bytes::from_static(b": keep-alive\n\n")),
        }],
    );
    let mut app = spawn_app(&env(Some(&openai), None, &[("PROVIDER_IDLE_TIMEOUT_SECONDS", "60")]), None).await;

    let mut stream = app.client.stream_chat(chat_request()).await.unwrap().into_inner();
    let first = tokio::time::timeout(HANG, stream.next()).await.expect("hang").unwrap().unwrap();
    assert_eq!(first.event, Some(Event::Delta("Let ".into())));
    assert_eq!(openai.closed_count(), 0, "the upstream answer is still open");
    drop(stream);

    tokio::time::timeout(HANG, openai.wait_closed(1)).await.expect("the upstream request was not cancelled");
    assert_eq!(openai.count("/v1/chat/completions"), 1);
}

/// Audio a provider has already produced is sent in few messages, not one per 20 ms frame (the
/// simulated provider yields frame by frame, all at once at zero latency); nothing is lost or
/// reordered.
#[tokio::test]
async fn audio_already_produced_is_sent_in_few_messages() {
    let mut app = spawn_app(
        &env(
            None,
            None,
            &[
                ("TTS_PROVIDERS", "simulated"),
                ("SIMULATED_LATENCY", "fixed:0"),
                ("SIMULATED_TTFB_SECONDS", "0"),
                ("SIMULATED_TOKENS_PER_SECOND", "0"),
            ],
        ),
        None,
    )
    .await;
    let text = "Your parcel arrives tomorrow before noon.";
    let request = SynthesizeSpeechRequest {
        text: text.into(),
        encoding: AudioEncoding::Mulaw as i32,
        sample_rate_hz: 8000,
        ..Default::default()
    };
    let stream =
        app.client.synthesize_speech(with_timeout(request, Duration::from_secs(10))).await.unwrap().into_inner();
    let messages: Vec<_> = tokio::time::timeout(HANG, stream.collect::<Vec<_>>()).await.expect("hang");
    let messages: Vec<_> = messages.into_iter().map(Result::unwrap).collect();
    let frames = text.chars().count() * 3;
    let bytes: usize = messages.iter().map(|m| m.audio.len()).sum();
    assert_eq!(bytes, frames * 160, "every frame arrives");
    assert!(messages.len() <= frames.div_ceil(32) + 1, "{} messages for {frames} frames", messages.len());
    assert_eq!(messages[0].provider, "simulated");
    assert!(messages.iter().all(|m| m.audio.len() % 160 == 0), "whole frames");
}
