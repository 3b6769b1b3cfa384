//! The `simulated` provider and the stream guard on tokio's paused clock: virtual time makes
//! latency, token pacing and stalls deterministic and instant.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use providers::{
    Capability, ChatMessage, ChatRequest, Gateway, OutputEncoding, ProviderError, ProvidersConfig, Role,
    SynthesisRequest, TranscriptionRequest,
};
use tokio::time::Instant;

fn gateway(extra: &[(&str, &str)]) -> Gateway {
    let mut vars: HashMap<String, String> = [
        ("STT_PROVIDERS", "simulated"),
        ("LLM_PROVIDERS", "simulated"),
        ("TTS_PROVIDERS", "simulated"),
        ("SENTIMENT_PROVIDERS", "simulated,local"),
        ("SIMULATED_LATENCY", "fixed:100"),
        ("SIMULATED_TTFB_SECONDS", "0.2"),
        ("SIMULATED_TOKENS_PER_SECOND", "10"),
        ("PROVIDER_IDLE_TIMEOUT_SECONDS", "2"),
        ("PROVIDER_FIRST_BYTE_TIMEOUT_SECONDS", "5"),
        ("PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS", "30"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Gateway::new(ProvidersConfig::from_env(&providers::config::Env::from_pairs(vars)).unwrap()).unwrap()
}

fn chat(max_tokens: u32) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::new(Role::User, "hello there agent")],
        max_tokens: Some(max_tokens),
        ..ChatRequest::default()
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_arrive_after_ttfb_at_the_configured_rate() {
    let gw = gateway(&[]);
    let started = Instant::now();
    let mut stream = gw.chat(chat(10), None).await.unwrap();
    // Latency 100 ms + time to first byte 200 ms before the first token (virtual time).
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    let mut text = String::new();
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(&chunk.delta);
        usage = usage.or(chunk.usage);
    }
    // Nine gaps of 100 ms between ten tokens.
    assert_eq!(started.elapsed(), Duration::from_millis(1200));
    assert_eq!(text.split_whitespace().count(), 10);
    let usage = usage.unwrap();
    assert_eq!(usage.completion_tokens, 10);
    assert_eq!(usage.prompt_tokens, 3 + 4);
    assert_eq!(stream.provider, "simulated");
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_answers() {
    let run = |seed: &'static str| async move {
        let gw = gateway(&[("SIMULATED_SEED", seed), ("SIMULATED_LATENCY", "uniform:10-500")]);
        let mut out = Vec::new();
        for _ in 0..3 {
            let stream = gw.chat(chat(5), None).await.unwrap();
            let text: String = stream.map(|c| c.unwrap().delta).collect::<Vec<_>>().await.concat();
            out.push(text);
        }
        out
    };
    assert_eq!(run("7").await, run("7").await);
    assert_ne!(run("7").await, run("8").await);
}

#[tokio::test(start_paused = true)]
async fn error_rate_one_always_fails_unavailable() {
    let gw = gateway(&[("SIMULATED_ERROR_RATE", "1"), ("PROVIDER_MAX_RETRIES", "0")]);
    let err = gw.chat(chat(5), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::SimulatedFault), "{err:?}");
    assert_eq!(err.code().as_str(), "unavailable");
    let err = gw.transcribe(TranscriptionRequest::new(vec![0u8; 1600], providers::AudioEncoding::Mulaw), None).await;
    assert!(err.is_err());
}

#[tokio::test(start_paused = true)]
async fn failing_simulated_sentiment_fails_over_to_local() {
    let gw = gateway(&[("SIMULATED_ERROR_RATE", "1"), ("PROVIDER_MAX_RETRIES", "0")]);
    let result = gw.sentiment("Thank you, that was really helpful!", None).await.unwrap();
    assert_eq!(result.provider, "local");
    assert_eq!(result.label, providers::SentimentLabel::Positive);
}

#[tokio::test(start_paused = true)]
async fn stalled_stream_is_cut_by_the_idle_timeout() {
    let gw = gateway(&[("SIMULATED_STALL_RATE", "1")]);
    let started = Instant::now();
    let stream = gw.chat(chat(10), None).await.unwrap();
    let items: Vec<_> = stream.collect().await;
    let tokens = items.iter().filter(|i| i.is_ok()).count();
    assert_eq!(tokens, 5, "half the answer, then the stall");
    let last = items.last().unwrap().as_ref().unwrap_err();
    assert!(matches!(last, ProviderError::Stalled { provider: "simulated", .. }), "{last:?}");
    // 300 ms to first token, four 100 ms gaps, then the 2 s idle timeout.
    assert_eq!(started.elapsed(), Duration::from_millis(2700));
}

#[tokio::test(start_paused = true)]
async fn stalled_transcription_is_cut_by_the_first_byte_timeout() {
    let gw = gateway(&[("SIMULATED_STALL_RATE", "1")]);
    let started = Instant::now();
    let err = gw
        .transcribe(TranscriptionRequest::new(vec![0u8; 1600], providers::AudioEncoding::Mulaw), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::FirstByteTimeout { .. }), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn caller_deadline_wins_over_longer_timeouts() {
    let gw = gateway(&[("SIMULATED_LATENCY", "fixed:10000")]);
    let started = Instant::now();
    let err = gw.chat(chat(5), Some(Instant::now() + Duration::from_millis(750))).await.unwrap_err();
    assert!(matches!(err, ProviderError::DeadlineExceeded), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_millis(750));
}

#[tokio::test(start_paused = true)]
async fn transcription_and_speech_have_the_right_shape() {
    let gw = gateway(&[]);
    // Two seconds of 8 kHz μ-law.
    let transcript = gw
        .transcribe(TranscriptionRequest::new(vec![0xffu8; 16_000], providers::AudioEncoding::Mulaw), None)
        .await
        .unwrap();
    assert_eq!(transcript.duration_seconds, Some(2.0));
    assert_eq!(transcript.words.len(), 5);
    assert_eq!(transcript.provider, "simulated");

    let mut request = SynthesisRequest::new("Hello");
    request.encoding = OutputEncoding::Mulaw;
    request.sample_rate = 8_000;
    let stream = gw.synthesize(request, None).await.unwrap();
    let frames: Vec<_> = stream.map(|c| c.unwrap()).collect().await;
    assert_eq!(frames.len(), 15, "60 ms per character in 20 ms frames");
    assert!(frames.iter().all(|f| f.len() == 160));
}

#[tokio::test(start_paused = true)]
async fn simulated_is_listed_only_where_named() {
    let gw = gateway(&[("TTS_PROVIDERS", "openai")]);
    let rows = gw.list_providers();
    assert!(rows.iter().any(|r| r.name == "simulated" && r.capability == Capability::Llm && r.configured));
    assert!(!rows.iter().any(|r| r.name == "simulated" && r.capability == Capability::Tts));
}

/// The gRPC service needs `Send` futures and streams; this fails to compile otherwise.
#[test]
fn futures_and_streams_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Gateway>();
    assert_send_sync::<ProviderError>();
    let gw = gateway(&[]);
    assert_send(&gw.chat(chat(1), None));
    assert_send(&gw.synthesize(SynthesisRequest::new("hi"), None));
    assert_send(&gw.transcribe(TranscriptionRequest::new(vec![1u8], providers::AudioEncoding::Wav), None));
    assert_send(&gw.sentiment("fine", None));
    fn stream_is_send(s: providers::ChatStream) -> impl futures_util::Stream + Send + 'static {
        s
    }
    let _ = stream_is_send;
}

#[tokio::test(start_paused = true)]
async fn chat_answers_come_in_sentences() {
    let gw = gateway(&[("SIMULATED_SEED", "3")]);
    let stream = gw.chat(chat(20), None).await.unwrap();
    let text: String = stream.map(|c| c.unwrap().delta).collect::<Vec<_>>().await.concat();
    let sentences: Vec<&str> = text.split_inclusive('.').collect();
    assert_eq!(sentences.len(), 3, "{text}");
    assert!(text.ends_with('.'), "{text}");
    assert_eq!(sentences[0].split_whitespace().count(), 8, "{text}");
    assert_eq!(text.split_whitespace().count(), 20, "{text}");
}
