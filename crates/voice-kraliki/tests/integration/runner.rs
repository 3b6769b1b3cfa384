//! `voice-kraliki run` (what `make run` starts) with no provider key: provider-gateway gets the
//! `simulated` provider for speech-to-text, chat and text-to-speech, a banner says so, and a
//! live call holds a conversation (`voice-kraliki loadgen` against it succeeds).

use std::time::Duration;

use crate::common::*;

/// The runner, stopped with SIGTERM (so that it stops its children) however the test ends.
struct Runner(Service);

impl Drop for Runner {
    fn drop(&mut self) {
        self.0.terminate();
        let _ = self.0.wait(Duration::from_secs(30));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runner_simulates_the_live_call_providers_nobody_configured_and_says_so() {
    let ports = Ports::new();
    let runner = Runner(Service::start_args("voice-kraliki", &["run"], &ports.env()));
    ports.wait_all_ready().await;
    let api = format!("http://127.0.0.1:{}", ports.api);

    let listed: serde_json::Value =
        client().get(format!("{api}/v1/providers")).bearer_auth(API_KEY).send().await.unwrap().json().await.unwrap();
    let rows = listed["providers"].as_array().expect("a provider list");
    for capability in ["speech_to_text", "chat", "text_to_speech"] {
        assert!(
            rows.iter().any(|p| p["capability"] == capability && p["name"] == "simulated" && p["configured"] == true),
            "{capability}: {listed}"
        );
    }
    assert!(
        rows.iter().any(|p| p["capability"] == "sentiment" && p["name"] == "local" && p["configured"] == true),
        "sentiment keeps its default: {listed}"
    );
    let banner = "voice-kraliki: no real provider is configured for speech-to-text (STT_PROVIDERS, DEEPGRAM_API_KEY or OPENAI_API_KEY), \
                  chat (LLM_PROVIDERS, OPENAI_API_KEY), text-to-speech (TTS_PROVIDERS, DEEPGRAM_API_KEY or OPENAI_API_KEY): \
                  this run uses the simulated provider for them; its words are canned.";
    let stderr = runner.0.stderr();
    assert!(stderr.iter().any(|l| l == banner), "{stderr:?}");

    // The conversation: one live call of one turn, its provider check passing.
    let mut loadgen = Service::start_args(
        "loadgen",
        &["loadgen", "--url", &api, "--key", API_KEY, "--calls", "1", "--turns", "1", "--ramp-seconds", "0"],
        &[],
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = loadgen.wait(Duration::from_secs(90));
        std::thread::sleep(Duration::from_millis(200));
        (status, loadgen.stdout(), loadgen.stderr())
    })
    .await
    .unwrap();
    let (status, stdout, stderr) = status;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stdout:?}\n{stderr:?}");
    assert!(stdout.iter().any(|l| l.starts_with("calls: 1 ok, 0 failed; turns: 1 with a reply")), "{stdout:?}");
    assert!(stdout.iter().any(|l| l.starts_with("turns by outcome: ")), "{stdout:?}");
}
