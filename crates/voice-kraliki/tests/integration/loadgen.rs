//! `voice-kraliki loadgen` checks `GET /v1/providers` before it calls: against a stand-in
//! call-api on loopback, a live-call capability without a provider, a refused key or no server
//! at all stop it with exit code 2 and the reason, before any call is created;
//! `--allow-unavailable` warns and goes on. Against a stand-in that holds live calls and
//! stand-in `/metrics` whose CPU counter grows at a known rate, it reports each service's CPU
//! per live call-second over the steady window, the memory after `--settle-seconds`, and the
//! `bench-row` line.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::*;
use serde_json::json;
use telemetry::testing::{FakeHttp, FakeReply};

/// What call-api answers for a provider-gateway without any provider key (its defaults).
fn nothing_configured() -> serde_json::Value {
    let openai = "OPENAI_API_KEY is not set (api.openai.com needs a key)";
    let deepgram = "DEEPGRAM_API_KEY is not set (api.deepgram.com needs a key)";
    let row = |name: &str, capability: &str, priority: u32, reason: &str| {
        json!({"name": name, "capability": capability, "configured": false, "reason": reason,
               "priority": priority, "circuit_state": "closed"})
    };
    json!({"providers": [
        row("openai", "speech_to_text", 1, openai),
        row("deepgram", "speech_to_text", 0, deepgram),
        row("openai", "chat", 0, openai),
        row("openai", "text_to_speech", 1, openai),
        row("deepgram", "text_to_speech", 0, deepgram),
        {"name": "local", "capability": "sentiment", "configured": true, "priority": 0, "circuit_state": "closed"},
    ]})
}

/// `voice-kraliki loadgen --url URL --key API_KEY --calls 1 --turns 1 [extra…]`: exit status
/// and stderr.
fn loadgen(url: &str, extra: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut args = vec!["loadgen", "--url", url, "--key", API_KEY, "--calls", "1", "--turns", "1"];
    args.extend_from_slice(extra);
    let mut run = Service::start_args("loadgen", &args, &[]);
    let status = run.wait(Duration::from_secs(60)).expect("loadgen exits");
    // The stderr reader thread catches up with the last lines.
    std::thread::sleep(Duration::from_millis(200));
    (status.code(), run.stderr())
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_exits_2_naming_each_capability_without_a_provider_and_the_servers_reasons() {
    let api = FakeHttp::scripted().await;
    api.on("/v1/providers", vec![FakeReply::json(200, nothing_configured())]);
    let url = api.url("");
    let (code, stderr) = tokio::task::spawn_blocking(move || loadgen(&url, &[])).await.unwrap();
    assert_eq!(code, Some(2), "{stderr:?}");
    assert_eq!(
        stderr,
        [
            "loadgen: live calls need speech_to_text, but no provider is available: deepgram: DEEPGRAM_API_KEY is not set (api.deepgram.com needs a key); openai: OPENAI_API_KEY is not set (api.openai.com needs a key)",
            "loadgen: live calls need chat, but no provider is available: openai: OPENAI_API_KEY is not set (api.openai.com needs a key)",
            "loadgen: live calls need text_to_speech, but no provider is available: deepgram: DEEPGRAM_API_KEY is not set (api.deepgram.com needs a key); openai: OPENAI_API_KEY is not set (api.openai.com needs a key)",
            "loadgen: no call started (--allow-unavailable starts them anyway)",
        ]
    );
    let requests = api.requests();
    assert_eq!(requests.len(), 1, "only the provider check: {:?}", api.answered());
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].header("authorization"), Some(format!("Bearer {API_KEY}").as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_exits_2_when_the_provider_check_itself_fails() {
    // A refused key: call-api's own message.
    let api = FakeHttp::scripted().await;
    api.on(
        "/v1/providers",
        vec![FakeReply::json(401, json!({"error": {"code": "unauthorized", "message": "missing or invalid API key"}}))],
    );
    let url = api.url("");
    let (code, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || loadgen(&url, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(2), "{stderr:?}");
    assert_eq!(
        stderr[0],
        format!(
            "loadgen: cannot check the providers: GET {url}/v1/providers answered 401 Unauthorized: missing or invalid API key"
        )
    );
    assert_eq!(api.count("/v1/calls"), 0);

    // Nothing listening.
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || loadgen(&url, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(2), "{stderr:?}");
    let prefix = format!("loadgen: cannot check the providers: GET {url}/v1/providers: ");
    assert!(stderr[0].starts_with(&prefix), "{stderr:?}");
    assert!(stderr[0].to_lowercase().contains("refused"), "the cause is named: {stderr:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_allow_unavailable_loadgen_warns_and_calls_anyway() {
    let api = FakeHttp::scripted().await;
    api.on("/v1/providers", vec![FakeReply::json(200, nothing_configured())]);
    let url = api.url("");
    let (code, stderr) = tokio::task::spawn_blocking(move || loadgen(&url, &["--allow-unavailable"])).await.unwrap();
    assert!(
        stderr.iter().any(|l| l.starts_with("loadgen: warning: live calls need chat, but no provider is available")),
        "{stderr:?}"
    );
    assert!(stderr.iter().any(|l| l == "loadgen: starting the calls anyway (--allow-unavailable)"), "{stderr:?}");
    assert_eq!(api.count("/v1/calls"), 1, "the call was attempted");
    // The stand-in cannot create calls (404): the call fails, and so does the run.
    assert_eq!(code, Some(1), "{stderr:?}");
}

/// A call-api stand-in that holds live calls: the simulated provider for every live-call
/// capability; each call's media WebSocket answers the caller with 20 reply frames 20 ms apart
/// once 15 caller frames came, and closes after `stop`; every call's one caller turn answered.
async fn talking_api() -> String {
    use axum::{
        Json, Router,
        extract::ws::{Message, WebSocketUpgrade},
        routing::{get, post},
    };
    let ids = Arc::new(AtomicUsize::new(0));
    let simulated = |capability: &str| json!({"name": "simulated", "capability": capability, "configured": true, "priority": 0, "circuit_state": "closed"});
    let providers = json!({"providers": [simulated("speech_to_text"), simulated("chat"), simulated("text_to_speech")]});
    let app = Router::new()
        .route("/v1/providers", get(move || async move { Json(providers) }))
        .route(
            "/v1/calls",
            post(move || async move {
                let id = format!("c{}", ids.fetch_add(1, Ordering::Relaxed) + 1);
                Json(json!({"id": id, "media_url": format!("wss://public.example/v1/calls/{id}/media?token=t")}))
            }),
        )
        .route(
            "/v1/calls/{id}/turns",
            get(|| async {
                Json(json!({"turns": [
                    {"seq": 1, "role": "caller", "text": "hello", "outcome": "answered"},
                    {"seq": 2, "role": "agent", "text": "hi", "latency": {"total": 0.1}, "interrupted": false},
                ]}))
            }),
        )
        .route(
            "/v1/calls/{id}/media",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    let mut media = 0;
                    while let Some(Ok(m)) = socket.recv().await {
                        let Message::Text(text) = m else { continue };
                        if text.contains("\"stop\"") {
                            let _ = socket.send(Message::Close(None)).await;
                            return;
                        }
                        if text.contains("\"media\"") {
                            media += 1;
                            if media == 15 {
                                for _ in 0..20 {
                                    let frame =
                                        json!({"event": "media", "streamSid": "MZ", "media": {"payload": "//8="}});
                                    let _ = socket.send(Message::text(frame.to_string())).await;
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        }
                    }
                })
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A service's `/metrics` stand-in: `process_cpu_seconds_total` growing by `cpu_rate` seconds
/// per second since it started (none without a rate), and a resident memory of `rss_mib`.
async fn metrics(cpu_rate: Option<f64>, rss_mib: f64) -> FakeHttp {
    let started = Instant::now();
    FakeHttp::start(move |_| {
        let mut body = String::new();
        if let Some(rate) = cpu_rate {
            let cpu = 40.0 + rate * started.elapsed().as_secs_f64();
            body.push_str(&format!(
                "# HELP process_cpu_seconds_total User and system CPU time in seconds\n\
                 # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n"
            ));
        }
        body.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size in bytes\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n\
             voice_live_calls{{service=\"call-api\"}} 3\n",
            rss_mib * 1048576.0
        ));
        FakeReply::raw(200, "text/plain; version=0.0.4", body.into_bytes())
    })
    .await
}

/// 8 kHz μ-law mono WAV of 0.2 s of speech (loud samples only): a 10-frame utterance.
fn short_utterance() -> Vec<u8> {
    let data = vec![0x10u8; 1600];
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(4 + 8 + 18 + 8 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&18u32.to_le_bytes());
    for v in [7u16, 1] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    for v in [1u16, 8, 0] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    wav
}

/// `key=value` fields of a `bench-row` line.
fn bench_fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_reports_cpu_per_live_call_second_memory_after_settling_and_a_bench_row() {
    let api = talking_api().await;
    // call-api at 0.3 CPU-seconds per second, audio-processor at 0.03, and a service that
    // exports no CPU counter.
    let (a, b, c) = (metrics(Some(0.3), 20.0).await, metrics(Some(0.03), 10.0).await, metrics(None, 5.0).await);
    let (url_a, url_b, url_c) = (a.url("/metrics"), b.url("/metrics"), c.url("/metrics"));
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("utterance.wav");
    std::fs::write(&wav, short_utterance()).unwrap();
    let args: Vec<String> = [
        "loadgen",
        "--url",
        &api,
        "--key",
        API_KEY,
        "--calls",
        "3",
        "--turns",
        "1",
        "--ramp-seconds",
        "0",
        "--audio",
        wav.to_str().unwrap(),
        "--metrics",
        &url_a,
        "--metrics",
        &url_b,
        "--metrics",
        &url_c,
        "--settle-seconds",
        "1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let mut run = Service::start_args("loadgen", &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        let status = run.wait(Duration::from_secs(60)).expect("loadgen exits");
        std::thread::sleep(Duration::from_millis(200));
        (status.code(), run.stdout(), run.stderr())
    })
    .await
    .unwrap();
    let out = stdout.join("\n");
    assert_eq!(code, Some(0), "{out}\n{stderr:?}");
    assert!(out.contains("calls: 3 ok, 0 failed; turns: 3 with a reply, 0 without reply"), "{out}");

    // 0.3 CPU-seconds per second over 3 live calls: 100 ms per call-second; 0.03: 10.
    let cpu = |url: &str| -> (f64, f64) {
        let line = stdout
            .iter()
            .find_map(|l| l.strip_prefix(&format!("cpu {url}: ")))
            .unwrap_or_else(|| panic!("no cpu line for {url}:\n{out}"));
        let (value, rest) = line.split_once(" ms per call-second (steady ").expect(line);
        let (seconds, calls) = rest.split_once(" s, ").expect(line);
        assert_eq!(calls, "3 calls)", "{line}");
        (value.parse().unwrap(), seconds.parse().unwrap())
    };
    let (cpu_a, steady) = cpu(&url_a);
    assert!((70.0..130.0).contains(&cpu_a), "{out}");
    assert!((0.3..5.0).contains(&steady), "the steady window lasts about a call: {out}");
    let (cpu_b, _) = cpu(&url_b);
    assert!((7.0..13.0).contains(&cpu_b), "{out}");
    assert!(
        stdout.contains(&format!("cpu {url_c}: not measured (no process_cpu_seconds_total at both ends)")),
        "{out}"
    );
    let total = stdout.iter().find_map(|l| l.strip_prefix("cpu total: ")).expect("a cpu total line");
    assert!(total.ends_with(" ms per call-second (2 of 3 services)"), "{out}");

    for (url, mib) in [(&url_a, "20.0"), (&url_b, "10.0"), (&url_c, "5.0")] {
        let line = format!("memory {url}: start {mib} MiB, peak {mib} MiB, after 1 s {mib} MiB, 0 KiB per live call");
        assert!(stdout.contains(&line), "no line {line:?} in\n{out}");
    }
    assert!(out.contains("turn latency, caller side: p50 "), "{out}");

    let row = stdout.last().filter(|l| l.starts_with("bench-row ")).expect("the last line is the bench row");
    let fields = bench_fields(row);
    for (key, value) in [
        ("calls", "3"),
        ("failed_calls", "0"),
        ("no_reply", "0"),
        ("steady_calls", "3"),
        ("kib_per_call", "0,0,0"),
        ("rss_start_mib", "20.0,10.0,5.0"),
        ("rss_after_mib", "20.0,10.0,5.0"),
    ] {
        assert_eq!(fields.get(key).map(String::as_str), Some(value), "{key} in {row}");
    }
    let cpu_ms: Vec<&str> = fields["cpu_ms"].split(',').collect();
    assert_eq!(cpu_ms.len(), 3, "{row}");
    assert_eq!(cpu_ms[2], "-", "{row}");
    assert!((cpu_ms[0].parse::<f64>().unwrap() - cpu_a).abs() < 0.01, "{row}");
    let cpu_total: f64 = fields["cpu_total_ms"].parse().unwrap();
    assert!((cpu_total - cpu_a - cpu_b).abs() < 0.02, "{row}");
    for key in ["late_pct", "p50_ms", "p99_ms", "p99_p50_ms", "steady_s"] {
        assert!(fields[key].parse::<f64>().is_ok(), "{key} in {row}");
    }
    // Each service read before the calls, every second, at both ends of the steady window and
    // once more after settling.
    for m in [&a, &b, &c] {
        assert!(m.count("/metrics") >= 4, "{}", m.count("/metrics"));
    }
}
