//! `voice-kraliki loadgen` (also `drills loadgen`): simulates carriers. Each simulated call
//! creates a call, connects to its media WebSocket like Twilio does, and talks: a recorded utterance in real-time 20 ms
//! μ-law frames, then silence while the agent answers, for a number of turns. It measures what
//! a caller would: the time from the end of their speech to the first reply frame, and how
//! evenly the reply frames arrive; it also collects the server's per-stage latency of each turn
//! and the services' memory, and prints a summary table.
//!
//! ```text
//! voice-kraliki loadgen [--calls N] [--turns T] [--ramp-seconds S] [--audio FILE.wav]
//!                       [--url URL] [--key KEY] [--metrics URL]...
//! ```
//! `--audio` takes an 8 kHz μ-law WAV (mono, or stereo whose second channel is the caller);
//! the default is the caller's words of the shipped two-party recording. The API key is read
//! like `demo` does. Exit status 1 when a call or a turn failed.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

/// The shipped recording: 8 kHz stereo μ-law, channel 0 the agent, channel 1 the caller
/// (`crates/audio-dsp/fixtures/call-stereo.wav`).
pub const RECORDING: &[u8] = include_bytes!("../../audio-dsp/fixtures/call-stereo.wav");
/// A turn without a first reply frame within this is an error.
const TURN_TIMEOUT: Duration = Duration::from_secs(30);
/// Reply audio is over when no frame came for this long.
const REPLY_QUIET: Duration = Duration::from_millis(600);
/// The caller listens to at most this much of a reply before speaking again (talking over the
/// rest, which exercises barge-in).
const LISTEN_MAX: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub key: String,
    pub calls: usize,
    pub turns: usize,
    pub ramp: Duration,
    pub utterance: Arc<Vec<u8>>,
    pub metrics: Vec<String>,
    /// Times a media connection refused with 503 (a replica draining, or at capacity) is tried
    /// again after its `Retry-After` (at most 2 s), as a carrier would; 0 = never.
    pub media_retries: u32,
}

/// What a carrier sends first on a call's media WebSocket (Twilio Media Streams): `connected`,
/// then `start` for call `id`, μ-law at 8 kHz.
pub fn carrier_start(id: &str) -> [Message; 2] {
    let send = |v: Value| Message::text(v.to_string());
    [
        send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})),
        send(json!({"event": "start", "sequenceNumber": "1", "streamSid": format!("MZ{id}"),
            "start": {"streamSid": format!("MZ{id}"), "callSid": format!("CA{id}"), "tracks": ["inbound"],
                      "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})),
    ]
}

fn usage_code() -> u8 {
    eprintln!(
        "usage: voice-kraliki loadgen [--calls N] [--turns T] [--ramp-seconds S] [--audio FILE.wav] [--url URL] [--key KEY] [--metrics URL]..."
    );
    2
}

/// The `data` chunk and channel count of an 8 kHz μ-law WAV.
fn mulaw_wav(wav: &[u8]) -> Result<(Vec<u8>, usize), String> {
    if wav.len() < 12 || &wav[..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return Err("not a WAV file".into());
    }
    let (mut i, mut format) = (12, None);
    while i + 8 <= wav.len() {
        let len = u32::from_le_bytes([wav[i + 4], wav[i + 5], wav[i + 6], wav[i + 7]]) as usize;
        let body = &wav[i + 8..(i + 8 + len).min(wav.len())];
        match &wav[i..i + 4] {
            b"fmt " if body.len() >= 16 => {
                let tag = u16::from_le_bytes([body[0], body[1]]);
                let channels = u16::from_le_bytes([body[2], body[3]]) as usize;
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                if tag != 7 || rate != 8000 || !(1..=2).contains(&channels) {
                    return Err("the audio must be 8 kHz μ-law, mono or stereo".into());
                }
                format = Some(channels);
            }
            b"data" => {
                let channels = format.ok_or("no fmt chunk before data")?;
                return Ok((body.to_vec(), channels));
            }
            _ => {}
        }
        i += 8 + len + (len & 1);
    }
    Err("no data chunk".into())
}

/// The caller's channel, trimmed to its speech plus a little air.
pub fn utterance(wav: &[u8]) -> Result<Vec<u8>, String> {
    let (data, channels) = mulaw_wav(wav)?;
    let caller: Vec<u8> = data.iter().skip(channels - 1).step_by(channels).copied().collect();
    // Speech is what is not near-silent μ-law (0x7F/0xFF are zero).
    let loud = |b: &u8| (b & 0x7F) < 0x70;
    let first = caller.iter().position(loud).unwrap_or(0);
    let last = caller.iter().rposition(loud).unwrap_or(caller.len().saturating_sub(1));
    let from = first.saturating_sub(1600);
    let to = (last + 1600).min(caller.len());
    Ok(caller[from..to].to_vec())
}

/// `voice-kraliki loadgen [options]`.
pub fn run(args: &[&str]) -> ExitCode {
    ExitCode::from(run_code(args))
}

/// [`run`], with the exit code as a number: 0 every call succeeded, 1 some failed, 2 bad usage.
pub fn run_code(args: &[&str]) -> u8 {
    let mut options = Options {
        url: std::env::var("VOICE_KRALIKI_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into()),
        key: String::new(),
        calls: 10,
        turns: 2,
        ramp: Duration::from_secs(2),
        utterance: Arc::new(Vec::new()),
        metrics: Vec::new(),
        media_retries: 0,
    };
    let mut audio_path = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else { return usage_code() };
        match *flag {
            "--calls" => match value.parse() {
                Ok(n) if n > 0 && n <= 10_000 => options.calls = n,
                _ => return usage_code(),
            },
            "--turns" => match value.parse() {
                Ok(n) if n > 0 && n <= 100 => options.turns = n,
                _ => return usage_code(),
            },
            "--ramp-seconds" => match value.parse::<f64>() {
                Ok(s) if (0.0..=600.0).contains(&s) => options.ramp = Duration::from_secs_f64(s),
                _ => return usage_code(),
            },
            "--audio" => audio_path = Some(value.to_string()),
            "--url" => options.url = value.to_string(),
            "--key" => options.key = value.to_string(),
            "--metrics" => options.metrics.push(value.to_string()),
            _ => return usage_code(),
        }
    }
    options.url = options.url.trim_end_matches('/').to_string();
    if options.metrics.is_empty() {
        options.metrics.push(format!("{}/metrics", options.url));
    }
    let Some(key) = Some(options.key.clone()).filter(|k| !k.is_empty()).or_else(crate::api_key) else {
        eprintln!("loadgen: no API key: set VOICE_KRALIKI_API_KEY, or start the stack with `make run` here");
        return 2;
    };
    options.key = key;
    let wav = match &audio_path {
        Some(p) => match std::fs::read(p) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("loadgen: read {p}: {e}");
                return 2;
            }
        },
        None => RECORDING.to_vec(),
    };
    match utterance(&wav) {
        Ok(u) => options.utterance = Arc::new(u),
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 2;
        }
    }
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return 1;
    };
    let report = runtime.block_on(load(options));
    print!("{}", report.table);
    u8::from(report.failed)
}

/// What one call saw.
#[derive(Debug, Default)]
pub struct CallResult {
    pub id: Option<String>,
    pub error: Option<String>,
    /// Caller-side latency per turn.
    pub latencies: Vec<Duration>,
    /// Gaps between consecutive reply frames within a reply.
    pub gaps: Vec<Duration>,
    pub frames: usize,
    /// How late our own frames went out (load generator health).
    pub send_lateness: Vec<Duration>,
    pub turns_without_reply: usize,
    /// The close code of the server's close frame (None: the connection ended without one).
    pub close_code: Option<u16>,
    /// Media connections refused with 503 and tried again.
    pub media_refusals: u32,
}

pub struct Report {
    pub table: String,
    pub failed: bool,
}

/// Shared view of the reply frames of one call.
#[derive(Default)]
struct Inbox {
    frames: Vec<Instant>,
    closed: bool,
    /// The code of the server's close frame, once one came.
    close_code: Option<u16>,
}

/// One simulated call.
pub async fn one_call(o: Options, http: reqwest::Client) -> CallResult {
    let mut result = CallResult::default();
    if let Err(e) = talk(&o, &http, &mut result).await {
        result.error = Some(e);
    }
    result
}

async fn talk(o: &Options, http: &reqwest::Client, r: &mut CallResult) -> Result<(), String> {
    let created: Value = http
        .post(format!("{}/v1/calls", o.url))
        .bearer_auth(&o.key)
        .json(&json!({"provider": "websocket", "from": "+14155550100", "to": "+14155550199", "direction": "inbound",
                       "metadata": {"source": "voice-kraliki loadgen"}}))
        .send()
        .await
        .map_err(|e| format!("create call: {e}"))?
        .json()
        .await
        .map_err(|e| format!("create call: {e}"))?;
    let id = created["id"].as_str().ok_or_else(|| format!("create call: {created}"))?.to_string();
    r.id = Some(id.clone());
    let media_url = created["media_url"].as_str().ok_or("no media_url")?;
    // The media URL names the public host; a load test talks to the URL it was given.
    let path = media_url.split_once("/v1/").map(|(_, p)| p).ok_or("bad media_url")?;
    let ws_base = o.url.replacen("http", "ws", 1);
    let ws = loop {
        match tokio_tungstenite::connect_async(format!("{ws_base}/v1/{path}")).await {
            Ok((ws, _)) => break ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(refused))
                if refused.status() == 503 && r.media_refusals < o.media_retries =>
            {
                r.media_refusals += 1;
                let wait = refused
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok())
                    .unwrap_or(1.0)
                    .clamp(0.05, 2.0);
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            Err(e) => return Err(format!("media websocket: {e}")),
        }
    };
    let (mut sink, mut stream) = ws.split();
    let inbox: Arc<Mutex<Inbox>> = Arc::default();
    let reader_inbox = inbox.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) if text.contains("\"media\"") => {
                    reader_inbox.lock().expect("inbox").frames.push(Instant::now());
                }
                Message::Close(frame) => {
                    reader_inbox.lock().expect("inbox").close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
                _ => {}
            }
        }
        reader_inbox.lock().expect("inbox").closed = true;
    });
    let result: Result<(), String> = async {
        for m in carrier_start(&id) {
            sink.send(m).await.map_err(|e| e.to_string())?;
        }
        let send = |v: Value| Message::text(v.to_string());
        let silence = [0xFFu8; 160];
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let (mut seq, mut media_ms) = (1u64, 0u64);
        let mut frame =
            async |sink: &mut futures_util::stream::SplitSink<_, Message>, payload: &[u8], r: &mut CallResult| {
                let scheduled = tick.tick().await;
                r.send_lateness.push(tokio::time::Instant::now().saturating_duration_since(scheduled));
                seq += 1;
                let m = json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": "MZ",
                           "media": {"track": "inbound", "chunk": seq.to_string(), "timestamp": media_ms.to_string(),
                                     "payload": STANDARD.encode(payload)}});
                media_ms += 20;
                sink.send(Message::text(m.to_string())).await.map_err(|e| format!("send: {e}"))
            };
        for _turn in 0..o.turns {
            let before = inbox.lock().expect("inbox").frames.len();
            for chunk in o.utterance.chunks(160) {
                frame(&mut sink, chunk, r).await?;
            }
            let speech_end = Instant::now();
            // Silence while the agent answers, as a phone line would carry.
            loop {
                frame(&mut sink, &silence, r).await?;
                let (first, last, count, closed) = {
                    let inbox = inbox.lock().expect("inbox");
                    let reply = &inbox.frames[before.min(inbox.frames.len())..];
                    (reply.first().copied(), reply.last().copied(), reply.len(), inbox.closed)
                };
                if closed {
                    return Err("the server closed the media connection".into());
                }
                match (first, last) {
                    (None, _) if speech_end.elapsed() > TURN_TIMEOUT => {
                        r.turns_without_reply += 1;
                        break;
                    }
                    (Some(first), Some(last)) if last.elapsed() > REPLY_QUIET || first.elapsed() > LISTEN_MAX => {
                        r.latencies.push(first.saturating_duration_since(speech_end));
                        let inbox = inbox.lock().expect("inbox");
                        let reply = &inbox.frames[before..before + count];
                        r.gaps.extend(reply.windows(2).map(|w| w[1] - w[0]));
                        r.frames += count;
                        break;
                    }
                    _ => {}
                }
            }
        }
        sink.send(send(
            json!({"event": "stop", "sequenceNumber": (seq + 1).to_string(), "streamSid": "MZ", "stop": {}}),
        ))
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }
    .await;
    // The reader ends with the connection: after `stop` the server closes it; after an error it
    // is closing or gone already.
    let wait = if result.is_ok() { Duration::from_secs(5) } else { Duration::from_secs(1) };
    let _ = tokio::time::timeout(wait, reader).await;
    r.close_code = inbox.lock().expect("inbox").close_code;
    result
}

async fn rss(http: &reqwest::Client, url: &str) -> Option<f64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")?.trim().parse().ok())
}

fn pct(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn load(o: Options) -> Report {
    telemetry::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client");
    let mut rss_start = BTreeMap::new();
    for url in &o.metrics {
        if let Some(v) = rss(&http, url).await {
            rss_start.insert(url.clone(), v);
        }
    }
    let peak: Arc<Mutex<BTreeMap<String, f64>>> = Arc::new(Mutex::new(rss_start.clone()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.calls);
    for i in 0..o.calls {
        let delay = o.ramp.mul_f64(i as f64 / o.calls as f64);
        let (o2, http2, done2) = (o.clone(), http.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let r = one_call(o2, http2).await;
            done2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r
        }));
    }
    // Progress and memory, every second, until every call is done.
    let monitor = {
        let (http, urls, peak, done, calls) = (http.clone(), o.metrics.clone(), peak.clone(), done.clone(), o.calls);
        tokio::spawn(async move {
            let mut last_print = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for url in &urls {
                    if let Some(v) = rss(&http, url).await {
                        let mut p = peak.lock().expect("peak");
                        let e = p.entry(url.clone()).or_insert(v);
                        *e = e.max(v);
                    }
                }
                let finished = done.load(std::sync::atomic::Ordering::Relaxed);
                if last_print.elapsed() >= Duration::from_secs(5) {
                    eprintln!("loadgen: {:>5.0} s  calls done {finished}/{calls}", started.elapsed().as_secs_f64());
                    last_print = Instant::now();
                }
                if finished == calls {
                    return;
                }
            }
        })
    };
    let mut results = Vec::with_capacity(o.calls);
    for t in tasks {
        results
            .push(t.await.unwrap_or_else(|e| CallResult { error: Some(format!("task: {e}")), ..Default::default() }));
    }
    monitor.abort();
    let elapsed = started.elapsed();

    // The server's stages of every turn.
    let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in &results {
        let Some(id) = &r.id else { continue };
        let Ok(response) = http.get(format!("{}/v1/calls/{id}/turns", o.url)).bearer_auth(&o.key).send().await else {
            continue;
        };
        let Ok(turns) = response.json::<Value>().await else { continue };
        for turn in turns["turns"].as_array().into_iter().flatten() {
            if let Some(latency) = turn["latency"].as_object() {
                for (stage, v) in latency {
                    if let Some(v) = v.as_f64() {
                        stages.entry(stage.clone()).or_default().push(v * 1000.0);
                    }
                }
            }
        }
    }
    let failed_calls = results.iter().filter(|r| r.error.is_some()).count();
    let no_reply: usize = results.iter().map(|r| r.turns_without_reply).sum();
    let mut latencies: Vec<f64> = results.iter().flat_map(|r| r.latencies.iter().map(ms)).collect();
    let mut gaps: Vec<f64> = results.iter().flat_map(|r| r.gaps.iter().map(ms)).collect();
    let late = gaps.iter().filter(|g| **g > 40.0).count();
    let frames: usize = results.iter().map(|r| r.frames).sum();
    let mut lateness: Vec<f64> = results.iter().flat_map(|r| r.send_lateness.iter().map(ms)).collect();

    let mut t = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        t,
        "loadgen: {} calls x {} turns against {} in {:.1} s (utterance {:.1} s)",
        o.calls,
        o.turns,
        o.url,
        elapsed.as_secs_f64(),
        o.utterance.len() as f64 / 8000.0
    );
    let _ = writeln!(
        t,
        "calls: {} ok, {failed_calls} failed; turns: {} answered, {no_reply} without reply",
        o.calls - failed_calls,
        latencies.len()
    );
    let _ = writeln!(t, "{:<44} {:>9} {:>9} {:>9}", "ms", "p50", "p95", "p99");
    let row = |t: &mut String, name: &str, v: &mut Vec<f64>| {
        let _ = writeln!(t, "{name:<44} {:>9.1} {:>9.1} {:>9.1}", pct(v, 0.5), pct(v, 0.95), pct(v, 0.99));
    };
    row(&mut t, "turn latency, caller side (speech end → audio)", &mut latencies);
    for stage in ["end_of_turn", "stt", "llm_first_token", "llm_first_sentence", "tts_first_byte", "overhead", "total"]
    {
        if let Some(v) = stages.get_mut(stage) {
            row(&mut t, &format!("  server stage {stage}"), v);
        }
    }
    row(&mut t, "reply frame inter-arrival", &mut gaps);
    row(&mut t, "loadgen frame send lateness", &mut lateness);
    let _ = writeln!(
        t,
        "reply frames: {frames}; late by more than one frame (gap > 40 ms): {late} ({:.2} %)",
        if gaps.is_empty() { 0.0 } else { late as f64 * 100.0 / gaps.len() as f64 }
    );
    let peak = peak.lock().expect("peak").clone();
    for (url, start) in &rss_start {
        let top = peak.get(url).copied().unwrap_or(*start);
        let _ = writeln!(
            t,
            "memory {url}: start {:.1} MiB, peak {:.1} MiB, {:.0} KiB per live call",
            start / 1048576.0,
            top / 1048576.0,
            (top - start).max(0.0) / 1024.0 / o.calls as f64
        );
    }
    for e in results.iter().filter_map(|r| r.error.as_deref()).take(10) {
        let _ = writeln!(t, "error: {e}");
    }
    Report { table: t, failed: failed_calls > 0 || no_reply > 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call-api stand-in: creates answer a media URL whose WebSocket is refused (503,
    /// `Retry-After: 0`) `refusals` times, then accepted and closed with 1001 after `start`.
    async fn refusing_server(refusals: usize) -> String {
        use axum::{
            Json, Router,
            extract::ws::{CloseFrame, Message as WsMessage, WebSocketUpgrade},
            http::StatusCode,
            response::IntoResponse,
            routing::{get, post},
        };
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/v1/calls",
                post(|| async {
                    Json(json!({"id": "c1", "media_url": "wss://public.example/v1/calls/c1/media?token=t"}))
                }),
            )
            .route(
                "/v1/calls/c1/media",
                get(move |ws: WebSocketUpgrade| async move {
                    if refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < refusals {
                        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")], "draining").into_response();
                    }
                    ws.on_upgrade(|mut socket| async move {
                        // `connected` and `start`, then the server goes away.
                        for _ in 0..2 {
                            let _ = socket.recv().await;
                        }
                        let frame = CloseFrame { code: 1001, reason: "going away".into() };
                        let _ = socket.send(WsMessage::Close(Some(frame))).await;
                    })
                    .into_response()
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn options(url: String, media_retries: u32) -> Options {
        Options {
            url,
            key: "k".into(),
            calls: 1,
            turns: 1,
            ramp: Duration::ZERO,
            utterance: Arc::new(vec![0xFF; 1600]),
            metrics: Vec::new(),
            media_retries,
        }
    }

    #[tokio::test]
    async fn a_refused_media_connection_is_tried_again_and_the_close_code_kept() {
        telemetry::install_crypto_provider();
        let http = reqwest::Client::new();
        let r = one_call(options(refusing_server(2).await, 3), http.clone()).await;
        assert_eq!(r.media_refusals, 2);
        assert!(r.error.is_some(), "the call was cut");
        assert_eq!(r.close_code, Some(1001), "{r:?}");
        let r = one_call(options(refusing_server(2).await, 1), http).await;
        assert_eq!(r.media_refusals, 1);
        assert!(r.error.as_deref().is_some_and(|e| e.starts_with("media websocket:") && e.contains("503")), "{r:?}");
    }

    #[test]
    fn the_shipped_recording_gives_the_callers_words() {
        let u = utterance(RECORDING).unwrap();
        let seconds = u.len() as f64 / 8000.0;
        assert!((3.0..5.0).contains(&seconds), "{seconds}");
        assert!(utterance(b"RIFF....WAVEjunk").is_err());
    }
}
