//! What each service exposes on `/metrics` is clean (`promtool check metrics`: HELP and TYPE for
//! every metric, valid names and suffixes), right after start and after traffic; counters whose
//! label values are known in advance are there at 0 from the start; the turn objective
//! (`LIVE_TURN_SLO_SECONDS`) is a bucket boundary of the turn latency histogram.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::*;

/// `promtool`, or `None` (after one loud line) when it is not installed and not required.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    match found {
        Ok(s) if s.success() => Some("promtool"),
        _ if std::env::var("REQUIRE_TOOLS").is_ok_and(|v| v == "1") => {
            panic!("promtool is not installed and REQUIRE_TOOLS=1 (apt-get install prometheus)")
        }
        _ => {
            eprintln!(
                "SKIPPED: promtool is not installed (apt-get install prometheus); set REQUIRE_TOOLS=1 to fail instead"
            );
            None
        }
    }
}

/// Pipes `text` into `promtool check metrics` and asserts that it reports no problem.
fn assert_promtool_clean(bin: &str, what: &str, text: &str) {
    let mut child = Command::new(bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics on {what}: {report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_exposition_is_clean_and_known_counters_start_at_zero() {
    let Some(bin) = promtool() else { return };
    let ports = Ports::new();
    let mut env = ports.env();
    for (k, v) in [
        ("LLM_PROVIDERS", "simulated"),
        ("STT_PROVIDERS", "simulated"),
        ("TTS_PROVIDERS", "simulated"),
        ("SENTIMENT_PROVIDERS", "simulated,local"),
        ("SIMULATED_LATENCY", "fixed:0"),
        ("SIMULATED_TTFB_SECONDS", "0"),
        ("SIMULATED_TOKENS_PER_SECOND", "0"),
        ("LIVE_TURN_SLO_SECONDS", "1.2"),
    ] {
        env.push((k.into(), v.into()));
    }
    let _services = start_all(&env);
    ports.wait_all_ready().await;
    let api = format!("http://127.0.0.1:{}", ports.api);
    let urls = [
        ("call-api", format!("{api}/metrics")),
        ("audio-processor", format!("http://127.0.0.1:{}/metrics", ports.audio_admin)),
        ("provider-gateway", format!("http://127.0.0.1:{}/metrics", ports.gateway_admin)),
    ];

    // Right after start: clean, and the known series at 0.
    let mut fresh = Vec::new();
    for (service, url) in &urls {
        let (text, samples) = scrape(url).await;
        assert_promtool_clean(bin, &format!("{service} at start"), &text);
        fresh.push(samples);
    }
    let zero = |samples: &[Sample], name: &str, labels: &[(&str, &str)]| {
        assert_eq!(value(samples, name, labels), Some(0.0), "{name}{labels:?} at start");
    };
    let [api_m, audio_m, gateway_m] = [&fresh[0], &fresh[1], &fresh[2]];
    zero(api_m, "voice_calls_total", &[("provider", "twilio"), ("status", "completed")]);
    zero(api_m, "voice_calls_total", &[("provider", "websocket"), ("status", "failed")]);
    zero(api_m, "voice_turns_total", &[("outcome", "answered")]);
    zero(api_m, "voice_turns_total", &[("outcome", "failed"), ("stage", "llm")]);
    zero(api_m, "api_requests_limited_total", &[("limit", "rate")]);
    zero(api_m, "call_analyses_total", &[("result", "failed")]);
    for name in ["voice_media_frames_dropped_total", "voice_audio_reconnects_total", "voice_barge_ins_total"] {
        zero(api_m, name, &[]);
    }
    zero(audio_m, "audio_processed_seconds_total", &[("codec", "mulaw")]);
    zero(audio_m, "audio_vad_events_total", &[("event", "speech_started")]);
    zero(
        gateway_m,
        "provider_requests_total",
        &[("provider", "simulated"), ("operation", "chat"), ("outcome", "success")],
    );
    zero(
        gateway_m,
        "provider_requests_total",
        &[("provider", "local"), ("operation", "sentiment"), ("outcome", "upstream_error")],
    );
    zero(gateway_m, "provider_failovers_total", &[("operation", "sentiment"), ("from", "simulated"), ("to", "local")]);
    assert!(
        !gateway_m
            .iter()
            .any(|s| s.name == "provider_requests_total" && s.labels.get("provider").is_some_and(|p| p == "openai")),
        "no series for a provider that is not configured"
    );

    // Traffic: a call ended, a live call with one turn (the load generator as the carrier).
    let id = create_call(&api, "twilio").await;
    let ended = client()
        .post(format!("{api}/v1/calls/{id}/end"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"outcome": "completed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let args: Vec<String> = ["--calls", "1", "--turns", "1", "--ramp-seconds", "0", "--url", &api, "--key", API_KEY]
        .into_iter()
        .map(String::from)
        .collect();
    let loadgen = std::thread::spawn(move || {
        voice_kraliki::loadgen::run_code(&args.iter().map(String::as_str).collect::<Vec<_>>())
    });
    let code = tokio::task::spawn_blocking(move || loadgen.join().expect("loadgen thread")).await.unwrap();
    assert_eq!(code, 0, "the live call succeeded");

    for (service, url) in &urls {
        let (text, samples) = scrape(url).await;
        assert_promtool_clean(bin, &format!("{service} after traffic"), &text);
        if *service == "call-api" {
            assert_eq!(
                value(&samples, "voice_calls_total", &[("provider", "twilio"), ("status", "completed")]),
                Some(1.0)
            );
            let within = value(&samples, "voice_turn_latency_seconds_bucket", &[("stage", "total"), ("le", "1.2")]);
            assert!(within.is_some(), "LIVE_TURN_SLO_SECONDS=1.2 is a bucket boundary:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_turn_objective_stops_call_api_with_exit_code_2() {
    for bad in ["0", "-1", "61", "NaN", "soon"] {
        let ports = Ports::new();
        let mut env = ports.env();
        env.push(("LIVE_TURN_SLO_SECONDS".into(), bad.into()));
        let mut api = Service::start("call-api", &env);
        let (status, stderr) = tokio::task::spawn_blocking(move || {
            let status = api.wait(Duration::from_secs(30));
            // The reader thread may still be collecting the last lines.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !api.stderr().iter().any(|l| l.contains("LIVE_TURN_SLO_SECONDS"))
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            (status, api.stderr())
        })
        .await
        .unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(2), "LIVE_TURN_SLO_SECONDS={bad}: {stderr:?}");
        assert!(stderr.iter().any(|l| l.contains("LIVE_TURN_SLO_SECONDS")), "{bad}: {stderr:?}");
    }
}
