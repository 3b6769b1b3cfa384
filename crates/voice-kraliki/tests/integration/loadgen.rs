//! `voice-kraliki loadgen` checks `GET /v1/providers` before it calls: against a stand-in
//! call-api on loopback, a live-call capability without a provider, a refused key or no server
//! at all stop it with exit code 2 and the reason, before any call is created;
//! `--allow-unavailable` warns and goes on.

use std::time::Duration;

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
