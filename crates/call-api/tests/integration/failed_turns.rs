//! A caller turn whose transcription or reply fails is first-class: stored with its outcome,
//! stage and a client-safe reason, counted in `voice_turns_total{outcome,stage}` (the two agree),
//! logged at WARN once per call and reason, its span marked as an error, a configuration
//! failure sent to Sentry once per process, and the caller hears the fallback line
//! (`LIVE_FALLBACK_TEXT`) instead of silence. Nothing of it carries the transcript.

use std::time::Duration;

use crate::common::{
    Backend, TestDb,
    carrier::{Carrier, get, metric, metrics, silence, wait_until},
    stack,
};
use crate::live::{speech_pcm, sse};
use serde_json::{Value, json};
use telemetry::testing::{FakeHttp, FakeReply, FakeRequest, OtlpReceiver, SentrySink};

const HEARD: &str = "My account number is four four seven.";
const FALLBACK: &str = "Sorry, the line is bad. Please say that again.";

/// Fake OpenAI-compatible providers: transcription answers `stt_status` (200 with [`HEARD`]
/// otherwise), chat `chat_status` (a short reply when 200), speech always works.
fn providers(stt_status: u16, chat_status: u16) -> impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static {
    move |req: &FakeRequest| match req.path.as_str() {
        "/v1/audio/transcriptions" if stt_status == 200 => {
            FakeReply::json(200, json!({"text": HEARD, "language": "english", "duration": 1.0}))
        }
        "/v1/audio/transcriptions" => FakeReply::json(stt_status, json!({"error": {"message": "upstream broke"}})),
        "/v1/chat/completions" if chat_status == 200 => {
            FakeReply::raw(200, "text/event-stream", sse("Certainly, one moment."))
        }
        "/v1/chat/completions" => FakeReply::json(chat_status, json!({"error": {"message": "upstream broke"}})),
        "/v1/audio/speech" => FakeReply::raw(200, "application/octet-stream", speech_pcm(0.3)),
        _ => FakeReply::json(404, json!({"error": {"message": "no such route"}})),
    }
}

/// The caller's words of the shipped recording (8 kHz μ-law, 4 s to 9 s).
fn utterance() -> Vec<u8> {
    let wav = stack::call_stereo();
    let caller: Vec<u8> = stack::wav_data(&wav).iter().skip(1).step_by(2).copied().collect();
    caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize].to_vec()
}

/// The caller turns of `call` (odd seq).
async fn caller_turns(app: &crate::common::TestApp, call: &str) -> Vec<Value> {
    let turns = get(app, &format!("/v1/calls/{call}/turns")).await;
    turns["turns"].as_array().unwrap().iter().filter(|t| t["role"] == "caller").cloned().collect()
}

/// How many stored caller turns failed at `stage`.
fn failed_at(turns: &[Value], stage: &str) -> usize {
    turns.iter().filter(|t| t["outcome"] == "failed" && t["stage"] == stage).count()
}

/// The log lines of `file` at WARN that say a turn failed.
fn warn_lines(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == "WARN" && l["message"] == "turn failed")
        .collect()
}

async fn transcription_answering_500(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let fake = FakeHttp::start(providers(500, 200)).await;
    let gateway = stack::start_gateway(Some(&fake), &[("LLM_PROVIDERS", "openai"), ("TTS_PROVIDERS", "openai")]).await;
    let audio = stack::start_audio(None).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("call-api.log");
    let log_file = log.display().to_string();
    let env = [
        ("LIVE_FALLBACK_TEXT", FALLBACK),
        ("LOG_FILE", log_file.as_str()),
        ("LOG_FORMAT", "json"),
        ("LOG_LEVEL", "info"),
    ];
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &env).await;
    let mut carrier = Carrier::connect(&app).await;
    let words = utterance();

    for fallback_mark in ["turn-2-1", "turn-4-1"] {
        carrier.speak(&words).await;
        carrier.speak(&silence(1.0)).await;
        carrier.wait_for_mark(fallback_mark, Duration::from_secs(20)).await;
    }
    carrier.hang_up().await;

    // Stored: each caller turn failed at stt with the provider's client-safe reason, each
    // answered by the fallback line, marked as such.
    let turns = get(&app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let turns = turns["turns"].as_array().unwrap().clone();
    let roles: Vec<(&str, i64)> =
        turns.iter().map(|t| (t["role"].as_str().unwrap(), t["seq"].as_i64().unwrap())).collect();
    assert_eq!(roles, [("caller", 1), ("agent", 2), ("caller", 3), ("agent", 4)], "{turns:?}");
    for caller in [&turns[0], &turns[2]] {
        assert_eq!(caller["outcome"], "failed", "{caller}");
        assert_eq!(caller["stage"], "stt");
        assert_eq!(caller["reason"], "transcription failed: openai is failing (http 500)");
        assert_eq!(caller["text"], "", "nothing was heard");
        assert!(caller["latency"]["end_of_turn"].as_f64().unwrap() > 0.3, "{caller}");
        assert!(caller["latency"]["failed_after"].as_f64().is_some(), "timings up to the failure: {caller}");
    }
    for (caller, agent) in [(&turns[0], &turns[1]), (&turns[2], &turns[3])] {
        assert_eq!(agent["fallback"], true, "{agent}");
        assert_eq!(agent["text"], FALLBACK);
        assert!(agent["outcome"].is_null());
        let to_fallback = agent["latency"]["total"].as_f64().unwrap();
        assert!(to_fallback > 0.0 && to_fallback < 10.0, "{agent}");
        println!(
            "end of the caller's speech to the fallback's first frame: {:.0} ms (end-of-turn silence {:.0} ms, \
             transcription failed after {:.0} ms)",
            to_fallback * 1000.0,
            caller["latency"]["end_of_turn"].as_f64().unwrap() * 1000.0,
            caller["latency"]["failed_after"].as_f64().unwrap() * 1000.0
        );
    }
    // The caller heard the fallback: 0.3 s of speech is 15 frames, each time.
    assert_eq!(carrier.events("media").len(), 30);

    // The metric agrees with what is stored, and no turn counts as answered.
    let m = metrics(&app).await;
    let stored = failed_at(&caller_turns(&app, &carrier.id).await, "stt");
    assert_eq!(stored, 2);
    assert_eq!(metric(&m, "voice_turns_total{outcome=\"failed\",stage=\"stt\"}"), Some(stored as f64));
    assert_eq!(metric(&m, "voice_turns_total{outcome=\"answered\"}"), Some(0.0));
    assert_eq!(metric(&m, "voice_turn_latency_seconds_count{stage=\"total\"}"), None, "fallbacks are not replies");

    // One WARN for the call and reason, not one per turn.
    let warned = warn_lines(&log);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["reason"], "transcription failed: openai is failing (http 500)", "{}", warned[0]);
    assert_eq!(warned[0]["stage"], "stt");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transcription_answering_500_is_a_failed_turn_answered_by_the_fallback_on_sqlite() {
    transcription_answering_500(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transcription_answering_500_is_a_failed_turn_answered_by_the_fallback_on_postgres() {
    transcription_answering_500(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfigured_transcription_fails_turns_once_in_sentry_and_as_error_spans() {
    let sentry = SentrySink::start().await;
    let otlp = OtlpReceiver::start().await;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let fake = FakeHttp::start(providers(200, 200)).await;
    // STT turned off: "no stt provider is configured".
    let gateway = stack::start_gateway(
        Some(&fake),
        &[("STT_PROVIDERS", "none"), ("LLM_PROVIDERS", "openai"), ("TTS_PROVIDERS", "openai")],
    )
    .await;
    let audio = stack::start_audio(None).await;
    let dsn = sentry.dsn();
    let endpoint = otlp.endpoint();
    let env = [
        ("LIVE_FALLBACK_TEXT", ""),
        ("APM_ENABLED", "true"),
        ("SENTRY_DSN", dsn.as_str()),
        ("SENTRY_TRACES_SAMPLE_RATE", "0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Spans are INFO: the tests' default level (warn) would filter them out.
        ("LOG_LEVEL", "info"),
    ];
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &env).await;
    let mut carrier = Carrier::connect(&app).await;
    let words = utterance();
    for n in 1..=2 {
        carrier.speak(&words).await;
        carrier.speak(&silence(1.0)).await;
        let id = carrier.id.clone();
        wait_until(
            // At least: under load the detector may cut an utterance in two turns.
            async || failed_at(&caller_turns(&app, &id).await, "stt") >= n,
            Duration::from_secs(20),
            "a failed caller turn",
        )
        .await;
    }
    carrier.hang_up().await;

    let turns = caller_turns(&app, &carrier.id).await;
    assert!(turns.len() >= 2, "{turns:?}");
    assert!(turns.iter().all(|t| t["reason"] == "transcription failed: no stt provider is configured"), "{turns:?}");
    let all = get(&app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    assert!(all["turns"].as_array().unwrap().iter().all(|t| t["role"] == "caller"), "no fallback when it is off");
    assert!(carrier.events("media").is_empty(), "nothing was played");
    let m = metrics(&app).await;
    assert_eq!(metric(&m, "voice_turns_total{outcome=\"failed\",stage=\"stt\"}"), Some(turns.len() as f64));

    // Sentry: one event from call-api for this reason, tagged with capability and provider,
    // although two turns failed.
    let from_turns = |items: &[telemetry::testing::EnvelopeItem]| -> Vec<Value> {
        items
            .iter()
            .filter(|i| i.kind == "event" && i.payload["tags"]["stage"] == "stt")
            .map(|i| i.payload.clone())
            .collect()
    };
    let items = sentry.wait_for(Duration::from_secs(10), |items| !from_turns(items).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = from_turns(&sentry.items());
    assert_eq!(events.len(), 1, "{items:?}");
    assert_eq!(events[0]["tags"]["capability"], "speech_to_text");
    assert_eq!(events[0]["tags"]["provider"], "none");

    // Each turn's span is an error, with its outcome and stage.
    let is_failed_turn = |s: &telemetry::testing::ReceivedSpan| {
        s.name == "turn" && s.attributes.iter().any(|(k, v)| k == "outcome" && v == "failed")
    };
    let stored = turns.len();
    let spans = otlp
        .wait_for(Duration::from_secs(20), |spans| spans.iter().filter(|s| is_failed_turn(s)).count() == stored)
        .await;
    let failed: Vec<_> = spans.iter().filter(|s| is_failed_turn(s)).collect();
    assert_eq!(failed.len(), stored, "{:?}", spans.iter().map(|s| (&s.name, &s.attributes)).collect::<Vec<_>>());
    for span in failed {
        assert_eq!(span.status_code, 2, "marked as an error: {span:?}");
        assert!(span.attributes.iter().any(|(k, v)| k == "failed_stage" && v == "stt"), "{span:?}");
        assert!(span.attributes.iter().any(|(k, v)| k == "turn.interrupted" && v == "false"), "{span:?}");
        assert!(span.attributes.iter().any(|(k, v)| k == "turn.number" && v.parse::<i64>().is_ok()), "{span:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reply_keeps_what_was_heard_and_never_logs_it() {
    let sentry = SentrySink::start().await;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let fake = FakeHttp::start(providers(200, 500)).await;
    let gateway = stack::start_gateway(Some(&fake), &[("LLM_PROVIDERS", "openai"), ("TTS_PROVIDERS", "openai")]).await;
    let audio = stack::start_audio(None).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("call-api.log");
    let (log_file, dsn) = (log.display().to_string(), sentry.dsn());
    let env = [
        ("LOG_FILE", log_file.as_str()),
        ("LOG_FORMAT", "json"),
        ("LOG_LEVEL", "debug"),
        ("APM_ENABLED", "true"),
        ("SENTRY_DSN", dsn.as_str()),
        ("SENTRY_TRACES_SAMPLE_RATE", "1"),
    ];
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &env).await;
    let mut carrier = Carrier::connect(&app).await;
    carrier.speak(&utterance()).await;
    carrier.speak(&silence(1.0)).await;
    // The default fallback line is said.
    carrier.wait_for_mark("turn-2-1", Duration::from_secs(20)).await;
    carrier.hang_up().await;

    let turns = get(&app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let turns = turns["turns"].as_array().unwrap();
    assert_eq!(turns[0]["text"], HEARD, "what was heard is kept");
    assert_eq!(turns[0]["outcome"], "failed");
    assert_eq!(turns[0]["stage"], "llm");
    assert_eq!(turns[0]["reason"], "the reply failed: openai is failing (http 500)");
    assert!(turns[0]["latency"]["stt"].as_f64().is_some(), "{}", turns[0]);
    assert_eq!(turns[1]["fallback"], true);
    assert_eq!(turns[1]["text"], call_api::media::DEFAULT_FALLBACK_TEXT);
    let m = metrics(&app).await;
    assert_eq!(metric(&m, "voice_turns_total{outcome=\"failed\",stage=\"llm\"}"), Some(1.0));
    assert_eq!(warn_lines(&log).len(), 1);

    // The transcript is in the stored turn only: not in any log line or Sentry envelope
    // (transactions included), although the log level is debug.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("turn failed"), "the scan sees the log");
    assert!(!logs.contains("account number"), "transcript in the logs");
    assert!(sentry.raw().iter().all(|e| !e.contains("account number")), "transcript sent to Sentry");
}
