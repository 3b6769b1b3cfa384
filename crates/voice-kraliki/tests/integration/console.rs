//! The call console over the whole stack, as an operator sees it: audio-processor,
//! provider-gateway and call-api as processes on a PostgreSQL database of their own, calls made
//! by the load generator as a carrier would, and the console in a real headless Chromium. A call
//! the load generator made is found in the list and shows one bar group per agent turn; a call it
//! is still making is followed through its event stream and gains turns on screen until it ends.

use std::{
    path::PathBuf,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use telemetry::testing::browser::{Browser, chromium};

use crate::common::*;

/// How long a live call may take to answer its next turn on screen (a turn of the load
/// generator is several seconds of speech and the reply).
const NEXT_TURN: Duration = Duration::from_secs(60);

/// `voice-kraliki loadgen` against `api` on its own thread (it builds its own runtime).
fn loadgen(api: &str, calls: usize, turns: usize) -> JoinHandle<u8> {
    let args: Vec<String> = [
        "--calls",
        &calls.to_string(),
        "--turns",
        &turns.to_string(),
        "--ramp-seconds",
        "0",
        "--url",
        api,
        "--key",
        API_KEY,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    std::thread::spawn(move || voice_kraliki::loadgen::run_code(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

async fn get(url: &str) -> Value {
    let r = client().get(url).bearer_auth(API_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.json().await.unwrap()
}

fn calls(list: &Value) -> &Vec<Value> {
    list["calls"].as_array().unwrap_or_else(|| panic!("a call list: {list}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_finds_a_loadgen_call_and_follows_a_live_one_over_the_whole_stack() {
    let Some(bin) = chromium() else { return };
    let Some(db) = PgDatabase::create("vkt_console").await else { return };
    let started = Instant::now();

    let ports = Ports::new();
    let mut env = ports.env();
    env.retain(|(k, _)| k != "DATABASE_URL");
    env.push(("DATABASE_URL".into(), db.url.clone()));
    env.push(("LLM_PROVIDERS".into(), "simulated".into()));
    env.push(("STT_PROVIDERS".into(), "simulated".into()));
    env.push(("TTS_PROVIDERS".into(), "simulated".into()));
    env.push(("SIMULATED_LATENCY".into(), "fixed:0".into()));
    env.push(("SIMULATED_TTFB_SECONDS".into(), "0".into()));
    env.push(("SIMULATED_TOKENS_PER_SECOND".into(), "0".into()));
    let _audio = Service::start("audio-processor", &env);
    let _gateway = Service::start("provider-gateway", &env);
    let _api = Service::start("call-api", &env);
    ports.wait_all_ready().await;
    let api = format!("http://127.0.0.1:{}", ports.api);

    // A finished call: the load generator's, two turns, each answered.
    let first_run = loadgen(&api, 1, 2);
    let code = tokio::task::spawn_blocking(move || first_run.join().expect("loadgen thread")).await.unwrap();
    assert_eq!(code, 0, "the load generator's call went through");
    let list = get(&format!("{api}/v1/calls")).await;
    let [done] = calls(&list).as_slice() else { panic!("one call so far: {list}") };
    assert_eq!(done["status"], "ended", "{done}");
    assert_eq!(done["metadata"]["source"], "voice-kraliki loadgen", "{done}");
    let done_id = done["id"].as_str().unwrap().to_string();
    let turns = get(&format!("{api}/v1/calls/{done_id}/turns")).await;
    let agent_turns = turns["turns"].as_array().unwrap().iter().filter(|t| t["role"] == "agent").count() as u64;
    assert_eq!(agent_turns, 2, "one reply per caller turn: {turns}");

    // A live call: the load generator again, in the background, for longer.
    let live_run = loadgen(&api, 1, 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    let live_id = loop {
        let list = get(&format!("{api}/v1/calls?status=in_progress")).await;
        if let Some(call) = calls(&list).first() {
            break call["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no call in progress within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(live_id, done_id);

    let mut b = Browser::start(bin, PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stack-console-screenshots")).await;
    b.navigate(&format!("{api}/console")).await;
    b.wait_for("document.getElementById('key-input')", "the key form").await;
    b.type_and_submit("key-input", API_KEY, "key-submit").await;

    // The list: the load generator's finished call, and the live one.
    let row = |id: &str| format!("document.querySelector('#calls tr[data-call-id=\"{id}\"]')");
    b.wait_for(&row(&done_id), "the load generator's finished call in the list").await;
    b.wait_for(&row(&live_id), "the live call in the list").await;
    let text = b.eval(&format!("{}.innerText", row(&done_id))).await;
    assert!(text.as_str().unwrap().contains("websocket"), "the load generator's carrier: {text}");
    b.screenshot("list").await;

    // The finished call: one bar group per agent turn.
    b.eval(&format!("{}.click()", row(&done_id))).await;
    b.wait_for("document.querySelector('#waterfall .turn-group')", "the waterfall").await;
    assert_eq!(b.count("#waterfall .turn-group").await, agent_turns);
    assert!(b.count("#waterfall .turn-group .stage").await >= agent_turns, "each bar group has its stages");
    assert_eq!(b.count("#live-badge").await, 0, "an ended call is not live");
    b.screenshot("waterfall").await;

    // The live call, opened from the list: followed through its event stream, it gains turns on
    // screen as the load generator talks.
    b.eval("location.hash = '#/'").await;
    b.wait_for(&row(&live_id), "the live call in the list again").await;
    b.eval(&format!("{}.click()", row(&live_id))).await;
    b.wait_for("document.getElementById('live-badge')", "the live call's page").await;
    b.wait_for(
        "document.getElementById('status-line').textContent.includes('following its events')",
        "the live call's event stream followed",
    )
    .await;
    let shown = b.count("#waterfall .turn-group").await;
    b.wait_for_within(
        &format!("document.querySelectorAll('#waterfall .turn-group').length > {shown}"),
        &format!("more than the {shown} agent turns shown when the page opened"),
        NEXT_TURN,
    )
    .await;
    assert_eq!(b.count("#live-badge").await, 1, "still live after one more turn");
    b.screenshot("live-call").await;

    // The load generator hangs up: the page shows the call ended, with every agent turn.
    let code = tokio::task::spawn_blocking(move || live_run.join().expect("loadgen thread")).await.unwrap();
    assert_eq!(code, 0, "the load generator's live call went through");
    b.wait_for("!document.getElementById('live-badge')", "the call shown as ended").await;
    let turns = get(&format!("{api}/v1/calls/{live_id}/turns")).await;
    let live_agent_turns = turns["turns"].as_array().unwrap().iter().filter(|t| t["role"] == "agent").count() as u64;
    assert!(live_agent_turns > shown, "{turns}");
    b.wait_for(
        &format!("document.querySelectorAll('#waterfall .turn-group').length === {live_agent_turns}"),
        "one bar group per agent turn of the ended call",
    )
    .await;

    let errors = b.take_errors();
    assert!(errors.is_empty(), "the browser logged errors: {errors:#?}");
    eprintln!("the stack console test took {:.1} s", started.elapsed().as_secs_f64());
}
