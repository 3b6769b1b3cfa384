//! No secrets or personal data in telemetry: a full recording pipeline run (three service
//! processes, OTLP collector, Sentry sink, a fake OpenAI server, one failing provider answer that
//! echoes the provider key, refused requests), a live call whose reply fails (a failed turn:
//! its WARN, its Sentry event, its error span, the fallback line) and a scan of everything the services sent and
//! logged — OTLP span and log export requests, Sentry envelopes, stdout and stderr — and every
//! error body, for
//! the API keys, the provider key, the phone numbers and the transcript text used. With
//! `PROVIDER_CAPTURE_CONTENT=true` the same scan must find the transcript on spans: the scan can
//! see what it looks for.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::common::*;
use serde_json::json;
use telemetry::testing::{FakeHttp, FakeReply, OtlpReceiver, SentrySink};

const OPENAI_KEY: &str = "sk-secret-provider-key-0123456789";
const WRONG_KEY: &str = "k-wrong-presented-key-0123456789";
const FROM: &str = "+14155550123";
const TO: &str = "+420777123456";
const TRANSCRIPT: &str = "Please send the parcel to Elm Street seventeen.";
const TRANSCRIPT_MARK: &str = "Elm Street seventeen";

/// Everything one run produced, as text.
struct Produced {
    otlp: Vec<String>,
    otlp_logs: Vec<String>,
    sentry: Vec<String>,
    logs: Vec<(String, String)>,
    error_bodies: Vec<String>,
}

impl Produced {
    /// Where `needle` was found (by channel), empty when nowhere.
    fn find(&self, needle: &str) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(r) = self.otlp.iter().find(|r| r.contains(needle)) {
            let at = r.find(needle).unwrap_or(0);
            let from = r[..at].char_indices().rev().nth(600).map_or(0, |(i, _)| i);
            found.push(format!("OTLP spans: …{}…", &r[from..at]));
        }
        if let Some(r) = self.otlp_logs.iter().find(|r| r.contains(needle)) {
            let at = r.find(needle).unwrap_or(0);
            let from = r[..at].char_indices().rev().nth(600).map_or(0, |(i, _)| i);
            found.push(format!("OTLP log records: …{}…", &r[from..at]));
        }
        if let Some(e) = self.sentry.iter().find(|e| e.contains(needle)) {
            found.push(format!("Sentry envelope {}", &e[..e.len().min(300)]));
        }
        for (service, line) in &self.logs {
            if line.contains(needle) {
                found.push(format!("{service} log: {line}"));
            }
        }
        for body in &self.error_bodies {
            if body.contains(needle) {
                found.push(format!("error body: {body}"));
            }
        }
        found
    }
}

async fn run(capture: bool) -> Produced {
    let receiver = OtlpReceiver::start().await;
    let sentry = SentrySink::start().await;
    let fail = Arc::new(AtomicBool::new(false));
    let failing = fail.clone();
    let openai = FakeHttp::start(move |req| {
        if req.path == "/v1/audio/speech" {
            // The fallback line: 0.2 s of quiet 24 kHz PCM16.
            return FakeReply::raw(200, "application/octet-stream", vec![0; 9600]);
        }
        if failing.load(Ordering::Relaxed) || req.path == "/v1/chat/completions" {
            // What a provider says about a bad key: the key, echoed.
            return FakeReply::json(
                401,
                json!({"error": {"message": format!("Incorrect API key provided: {OPENAI_KEY}. {TRANSCRIPT}"),
                                 "type": "invalid_request_error"}}),
            );
        }
        FakeReply::json(
            200,
            json!({"text": TRANSCRIPT, "language": "english", "duration": 3.0,
                   "segments": [{"id": 0, "start": 0.0, "end": 3.0, "text": TRANSCRIPT}]}),
        )
    })
    .await;
    let ports = Ports::new();
    let mut env = ports.env();
    env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), receiver.endpoint()),
        ("OTEL_LOGS_EXPORTER".to_string(), "otlp".to_string()),
        ("SENTRY_DSN".to_string(), sentry.dsn()),
        ("SENTRY_TRACES_SAMPLE_RATE".to_string(), "1.0".to_string()),
        ("OPENAI_API_KEY".to_string(), OPENAI_KEY.to_string()),
        ("OPENAI_BASE_URL".to_string(), openai.base_url()),
        ("STT_PROVIDERS".to_string(), "openai".to_string()),
        ("LLM_PROVIDERS".to_string(), "openai".to_string()),
        ("TTS_PROVIDERS".to_string(), "openai".to_string()),
        ("LOG_LEVEL".to_string(), "debug".to_string()),
        ("PROVIDER_CAPTURE_CONTENT".to_string(), capture.to_string()),
    ]);
    let [audio, gateway, api] = start_all(&env);
    let base = format!("http://127.0.0.1:{}", ports.api);
    ports.wait_all_ready().await;

    let c = client();
    let mut error_bodies = Vec::new();
    let created: serde_json::Value = c
        .post(format!("{base}/v1/calls"))
        .bearer_auth(API_KEY)
        .json(&json!({"provider": "twilio", "from": FROM, "to": TO, "direction": "inbound"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("created").to_string();
    let wav = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../audio-dsp/fixtures/call-stereo.wav")).unwrap();
    let upload = || {
        c.post(format!("{base}/v1/calls/{id}/recording"))
            .bearer_auth(API_KEY)
            .header("content-type", "audio/wav")
            .body(wav.clone())
            .send()
    };
    // The full pipeline: audio analysis, transcription, sentiment, stored.
    let r = upload().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["transcript"]["status"], "done", "{doc:#}");
    assert!(doc.to_string().contains(TRANSCRIPT_MARK), "the transcript is stored: {doc:#}");
    // A live call: the caller's words are heard (the transcript), the reply fails with the key
    // and the transcript echoed, the fallback line is said. The failed turn is logged, sent to
    // Sentry (refused credentials) and its span marked.
    let live = voice_kraliki::loadgen::Options {
        url: base.clone(),
        key: API_KEY.to_string(),
        calls: 1,
        turns: 1,
        ramp: Duration::ZERO,
        utterance: Arc::new(voice_kraliki::loadgen::utterance(voice_kraliki::loadgen::RECORDING).unwrap()),
        metrics: Vec::new(),
        media_retries: 0,
        turn_outcomes: true,
        // A stream too: its events go through the same secrets scan.
        watchers: 1,
    };
    let call = voice_kraliki::loadgen::one_call(live, c.clone()).await;
    let turns = call.turns.expect("the live call's turns");
    let caller = &turns["turns"][0];
    assert_eq!((caller["outcome"].as_str(), caller["stage"].as_str()), (Some("failed"), Some("llm")), "{turns:#}");
    assert!(caller["text"].as_str().unwrap().contains(TRANSCRIPT_MARK), "the words are stored: {turns:#}");
    assert_eq!(turns["turns"][1]["fallback"], true, "{turns:#}");
    // A provider that fails and echoes its key.
    fail.store(true, Ordering::Relaxed);
    let r = upload().await.unwrap();
    assert_eq!(r.status(), 503);
    error_bodies.push(r.text().await.unwrap());
    // Refused requests: a wrong key, a bad number, an unknown call.
    let r = c.get(format!("{base}/v1/calls")).bearer_auth(WRONG_KEY).send().await.unwrap();
    assert_eq!(r.status(), 401);
    error_bodies.push(r.text().await.unwrap());
    let r = c
        .post(format!("{base}/v1/calls"))
        .bearer_auth(API_KEY)
        .json(&json!({"provider": "twilio", "from": FROM, "to": "not-a-number", "direction": "inbound"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    error_bodies.push(r.text().await.unwrap());
    let r = c.get(format!("{base}/v1/calls/{}", uuid_like())).bearer_auth(API_KEY).send().await.unwrap();
    assert_eq!(r.status(), 404);
    error_bodies.push(r.text().await.unwrap());

    // Flush: everything exported at shutdown is in.
    for s in [&api, &gateway, &audio] {
        s.terminate();
    }
    let mut services = [api, gateway, audio];
    for s in services.iter_mut() {
        assert!(s.wait(Duration::from_secs(20)).is_some_and(|st| st.success()), "{} exits cleanly", s.name);
    }
    // The run did produce telemetry in every channel (else the scan would prove nothing).
    let spans = receiver.spans();
    assert!(spans.iter().any(|s| s.name == "call_analysis"), "spans arrived");
    assert!(spans.iter().any(|s| s.service_name == "provider-gateway"), "gateway spans arrived");
    let envelopes = sentry.raw();
    assert!(envelopes.iter().any(|e| e.contains("call_analysis")), "Sentry transactions arrived");
    assert!(envelopes.iter().any(|e| e.contains("turn failed at llm")), "the failed turn's Sentry event arrived");
    assert!(
        spans.iter().any(|s| s.name == "turn" && s.status_code == 2),
        "the failed turn's span arrived, marked as an error"
    );
    let logs: Vec<(String, String)> = services
        .iter()
        .flat_map(|s| s.stdout().into_iter().chain(s.stderr()).map(|l| (s.name.to_string(), l)))
        .collect();
    assert!(logs.len() > 20, "services logged: {}", logs.len());
    assert!(logs.iter().any(|(_, l)| l.contains("turn failed")), "the failed turn was logged");
    // The same lines went out as OTLP log records, from every service, inside their traces.
    let records = receiver.logs();
    for service in ["call-api", "provider-gateway", "audio-processor"] {
        assert!(records.iter().any(|r| r.service_name == service), "{service} exported log records");
    }
    assert!(
        records.iter().any(|r| r.body.contains("turn failed") && !r.trace_id.is_empty()),
        "the failed turn's record arrived with its trace"
    );
    Produced { otlp: receiver.raw(), otlp_logs: receiver.raw_logs(), sentry: envelopes, logs, error_bodies }
}

fn uuid_like() -> &'static str {
    "0195f0a4-1111-7222-8333-444455556666"
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_of_a_full_pipeline_run_holds_no_keys_numbers_or_transcript() {
    let produced = run(false).await;
    let mut leaks = Vec::new();
    for (what, needle) in [
        ("API key", API_KEY),
        ("presented wrong API key", WRONG_KEY),
        ("provider key", OPENAI_KEY),
        ("caller number", FROM),
        ("called number", TO),
        ("caller number digits", &FROM[1..]),
        ("transcript", TRANSCRIPT_MARK),
    ] {
        for place in produced.find(needle) {
            leaks.push(format!("{what} in {place}"));
        }
    }
    assert!(leaks.is_empty(), "leaked:\n{}", leaks.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_content_capture_on_the_transcript_is_on_spans_and_keys_still_are_not() {
    let produced = run(true).await;
    assert!(
        produced.otlp.iter().any(|r| r.contains(TRANSCRIPT_MARK)),
        "PROVIDER_CAPTURE_CONTENT=true puts the transcript on the gateway's spans"
    );
    assert!(
        produced.otlp_logs.iter().any(|r| r.contains(TRANSCRIPT_MARK)),
        "and the provider's echoed answer in its logged error body: the scan sees log records"
    );
    for needle in [API_KEY, WRONG_KEY, OPENAI_KEY] {
        assert!(produced.find(needle).is_empty(), "{needle}: {:?}", produced.find(needle));
    }
}
