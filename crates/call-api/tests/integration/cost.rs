//! Cost per call: the prices file (`PROVIDER_PRICES_FILE`) applied to the usage providers
//! report, stored on the call and counted in the metrics; no prices file, no cost (null, never
//! 0); a bad prices file stops the binary with exit 2.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::common::{
    Backend, KEY, Metrics, TestApp, TestDb,
    carrier::{Carrier, get, silence},
    new_call, stack,
};
use crate::live::{speech_pcm, sse};
use serde_json::{Value, json};
use telemetry::testing::{FakeHttp, FakeReply, FakeRequest};

const HEARD: [&str; 2] = ["I would like to check my order.", "Thank you, goodbye."];
const REPLIES: [&str; 2] = ["Sure, let me check. Your order ships today.", "You are welcome. Goodbye!"];
/// The sentences synthesised (each reply is spoken a sentence at a time).
const SENTENCES: [&str; 4] = ["Sure, let me check.", "Your order ships today.", "You are welcome.", "Goodbye!"];
/// What the fake chat provider reports per reply: (prompt tokens, completion tokens).
const USAGE: [(u64, u64); 2] = [(1234, 11), (1567, 7)];
/// What the fake transcription provider reports per utterance.
const STT_SECONDS: f64 = 1.5;

const PRICES: &str = "
currency: USD
prices_taken_on: 2026-12-01
providers:
  openai:
    chat:
      gpt-4o-mini: {input_per_million_tokens: 0.15, output_per_million_tokens: 0.6}
    speech_to_text:
      whisper-1: {per_minute: 0.006}
    text_to_speech:
      gpt-4o-mini-tts: {per_million_characters: 12.5}
";

/// Rounded as call-api rounds amounts: 9 decimal places.
fn round9(v: f64) -> f64 {
    (v * 1e9).round() / 1e9
}

fn prices_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A streamed chat completion saying `text`, with OpenAI's usage chunk at the end.
fn sse_with_usage(text: &str, (prompt, completion): (u64, u64)) -> Vec<u8> {
    let mut out = sse(text);
    let done = b"data: [DONE]\n\n";
    out.truncate(out.len() - done.len());
    let usage = json!({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
    out.extend_from_slice(format!("data: {usage}\n\n").as_bytes());
    out.extend_from_slice(done);
    out
}

/// Fake OpenAI: transcription (1.5 s reported), chat with usage, 0.5 s of speech a sentence.
fn providers(req: &FakeRequest, stt: &AtomicUsize, chat: &AtomicUsize) -> FakeReply {
    match req.path.as_str() {
        "/v1/audio/transcriptions" => {
            let i = stt.fetch_add(1, Ordering::SeqCst).min(1);
            FakeReply::json(200, json!({"text": HEARD[i], "language": "english", "duration": STT_SECONDS}))
        }
        "/v1/chat/completions" => {
            let n = chat.fetch_add(1, Ordering::SeqCst).min(1);
            FakeReply::raw(200, "text/event-stream", sse_with_usage(REPLIES[n], USAGE[n]))
        }
        "/v1/audio/speech" => FakeReply::raw(200, "application/octet-stream", speech_pcm(0.5)),
        _ => FakeReply::json(404, json!({"error": {"message": "no such route"}})),
    }
}

fn caller_utterance() -> Vec<u8> {
    let wav = stack::call_stereo();
    let caller: Vec<u8> = stack::wav_data(&wav).iter().skip(1).step_by(2).copied().collect();
    caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize].to_vec()
}

struct Live {
    app: TestApp,
    _fake: FakeHttp,
    _audio: stack::Peer,
    _gateway: stack::Peer,
}

async fn live_stack(backend: Backend, prices: Option<&Path>) -> Option<Live> {
    let db = TestDb::new(backend).await?;
    let (stt, chat) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let fake = FakeHttp::start(move |req: &FakeRequest| providers(req, &stt, &chat)).await;
    let audio = stack::start_audio(None).await;
    let gateway = stack::start_gateway(Some(&fake), &[("LLM_PROVIDERS", "openai"), ("TTS_PROVIDERS", "openai")]).await;
    let path = prices.map(|p| p.display().to_string());
    let mut env = vec![("LIVE_SYSTEM_PROMPT", "You are a test agent.")];
    if let Some(p) = &path {
        env.push(("PROVIDER_PRICES_FILE", p.as_str()));
    }
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &env).await;
    Some(Live { app, _fake: fake, _audio: audio, _gateway: gateway })
}

/// Two turns, then the carrier hangs up; the call record afterwards.
async fn two_turns(app: &TestApp, turns: usize) -> Value {
    let mut carrier = Carrier::connect(app).await;
    let utterance = caller_utterance();
    for turn in 1..=turns {
        carrier.speak(&utterance).await;
        carrier.speak(&silence(1.0)).await;
        carrier.wait_for_mark(&format!("turn-{}-2", turn * 2), Duration::from_secs(20)).await;
    }
    carrier.hang_up().await;
    get(app, &format!("/v1/calls/{}", carrier.id)).await
}

fn item<'a>(cost: &'a Value, capability: &str) -> &'a Value {
    cost["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["capability"] == capability)
        .unwrap_or_else(|| panic!("no {capability} item in {cost:#}"))
}

async fn a_two_turn_call_costs_exactly_its_usage(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let prices = prices_file(dir.path(), "prices.yaml", PRICES);
    let Some(s) = live_stack(backend, Some(&prices)).await else { return };
    let call = two_turns(&s.app, 2).await;
    assert_eq!(call["status"], "ended", "{call:#}");
    let cost = &call["cost"];

    // What the providers reported, priced by hand.
    let input: u64 = USAGE.iter().map(|u| u.0).sum();
    let output: u64 = USAGE.iter().map(|u| u.1).sum();
    let characters: u64 = SENTENCES.iter().map(|s| s.chars().count() as u64).sum();
    let chat = round9(input as f64 * 0.15 / 1e6 + output as f64 * 0.6 / 1e6);
    let stt = round9(2.0 * STT_SECONDS / 60.0 * 0.006);
    let tts = round9(characters as f64 * 12.5 / 1e6);
    let total = round9(chat + stt + tts);
    assert_eq!(cost["currency"], "USD", "{cost:#}");
    assert_eq!(cost["chat"].as_f64(), Some(chat), "{cost:#}");
    assert_eq!(cost["speech_to_text"].as_f64(), Some(stt), "{cost:#}");
    assert_eq!(cost["text_to_speech"].as_f64(), Some(tts), "{cost:#}");
    assert_eq!(cost["total"].as_f64(), Some(total), "{cost:#}");
    assert_eq!(cost["complete"], true);
    assert_eq!(cost["unreported_requests"], 0);
    // 2,801 input and 18 output tokens, 3 s of transcription, 66 characters.
    assert_eq!((chat, stt, tts, total), (0.00043095, 0.0003, 0.000825, 0.00155595));

    let c = item(cost, "chat");
    assert_eq!((c["provider"].as_str(), c["model"].as_str()), (Some("openai"), Some("gpt-4o-mini")));
    assert_eq!((c["input_tokens"].as_u64(), c["output_tokens"].as_u64()), (Some(input), Some(output)));
    assert_eq!(c["priced_as"], "gpt-4o-mini");
    let t = item(cost, "speech_to_text");
    assert_eq!((t["model"].as_str(), t["seconds"].as_f64()), (Some("whisper-1"), Some(2.0 * STT_SECONDS)));
    let t = item(cost, "text_to_speech");
    assert_eq!((t["model"].as_str(), t["characters"].as_u64()), (Some("gpt-4o-mini-tts"), Some(characters)));
    // 0.5 s of speech per sentence reached the carrier.
    let seconds = t["seconds"].as_f64().unwrap();
    assert!((seconds - 2.0).abs() < 0.05, "{seconds}");

    // The call's quality report carries the same breakdown.
    let id = call["id"].as_str().unwrap();
    let quality = get(&s.app, &format!("/v1/calls/{id}/quality")).await;
    assert_eq!(&quality["cost"], cost, "{quality:#}");

    // The metrics hold the same figures.
    let text = s.app.client.get(s.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let m = Metrics::parse(&text);
    let spent = |model: &str, capability: &str| {
        m.find(
            "provider_cost_total",
            &[("provider", "openai"), ("model", model), ("capability", capability), ("currency", "USD")],
        )
    };
    assert_eq!(spent("gpt-4o-mini", "chat"), Some(chat), "{text}");
    assert_eq!(spent("whisper-1", "speech_to_text"), Some(stt));
    assert_eq!(spent("gpt-4o-mini-tts", "text_to_speech"), Some(tts));
    assert_eq!(m.find("voice_call_cost_count", &[("currency", "USD")]), Some(1.0));
    assert_eq!(m.find("voice_call_cost_sum", &[("currency", "USD")]), Some(total));
    assert_eq!(m.find("voice_call_cost_bucket", &[("currency", "USD"), ("le", "0.001")]), Some(0.0));
    assert_eq!(m.find("voice_call_cost_bucket", &[("currency", "USD"), ("le", "0.0025")]), Some(1.0));
    assert!(text.contains("# TYPE provider_cost_total counter"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_turn_call_costs_exactly_its_usage_on_sqlite() {
    a_two_turn_call_costs_exactly_its_usage(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_turn_call_costs_exactly_its_usage_on_postgres() {
    a_two_turn_call_costs_exactly_its_usage(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_prices_file_the_cost_is_null_not_zero() {
    let Some(s) = live_stack(Backend::Sqlite, None).await else { return };
    let call = two_turns(&s.app, 1).await;
    assert_eq!(call["status"], "ended");
    assert!(call.as_object().unwrap().contains_key("cost"), "{call:#}");
    assert!(call["cost"].is_null(), "{call:#}");
    let quality = get(&s.app, &format!("/v1/calls/{}/quality", call["id"].as_str().unwrap())).await;
    assert!(quality.as_object().unwrap().contains_key("cost") && quality["cost"].is_null(), "{quality:#}");
    let text = s.app.client.get(s.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("provider_cost_total{"), "{text}");
    assert!(!text.contains("voice_call_cost_count"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_without_a_price_leaves_the_cost_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let without_speech = PRICES.replace("gpt-4o-mini-tts", "tts-1");
    let prices = prices_file(dir.path(), "prices.yml", &without_speech);
    let Some(s) = live_stack(Backend::Sqlite, Some(&prices)).await else { return };
    let call = two_turns(&s.app, 1).await;
    let cost = &call["cost"];
    assert_eq!(cost["complete"], false, "{cost:#}");
    assert!(cost["total"].is_null() && cost["text_to_speech"].is_null(), "unknown, never invented: {cost:#}");
    let chat = round9(USAGE[0].0 as f64 * 0.15 / 1e6 + USAGE[0].1 as f64 * 0.6 / 1e6);
    assert_eq!(cost["chat"].as_f64(), Some(chat));
    let t = item(cost, "text_to_speech");
    assert!(t["cost"].is_null() && t.get("priced_as").is_none(), "{t}");
    let text = s.app.client.get(s.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let m = Metrics::parse(&text);
    // The listed model's series is there (at zero); the unpriced model gets none.
    let tts = |model: &str| {
        m.find(
            "provider_cost_total",
            &[("provider", "openai"), ("model", model), ("capability", "text_to_speech"), ("currency", "USD")],
        )
    };
    assert_eq!(tts("tts-1"), Some(0.0));
    assert_eq!(tts("gpt-4o-mini-tts"), None);
    assert_eq!(m.find("voice_call_cost_count", &[("currency", "USD")]), None, "an incomplete cost is not observed");
}

/// The simulated providers (what `make run` uses without keys) with the shipped example prices.
#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_call_is_priced_with_the_example_file() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let audio = stack::start_audio(None).await;
    let gateway = stack::start_gateway(
        None,
        &[("STT_PROVIDERS", "simulated"), ("LLM_PROVIDERS", "simulated"), ("TTS_PROVIDERS", "simulated")],
    )
    .await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prices.example.yaml");
    let example = example.display().to_string();
    let env = [
        ("LIVE_SYSTEM_PROMPT", "You are a test agent."),
        ("LIVE_MAX_TOKENS", "16"),
        ("PROVIDER_PRICES_FILE", example.as_str()),
    ];
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &env).await;
    let call = two_turns(&app, 2).await;
    let cost = &call["cost"];
    assert_eq!(cost["complete"], true, "{cost:#}");
    // The simulated chat counts a prompt's words plus 4 per message, and answers max_tokens.
    let turns = get(&app, &format!("/v1/calls/{}/turns", call["id"].as_str().unwrap())).await;
    let texts: Vec<&str> = turns["turns"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 4, "{turns:#}");
    let tokens = |messages: &[&str]| -> u64 { messages.iter().map(|m| m.split_whitespace().count() as u64 + 4).sum() };
    let input =
        tokens(&["You are a test agent.", texts[0]]) + tokens(&["You are a test agent.", texts[0], texts[1], texts[2]]);
    let c = item(cost, "chat");
    assert_eq!((c["input_tokens"].as_u64(), c["output_tokens"].as_u64()), (Some(input), Some(32)), "{cost:#}");
    let chat = round9(input as f64 * 0.15 / 1e6 + 32.0 * 0.6 / 1e6);
    assert_eq!(cost["chat"].as_f64(), Some(chat));
    let t = item(cost, "text_to_speech");
    let characters: u64 = [texts[1], texts[3]].iter().map(|s| s.chars().count() as u64).sum();
    // Sentences are spoken one by one: the spaces between them are not sent.
    let sentences = [texts[1], texts[3]].iter().map(|s| s.matches(". ").count() as u64).sum::<u64>();
    assert_eq!(t["characters"].as_u64(), Some(characters - sentences), "{cost:#}");
    let stt_seconds = item(cost, "speech_to_text")["seconds"].as_f64().unwrap();
    assert!(stt_seconds > 3.0 && stt_seconds < 12.0, "two utterances of about 3.5 s: {stt_seconds}");
    let expected =
        round9(round9(stt_seconds / 60.0 * 0.006) + chat + round9((characters - sentences) as f64 * 15.0 / 1e6));
    assert_eq!(cost["total"].as_f64(), Some(expected), "{cost:#}");
    eprintln!("two-turn simulated call with deploy/prices.example.yaml: {cost:#}");
}

// ---- Recordings --------------------------------------------------------------------------------

/// Seconds of 16 kHz PCM16 mono audio in a WAV file.
fn wav_seconds(wav: &[u8]) -> f64 {
    stack::wav_data(wav).len() as f64 / 32_000.0
}

/// Whisper's verbose reply: the duration is the audio's.
fn whisper(request: &FakeRequest) -> FakeReply {
    let parts = request.multipart();
    let Some(file) = parts.iter().find(|p| p.name == "file") else {
        return FakeReply::json(400, json!({"error": {"message": "no file"}}));
    };
    let seconds = wav_seconds(&file.data);
    FakeReply::json(
        200,
        json!({"task": "transcribe", "language": "english", "duration": seconds, "text": "Hello there.",
               "segments": [{"id": 0, "start": 0.0, "end": seconds, "text": " Hello there."}]}),
    )
}

async fn an_uploaded_recording_costs_its_transcription(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let prices = prices_file(dir.path(), "prices.yaml", PRICES);
    let prices = prices.display().to_string();
    let fake = FakeHttp::start(whisper).await;
    let Some(db) = TestDb::new(backend).await else { return };
    let audio = stack::start_audio(None).await;
    let gateway = stack::start_gateway(Some(&fake), &[]).await;
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &[("PROVIDER_PRICES_FILE", prices.as_str())]).await;
    let (status, created) = app.post_json("/v1/calls", KEY, &new_call("twilio")).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();
    let upload = async || {
        let r = app
            .client
            .post(app.url(&format!("/v1/calls/{id}/recording")))
            .bearer_auth(KEY)
            .header("content-type", "audio/wav")
            .body(stack::call_stereo())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    upload().await;
    let sent: f64 = fake
        .requests()
        .iter()
        .map(|r| r.multipart().into_iter().find(|p| p.name == "file").map_or(0.0, |f| wav_seconds(&f.data)))
        .sum();
    assert!(sent > 5.0, "the recording's speech was transcribed: {sent} s");
    let call = get(&app, &format!("/v1/calls/{id}")).await;
    let cost = &call["cost"];
    let stt = round9(sent / 60.0 * 0.006);
    assert_eq!(cost["speech_to_text"].as_f64(), Some(stt), "{cost:#}");
    assert_eq!((cost["chat"].as_f64(), cost["text_to_speech"].as_f64()), (Some(0.0), Some(0.0)));
    assert_eq!(cost["total"].as_f64(), Some(stt));
    assert_eq!(cost["complete"], true);

    // Analysing it again costs as much again: the call's cost holds both.
    upload().await;
    let call = get(&app, &format!("/v1/calls/{id}")).await;
    let cost = &call["cost"];
    assert_eq!(cost["total"].as_f64(), Some(round9(2.0 * stt)), "{cost:#}");
    assert_eq!(item(cost, "speech_to_text")["seconds"].as_f64(), Some(round9(2.0 * round9(sent))));
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let m = Metrics::parse(&text);
    let spent = m.find(
        "provider_cost_total",
        &[("provider", "openai"), ("model", "whisper-1"), ("capability", "speech_to_text"), ("currency", "USD")],
    );
    assert!(spent.is_some_and(|v| (v - 2.0 * stt).abs() < 1e-12), "{spent:?} vs {}", 2.0 * stt);
    assert_eq!(m.find("voice_call_cost_count", &[("currency", "USD")]), Some(2.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uploaded_recording_costs_its_transcription_on_sqlite() {
    an_uploaded_recording_costs_its_transcription(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uploaded_recording_costs_its_transcription_on_postgres() {
    an_uploaded_recording_costs_its_transcription(Backend::Postgres).await;
}

// ---- A bad prices file stops the binary --------------------------------------------------------

#[test]
fn a_bad_prices_file_stops_the_binary_with_exit_2_naming_the_file_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.yaml", None, "file"),
        ("syntax.yaml", Some("currency: 'USD\n"), "syntax.yaml"),
        ("currency.yaml", Some("currency: DOLLARS\n"), "currency"),
        (
            "negative.yaml",
            Some("currency: USD\nproviders:\n  openai:\n    speech_to_text:\n      whisper-1: {per_minute: -0.006}\n"),
            "providers.openai.speech_to_text.whisper-1.per_minute",
        ),
        (
            "nan.yml",
            Some(
                "currency: USD\nproviders:\n  openai:\n    chat:\n      gpt-4o: {input_per_million_tokens: .nan, output_per_million_tokens: 1}\n",
            ),
            "providers.openai.chat.gpt-4o.input_per_million_tokens",
        ),
        (
            "unknown-field.yaml",
            Some(
                "currency: USD\nproviders:\n  openai:\n    speech_to_text:\n      whisper-1: {per_minute: 0.006, per_hour: 0.36}\n",
            ),
            "providers.openai.speech_to_text.whisper-1",
        ),
        ("prices.toml", Some("currency = 'USD'\n"), "unsupported file type"),
    ];
    for (name, text, entry) in cases {
        let path = dir.path().join(name);
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_call-api"))
            .current_dir(dir.path())
            .env("PROVIDER_PRICES_FILE", &path)
            .env("CALL_API_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", format!("sqlite://{}", dir.path().join("never.db").display()))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(lines[0].contains("PROVIDER_PRICES_FILE") && lines[0].contains(name), "{name}: {stderr}");
        assert!(lines[0].contains(entry), "{name}: want {entry:?} in {stderr}");
    }
    assert!(!dir.path().join("never.db").exists(), "nothing started");
}
