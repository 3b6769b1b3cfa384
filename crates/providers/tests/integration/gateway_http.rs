//! The gateway against fake providers that are real HTTP servers on loopback.

use std::time::Duration;

use crate::common::{Fake, Metrics, Reply, config, multipart, openai_sse};
use axum::body::Bytes;
use futures_util::StreamExt;
use providers::{
    AudioEncoding, Capability, ChatMessage, ChatRequest, CircuitState, FinishReason, Gateway, OutputEncoding,
    ProviderError, Role, SynthesisRequest, TranscriptionRequest, Usage,
};
use serde_json::json;
use tokio::time::Instant;

/// Catches hangs; never a performance assertion.
const HANG: Duration = Duration::from_secs(20);

fn chat_request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are a call-centre agent."),
            ChatMessage::new(Role::User, "Where is my parcel?"),
        ],
        model: None,
        temperature: Some(0.2),
        max_tokens: Some(64),
        conversation_id: None,
    }
}

async fn collect_chat(
    gateway: &Gateway,
    request: ChatRequest,
) -> Result<(String, Vec<providers::ChatChunk>), ProviderError> {
    let stream = tokio::time::timeout(HANG, gateway.chat(request, None)).await.expect("hang")?;
    let chunks: Vec<_> = tokio::time::timeout(HANG, stream.collect::<Vec<_>>()).await.expect("hang");
    let chunks: Vec<_> = chunks.into_iter().collect::<Result<_, _>>()?;
    Ok((chunks.iter().map(|c| c.delta.as_str()).collect(), chunks))
}

fn deepgram_listen_body() -> serde_json::Value {
    json!({
        "metadata": {"transaction_key": "deprecated", "request_id": "7c1a", "sha256": "ab", "created": "2024-01-01T00:00:00.000Z",
                      "duration": 2.5, "channels": 1, "models": ["1abfe86b"], "model_info": {}},
        "results": {
            "channels": [{"alternatives": [{"transcript": "hello I need help with my bill", "confidence": 0.98,
                "words": [
                    {"word": "hello", "start": 0.08, "end": 0.4, "confidence": 0.99, "punctuated_word": "Hello,"},
                    {"word": "i", "start": 0.5, "end": 0.6, "confidence": 0.97, "punctuated_word": "I"}
                ]}], "detected_language": "en"}],
            "utterances": [{"start": 0.08, "end": 2.4, "confidence": 0.98, "channel": 0, "transcript": "Hello, I need help with my bill.", "words": [], "id": "u1"}]
        }
    })
}

#[tokio::test]
async fn chat_streams_tokens_usage_and_sends_the_real_request() {
    let (metrics, _guard) = Metrics::install();
    let fake = Fake::scripted().await;
    // 7-byte chunks split events, JSON and the `\n\n` separators everywhere.
    fake.on(
        "/v1/chat/completions",
        vec![Reply::sse_split(&openai_sse(&["Your ", "parcel ", "is on its way ✓"], (21, 7)), 7)],
    );
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();

    let (text, chunks) = collect_chat(&gateway, chat_request()).await.unwrap();
    assert_eq!(text, "Your parcel is on its way ✓");
    assert_eq!(chunks.iter().find_map(|c| c.finish_reason.clone()), Some(FinishReason::Stop));
    assert_eq!(
        chunks.iter().find_map(|c| c.usage),
        Some(Usage { prompt_tokens: 21, completion_tokens: 7, total_tokens: 28 })
    );

    let req = &fake.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-0123456789abcdef"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    let body = req.json();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["max_tokens"], 64);
    assert!((body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "You are a call-centre agent."}));
    assert_eq!(body["messages"][1], json!({"role": "user", "content": "Where is my parcel?"}));

    let labels = [("provider", "openai"), ("operation", "chat")];
    assert_eq!(metrics.counter("provider_requests_total", &[labels[0], labels[1], ("outcome", "success")]), 1);
    assert_eq!(
        metrics
            .counter("provider_tokens_total", &[("provider", "openai"), ("model", "gpt-4o-mini"), ("kind", "prompt")]),
        21
    );
    assert_eq!(metrics.counter("provider_tokens_total", &[("provider", "openai"), ("kind", "completion")]), 7);
    assert_eq!(metrics.histogram_count("provider_time_to_first_byte_seconds", &labels), 1);
    assert_eq!(metrics.histogram_count("provider_request_duration_seconds", &labels), 1);
    assert_eq!(metrics.gauge("provider_inflight_requests", &[("provider", "openai")]), Some(0.0));
    assert_eq!(metrics.gauge("provider_circuit_state", &labels), Some(0.0));
}

#[tokio::test]
async fn openai_transcription_sends_multipart_and_reads_verbose_json() {
    let fake = Fake::scripted().await;
    fake.on(
        "/v1/audio/transcriptions",
        vec![Reply::json(200, json!({
            "task": "transcribe", "language": "english", "duration": 1.5,
            "text": " I want to cancel my order. ",
            "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 1.4, "text": " I want to cancel my order.", "tokens": [50364, 40],
                          "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 0.9, "no_speech_prob": 0.01}],
            "words": [{"word": "I", "start": 0.0, "end": 0.1}, {"word": "want", "start": 0.1, "end": 0.3}]
        }))],
    );
    let gateway = Gateway::new(config(Some(&fake), None, &[("STT_PROVIDERS", "openai")])).unwrap();
    let audio: Vec<u8> = (0..1600u32).flat_map(|i| ((i % 200) as i16 * 50).to_le_bytes()).collect();
    let mut request = TranscriptionRequest::new(audio.clone(), AudioEncoding::Pcm16);
    request.sample_rate = 16_000;
    request.language = Some("en-US".into());
    let transcript = gateway.transcribe(request, None).await.unwrap();

    assert_eq!(transcript.text, "I want to cancel my order.");
    assert_eq!(transcript.provider, "openai");
    assert_eq!(transcript.model, "whisper-1");
    assert_eq!(transcript.language.as_deref(), Some("english"));
    assert_eq!(transcript.duration_seconds, Some(1.5));
    assert_eq!(transcript.segments.len(), 1);
    assert_eq!(transcript.segments[0].end, 1.4);
    assert_eq!(transcript.words[1].word, "want");

    let req = &fake.requests()[0];
    assert_eq!(req.path, "/v1/audio/transcriptions");
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-0123456789abcdef"));
    let parts = multipart(req.header("content-type").unwrap(), &req.body);
    let field = |name: &str| parts.iter().filter(|p| p.0 == name).collect::<Vec<_>>();
    let file = field("file")[0];
    assert_eq!(file.1.as_deref(), Some("audio.wav"));
    assert_eq!(file.2.as_deref(), Some("audio/wav"));
    assert_eq!(&file.3[..4], b"RIFF", "raw PCM is wrapped in a WAV header");
    assert_eq!(u32::from_le_bytes(file.3[24..28].try_into().unwrap()), 16_000);
    assert_eq!(&file.3[44..], audio.as_slice());
    assert_eq!(field("model")[0].3, b"whisper-1");
    assert_eq!(field("response_format")[0].3, b"verbose_json");
    assert_eq!(field("language")[0].3, b"en");
    let granularities: Vec<&[u8]> = field("timestamp_granularities[]").iter().map(|p| p.3.as_slice()).collect();
    assert_eq!(granularities, vec![b"segment".as_slice(), b"word".as_slice()]);
}

#[tokio::test]
async fn deepgram_transcription_sends_query_auth_and_raw_body() {
    let (metrics, _guard) = Metrics::install();
    let fake = Fake::scripted().await;
    fake.on("/v1/listen", vec![Reply::json(200, deepgram_listen_body())]);
    let gateway = Gateway::new(config(None, Some(&fake), &[("STT_PROVIDERS", "deepgram")])).unwrap();
    let audio = vec![0xffu8; 8000];
    let mut request = TranscriptionRequest::new(audio.clone(), AudioEncoding::Mulaw);
    request.language = Some("en".into());
    request.diarize = true;
    let transcript = gateway.transcribe(request, None).await.unwrap();

    assert_eq!(transcript.text, "hello I need help with my bill");
    assert_eq!(transcript.provider, "deepgram");
    assert_eq!(transcript.model, "nova-3");
    assert_eq!(transcript.duration_seconds, Some(2.5));
    assert_eq!(transcript.words[0].word, "Hello,");
    assert_eq!(transcript.segments[0].text, "Hello, I need help with my bill.");
    assert_eq!(transcript.language.as_deref(), Some("en"));

    let req = &fake.requests()[0];
    assert_eq!(req.path, "/v1/listen");
    assert_eq!(req.header("authorization"), Some("Token dg-test-key-0123456789"));
    assert_eq!(req.header("content-type"), Some("application/octet-stream"));
    for (k, v) in [
        ("model", "nova-3"),
        ("language", "en"),
        ("punctuate", "true"),
        ("encoding", "mulaw"),
        ("sample_rate", "8000"),
        ("channels", "1"),
        ("diarize", "true"),
    ] {
        assert_eq!(req.query.get(k).map(String::as_str), Some(v), "query {k}");
    }
    assert_eq!(req.body.as_ref(), audio.as_slice());
    assert_eq!(
        metrics.histogram_count(
            "provider_time_to_first_byte_seconds",
            &[("provider", "deepgram"), ("operation", "transcribe")]
        ),
        1
    );
}

#[tokio::test]
async fn openai_speech_streams_pcm_converted_to_the_requested_format() {
    let fake = Fake::scripted().await;
    // 0.5 s of 24 kHz PCM in odd-sized chunks (samples split across chunks).
    let pcm: Vec<u8> = (0..12_000u32).flat_map(|i| (((i as f32 * 0.1).sin() * 5000.0) as i16).to_le_bytes()).collect();
    let chunks = pcm.chunks(1001).map(|c| (Duration::from_millis(1), Bytes::copy_from_slice(c))).collect();
    fake.on(
        "/v1/audio/speech",
        vec![Reply::Stream { content_type: "application/octet-stream", chunks, hang_after: None }],
    );
    let gateway = Gateway::new(config(Some(&fake), None, &[("TTS_PROVIDERS", "openai")])).unwrap();

    let mut request = SynthesisRequest::new("Your parcel arrives tomorrow.");
    request.encoding = OutputEncoding::Pcm16;
    request.sample_rate = 8_000;
    let stream = gateway.synthesize(request, None).await.unwrap();
    assert_eq!(stream.format.sample_rate, 8_000);
    let pieces: Vec<Bytes> = tokio::time::timeout(HANG, stream.map(Result::unwrap).collect()).await.unwrap();
    assert!(pieces.iter().all(|p| p.len() % 2 == 0), "chunks hold whole samples");
    let total: usize = pieces.iter().map(Bytes::len).sum();
    assert!((total / 2).abs_diff(4_000) <= 2, "0.5 s at 8 kHz, got {} samples", total / 2);

    let body = fake.requests()[0].json();
    assert_eq!(
        body,
        json!({"model": "gpt-4o-mini-tts", "input": "Your parcel arrives tomorrow.", "voice": "alloy", "response_format": "pcm"})
    );
}

#[tokio::test]
async fn deepgram_speech_asks_for_the_phone_format_and_passes_it_through() {
    let fake = Fake::scripted().await;
    let audio: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let chunks = audio.chunks(640).map(|c| (Duration::from_millis(1), Bytes::copy_from_slice(c))).collect();
    fake.on("/v1/speak", vec![Reply::Stream { content_type: "audio/basic", chunks, hang_after: None }]);
    let gateway = Gateway::new(config(None, Some(&fake), &[("TTS_PROVIDERS", "deepgram")])).unwrap();

    let stream = gateway.synthesize(SynthesisRequest::new("Hello there."), None).await.unwrap();
    let got: Vec<u8> = tokio::time::timeout(HANG, stream.map(|c| c.unwrap().to_vec()).concat()).await.unwrap();
    assert_eq!(got, audio);

    let req = &fake.requests()[0];
    assert_eq!(req.header("authorization"), Some("Token dg-test-key-0123456789"));
    for (k, v) in [("model", "aura-2-thalia-en"), ("encoding", "mulaw"), ("sample_rate", "8000"), ("container", "none")]
    {
        assert_eq!(req.query.get(k).map(String::as_str), Some(v), "query {k}");
    }
    assert_eq!(req.json(), json!({"text": "Hello there."}));
}

#[tokio::test]
async fn rate_limited_request_waits_for_retry_after_then_succeeds() {
    let (metrics, _guard) = Metrics::install();
    let fake = Fake::scripted().await;
    fake.on(
        "/v1/chat/completions",
        vec![
            Reply::json(429, json!({"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests", "code": "rate_limit_exceeded"}}))
                .with_header("retry-after", "1"),
            Reply::sse_split(&openai_sse(&["ok"], (5, 1)), 64),
        ],
    );
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let started = Instant::now();
    let (text, _) = collect_chat(&gateway, chat_request()).await.unwrap();
    assert_eq!(text, "ok");
    assert_eq!(fake.count("/v1/chat/completions"), 2);
    assert!(started.elapsed() >= Duration::from_millis(950), "Retry-After was not honoured");
    assert_eq!(metrics.counter("provider_requests_total", &[("provider", "openai"), ("outcome", "rate_limited")]), 1);
    assert_eq!(metrics.counter("provider_requests_total", &[("provider", "openai"), ("outcome", "success")]), 1);
}

#[tokio::test]
async fn retry_after_longer_than_allowed_fails_over_instead_of_waiting() {
    let fake = Fake::scripted().await;
    fake.on(
        "/v1/audio/transcriptions",
        vec![Reply::json(429, json!({"error": {"message": "slow down"}})).with_header("retry-after", "120")],
    );
    fake.on("/v1/listen", vec![Reply::json(200, deepgram_listen_body())]);
    let gateway = Gateway::new(config(Some(&fake), Some(&fake), &[("STT_PROVIDERS", "openai,deepgram")])).unwrap();
    let transcript = tokio::time::timeout(
        HANG,
        gateway.transcribe(TranscriptionRequest::new(vec![1u8; 100], AudioEncoding::Wav), None),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(transcript.provider, "deepgram");
    assert_eq!(fake.count("/v1/audio/transcriptions"), 1);
}

#[tokio::test]
async fn server_error_then_success_is_retried() {
    let (metrics, _guard) = Metrics::install();
    let fake = Fake::scripted().await;
    fake.on(
        "/v1/listen",
        vec![
            Reply::json(500, json!({"err_code": "INTERNAL_SERVER_ERROR", "err_msg": "boom", "request_id": "x"})),
            Reply::json(200, deepgram_listen_body()),
        ],
    );
    let gateway = Gateway::new(config(None, Some(&fake), &[("STT_PROVIDERS", "deepgram")])).unwrap();
    let transcript =
        gateway.transcribe(TranscriptionRequest::new(vec![1u8; 100], AudioEncoding::Wav), None).await.unwrap();
    assert_eq!(transcript.provider, "deepgram");
    assert_eq!(fake.count("/v1/listen"), 2);
    assert_eq!(fake.requests()[1].body.as_ref(), &[1u8; 100][..], "the retry sends the same body");
    assert_eq!(
        metrics.counter("provider_requests_total", &[("provider", "deepgram"), ("outcome", "upstream_error")]),
        1
    );
    assert_eq!(metrics.counter("provider_requests_total", &[("provider", "deepgram"), ("outcome", "success")]), 1);
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported_unavailable() {
    let (metrics, _guard) = Metrics::install();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let cfg = config(None, None, &[("OPENAI_BASE_URL", &format!("http://{closed}/v1")), ("PROVIDER_MAX_RETRIES", "2")]);
    let gateway = Gateway::new(cfg).unwrap();
    let err = tokio::time::timeout(HANG, gateway.chat(chat_request(), None)).await.unwrap().unwrap_err();
    assert!(matches!(err, ProviderError::Connect { provider: "openai", .. }), "{err:?}");
    assert_eq!(err.code().as_str(), "unavailable");
    assert_eq!(err.client_message(), "openai could not be reached");
    assert_eq!(metrics.counter("provider_requests_total", &[("provider", "openai"), ("outcome", "connect_error")]), 3);
}

#[tokio::test]
async fn first_byte_that_never_comes_is_cut_without_retry() {
    let fake = Fake::scripted().await;
    fake.on("/v1/chat/completions", vec![Reply::Hang]);
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let err = tokio::time::timeout(HANG, gateway.chat(chat_request(), None)).await.unwrap().unwrap_err();
    assert!(matches!(err, ProviderError::FirstByteTimeout { provider: "openai", .. }), "{err:?}");
    assert_eq!(err.code().as_str(), "unavailable");
    assert_eq!(fake.count("/v1/chat/completions"), 1, "a stalled provider is not asked again");
}

#[tokio::test]
async fn stream_stalling_midway_ends_with_a_clear_error() {
    let (metrics, _guard) = Metrics::install();
    let fake = Fake::scripted().await;
    let sse = openai_sse(&["Let me ", "check ", "that"], (10, 3));
    let first_two: String = sse.split("\n\n").take(3).map(|e| format!("{e}\n\n")).collect();
    fake.on(
        "/v1/chat/completions",
        vec![Reply::Stream {
            content_type: "text/event-stream",
            chunks: vec![(Duration::ZERO, Bytes::from(first_two))],
            hang_after: Some(Bytes::new()),
        }],
    );
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let mut stream = gateway.chat(chat_request(), None).await.unwrap();
    let mut text = String::new();
    let mut error = None;
    while let Some(item) = tokio::time::timeout(HANG, stream.next()).await.expect("stream left hanging") {
        match item {
            Ok(chunk) => text.push_str(&chunk.delta),
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(text, "Let me check ");
    let error = error.expect("stall reported");
    assert!(matches!(error, ProviderError::Stalled { provider: "openai", .. }), "{error:?}");
    assert!(error.client_message().contains("stalled"));
    assert_eq!(metrics.counter("provider_requests_total", &[("provider", "openai"), ("outcome", "stalled")]), 1);
    assert_eq!(metrics.gauge("provider_inflight_requests", &[("provider", "openai")]), Some(0.0));
}

#[tokio::test]
async fn malformed_sse_and_json_are_internal_errors() {
    let fake = Fake::scripted().await;
    fake.on("/v1/chat/completions", vec![Reply::sse_split("data: {\"choices\": [oops\n\n", 5)]);
    fake.on("/v1/audio/transcriptions", vec![Reply::json(200, json!(["not", "a", "transcript"]))]);
    let gateway = Gateway::new(config(Some(&fake), None, &[("STT_PROVIDERS", "openai")])).unwrap();

    let err = gateway.chat(chat_request(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed { provider: "openai", .. }), "{err:?}");
    assert_eq!(err.code().as_str(), "internal");
    assert_eq!(err.client_message(), "openai sent an invalid response");

    let err = gateway.transcribe(TranscriptionRequest::new(vec![1u8; 10], AudioEncoding::Mp3), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed { .. }), "{err:?}");
}

#[tokio::test]
async fn stream_cut_before_done_is_an_error_not_a_silent_end() {
    let fake = Fake::scripted().await;
    let sse = openai_sse(&["partial"], (1, 1));
    let cut: String = sse.split("\n\n").take(2).map(|e| format!("{e}\n\n")).collect();
    fake.on("/v1/chat/completions", vec![Reply::sse_split(&cut, 50)]);
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let items: Vec<_> = gateway.chat(chat_request(), None).await.unwrap().collect().await;
    assert_eq!(items[0].as_ref().unwrap().delta, "partial");
    assert!(matches!(items.last().unwrap(), Err(ProviderError::Interrupted { .. })), "{items:?}");
}

#[tokio::test]
async fn error_event_inside_the_stream_is_reported() {
    let fake = Fake::scripted().await;
    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"error\":{\"message\":\"model overloaded\",\"type\":\"server_error\"}}\n\n";
    fake.on("/v1/chat/completions", vec![Reply::sse_split(body, 13)]);
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let items: Vec<_> = gateway.chat(chat_request(), None).await.unwrap().collect().await;
    assert_eq!(items.len(), 2);
    assert!(matches!(&items[1], Err(ProviderError::Interrupted { .. })));
}

#[tokio::test]
async fn failing_first_provider_fails_over_to_the_second() {
    let (metrics, _guard) = Metrics::install();
    let dg = Fake::scripted().await;
    let oa = Fake::scripted().await;
    dg.on("/v1/listen", vec![Reply::json(503, json!({"err_code": "SERVICE_UNAVAILABLE", "err_msg": "try later"}))]);
    oa.on("/v1/audio/transcriptions", vec![Reply::json(200, json!({"text": "hello from whisper"}))]);
    let gateway = Gateway::new(config(Some(&oa), Some(&dg), &[("PROVIDER_MAX_RETRIES", "1")])).unwrap();
    let transcript =
        gateway.transcribe(TranscriptionRequest::new(vec![9u8; 64], AudioEncoding::Wav), None).await.unwrap();
    assert_eq!(transcript.provider, "openai");
    assert_eq!(transcript.text, "hello from whisper");
    assert_eq!(dg.count("/v1/listen"), 2, "one retry on the first provider");
    assert_eq!(
        metrics.counter(
            "provider_failovers_total",
            &[("operation", "transcribe"), ("from", "deepgram"), ("to", "openai")]
        ),
        1
    );
}

#[tokio::test]
async fn open_circuit_is_skipped_in_favour_of_the_next_provider() {
    let (metrics, _guard) = Metrics::install();
    let dg = Fake::scripted().await;
    let oa = Fake::scripted().await;
    dg.on("/v1/listen", vec![Reply::json(500, json!({"err_code": "INTERNAL", "err_msg": "down"}))]);
    oa.on("/v1/audio/transcriptions", vec![Reply::json(200, json!({"text": "fine"}))]);
    let cfg = config(
        Some(&oa),
        Some(&dg),
        &[("PROVIDER_MAX_RETRIES", "0"), ("PROVIDER_CIRCUIT_FAILURES", "1"), ("PROVIDER_CIRCUIT_OPEN_SECONDS", "60")],
    );
    let gateway = Gateway::new(cfg).unwrap();
    for _ in 0..3 {
        let t = gateway.transcribe(TranscriptionRequest::new(vec![1u8; 8], AudioEncoding::Wav), None).await.unwrap();
        assert_eq!(t.provider, "openai");
    }
    assert_eq!(dg.count("/v1/listen"), 1, "open circuit: deepgram is not called again");
    assert_eq!(oa.count("/v1/audio/transcriptions"), 3);
    assert_eq!(metrics.counter("provider_requests_total", &[("provider", "deepgram"), ("outcome", "circuit_open")]), 2);
    assert_eq!(metrics.counter("provider_failovers_total", &[("from", "deepgram"), ("to", "openai")]), 3);
    assert_eq!(
        metrics.gauge("provider_circuit_state", &[("provider", "deepgram"), ("operation", "transcribe")]),
        Some(2.0)
    );
}

#[tokio::test]
async fn deepgram_speech_at_a_rate_it_lacks_is_converted_locally() {
    let fake = Fake::scripted().await;
    let pcm: Vec<u8> = (0..24_000u32).flat_map(|i| (((i as f32 * 0.05).sin() * 4000.0) as i16).to_le_bytes()).collect();
    let chunks = pcm.chunks(333).map(|c| (Duration::ZERO, Bytes::copy_from_slice(c))).collect();
    fake.on("/v1/speak", vec![Reply::Stream { content_type: "application/octet-stream", chunks, hang_after: None }]);
    let gateway = Gateway::new(config(None, Some(&fake), &[("TTS_PROVIDERS", "deepgram")])).unwrap();
    let mut request = SynthesisRequest::new("Hi");
    request.encoding = OutputEncoding::Mulaw;
    request.sample_rate = 12_000;
    let got: Vec<u8> = gateway.synthesize(request, None).await.unwrap().map(|c| c.unwrap().to_vec()).concat().await;
    assert!(got.len().abs_diff(12_000) <= 2, "one second of 12 kHz mu-law, got {}", got.len());
    let req = &fake.requests()[0];
    assert_eq!(req.query.get("encoding").map(String::as_str), Some("linear16"));
    assert_eq!(req.query.get("sample_rate").map(String::as_str), Some("24000"));
}

#[tokio::test]
async fn circuit_opens_fails_fast_then_closes_after_a_successful_probe() {
    let (metrics, _guard) = Metrics::install();
    let fake = Fake::scripted().await;
    fake.on("/v1/chat/completions", vec![Reply::json(500, json!({"error": {"message": "boom"}}))]);
    let cfg = config(
        Some(&fake),
        None,
        &[("PROVIDER_MAX_RETRIES", "0"), ("PROVIDER_CIRCUIT_FAILURES", "3"), ("PROVIDER_CIRCUIT_OPEN_SECONDS", "0.3")],
    );
    let gateway = Gateway::new(cfg).unwrap();
    for _ in 0..3 {
        let err = gateway.chat(chat_request(), None).await.unwrap_err();
        assert!(matches!(err, ProviderError::Upstream { status: 500, .. }), "{err:?}");
    }
    let labels = [("provider", "openai"), ("operation", "chat")];
    assert_eq!(metrics.gauge("provider_circuit_state", &labels), Some(2.0));
    // Open: fails fast, the provider is not asked.
    let err = gateway.chat(chat_request(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::CircuitOpen { provider: "openai", capability: Capability::Llm }), "{err:?}");
    assert_eq!(err.code().as_str(), "unavailable");
    assert_eq!(fake.count("/v1/chat/completions"), 3);
    let row =
        gateway.list_providers().into_iter().find(|r| r.name == "openai" && r.capability == Capability::Llm).unwrap();
    assert_eq!(row.circuit, CircuitState::Open);
    assert!(!gateway.available_capabilities().into_iter().find(|(c, _)| *c == Capability::Llm).unwrap().1);

    // The provider recovers; after the open period one probe goes through and closes it.
    fake.on("/v1/chat/completions", vec![Reply::sse_split(&openai_sse(&["back"], (1, 1)), 32)]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (text, _) = collect_chat(&gateway, chat_request()).await.unwrap();
    assert_eq!(text, "back");
    assert_eq!(fake.count("/v1/chat/completions"), 4);
    assert_eq!(metrics.gauge("provider_circuit_state", &labels), Some(0.0));
    let row =
        gateway.list_providers().into_iter().find(|r| r.name == "openai" && r.capability == Capability::Llm).unwrap();
    assert_eq!(row.circuit, CircuitState::Closed);
}

#[tokio::test]
async fn deadline_shorter_than_provider_latency() {
    let fake = Fake::scripted().await;
    fake.on(
        "/v1/audio/transcriptions",
        vec![Reply::Delayed(Duration::from_secs(10), Box::new(Reply::json(200, json!({"text": "late"}))))],
    );
    let gateway = Gateway::new(config(
        Some(&fake),
        None,
        &[("STT_PROVIDERS", "openai"), ("PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS", "60")],
    ))
    .unwrap();
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_millis(200);
    let err = gateway
        .transcribe(TranscriptionRequest::new(vec![1u8; 10], AudioEncoding::Wav), Some(deadline))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::DeadlineExceeded), "{err:?}");
    assert_eq!(err.code().as_str(), "deadline_exceeded");
    // Hang catcher, far above the deadline and far below the provider's latency.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn deadline_also_bounds_an_open_stream() {
    let fake = Fake::scripted().await;
    let chunks = (0..50)
        .map(|i| {
            (
                Duration::from_millis(100),
                Bytes::from(format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i} \"}}}}]}}\n\n")),
            )
        })
        .collect();
    fake.on(
        "/v1/chat/completions",
        vec![Reply::Stream { content_type: "text/event-stream", chunks, hang_after: None }],
    );
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let deadline = Instant::now() + Duration::from_millis(600);
    let items: Vec<_> =
        tokio::time::timeout(HANG, gateway.chat(chat_request(), Some(deadline)).await.unwrap().collect())
            .await
            .unwrap();
    assert!(items.len() < 50);
    assert!(matches!(items.last().unwrap(), Err(ProviderError::DeadlineExceeded)), "{:?}", items.last());
}

#[tokio::test]
async fn concurrency_limit_answers_resource_exhausted() {
    let (metrics, _guard) = Metrics::install();
    let fake = Fake::scripted().await;
    let first = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    fake.on(
        "/v1/chat/completions",
        vec![
            Reply::Stream {
                content_type: "text/event-stream",
                chunks: vec![(Duration::ZERO, Bytes::from(first))],
                hang_after: Some(Bytes::new()),
            },
            Reply::sse_split(&openai_sse(&["second"], (1, 1)), 40),
        ],
    );
    let gateway = Gateway::new(config(
        Some(&fake),
        None,
        &[("OPENAI_MAX_CONCURRENCY", "1"), ("PROVIDER_IDLE_TIMEOUT_SECONDS", "10")],
    ))
    .unwrap();
    let held = gateway.chat(chat_request(), None).await.unwrap();
    assert_eq!(metrics.gauge("provider_inflight_requests", &[("provider", "openai")]), Some(1.0));
    let err = gateway.chat(chat_request(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Saturated { provider: "openai", limit: 1 }), "{err:?}");
    assert_eq!(err.code().as_str(), "resource_exhausted");
    assert_eq!(fake.count("/v1/chat/completions"), 1, "a full provider is not called");
    assert_eq!(metrics.counter("provider_requests_total", &[("provider", "openai"), ("outcome", "saturated")]), 1);
    drop(held);
    let (text, _) = collect_chat(&gateway, chat_request()).await.unwrap();
    assert_eq!(text, "second");
    assert_eq!(metrics.counter("provider_requests_total", &[("provider", "openai"), ("outcome", "cancelled")]), 1);
}

#[tokio::test]
async fn provider_error_body_never_reaches_the_caller() {
    let fake = Fake::scripted().await;
    let body = json!({"error": {"message": "Incorrect API key provided: sk-test-0123456789abcdef. You can find your API key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error", "code": "invalid_api_key"}});
    fake.on("/v1/chat/completions", vec![Reply::json(401, body)]);
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let err = gateway.chat(chat_request(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorized { status: 401, .. }), "{err:?}");
    assert_eq!(err.code().as_str(), "failed_precondition");
    for text in [err.client_message(), err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("sk-test"), "{text}");
        assert!(!text.contains("Incorrect API key"), "{text}");
    }
    assert_eq!(fake.count("/v1/chat/completions"), 1, "401 is not retried");
}

#[tokio::test]
async fn keyless_openai_compatible_server_gets_no_authorization_header() {
    let fake = Fake::scripted().await;
    fake.on("/v1/chat/completions", vec![Reply::sse_split(&openai_sse(&["local"], (1, 1)), 16)]);
    let cfg =
        config(None, None, &[("OPENAI_BASE_URL", &fake.url("/v1")), ("OPENAI_CHAT_MODEL", "llama-3.1-8b-instruct")]);
    let gateway = Gateway::new(cfg).unwrap();
    let (text, _) = collect_chat(&gateway, chat_request()).await.unwrap();
    assert_eq!(text, "local");
    let req = &fake.requests()[0];
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.json()["model"], "llama-3.1-8b-instruct");
}

#[tokio::test]
async fn non_streaming_json_answer_from_a_compatible_server_is_accepted() {
    let fake = Fake::scripted().await;
    fake.on(
        "/v1/chat/completions",
        vec![Reply::json(200, json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole answer"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}))],
    );
    let gateway = Gateway::new(config(Some(&fake), None, &[])).unwrap();
    let (text, chunks) = collect_chat(&gateway, chat_request()).await.unwrap();
    assert_eq!(text, "whole answer");
    assert_eq!(chunks[0].usage.unwrap().total_tokens, 5);
}

#[tokio::test]
async fn unconfigured_providers_are_listed_with_a_reason() {
    let gateway = Gateway::new(config(None, None, &[])).unwrap();
    let rows = gateway.list_providers();
    let openai_llm = rows.iter().find(|r| r.name == "openai" && r.capability == Capability::Llm).unwrap();
    assert!(!openai_llm.configured);
    assert!(openai_llm.reason.as_deref().unwrap().contains("OPENAI_API_KEY"));
    let local = rows.iter().find(|r| r.name == "local").unwrap();
    assert!(local.configured && local.reason.is_none());
    assert!(rows.iter().all(|r| r.name != "simulated"), "simulated only appears when listed");
    let err = gateway.chat(chat_request(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::NotConfigured(Capability::Llm)));
    assert_eq!(err.code().as_str(), "failed_precondition");
}

#[tokio::test]
async fn invalid_requests_are_refused_before_any_provider_is_called() {
    let fake = Fake::scripted().await;
    let gateway = Gateway::new(config(Some(&fake), None, &[("STT_PROVIDERS", "openai")])).unwrap();
    let err = gateway.chat(ChatRequest::default(), None).await.unwrap_err();
    assert_eq!(err.code().as_str(), "invalid_argument");
    let err = gateway.transcribe(TranscriptionRequest::new(Vec::new(), AudioEncoding::Wav), None).await.unwrap_err();
    assert_eq!(err.code().as_str(), "invalid_argument");
    let mut bad_rate = SynthesisRequest::new("hi");
    bad_rate.sample_rate = 1;
    assert_eq!(gateway.synthesize(bad_rate, None).await.unwrap_err().code().as_str(), "invalid_argument");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn sentiment_runs_locally_by_default() {
    let gateway = Gateway::new(config(None, None, &[])).unwrap();
    let result = gateway.sentiment("The agent was rude and I'm still waiting for my refund.", None).await.unwrap();
    assert_eq!(result.label, providers::SentimentLabel::Negative);
    assert!(result.score < 0.0);
    assert_eq!(result.provider, "local");
    assert!(result.keywords.iter().any(|k| k == "rude"), "{:?}", result.keywords);
}
