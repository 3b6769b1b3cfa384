//! Live calls: a test carrier (a real WebSocket client speaking the Twilio Media Streams
//! protocol) streams a recorded conversation through call-api, audio-processor and
//! provider-gateway, with fake OpenAI-compatible providers for speech to text, chat and speech.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::common::{
    Backend, TestApp, TestDb,
    carrier::{Carrier, create_call, get, metric, metrics, silence, start_message, wait_until},
    stack,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use telemetry::testing::{FakeHttp, FakeReply, FakeRequest, OtlpReceiver, ReceivedSpan};
use tokio_tungstenite::tungstenite::Message;

const HEARD: [&str; 2] = ["I would like to check my order.", "Thank you, goodbye."];
const REPLIES: [&str; 2] = ["Sure, let me check. Your order ships today.", "You are welcome. Goodbye!"];

/// 24 kHz PCM16 (OpenAI's `pcm`) of `seconds`: a quiet tone.
pub(crate) fn speech_pcm(seconds: f64) -> Vec<u8> {
    let n = (24_000.0 * seconds) as usize;
    (0..n).flat_map(|i| (((i as f64 * 0.1).sin() * 3000.0) as i16).to_le_bytes()).collect()
}

/// A streamed chat completion (OpenAI's SSE) saying `text`, a word per event.
pub(crate) fn sse(text: &str) -> Vec<u8> {
    let mut out = String::new();
    for word in text.split_inclusive(' ') {
        out.push_str(&format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"content": word}}]})));
    }
    out.push_str(&format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// The fake providers: transcription and chat answer in turn order; speech is `tts_seconds` of
/// audio per sentence.
pub(crate) fn providers(tts_seconds: f64) -> impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static {
    providers_with(tts_seconds, Duration::ZERO)
}

/// As [`providers`], the first chat answer starting only after `first_chat_delay`.
fn providers_with(
    tts_seconds: f64,
    first_chat_delay: Duration,
) -> impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static {
    let stt = AtomicUsize::new(0);
    let chat = AtomicUsize::new(0);
    move |req: &FakeRequest| match req.path.as_str() {
        "/v1/audio/transcriptions" => {
            let i = stt.fetch_add(1, Ordering::SeqCst).min(1);
            FakeReply::json(200, json!({"text": HEARD[i], "language": "english", "duration": 1.0}))
        }
        "/v1/chat/completions" => {
            let n = chat.fetch_add(1, Ordering::SeqCst);
            let reply = FakeReply::raw(200, "text/event-stream", sse(REPLIES[n.min(1)]));
            if n == 0 { reply.after(first_chat_delay) } else { reply }
        }
        "/v1/audio/speech" => FakeReply::raw(200, "application/octet-stream", speech_pcm(tts_seconds)),
        _ => FakeReply::json(404, json!({"error": {"message": "no such route"}})),
    }
}

/// The caller's side of the shipped two-party call: 8 kHz μ-law, mono; the caller speaks
/// from about 4.7 s to 8.2 s.
pub(crate) fn caller_audio() -> Vec<u8> {
    let wav = stack::call_stereo();
    stack::wav_data(&wav).iter().skip(1).step_by(2).copied().collect()
}

/// The caller's first words (4–9 s of `caller`) and a second of silence; returns once `frames`
/// frames of the reply have arrived.
pub(crate) async fn ask_until_reply(carrier: &mut Carrier, caller: &[u8], frames: usize) {
    carrier.speak(&caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize]).await;
    carrier.speak(&silence(1.0)).await;
    wait_until(async || carrier.events("media").len() >= frames, Duration::from_secs(20), "the reply to start").await;
}

/// The caller talks over the reply (from 4.6 s of `caller`, just before their speech at 4.7 s) and
/// stops; returns once the server sent `clear`.
pub(crate) async fn talk_over(carrier: &mut Carrier, caller: &[u8]) {
    carrier.speak(&caller[(4.6 * 8000.0) as usize..(9.0 * 8000.0) as usize]).await;
    carrier.speak(&silence(1.0)).await;
    wait_until(async || !carrier.events("clear").is_empty(), Duration::from_secs(10), "clear").await;
}

pub(crate) struct Stack {
    pub(crate) app: TestApp,
    pub(crate) fake: FakeHttp,
    _audio: stack::Peer,
    _gateway: stack::Peer,
}

pub(crate) async fn live_stack(backend: Backend, tts_seconds: f64) -> Option<Stack> {
    live_stack_with(backend, FakeHttp::start(providers(tts_seconds)).await).await
}

async fn live_stack_with(backend: Backend, fake: FakeHttp) -> Option<Stack> {
    let db = TestDb::new(backend).await?;
    Some(live_stack_env(db, fake, stack::start_audio(None).await, &[]).await)
}

/// The live stack on `db` with `audio` (the test may restart it) and extra call-api variables.
pub(crate) async fn live_stack_env(db: TestDb, fake: FakeHttp, audio: stack::Peer, extra: &[(&str, &str)]) -> Stack {
    let gateway = stack::start_gateway(Some(&fake), &[("LLM_PROVIDERS", "openai"), ("TTS_PROVIDERS", "openai")]).await;
    let mut env = vec![("LIVE_SYSTEM_PROMPT", "You are a test agent.")];
    env.extend_from_slice(extra);
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &env).await;
    Stack { app, fake, _audio: audio, _gateway: gateway }
}

async fn two_turn_conversation(backend: Backend) {
    let Some(s) = live_stack(backend, 0.5).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let caller = caller_audio();
    let utterance = &caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize];

    carrier.speak(utterance).await;
    carrier.speak(&silence(1.0)).await;
    carrier.wait_for_mark("turn-2-2", Duration::from_secs(20)).await;
    carrier.speak(utterance).await;
    carrier.speak(&silence(1.0)).await;
    carrier.wait_for_mark("turn-4-2", Duration::from_secs(20)).await;
    carrier.hang_up().await;

    // What the providers were asked.
    let requests = s.fake.requests();
    let count = |path: &str| requests.iter().filter(|r| r.path == path).count();
    assert_eq!(count("/v1/audio/transcriptions"), 2);
    assert_eq!(count("/v1/chat/completions"), 2);
    assert_eq!(count("/v1/audio/speech"), 4, "two sentences per reply, each synthesised as soon as complete");
    let chats: Vec<Value> = requests
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let roles = |c: &Value| {
        c["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(roles(&chats[1]), ["system", "user", "assistant", "user"]);
    assert_eq!(chats[1]["messages"][0]["content"], "You are a test agent.");
    assert_eq!(chats[1]["messages"][1]["content"], HEARD[0]);
    assert_eq!(chats[1]["messages"][2]["content"], REPLIES[0]);
    assert_eq!(chats[1]["messages"][3]["content"], HEARD[1]);
    assert_eq!(chats[0]["stream"], true);

    // What the carrier got: paced μ-law frames and the marks after each sentence.
    let received = carrier.received.lock().unwrap().clone();
    let frames: Vec<&(Instant, Value)> = received.iter().filter(|(_, v)| v["event"] == "media").collect();
    for (_, f) in &frames {
        assert_eq!(f["streamSid"], "MZtest");
        assert_eq!(STANDARD.decode(f["media"]["payload"].as_str().unwrap()).unwrap().len(), 160);
    }
    // 0.5 s of speech per sentence is 25 frames; four sentences.
    assert_eq!(frames.len(), 100, "frames");
    let marks: Vec<&str> = received
        .iter()
        .filter(|(_, v)| v["event"] == "mark")
        .map(|(_, v)| v["mark"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(marks, ["turn-2-1", "turn-2-2", "turn-4-1", "turn-4-2"]);
    // Pacing within the first reply: 20 ms apart (generous bounds: a hang or a burst fails).
    let first_reply: Vec<Instant> = frames[..50].iter().map(|(t, _)| *t).collect();
    let span = first_reply[49] - first_reply[0];
    assert!(span >= Duration::from_millis(49 * 20 - 100), "50 frames in {span:?}: sent in a burst");
    assert!(span <= Duration::from_millis(49 * 20 + 600), "50 frames in {span:?}: too slow");

    // The stored conversation, with latency stages adding up to the total.
    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let turns = turns["turns"].as_array().unwrap();
    let roles: Vec<&str> = turns.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["caller", "agent", "caller", "agent"]);
    assert_eq!(turns[0]["text"], HEARD[0]);
    for caller in [&turns[0], &turns[2]] {
        assert_eq!(caller["outcome"], "answered", "{caller}");
        assert!(caller["stage"].is_null() && caller["reason"].is_null(), "{caller}");
    }
    assert_eq!(turns[1]["fallback"], false);
    assert_eq!(turns[1]["text"], REPLIES[0]);
    assert_eq!(turns[3]["text"], REPLIES[1]);
    for agent in [&turns[1], &turns[3]] {
        assert_eq!(agent["interrupted"], false);
        let l = &agent["latency"];
        let sum: f64 = ["end_of_turn", "stt", "llm_first_token", "llm_first_sentence", "tts_first_byte", "overhead"]
            .iter()
            .map(|k| l[k].as_f64().unwrap_or_else(|| panic!("stage {k} in {l}")))
            .sum();
        let total = l["total"].as_f64().unwrap();
        assert!((sum - total).abs() < 1e-6, "stages add up: {l}");
        assert!(total > 0.0 && total < 5.0, "{l}");
        assert!(l["end_of_turn"].as_f64().unwrap() > 0.3, "the end-of-turn silence is waited for: {l}");
    }

    // The call ended cleanly; gauges are exact.
    let call = get(app, &format!("/v1/calls/{}", carrier.id)).await;
    assert_eq!((call["status"].as_str(), call["outcome"].as_str()), (Some("ended"), Some("completed")));
    assert!(call.get("end_reason").is_none());
    let m = metrics(app).await;
    assert_eq!(metric(&m, "active_calls{provider=\"websocket\"}"), Some(0.0));
    assert_eq!(metric(&m, "voice_turn_latency_seconds_count{stage=\"total\"}"), Some(2.0));
    assert_eq!(metric(&m, "voice_turns_total{outcome=\"answered\"}"), Some(2.0));
    assert_eq!(metric(&m, "voice_calls_total{provider=\"websocket\",status=\"completed\"}"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_turn_conversation_on_sqlite() {
    two_turn_conversation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_turn_conversation_on_postgres() {
    two_turn_conversation(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn barge_in_clears_the_reply_and_the_callers_words_get_an_answer() {
    // Each sentence is 5 s of speech: the caller talks over the first one.
    let Some(s) = live_stack(Backend::Sqlite, 5.0).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let caller = caller_audio();
    // The reply is playing; the caller talks over it.
    ask_until_reply(&mut carrier, &caller, 25).await;
    talk_over(&mut carrier, &caller).await;
    carrier.wait_for_mark("turn-4-1", Duration::from_secs(20)).await;
    let clear_at = carrier.events("clear")[0].0;
    let frames_before_clear = carrier.events("media").iter().filter(|(t, _)| *t < clear_at).count();
    assert!(frames_before_clear < 250, "the first 5 s sentence was cut short ({frames_before_clear} frames)");
    assert!(
        carrier.events("mark").iter().all(|(_, m)| m["mark"]["name"] != "turn-2-2"),
        "the rest of reply 1 was dropped"
    );

    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let agent: Vec<&Value> = turns["turns"].as_array().unwrap().iter().filter(|t| t["role"] == "agent").collect();
    assert_eq!(agent[0]["interrupted"], true, "{turns:#}");
    assert_eq!(turns["turns"][0]["outcome"], "answered", "the reply had started: the caller was answered");
    assert_eq!(turns["turns"][2]["text"], HEARD[1], "the caller's words became the next turn");
    let m = metrics(app).await;
    assert_eq!(metric(&m, "voice_barge_ins_total"), Some(1.0));
    assert_eq!(metric(&m, "voice_turns_total{outcome=\"interrupted\"}"), Some(0.0));
    drop(carrier.sink);
}

/// A barge-in marks the interrupted reply in the database without holding up the call: with
/// the database's write lock held by someone else, the caller's words after the barge-in still
/// reach audio-processor and transcription, and the mark lands once the lock is let go.
#[tokio::test(flavor = "multi_thread")]
async fn a_barge_in_does_not_wait_for_the_database() {
    let Some((s, url)) = patient_stack(Backend::Sqlite, 5.0).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let caller = caller_audio();
    ask_until_reply(&mut carrier, &caller, 25).await;
    let transcriptions = || s.fake.requests().iter().filter(|r| r.path == "/v1/audio/transcriptions").count();
    assert_eq!(transcriptions(), 1);

    // Another writer holds the database while the caller talks over the reply.
    let lock = TurnWriteLock::take(Backend::Sqlite, &url).await;
    talk_over(&mut carrier, &caller).await;
    wait_until(
        async || transcriptions() == 2,
        Duration::from_secs(20),
        "the words after the barge-in to reach transcription while the database is locked",
    )
    .await;
    lock.release().await;

    carrier.wait_for_mark("turn-4-1", Duration::from_secs(30)).await;
    carrier.hang_up().await;
    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let agent: Vec<&Value> = turns["turns"].as_array().unwrap().iter().filter(|t| t["role"] == "agent").collect();
    assert_eq!(agent[0]["interrupted"], true, "the mark landed once the lock was let go: {turns:#}");
    assert_eq!(turns["turns"][2]["text"], HEARD[1], "{turns:#}");
}

/// A reply does not wait for the database: with writes to the turns held by someone else from
/// before the caller speaks (SQLite's write lock; PostgreSQL's `call_turns` locked against writes),
/// the caller still hears the reply (the heard words are stored by a task of their own), and
/// once the lock is let go both turns are stored, the caller's with its outcome.
async fn a_reply_does_not_wait_for_the_database(backend: Backend) {
    let Some((s, url)) = patient_stack(backend, 0.5).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let id = carrier.id.clone();
    wait_until(
        async || get(app, &format!("/v1/calls/{id}")).await["status"] == "in_progress",
        Duration::from_secs(5),
        "media start",
    )
    .await;

    let lock = TurnWriteLock::take(backend, &url).await;
    let caller = caller_audio();
    ask_until_reply(&mut carrier, &caller, 25).await;
    let turns = get(app, &format!("/v1/calls/{id}/turns")).await;
    assert_eq!(turns["turns"].as_array().map(Vec::len), Some(0), "nothing stored while the lock is held: {turns:#}");
    lock.release().await;

    carrier.wait_for_mark("turn-2-2", Duration::from_secs(30)).await;
    carrier.hang_up().await;
    // The writes that waited for the lock land once it is gone (SQLite's busy handler retries
    // them on its own clock): waited for, not read once.
    let stored = async || {
        let turns = get(app, &format!("/v1/calls/{id}/turns")).await;
        turns["turns"].as_array().is_some_and(|t| t.len() == 2 && t[0]["outcome"] == "answered")
    };
    wait_until(stored, Duration::from_secs(30), "both turns to be stored").await;
    let turns = get(app, &format!("/v1/calls/{id}/turns")).await;
    let turns = turns["turns"].as_array().unwrap();
    let roles: Vec<&str> = turns.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["caller", "agent"], "{turns:#?}");
    assert_eq!((&turns[0]["text"], &turns[0]["outcome"]), (&json!(HEARD[0]), &json!("answered")), "{turns:#?}");
    assert_eq!(turns[1]["text"], REPLIES[0]);
}

/// The live stack on a fresh `backend` database whose writes wait for a lock (SQLite's busy
/// timeout, PostgreSQL's statement timeout) instead of failing while a test holds it; and the
/// database's URL.
async fn patient_stack(backend: Backend, tts_seconds: f64) -> Option<(Stack, String)> {
    let db = TestDb::new(backend).await?;
    let url = db.url().to_string();
    let fake = FakeHttp::start(providers(tts_seconds)).await;
    let extra = [("DATABASE_STATEMENT_TIMEOUT_SECONDS", "60")];
    Some((live_stack_env(db, fake, stack::start_audio(None).await, &extra).await, url))
}

/// Writes to the turns held back by another connection until released (on SQLite the whole
/// database's write lock).
enum TurnWriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl TurnWriteLock {
    async fn take(backend: Backend, url: &str) -> Self {
        use sqlx::Connection as _;
        match backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(url).await.expect("second connection");
                sqlx::query("BEGIN IMMEDIATE").execute(&mut c).await.expect("write lock");
                Self::Sqlite(c)
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(url).await.expect("second connection");
                sqlx::query("BEGIN").execute(&mut c).await.expect("begin");
                // Reads go on (ACCESS SHARE); inserts wait (ROW EXCLUSIVE conflicts with it).
                sqlx::query("LOCK TABLE call_turns IN EXCLUSIVE MODE").execute(&mut c).await.expect("lock call_turns");
                Self::Postgres(c)
            }
        }
    }

    async fn release(self) {
        match self {
            Self::Sqlite(mut c) => drop(sqlx::query("ROLLBACK").execute(&mut c).await.expect("let go of the lock")),
            Self::Postgres(mut c) => drop(sqlx::query("ROLLBACK").execute(&mut c).await.expect("let go of the lock")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_does_not_wait_for_the_database_on_sqlite() {
    a_reply_does_not_wait_for_the_database(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_does_not_wait_for_the_database_on_postgres() {
    a_reply_does_not_wait_for_the_database(Backend::Postgres).await;
}

/// A hang-up stores the call's end only after the turn it cut short has stored what it heard
/// and its outcome: whoever reads an ended call reads its turns complete. (PostgreSQL: the turns
/// alone are locked, so the call's end could be stored meanwhile; SQLite's lock holds every
/// write.)
#[tokio::test(flavor = "multi_thread")]
async fn a_call_ends_after_the_turn_it_cut_short_is_stored() {
    let Some((s, url)) = patient_stack(Backend::Postgres, 5.0).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let id = carrier.id.clone();
    let status = async || get(app, &format!("/v1/calls/{id}")).await["status"].as_str().unwrap_or_default().to_string();
    wait_until(async || status().await == "in_progress", Duration::from_secs(5), "media start").await;

    let lock = TurnWriteLock::take(Backend::Postgres, &url).await;
    let caller = caller_audio();
    // The reply plays (5 s of it) while the caller's turn waits for the lock; the carrier hangs
    // up in the middle of it.
    ask_until_reply(&mut carrier, &caller, 25).await;
    carrier.send_stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status().await, "in_progress", "the call's end was stored before its turn's writes");
    lock.release().await;

    wait_until(async || status().await != "in_progress", Duration::from_secs(30), "the call's end").await;
    let turns = get(app, &format!("/v1/calls/{id}/turns")).await;
    let turns = turns["turns"].as_array().unwrap();
    assert!(!turns.is_empty(), "the ended call has its caller's turn");
    assert_eq!((&turns[0]["role"], &turns[0]["text"]), (&json!("caller"), &json!(HEARD[0])), "{turns:#?}");
    assert!(turns[0]["outcome"].is_string(), "the cut-short turn's outcome is stored: {turns:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_streams_are_refused_and_a_lost_connection_ends_the_call() {
    let Some(s) = live_stack(Backend::Sqlite, 0.5).await else { return };
    let app = &s.app;
    let ws_url = |id: &str| format!("ws://{}/v1/calls/{id}/media", app.addr);
    let status =
        |id: String| async move { get(app, &format!("/v1/calls/{id}")).await["status"].as_str().unwrap().to_string() };

    // A wrong token in the URL: refused before the upgrade.
    let (id, _) = create_call(app).await;
    let err = tokio_tungstenite::connect_async(format!("{}?token=wrong", ws_url(&id))).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // Wrong order, bad token, garbage, oversized: closed with a policy error, call untouched.
    let (id, token) = create_call(app).await;
    let cases: Vec<Vec<Message>> = vec![
        vec![Message::text(
            json!({"event": "media", "sequenceNumber": "2", "media": {"timestamp": "0", "payload": "AA=="}})
                .to_string(),
        )],
        vec![start_message("not-the-token")],
        vec![Message::text("{not json")],
        vec![Message::binary(vec![0u8; 100])],
        vec![Message::text("x".repeat(70_000))],
    ];
    for messages in cases {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&id)).await.unwrap();
        for m in messages {
            let _ = ws.send(m).await;
        }
        let mut code = None;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            match m {
                Ok(Message::Close(f)) => {
                    code = f.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert!(matches!(code, Some(1008) | Some(1009) | None), "{code:?}");
        assert_eq!(status(id.clone()).await, "queued", "a refused stream changes nothing");
    }

    // Malformed message after start: the call ends failed with the reason.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&id)).await.unwrap();
    ws.send(start_message(&token)).await.unwrap();
    wait_until(async || status(id.clone()).await == "in_progress", Duration::from_secs(5), "media start").await;
    // A second stream for the same call is refused.
    let (mut second, _) = tokio_tungstenite::connect_async(ws_url(&id)).await.unwrap();
    second.send(start_message(&token)).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), second.next()).await.unwrap();
    assert!(matches!(&m, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 1008), "{m:?}");
    ws.send(Message::text(json!({"event": "dtmf", "dtmf": {"digit": "55"}}).to_string())).await.unwrap();
    wait_until(async || status(id.clone()).await == "ended", Duration::from_secs(5), "the call to end").await;
    let call = get(app, &format!("/v1/calls/{id}")).await;
    assert_eq!(call["outcome"], "failed");
    assert!(call["end_reason"].as_str().unwrap().starts_with("media protocol error: dtmf"), "{call}");

    // Abrupt disconnect mid-call: ended as failed, "media connection lost"; nothing leaks.
    let mut carrier = Carrier::connect(app).await;
    carrier.speak(&silence(0.5)).await;
    let id = carrier.id.clone();
    wait_until(async || status(id.clone()).await == "in_progress", Duration::from_secs(5), "media start").await;
    drop(carrier.sink);
    carrier.reader.abort();
    wait_until(async || status(id.clone()).await == "ended", Duration::from_secs(10), "the lost call to end").await;
    let call = get(app, &format!("/v1/calls/{id}")).await;
    assert_eq!(call["end_reason"], "media connection lost");
    let m = metrics(app).await;
    assert_eq!(metric(&m, "active_calls{provider=\"websocket\"}"), Some(0.0));
    assert_eq!(metric(&m, "voice_calls_total{provider=\"websocket\",status=\"failed\"}"), Some(2.0));
    // audio-processor runs in this process and records into the same registry: its live
    // streams were all closed too.
    wait_until(
        async || metric(&metrics(app).await, "audio_active_streams").is_some_and(|v| v == 0.0),
        Duration::from_secs(5),
        "audio-processor streams to close",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_sound_during_the_reply_does_not_interrupt() {
    let Some(s) = live_stack(Backend::Sqlite, 3.0).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let caller = caller_audio();
    ask_until_reply(&mut carrier, &caller, 10).await;
    // "Mm-hm": 0.3 s of the caller's voice, then silence.
    carrier.speak(&caller[(5.0 * 8000.0) as usize..(5.3 * 8000.0) as usize]).await;
    carrier.speak(&silence(1.5)).await;
    carrier.wait_for_mark("turn-2-2", Duration::from_secs(20)).await;
    assert!(carrier.events("clear").is_empty(), "a short sound is not a barge-in");
    let m = metrics(app).await;
    assert_eq!(metric(&m, "voice_barge_ins_total"), Some(0.0));
    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    assert_eq!(turns["turns"].as_array().unwrap().len(), 2, "the sound did not become a turn: {turns:#}");
    assert_eq!(turns["turns"][1]["interrupted"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_live_calls_then_ends_them_with_the_reason() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let fake = FakeHttp::start(providers(0.5)).await;
    let s = live_stack_env(db, fake, stack::start_audio(None).await, &[("LIVE_DRAIN_TIMEOUT_SECONDS", "5")]).await;
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    carrier.speak(&silence(0.3)).await;
    let id = carrier.id.clone();
    wait_until(
        async || get(app, &format!("/v1/calls/{id}")).await["status"] == "in_progress",
        Duration::from_secs(5),
        "media start",
    )
    .await;
    let (other, _) = create_call(app).await;
    let started = Instant::now();
    app.trigger_shutdown();
    // New live calls are refused while draining.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/v1/calls/{other}/media", app.addr)).await;
    assert!(refused.is_err(), "no new live call during shutdown");
    // The live call keeps going for the drain bound (5 s here), then is ended by the service.
    let close = tokio::time::timeout(Duration::from_secs(20), carrier.reader).await.expect("closed").unwrap();
    assert_eq!(close, Some(1001));
    assert!(started.elapsed() >= Duration::from_secs(4), "the drain waited for the live call");
    assert_eq!(
        app.db.count_calls("status = 'ended' AND outcome = 'failed' AND end_reason = 'service shutting down'").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keypad_digits_reach_the_conversation() {
    let Some(s) = live_stack(Backend::Sqlite, 0.5).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    carrier.speak(&silence(0.2)).await;
    for digit in ["4", "2", "#"] {
        carrier.send(json!({"event": "dtmf", "streamSid": "MZtest", "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": digit}})).await;
        carrier.speak(&silence(0.2)).await;
    }
    carrier.wait_for_mark("turn-2-2", Duration::from_secs(20)).await;
    let chats: Vec<Value> = s
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0]["messages"][1]["content"], "(The caller pressed the keys 42# on the keypad.)");
    assert!(
        s.fake.requests().iter().all(|r| r.path != "/v1/audio/transcriptions"),
        "keypad input needs no transcription"
    );
    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    assert_eq!(turns["turns"][0]["text"], "(The caller pressed the keys 42# on the keypad.)");
    assert_eq!(turns["turns"][1]["role"], "agent");
}

#[tokio::test(flavor = "multi_thread")]
async fn talking_while_the_agent_thinks_cancels_the_provider_stream() {
    // The first chat answer takes 6 s to start: the caller speaks again meanwhile.
    let fake = FakeHttp::start(providers_with(0.5, Duration::from_secs(6))).await;
    let Some(s) = live_stack_with(Backend::Sqlite, fake).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let caller = caller_audio();
    let utterance = &caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize];
    carrier.speak(utterance).await;
    carrier.speak(&silence(0.8)).await;
    wait_until(
        async || s.fake.requests().iter().any(|r| r.path == "/v1/chat/completions"),
        Duration::from_secs(10),
        "the first chat request",
    )
    .await;
    carrier.speak(utterance).await;
    carrier.speak(&silence(1.0)).await;
    carrier.wait_for_mark("turn-4-2", Duration::from_secs(20)).await;
    // The first chat request was abandoned by the gateway: never answered in full.
    let chats_answered = s.fake.answered().iter().filter(|p| *p == "/v1/chat/completions").count();
    let chats_sent = s.fake.requests().iter().filter(|r| r.path == "/v1/chat/completions").count();
    assert_eq!((chats_sent, chats_answered), (2, 1), "the first provider stream was cancelled");
    assert!(!carrier.events("clear").is_empty());
    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let agent_turns: Vec<&Value> = turns["turns"].as_array().unwrap().iter().filter(|t| t["role"] == "agent").collect();
    assert_eq!(agent_turns[0]["interrupted"], true, "{turns:#}");
    assert_eq!(agent_turns[0]["text"], "");
    assert_eq!(agent_turns.last().unwrap()["interrupted"], false);
    let callers: Vec<&Value> = turns["turns"].as_array().unwrap().iter().filter(|t| t["role"] == "caller").collect();
    let outcomes: Vec<&str> = callers.iter().map(|t| t["outcome"].as_str().unwrap_or("null")).collect();
    assert_eq!(outcomes, ["interrupted", "answered"], "cut before any reply was sent: {turns:#}");
    let m = metrics(app).await;
    assert_eq!(metric(&m, "voice_barge_ins_total"), Some(1.0));
    assert_eq!(metric(&m, "voice_turns_total{outcome=\"interrupted\"}"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_audio_processor_does_not_end_the_call() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let audio_addr = listener.local_addr().unwrap();
    let audio = stack::start_audio(Some(listener)).await;
    let Stack { app, fake: _fake, _audio: audio, _gateway } =
        live_stack_env(db, FakeHttp::start(providers(0.5)).await, audio, &[]).await;
    let mut carrier = Carrier::connect(&app).await;
    let caller = caller_audio();
    let utterance = &caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize];
    carrier.speak(utterance).await;
    carrier.speak(&silence(1.0)).await;
    carrier.wait_for_mark("turn-2-2", Duration::from_secs(20)).await;

    // audio-processor shuts down (its live streams end: "reconnect to another replica") and a
    // new one comes up on the same address while the caller is silent.
    drop(audio);
    let speaking = tokio::spawn(async move {
        carrier.speak(&silence(1.5)).await;
        carrier
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(audio_addr).await {
            Ok(l) => break l,
            Err(e) => assert!(Instant::now() < deadline, "cannot rebind {audio_addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _audio = stack::start_audio(Some(listener)).await;
    let mut carrier = speaking.await.unwrap();

    // The call goes on: the next utterance is heard and answered.
    carrier.speak(utterance).await;
    carrier.speak(&silence(1.0)).await;
    // Generous: the reconnection waits for the new audio-processor, and CI machines are busy.
    carrier.wait_for_mark("turn-4-2", Duration::from_secs(45)).await;
    carrier.hang_up().await;
    let call = get(&app, &format!("/v1/calls/{}", carrier.id)).await;
    assert_eq!(call["outcome"], "completed", "{call}");
    // At least one reconnection counted; a stream opened while audio-processor restarts can end
    // again and count another (seen on busy CI machines).
    let reconnects = metric(&metrics(&app).await, "voice_audio_reconnects_total").unwrap_or(0.0);
    assert!((1.0..=3.0).contains(&reconnects), "reconnects counted: {reconnects}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_greets_first_when_a_greeting_is_configured() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let greeting = "Hello, thank you for calling. How can I help?";
    let audio = stack::start_audio(None).await;
    let s = live_stack_env(db, FakeHttp::start(providers(0.5)).await, audio, &[("LIVE_GREETING", greeting)]).await;
    let (app, fake) = (&s.app, &s.fake);
    let mut carrier = Carrier::connect(app).await;
    // Before the caller says anything: both sentences of the greeting, each with its mark.
    carrier.wait_for_mark("turn-0-2", Duration::from_secs(20)).await;
    assert!(!carrier.events("media").is_empty(), "greeting audio was played");
    let spoken = |fake: &FakeHttp| -> Vec<String> {
        fake.requests()
            .iter()
            .filter(|r| r.path == "/v1/audio/speech")
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["input"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(spoken(fake), ["Hello, thank you for calling.", "How can I help?"]);

    // The caller answers: the model sees the greeting as what the agent already said.
    let caller = caller_audio();
    carrier.speak(&caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize]).await;
    carrier.speak(&silence(1.0)).await;
    carrier.wait_for_mark("turn-2-1", Duration::from_secs(20)).await;
    let chat: Value = fake
        .requests()
        .iter()
        .find(|r| r.path == "/v1/chat/completions")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .expect("a chat request");
    let roles: Vec<&str> = chat["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "assistant", "user"]);
    assert_eq!(chat["messages"][1]["content"], greeting);
    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let first = &turns["turns"][0];
    assert_eq!((first["seq"].as_i64(), first["role"].as_str()), (Some(0), Some("agent")), "{turns}");
    assert_eq!(first["text"], greeting);
    assert_eq!(first["interrupted"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_of_turn_silence_is_configurable() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let audio = stack::start_audio(None).await;
    let s =
        live_stack_env(db, FakeHttp::start(providers(0.5)).await, audio, &[("LIVE_END_OF_TURN_SECONDS", "2")]).await;
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let caller = caller_audio();
    carrier.speak(&caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize]).await;
    carrier.speak(&silence(2.5)).await;
    carrier.wait_for_mark("turn-2-1", Duration::from_secs(20)).await;
    // The turn ended only after 2 s of silence (media time: it cannot be detected sooner; the
    // default would have been 0.7 s).
    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let agent = turns["turns"].as_array().unwrap().iter().find(|t| t["role"] == "agent").cloned().expect("a reply");
    let end_of_turn = agent["latency"]["end_of_turn"].as_f64().unwrap();
    assert!(end_of_turn >= 1.9, "end_of_turn {end_of_turn} s: {agent}");
}

/// The exported `turn` spans: the turn's number, whether it was cut before its reply was
/// handed to playback, and the seconds from the end of the caller's speech to the reply's first
/// audio (as stored with the agent's turn); the provider spans under them name the call as their
/// GenAI conversation.
#[tokio::test(flavor = "multi_thread")]
async fn turn_spans_carry_the_number_the_interruption_and_the_latency() {
    let otlp = OtlpReceiver::start().await;
    let endpoint = otlp.endpoint();
    let Some(db) = TestDb::new(Backend::Sqlite).await else { return };
    // The first chat answer takes 6 s to start: the caller speaks again meanwhile.
    let fake = FakeHttp::start(providers_with(0.5, Duration::from_secs(6))).await;
    let env = [("APM_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("LOG_LEVEL", "info")];
    let s = live_stack_env(db, fake, stack::start_audio(None).await, &env).await;
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let caller = caller_audio();
    let utterance = &caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize];
    carrier.speak(utterance).await;
    carrier.speak(&silence(0.8)).await;
    wait_until(
        async || s.fake.requests().iter().any(|r| r.path == "/v1/chat/completions"),
        Duration::from_secs(10),
        "the first chat request",
    )
    .await;
    carrier.speak(utterance).await;
    carrier.speak(&silence(1.0)).await;
    carrier.wait_for_mark("turn-4-2", Duration::from_secs(20)).await;

    let turns = get(app, &format!("/v1/calls/{}/turns", carrier.id)).await;
    let stored = |seq: i64| {
        turns["turns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["seq"] == seq)
            .cloned()
            .unwrap_or_else(|| panic!("{turns:#}"))
    };
    let attr = |s: &ReceivedSpan, key: &str| s.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let turn_span = |spans: &[ReceivedSpan], n: &str| {
        spans.iter().find(|s| s.name == "turn" && attr(s, "turn.number").as_deref() == Some(n)).cloned()
    };
    let spans = otlp
        .wait_for(Duration::from_secs(20), |spans| turn_span(spans, "1").is_some() && turn_span(spans, "3").is_some())
        .await;
    // Turn 1 was cut before any reply audio: interrupted, no latency.
    let first = turn_span(&spans, "1").expect("turn 1 span");
    assert_eq!(attr(&first, "turn.interrupted").as_deref(), Some("true"), "{first:?}");
    assert_eq!(attr(&first, "outcome").as_deref(), Some("interrupted"), "{first:?}");
    assert_eq!(attr(&first, "latency.total"), None, "{first:?}");
    assert_eq!(stored(2)["interrupted"], true);
    // Turn 3 was answered: not interrupted, its latency as stored.
    let second = turn_span(&spans, "3").expect("turn 3 span");
    assert_eq!(attr(&second, "turn.interrupted").as_deref(), Some("false"), "{second:?}");
    assert_eq!(attr(&second, "outcome").as_deref(), Some("answered"), "{second:?}");
    let latency: f64 = attr(&second, "latency.total").and_then(|v| v.parse().ok()).expect("latency.total");
    let agent = stored(4);
    assert_eq!(agent["interrupted"], false);
    let want = agent["latency"]["total"].as_f64().unwrap();
    assert!(latency > 0.0 && (latency - want).abs() < 1e-9, "span {latency} vs stored {want}");
    // The provider calls under the turns name the call as their conversation.
    let chats: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "chat gpt-4o-mini").collect();
    assert!(!chats.is_empty(), "{:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    for chat in chats {
        assert_eq!(attr(chat, "gen_ai.conversation.id"), Some(carrier.id.clone()), "{chat:?}");
        assert_eq!(attr(chat, "gen_ai.provider.name").as_deref(), Some("openai"), "{chat:?}");
    }
    carrier.hang_up().await;
}
