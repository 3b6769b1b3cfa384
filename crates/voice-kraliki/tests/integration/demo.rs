//! `voice-kraliki demo` against the stack on its embedded defaults: the shipped recording is
//! analysed and the summary says what was found, with the transcript reported unavailable (no
//! provider configured) — and, with a transcription provider, the transcript itself.

use std::time::Duration;

use crate::common::*;

async fn stack(extra: &[(&str, String)]) -> (Ports, Vec<Service>, Vec<(String, String)>) {
    let ports = Ports::new();
    let mut env = ports.env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let services = start_all(&env).into();
    ports.wait_all_ready().await;
    (ports, services, env)
}

fn run_demo(ports: &Ports) -> (Option<std::process::ExitStatus>, String, String) {
    let env = vec![
        ("VOICE_KRALIKI_URL".to_string(), format!("http://127.0.0.1:{}", ports.api)),
        ("VOICE_KRALIKI_API_KEY".to_string(), API_KEY.to_string()),
    ];
    let mut demo = Service::start_args("demo", &["demo"], &env);
    let status = demo.wait(Duration::from_secs(60));
    (status, demo.stdout().join("\n"), demo.stderr().join("\n"))
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_prints_the_analysis_of_the_shipped_recording_with_nothing_configured() {
    let (ports, _services, _) = stack(&[]).await;
    let (status, out, err) = run_demo(&ports);
    assert!(status.is_some_and(|s| s.success()), "demo failed: {err}\n{out}");
    assert!(out.contains(": analysis done"), "{out}");
    assert!(out.contains("Recording: 14.0 s, 2 channel(s), mulaw at 8000 Hz"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("agent ") && l.contains("2 segment(s)")), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("caller ") && l.contains("1 segment(s)")), "{out}");
    assert!(out.contains("1 interruption(s)"), "{out}");
    assert!(out.contains("Transcript: unavailable: no speech-to-text provider is configured"), "{out}");
    assert!(out.contains("Sentiment: unavailable: no transcript"), "{out}");
    assert!(out.contains(&format!("http://127.0.0.1:{}/metrics", ports.api)), "{out}");
    let trace = out.lines().find_map(|l| l.strip_prefix("Trace:          ")).expect("a trace line");
    let id = trace.split(' ').next().unwrap();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{trace}");

    // The call and its analysis are stored: the metrics count one analysis done.
    let (_, samples) = scrape(&format!("http://127.0.0.1:{}/metrics", ports.api)).await;
    assert_eq!(value(&samples, "call_analyses_total", &[("result", "done")]), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_prints_the_transcript_once_a_transcription_provider_is_configured() {
    let openai = telemetry::testing::FakeHttp::start(|_| {
        telemetry::testing::FakeReply::json(
            200,
            serde_json::json!({"text": "Thank you, that is great.", "language": "english", "duration": 1.0,
                               "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": " Thank you, that is great."}]}),
        )
    })
    .await;
    let extra = [
        ("OPENAI_API_KEY", "sk-test-0123456789abcdef".to_string()),
        ("OPENAI_BASE_URL", openai.base_url()),
        ("STT_PROVIDERS", "openai".to_string()),
    ];
    let (ports, _services, _) = stack(&extra).await;
    let (status, out, err) = run_demo(&ports);
    assert!(status.is_some_and(|s| s.success()), "demo failed: {err}\n{out}");
    assert!(out.contains("Transcript: done (openai, whisper-1)"), "{out}");
    assert!(out.contains("  agent: Thank you, that is great."), "{out}");
    assert!(out.contains("  caller: Thank you, that is great."), "{out}");
    assert!(out.contains("Sentiment: done (local)"), "{out}");
    assert!(out.contains("overall positive"), "{out}");
    assert_eq!(openai.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_without_a_stack_says_what_is_wrong() {
    let port = free_port();
    let env = vec![
        ("VOICE_KRALIKI_URL".to_string(), format!("http://127.0.0.1:{port}")),
        ("VOICE_KRALIKI_API_KEY".to_string(), API_KEY.to_string()),
    ];
    let mut demo = Service::start_args("demo", &["demo"], &env);
    let status = demo.wait(Duration::from_secs(30)).expect("demo exits");
    assert!(!status.success());
    let err = demo.stderr().join("\n");
    assert!(err.contains("cannot reach call-api") && err.contains("make run"), "{err}");
}
