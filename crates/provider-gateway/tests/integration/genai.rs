//! The OpenTelemetry GenAI semantic conventions on the wire: a chat, a transcription and a
//! speech call through the real service in front of a fake OpenAI server, their client spans
//! as the in-test OTLP collector receives them, and the `gen_ai_client_*` metrics on `/metrics`.
//! Installs the global subscriber and recorder, so it is this file's only test (nextest runs each
//! test in its own process anyway).

use std::time::Duration;

use crate::common::{Fake, HANG, Reply, env, spawn_app, with_timeout};
use futures_util::StreamExt;
use kraliki_proto::provider::v1::{
    AudioEncoding, ChatMessage, Role, StreamChatRequest, SynthesizeSpeechRequest, TranscribeRequest,
};
use serde_json::json;
use telemetry::TelemetryConfig;
use telemetry::testing::{OtlpReceiver, ReceivedSpan};

const CALL_ID: &str = "0190f0a0-0000-7000-8000-0000000000c1";
const PROMPT: &str = "My parcel to Elm Street seventeen never came";
const COMPLETION: &str = "I am sorry to hear that";
const TRANSCRIPT: &str = "I want to cancel my order";
const SPOKEN: &str = "Your order is cancelled";
const CLIENT: i32 = 3;

/// An OpenAI chat stream whose events name the dated model that answered.
fn chat_sse(usage: (u64, u64)) -> String {
    let event = |body: serde_json::Value| format!("data: {body}\n\n");
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut out = event(chunk(json!({"role": "assistant", "content": ""}), json!(null)));
    for word in ["I am ", "sorry to ", "hear that"] {
        out.push_str(&event(chunk(json!({"content": word}), json!(null))));
    }
    out.push_str(&event(chunk(json!({}), json!("stop"))));
    out.push_str(&event(json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4o-mini-2024-07-18", "choices": [],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}})));
    out.push_str("data: [DONE]\n\n");
    out
}

fn attr<'a>(span: &'a ReceivedSpan, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Lines of the exposition with this prefix and every label given.
fn lines<'a>(body: &'a str, prefix: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    body.lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|(k, v)| l.contains(&format!(r#"{k}="{v}""#))))
        .collect()
}

fn value(line: &str) -> f64 {
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no value: {line}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_calls_are_gen_ai_spans_and_metrics() {
    let receiver = OtlpReceiver::start().await;
    let openai = Fake::scripted().await;
    // The first chat fails (a refused key), the second answers with usage 21 + 7.
    openai.on(
        "/v1/chat/completions",
        vec![
            Reply::json(401, json!({"error": {"message": "bad key", "code": "invalid_api_key"}})),
            Reply::sse_split(&chat_sse((21, 7)), 11),
        ],
    );
    openai.on(
        "/v1/audio/transcriptions",
        vec![Reply::json(200, json!({"text": TRANSCRIPT, "language": "english", "duration": 1.5}))],
    );
    openai.on("/v1/audio/speech", vec![Reply::raw(200, "application/octet-stream", vec![0; 4800])]);
    let mut env = env(Some(&openai), None, &[]);
    env.set("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    // Spans are INFO: the filter must let them through.
    env.set("LOG_LEVEL", "info");
    let telemetry =
        telemetry::init(&provider_gateway::service_info(), &TelemetryConfig::from_env(&env).unwrap()).unwrap();
    let mut app = spawn_app(&env, telemetry.metrics()).await;

    let chat = || StreamChatRequest {
        messages: vec![ChatMessage { role: Role::User as i32, content: PROMPT.into() }],
        call_id: CALL_ID.into(),
        ..Default::default()
    };
    let refused = app.client.stream_chat(with_timeout(chat(), Duration::from_secs(10))).await;
    assert!(refused.is_err(), "the refused key fails the first chat");
    let stream = app.client.stream_chat(with_timeout(chat(), Duration::from_secs(10))).await.unwrap().into_inner();
    let answer: Vec<_> = tokio::time::timeout(HANG, stream.collect::<Vec<_>>()).await.expect("hang");
    assert!(answer.iter().all(Result::is_ok), "{answer:?}");
    let transcript = app
        .client
        .transcribe(with_timeout(
            TranscribeRequest {
                audio: vec![0xff; 1600],
                encoding: AudioEncoding::Mulaw as i32,
                sample_rate_hz: 8000,
                call_id: CALL_ID.into(),
                ..Default::default()
            },
            Duration::from_secs(10),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(transcript.text, TRANSCRIPT);
    let speech = app
        .client
        .synthesize_speech(with_timeout(
            SynthesizeSpeechRequest { text: SPOKEN.into(), call_id: CALL_ID.into(), ..Default::default() },
            Duration::from_secs(10),
        ))
        .await
        .unwrap()
        .into_inner();
    let audio: Vec<_> = tokio::time::timeout(HANG, speech.collect::<Vec<_>>()).await.expect("hang");
    assert!(!audio.is_empty() && audio.iter().all(Result::is_ok), "{audio:?}");

    // Spans.
    let spans = receiver
        .wait_for(HANG, |s| {
            s.iter().filter(|s| s.name == "chat gpt-4o-mini").count() == 2
                && s.iter().any(|s| s.name == "transcription whisper-1")
                && s.iter().any(|s| s.name == "speech gpt-4o-mini-tts")
        })
        .await;
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let chats = named("chat gpt-4o-mini");
    assert_eq!(chats.len(), 2, "{spans:#?}");
    let chat = chats.iter().find(|s| attr(s, "gen_ai.usage.input_tokens").is_some()).expect("the answered chat");
    assert_eq!(chat.kind, CLIENT);
    assert_eq!(chat.status_code, 1, "ok");
    for (key, want) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
        ("gen_ai.usage.input_tokens", "21"),
        ("gen_ai.usage.output_tokens", "7"),
        ("gen_ai.response.finish_reasons", r#"["stop"]"#),
        ("gen_ai.conversation.id", CALL_ID),
        ("server.address", "127.0.0.1"),
    ] {
        assert_eq!(attr(chat, key), Some(want), "{key} on {chat:#?}");
    }
    let failed = chats.iter().find(|s| attr(s, "gen_ai.usage.input_tokens").is_none()).expect("the refused chat");
    assert_eq!((failed.status_code, attr(failed, "error.type")), (2, Some("unauthorized")));
    for (name, operation, model) in [
        ("transcription whisper-1", "transcription", "whisper-1"),
        ("speech gpt-4o-mini-tts", "speech", "gpt-4o-mini-tts"),
    ] {
        let span = named(name).into_iter().next().unwrap_or_else(|| panic!("no {name} span: {spans:#?}"));
        assert_eq!(span.kind, CLIENT, "{name}");
        for (key, want) in [
            ("gen_ai.operation.name", operation),
            ("gen_ai.provider.name", "openai"),
            ("gen_ai.request.model", model),
            ("gen_ai.response.model", model),
            ("gen_ai.conversation.id", CALL_ID),
        ] {
            assert_eq!(attr(span, key), Some(want), "{key} on {span:#?}");
        }
    }
    // Without PROVIDER_CAPTURE_CONTENT no message content leaves the process.
    for span in spans.iter().filter(|s| s.kind == CLIENT && s.service_name == "provider-gateway") {
        assert!(attr(span, "gen_ai.input.messages").is_none() && attr(span, "gen_ai.output.messages").is_none());
    }
    for export in receiver.raw() {
        for text in [PROMPT, "Elm Street", COMPLETION, "sorry to", TRANSCRIPT, SPOKEN] {
            assert!(!export.contains(text), "{text} was exported");
        }
    }

    // Metrics.
    let body = reqwest::get(format!("{}/metrics", app.admin_url)).await.unwrap().text().await.unwrap();
    let chat_labels = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "gpt-4o-mini"),
    ];
    for (kind, tokens) in [("input", 21.0), ("output", 7.0)] {
        let labels = [chat_labels.as_slice(), &[("gen_ai_token_type", kind)]].concat();
        let sum = lines(&body, "gen_ai_client_token_usage_sum{", &labels);
        assert_eq!(sum.len(), 1, "{kind}:\n{body}");
        assert_eq!(value(sum[0]), tokens, "{}", sum[0]);
        let count = lines(&body, "gen_ai_client_token_usage_count{", &labels);
        assert_eq!(value(count[0]), 1.0, "{}", count[0]);
        // The conventions' bucket boundaries: 21 falls in le="64", not in le="16".
        let bucket = |le: &str| {
            let labels = [labels.as_slice(), &[("le", le)]].concat();
            value(lines(&body, "gen_ai_client_token_usage_bucket{", &labels)[0])
        };
        assert_eq!((bucket("16"), bucket("64")), (if tokens > 16.0 { 0.0 } else { 1.0 }, 1.0), "{kind}");
    }
    let durations = lines(&body, "gen_ai_client_operation_duration_seconds_count{", &chat_labels);
    let ok = durations.iter().find(|l| !l.contains("error_type=")).unwrap_or_else(|| panic!("{body}"));
    assert_eq!(value(ok), 1.0, "{ok}");
    let refused = lines(
        &body,
        "gen_ai_client_operation_duration_seconds_count{",
        &[chat_labels.as_slice(), &[("error_type", "unauthorized")]].concat(),
    );
    assert_eq!(refused.len(), 1, "{body}");
    assert_eq!(value(refused[0]), 1.0);
    for (operation, model) in [("transcription", "whisper-1"), ("speech", "gpt-4o-mini-tts")] {
        let labels = [("gen_ai_operation_name", operation), ("gen_ai_request_model", model)];
        let count = lines(&body, "gen_ai_client_operation_duration_seconds_count{", &labels);
        assert_eq!(count.len(), 1, "{operation}:\n{body}");
        assert_eq!(value(count[0]), 1.0);
        assert!(
            !lines(&body, "gen_ai_client_operation_duration_seconds_bucket{", &[labels[0], ("le", "81.92")]).is_empty(),
            "the conventions' duration buckets:\n{body}"
        );
    }
    // Time to first chunk: the streaming operations only.
    for (operation, want) in [("chat", 1), ("speech", 1), ("transcription", 0)] {
        let count = lines(
            &body,
            "gen_ai_client_operation_time_to_first_chunk_seconds_count{",
            &[("gen_ai_operation_name", operation), ("gen_ai_provider_name", "openai")],
        );
        assert_eq!(count.len(), want, "{operation}:\n{body}");
        if want == 1 {
            assert_eq!(value(count[0]), 1.0);
        }
    }
    assert!(body.contains("# HELP gen_ai_client_token_usage "), "{body}");
    // The existing provider metrics are still there.
    assert!(!lines(&body, "provider_tokens_total{", &[("kind", "prompt")]).is_empty(), "{body}");
    drop(telemetry);
}
