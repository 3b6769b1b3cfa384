//! `voice-kraliki loadgen` (also `drills loadgen`): simulates carriers. Each simulated call
//! creates a call, connects to its media WebSocket like Twilio does, and talks: a recorded
//! utterance in real-time 20 ms μ-law frames, then silence while the agent answers, for a
//! number of turns. It measures what a caller would: the time from the end of their speech to
//! the first reply frame, and how evenly the reply frames arrive; it also collects the server's
//! per-stage latency and outcome of each turn and the services' memory and CPU, and prints a
//! summary table.
//!
//! ```text
//! voice-kraliki loadgen [--calls N] [--turns T] [--ramp-seconds S] [--audio FILE.wav]
//!                       [--url URL] [--key KEY] [--metrics URL]... [--settle-seconds S]
//!                       [--allow-unavailable]
//! ```
//! `--audio` takes an 8 kHz μ-law WAV (mono, or stereo whose second channel is the caller);
//! the default is the caller's words of the shipped two-party recording. The API key is read
//! like `demo` does.
//!
//! Before the first call it reads `GET /v1/providers`: a live call needs speech-to-text, chat
//! and text-to-speech, each from at least one configured provider whose circuit is not open.
//! When one is missing it names the capability with the server's reasons and exits 2 without
//! calling; so does a failed request (no server, a wrong key). `--allow-unavailable` turns both
//! into a warning.
//!
//! While a turn's reply is late (1.5 s after the caller's speech ended) it reads the call's
//! turns every 500 ms; when the server has settled the newest caller turn as `failed` or
//! `no_speech`, it prints why at once and goes on to the next turn instead of waiting 30 s.
//! After each call it reads the call's turns once: the summary counts the caller turns by
//! outcome (`answered`, `interrupted`, `no_speech`, `failed`, `unknown` when the server gives
//! none) and the failed ones by stage with their most common reason.
//!
//! Each `--metrics` URL (default: the call-api's `/metrics`) is read every second for
//! `process_resident_memory_bytes` (start, peak, KiB per live call), and once more at each end
//! of the steady window — from the moment the last call connected to the moment the first call
//! ended, every call that connected being live throughout — for `process_cpu_seconds_total`:
//! the service's CPU per live call-second is Δcpu / (live calls × Δwall), in milliseconds, and
//! the summary sums it over the services. With `--settle-seconds S` it waits S seconds after the
//! calls ended and reads the memory once more. At both ends of the steady window it also reads
//! the machine's `cpuidle` counters (Linux): how often a CPU went idle in a state that is not a
//! poll — on a virtual machine a halt that leaves the guest, after which what runs next starts
//! with cold caches (docs/PERFORMANCE.md, "The machine's idle") — as entries a second, all CPUs
//! together. The summary's last line, `bench-row …`, repeats the headline numbers as
//! `key=value` fields for scripts ([`bench_row`]).
//!
//! Exit status: 0 every call and turn went through; 1 a call failed, a turn failed, or a turn
//! got no reply; 2 bad usage, no API key, or the provider check failed.

use std::{
    collections::BTreeMap,
    fmt,
    path::Path,
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
/// The media WebSocket's read buffer, as call-api's (a carrier's messages are a few hundred bytes).
pub const WS_READ_BUFFER: usize = 4096;
/// A turn without a first reply frame within this is an error.
const TURN_TIMEOUT: Duration = Duration::from_secs(30);
/// Reply audio is over when no frame came for this long.
const REPLY_QUIET: Duration = Duration::from_millis(600);
/// The caller listens to at most this much of a reply before speaking again (talking over the
/// rest, which exercises barge-in).
const LISTEN_MAX: Duration = Duration::from_secs(4);
/// A reply later than this after the caller's speech: read the call's turns to see whether the
/// server has given up on the turn.
const POLL_AFTER: Duration = Duration::from_millis(1500);
/// At most one read of a call's turns this often while a reply is late.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// What a live call needs, as `GET /v1/providers` names the capabilities.
pub const LIVE_CAPABILITIES: [&str; 3] = ["speech_to_text", "chat", "text_to_speech"];

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
    /// Follow the server's turn outcomes: while a reply is late, read the call's turns and stop
    /// waiting for a turn the server settled `failed` or `no_speech`; read the call's turns
    /// once at its end ([`CallResult::turns`]). The command sets it; the drills leave it off.
    pub turn_outcomes: bool,
    /// Event streams (`GET /v1/calls/{id}/events`) each call opens as soon as it exists and
    /// reads until its `call.ended` (0: none): the streams' fan-out under live load.
    pub watchers: usize,
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

/// A carrier's inbound `media` message: frame `seq` at media time `media_ms`. Written directly
/// (every field is digits or base64, nothing to escape) in one allocation of about its size:
/// built as a `serde_json::Value` and printed, each frame cost the load generator a map, six
/// strings and a reallocation, a tenth of its CPU at 500 calls, taken from the services it
/// shares the machine with.
pub fn media_message(seq: u64, media_ms: u64, payload: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut m = String::with_capacity(150 + payload.len().div_ceil(3) * 4);
    let _ = write!(
        m,
        r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":"MZ","media":{{"track":"inbound","chunk":"{seq}","timestamp":"{media_ms}","payload":""#
    );
    STANDARD.encode_string(payload, &mut m);
    m.push_str(r#""}}"#);
    m
}

const USAGE: &str = "usage: voice-kraliki loadgen [--calls N] [--turns T] [--ramp-seconds S] [--audio FILE.wav] [--url URL] [--key KEY] [--metrics URL]... [--settle-seconds S] [--watchers K] [--allow-unavailable]";

fn usage_code() -> u8 {
    eprintln!("{USAGE}");
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

/// [`run`], with the exit code as a number: 0 every call and turn went through, 1 some failed,
/// 2 bad usage or a failed provider check.
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
        turn_outcomes: true,
        watchers: 0,
    };
    let mut audio_path = None;
    let mut allow_unavailable = false;
    let mut settle = Duration::ZERO;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match *flag {
            "--allow-unavailable" => {
                allow_unavailable = true;
                continue;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return 0;
            }
            _ => {}
        }
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
            "--watchers" => match value.parse() {
                Ok(n) if n <= 1000 => options.watchers = n,
                _ => return usage_code(),
            },
            "--settle-seconds" => match value.parse::<f64>() {
                Ok(s) if (0.0..=3600.0).contains(&s) => settle = Duration::from_secs_f64(s),
                _ => return usage_code(),
            },
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
    runtime.block_on(async {
        let problems = match check_providers(&options).await {
            Ok(missing) => missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
            Err(e) => vec![format!("cannot check the providers: {e}")],
        };
        if !problems.is_empty() {
            if !allow_unavailable {
                for p in &problems {
                    eprintln!("loadgen: {p}");
                }
                eprintln!("loadgen: no call started (--allow-unavailable starts them anyway)");
                return 2;
            }
            for p in &problems {
                eprintln!("loadgen: warning: {p}");
            }
            eprintln!("loadgen: starting the calls anyway (--allow-unavailable)");
        }
        let report = load(options, settle).await;
        print!("{}", report.table);
        u8::from(report.failed)
    })
}

/// A transport error with its causes (reqwest's own text names only the URL).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `GET {url}/v1/providers`: the live-call capabilities no provider serves now, or why the
/// server could not be asked.
async fn check_providers(o: &Options) -> Result<Vec<Unavailable>, String> {
    telemetry::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let url = format!("{}/v1/providers", o.url);
    let response =
        http.get(&url).bearer_auth(&o.key).send().await.map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let why = body["error"]["message"].as_str().map(|m| format!(": {m}")).unwrap_or_default();
        return Err(format!("GET {url} answered {status}{why}"));
    }
    unavailable_capabilities(&body).map_err(|e| format!("GET {url}: {e}"))
}

/// A capability of a live call that no provider serves now, with the server's reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// `speech_to_text`, `chat` or `text_to_speech`.
    pub capability: String,
    /// `name: why` per provider listed for it, in failover order (empty: none is listed).
    pub reasons: Vec<String>,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            write!(f, "live calls need {}, but the server lists no provider for it", self.capability)
        } else {
            write!(f, "live calls need {}, but no provider is available: {}", self.capability, self.reasons.join("; "))
        }
    }
}

/// From a `GET /v1/providers` answer, the capabilities of [`LIVE_CAPABILITIES`] without a
/// provider that is `configured` and whose `circuit_state` is not `open`. `Err` when the answer
/// is not a provider list.
pub fn unavailable_capabilities(body: &Value) -> Result<Vec<Unavailable>, String> {
    let providers = body["providers"].as_array().ok_or("the answer has no `providers` list")?;
    let mut missing = Vec::new();
    for capability in LIVE_CAPABILITIES {
        let mut rows: Vec<&Value> = providers.iter().filter(|p| p["capability"] == capability).collect();
        rows.sort_by_key(|p| p["priority"].as_u64().unwrap_or(u64::MAX));
        let usable = |p: &Value| p["configured"] == true && p["circuit_state"] != "open";
        if rows.iter().any(|p| usable(p)) {
            continue;
        }
        let reasons = rows
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("?");
                let why = if p["configured"] == true {
                    "circuit open (failing; tried again later)"
                } else {
                    p["reason"].as_str().filter(|r| !r.is_empty()).unwrap_or("not configured")
                };
                format!("{name}: {why}")
            })
            .collect();
        missing.push(Unavailable { capability: capability.to_string(), reasons });
    }
    Ok(missing)
}

/// The turns of a `GET /v1/calls/{id}/turns` answer (`{"turns": [...]}`, or a bare array).
fn turn_list(body: &Value) -> &[Value] {
    body.get("turns").unwrap_or(body).as_array().map_or(&[], Vec::as_slice)
}

/// A caller's turn: `role` `caller` (or, without a role, an odd `seq`).
fn is_caller(turn: &Value) -> bool {
    match turn["role"].as_str() {
        Some(role) => role == "caller",
        None => turn["seq"].as_i64().is_some_and(|s| s % 2 == 1),
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// A caller turn the server gave up on: outcome `failed` (with the stage) or `no_speech`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledTurn {
    pub seq: i64,
    pub outcome: String,
    pub stage: Option<String>,
    pub reason: Option<String>,
}

impl fmt::Display for SettledTurn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.outcome)?;
        if let Some(stage) = &self.stage {
            write!(f, " at {stage}")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

/// The newest caller turn after `after_seq` in a turns answer, when the server has settled it
/// as `failed` or `no_speech`; `None` while it is in progress, went through, or does not exist.
pub fn settled_turn(body: &Value, after_seq: i64) -> Option<SettledTurn> {
    let newest = turn_list(body)
        .iter()
        .filter(|t| is_caller(t))
        .filter_map(|t| Some((t["seq"].as_i64()?, t)))
        .filter(|(seq, _)| *seq > after_seq)
        .max_by_key(|(seq, _)| *seq)?;
    let (seq, turn) = newest;
    let outcome = turn["outcome"].as_str().filter(|o| matches!(*o, "failed" | "no_speech"))?;
    Some(SettledTurn { seq, outcome: outcome.to_string(), stage: text(&turn["stage"]), reason: text(&turn["reason"]) })
}

/// Caller turns counted by the server's outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TurnOutcomes {
    pub answered: usize,
    pub interrupted: usize,
    pub no_speech: usize,
    pub failed: usize,
    /// No outcome (still in progress when read, or a server that does not report one).
    pub unknown: usize,
    /// `(stage, reason)` of each failed turn.
    pub failures: Vec<(String, String)>,
}

impl TurnOutcomes {
    /// The caller turns of a `GET /v1/calls/{id}/turns` answer.
    pub fn count(body: &Value) -> Self {
        let mut out = Self::default();
        for turn in turn_list(body).iter().filter(|t| is_caller(t)) {
            match turn["outcome"].as_str() {
                Some("answered") => out.answered += 1,
                Some("interrupted") => out.interrupted += 1,
                Some("no_speech") => out.no_speech += 1,
                Some("failed") => {
                    out.failed += 1;
                    out.failures.push((
                        text(&turn["stage"]).unwrap_or_else(|| "unknown".into()),
                        text(&turn["reason"]).unwrap_or_else(|| "no reason given".into()),
                    ));
                }
                _ => out.unknown += 1,
            }
        }
        out
    }

    pub fn add(&mut self, other: &Self) {
        self.answered += other.answered;
        self.interrupted += other.interrupted;
        self.no_speech += other.no_speech;
        self.failed += other.failed;
        self.unknown += other.unknown;
        self.failures.extend(other.failures.iter().cloned());
    }

    /// Failed turns per stage, most first: `(stage, count, most common reason)`.
    pub fn failed_by_stage(&self) -> Vec<(String, usize, String)> {
        let mut stages: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        for (stage, reason) in &self.failures {
            *stages.entry(stage).or_default().entry(reason).or_insert(0) += 1;
        }
        let mut out: Vec<(String, usize, String)> = stages
            .into_iter()
            .map(|(stage, reasons)| {
                let total = reasons.values().sum();
                // The most common reason; the first in order among equals.
                let top = reasons.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map_or("", |(r, _)| r);
                (stage.to_string(), total, top.to_string())
            })
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// What one call saw.
#[derive(Debug, Default)]
pub struct CallResult {
    pub id: Option<String>,
    pub error: Option<String>,
    /// Caller-side latency per turn that got a reply.
    pub latencies: Vec<Duration>,
    /// Gaps between consecutive reply frames within a reply.
    pub gaps: Vec<Duration>,
    pub frames: usize,
    /// How late our own frames went out (load generator health).
    pub send_lateness: Vec<Duration>,
    /// Turns that got no reply audio (timed out, or settled early: [`CallResult::settled_early`]).
    pub turns_without_reply: usize,
    /// Turns not waited for to the end: the server had settled them `failed` or `no_speech`
    /// while their reply was late (with [`Options::turn_outcomes`]).
    pub settled_early: Vec<SettledTurn>,
    /// The call's turns as `GET /v1/calls/{id}/turns` answered at its end (with
    /// [`Options::turn_outcomes`]; `None` when they could not be read).
    pub turns: Option<Value>,
    /// The close code of the server's close frame (None: the connection ended without one).
    pub close_code: Option<u16>,
    /// Media connections refused with 503 and tried again.
    pub media_refusals: u32,
    /// What each of its event streams received ([`Options::watchers`]).
    pub streams: Vec<StreamResult>,
}

/// What one event stream of a call received.
#[derive(Debug, Default, Clone)]
pub struct StreamResult {
    /// Events received (past and new).
    pub events: usize,
    /// For events written after the stream opened: from the event's `timestamp` to its arrival.
    pub delays: Vec<Duration>,
    /// Whether `call.ended` arrived (then the stream was closed).
    pub ended: bool,
    pub error: Option<String>,
}

/// An HTTP client without a total deadline, for streams that last a whole call.
fn stream_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().expect("HTTP client")
        })
        .clone()
}

/// Reads call `id`'s event stream until `call.ended` (or `stop`).
async fn watch(url: String, key: String, stop: tokio_util::sync::CancellationToken) -> StreamResult {
    use futures_util::StreamExt as _;
    let mut r = StreamResult::default();
    let opened = chrono::Utc::now();
    let response = match stream_client().get(url).bearer_auth(key).header("accept", "text/event-stream").send().await {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => {
            r.error = Some(format!("event stream answered {}", resp.status()));
            return r;
        }
        Err(e) => {
            r.error = Some(format!("event stream: {}", error_chain(&e)));
            return r;
        }
    };
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => return r,
            c = body.next() => c,
        };
        match chunk {
            Some(Ok(bytes)) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            Some(Err(e)) => {
                r.error = Some(format!("event stream: {}", error_chain(&e)));
                return r;
            }
            None => {
                r.error = Some("the event stream ended before call.ended".into());
                return r;
            }
        }
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
            let Ok(event) = serde_json::from_str::<Value>(data.trim_start()) else { continue };
            let arrived = chrono::Utc::now();
            r.events += 1;
            if let Some(at) = event["timestamp"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                && at >= opened
            {
                r.delays.push((arrived - at.with_timezone(&chrono::Utc)).to_std().unwrap_or_default());
            }
            if event["type"] == "call.ended" {
                r.ended = true;
                return r;
            }
        }
    }
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
    /// Marks the server sent that are not echoed yet: a carrier echoes each once the audio
    /// before it has played, and the frames arrive paced, so on the next frame sent.
    marks: Vec<String>,
}

/// What a call tells the run's monitor (for the steady window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiveEvent {
    /// Its media connection is open: the call is live.
    Connected,
    /// It ended without ever being live.
    NeverConnected,
    /// It was live and has ended (sent `stop`, or failed).
    Ended,
}

/// Sends a call's [`LiveEvent`]s, each once, however the call ends.
struct LiveReport {
    tx: Option<tokio::sync::mpsc::UnboundedSender<LiveEvent>>,
    connected: bool,
    finished: bool,
}

impl LiveReport {
    fn new(tx: Option<tokio::sync::mpsc::UnboundedSender<LiveEvent>>) -> Self {
        Self { tx, connected: false, finished: false }
    }

    fn send(&self, event: LiveEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }

    fn connected(&mut self) {
        if !self.connected && !self.finished {
            self.connected = true;
            self.send(LiveEvent::Connected);
        }
    }

    /// The call is over: `Ended` if it was live, `NeverConnected` otherwise.
    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.send(if self.connected { LiveEvent::Ended } else { LiveEvent::NeverConnected });
        }
    }
}

impl Drop for LiveReport {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One simulated call (no progress lines).
pub async fn one_call(o: Options, http: reqwest::Client) -> CallResult {
    call(o, http, None, LiveReport::new(None)).await
}

/// One simulated call; `number` (from 1) names it in the lines printed as turns settle.
async fn call(o: Options, http: reqwest::Client, number: Option<usize>, mut live: LiveReport) -> CallResult {
    let mut result = CallResult::default();
    let mut watchers = Vec::new();
    let stop_watching = tokio_util::sync::CancellationToken::new();
    if let Err(e) = talk(&o, &http, &mut result, number, &mut live, &mut watchers, &stop_watching).await {
        result.error = Some(e);
    }
    live.finish();
    // The streams end at `call.ended`; one that has not seen it 10 s after the hang-up is stopped.
    let cancel = stop_watching.clone();
    let deadline = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        cancel.cancel();
    });
    for w in watchers {
        result
            .streams
            .push(w.await.unwrap_or_else(|e| StreamResult { error: Some(e.to_string()), ..Default::default() }));
    }
    deadline.abort();
    if o.turn_outcomes
        && let Some(id) = &result.id
    {
        // A turn cut by the hang-up is stored as its session stops, just after the call ended:
        // read again (for up to 3 s) while a caller turn has no outcome yet.
        let url = format!("{}/v1/calls/{id}/turns", o.url);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            result.turns = read_turns(http.clone(), url.clone(), o.key.clone()).await;
            let pending = result.turns.as_ref().is_some_and(|body| {
                turn_list(body).iter().any(|t| t["role"] == "caller" && t.get("outcome").is_some_and(Value::is_null))
            });
            if !pending || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    result
}

/// `GET …/turns`, `None` on any failure.
async fn read_turns(http: reqwest::Client, url: String, key: String) -> Option<Value> {
    let response = http.get(url).bearer_auth(key).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

async fn talk(
    o: &Options,
    http: &reqwest::Client,
    r: &mut CallResult,
    number: Option<usize>,
    live: &mut LiveReport,
    watchers: &mut Vec<tokio::task::JoinHandle<StreamResult>>,
    stop_watching: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
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
    for _ in 0..o.watchers {
        let url = format!("{}/v1/calls/{id}/events", o.url);
        watchers.push(tokio::spawn(watch(url, o.key.clone(), stop_watching.clone())));
    }
    let turns_url = format!("{}/v1/calls/{id}/turns", o.url);
    let media_url = created["media_url"].as_str().ok_or("no media_url")?;
    // The media URL names the public host; a load test talks to the URL it was given.
    let path = media_url.split_once("/v1/").map(|(_, p)| p).ok_or("bad media_url")?;
    let ws_base = o.url.replacen("http", "ws", 1);
    // A carrier's messages are a few hundred bytes. tungstenite zero-fills its read buffer's
    // free space before every read: with the default 128 KiB that memset was 11 % of the load
    // generator's CPU, taken from the services it shares the machine with.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER);
    let ws = loop {
        match tokio_tungstenite::connect_async_with_config(format!("{ws_base}/v1/{path}"), Some(config), false).await {
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
    live.connected();
    let (mut sink, mut stream) = ws.split();
    let inbox: Arc<Mutex<Inbox>> = Arc::default();
    let reader_inbox = inbox.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) if text.contains("\"media\"") => {
                    reader_inbox.lock().expect("inbox").frames.push(Instant::now());
                }
                Message::Text(text) if text.contains("\"mark\"") => {
                    let name = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
                        (v["event"] == "mark").then(|| v["mark"]["name"].as_str().map(str::to_string)).flatten()
                    });
                    if let Some(name) = name {
                        reader_inbox.lock().expect("inbox").marks.push(name);
                    }
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
        let echoes = inbox.clone();
        let mut frame =
            async |sink: &mut futures_util::stream::SplitSink<_, Message>, payload: &[u8], r: &mut CallResult| {
                let scheduled = tick.tick().await;
                r.send_lateness.push(tokio::time::Instant::now().saturating_duration_since(scheduled));
                let marks = std::mem::take(&mut echoes.lock().expect("inbox").marks);
                for name in marks {
                    seq += 1;
                    let m = json!({"event": "mark", "sequenceNumber": seq.to_string(), "streamSid": "MZ",
                                   "mark": {"name": name}});
                    sink.send(Message::text(m.to_string())).await.map_err(|e| format!("send: {e}"))?;
                }
                seq += 1;
                let m = media_message(seq, media_ms, payload);
                media_ms += 20;
                sink.send(Message::text(m)).await.map_err(|e| format!("send: {e}"))
            };
        // The newest caller turn already accounted for: a settled turn is looked for after it.
        let mut settled_seq = 0i64;
        for turn in 0..o.turns {
            for chunk in o.utterance.chunks(160) {
                frame(&mut sink, chunk, r).await?;
            }
            let speech_end = Instant::now();
            // The reply is what arrives after the caller stopped speaking: the rest of the
            // previous reply, talked over, is not it.
            let before = inbox.lock().expect("inbox").frames.len();
            // This turn's caller turns are seq 2·turn + 1 or later (caller turns are odd).
            let after_seq = settled_seq.max(2 * turn as i64);
            // A read of the call's turns in flight, off the 20 ms frame loop.
            let mut poll: Option<tokio::task::JoinHandle<Option<Value>>> = None;
            let mut polled_at: Option<Instant> = None;
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
                    (None, _) => {
                        if o.turn_outcomes && speech_end.elapsed() >= POLL_AFTER {
                            if let Some(done) = poll.take_if(|p| p.is_finished()) {
                                let body = done.await.ok().flatten();
                                if let Some(settled) = body.as_ref().and_then(|b| settled_turn(b, after_seq)) {
                                    if let Some(n) = number {
                                        eprintln!("loadgen: call {n} turn {}: {settled}", turn + 1);
                                    }
                                    settled_seq = settled.seq;
                                    r.settled_early.push(settled);
                                    r.turns_without_reply += 1;
                                    break;
                                }
                            }
                            if poll.is_none() && polled_at.is_none_or(|t| t.elapsed() >= POLL_EVERY) {
                                polled_at = Some(Instant::now());
                                poll = Some(tokio::spawn(read_turns(http.clone(), turns_url.clone(), o.key.clone())));
                            }
                        }
                        if speech_end.elapsed() > TURN_TIMEOUT {
                            r.turns_without_reply += 1;
                            break;
                        }
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
            if let Some(p) = poll {
                p.abort();
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
    // Live no more: `stop` is sent, or the call failed.
    live.finish();
    // The reader ends with the connection: after `stop` the server closes it; after an error it
    // is closing or gone already.
    let wait = if result.is_ok() { Duration::from_secs(5) } else { Duration::from_secs(1) };
    let _ = tokio::time::timeout(wait, reader).await;
    r.close_code = inbox.lock().expect("inbox").close_code;
    result
}

/// The value of metric `name` in a Prometheus text exposition: the sum of its samples over
/// every label set, `None` when it has none. Comments (`# HELP`, `# TYPE`) and other metrics —
/// longer names starting with `name` too — are skipped, and so is a sample's timestamp.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in body.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            // The label set ends at the first `}` outside a quoted value.
            let (mut quoted, mut escaped, mut end) = (false, false, None);
            for (i, c) in labels.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else { continue };
            &labels[end + 1..]
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            continue;
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        *total.get_or_insert(0.0) += value;
    }
    total
}

/// One read of a service's `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scrape {
    /// When, since the run started: the middle of the request.
    pub at: Duration,
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: Option<f64>,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: Option<f64>,
}

/// Milliseconds of CPU per live call-second between two scrapes of one service, `calls` calls
/// live throughout: Δ`process_cpu_seconds_total` × 1000 / (calls × Δwall). `None` without
/// both counter values, without time between the scrapes or without calls, and when the
/// counter went back (the service restarted).
pub fn cpu_ms_per_call_second(start: &Scrape, end: &Scrape, calls: usize) -> Option<f64> {
    let cpu = end.cpu_seconds? - start.cpu_seconds?;
    let wall = end.at.checked_sub(start.at)?.as_secs_f64();
    if calls == 0 || wall <= 0.0 || cpu < 0.0 {
        return None;
    }
    Some(cpu * 1000.0 / (calls as f64 * wall))
}

async fn scrape(http: &reqwest::Client, url: &str, started: Instant) -> Option<Scrape> {
    let sent = Instant::now();
    let text = http.get(url).send().await.ok()?.error_for_status().ok()?.text().await.ok()?;
    let at = (sent + sent.elapsed() / 2).saturating_duration_since(started);
    Some(Scrape {
        at,
        cpu_seconds: metric_value(&text, "process_cpu_seconds_total"),
        rss_bytes: metric_value(&text, "process_resident_memory_bytes"),
    })
}

/// Every URL at once, in order.
async fn scrape_all(http: &reqwest::Client, urls: &[String], started: Instant) -> Vec<Option<Scrape>> {
    futures_util::future::join_all(urls.iter().map(|u| scrape(http, u, started))).await
}

/// What one `--metrics` URL said during a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceUse {
    pub url: String,
    /// Resident memory before the first call, in bytes.
    pub rss_start: Option<f64>,
    /// The most resident memory seen during the run.
    pub rss_peak: Option<f64>,
    /// Resident memory `--settle-seconds` after the calls ended.
    pub rss_after: Option<f64>,
    /// The scrapes at the start and end of the steady window.
    pub steady_start: Option<Scrape>,
    pub steady_end: Option<Scrape>,
}

impl ServiceUse {
    /// [`cpu_ms_per_call_second`] over the steady window.
    pub fn cpu_ms_per_call_second(&self, calls: usize) -> Option<f64> {
        cpu_ms_per_call_second(self.steady_start.as_ref()?, self.steady_end.as_ref()?, calls)
    }

    /// The steady window as this service's scrapes saw it, in seconds.
    pub fn steady_seconds(&self) -> Option<f64> {
        Some(self.steady_end?.at.checked_sub(self.steady_start?.at)?.as_secs_f64())
    }

    /// (peak − start) resident memory per call, in KiB.
    pub fn kib_per_call(&self, calls: usize) -> Option<f64> {
        let start = self.rss_start?;
        Some((self.rss_peak.unwrap_or(start) - start).max(0.0) / 1024.0 / calls.max(1) as f64)
    }
}

/// Where Linux keeps each CPU's `cpuidle` counters.
pub const CPU_SYSFS: &str = "/sys/devices/system/cpu";

/// How many times the machine's CPUs entered an idle state other than polling since boot,
/// summed over the CPUs: each `cpuN/cpuidle/stateK/usage` under `root` ([`CPU_SYSFS`]) whose
/// `name` is not `POLL`. On a virtual machine such an entry is a halt that leaves the guest.
/// `None` where there are no such counters (no `cpuidle`, not Linux); a state whose files do
/// not read as expected is left out.
pub fn cpuidle_entries(root: &Path) -> Option<u64> {
    let mut total = None;
    for cpu in std::fs::read_dir(root).ok()?.flatten() {
        let name = cpu.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix("cpu")) else { continue };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(states) = std::fs::read_dir(cpu.path().join("cpuidle")) else { continue };
        for state in states.flatten() {
            if !state.file_name().to_str().is_some_and(|n| n.starts_with("state")) {
                continue;
            }
            let read = |file: &str| std::fs::read_to_string(state.path().join(file)).ok();
            let (Some(kind), Some(usage)) = (read("name"), read("usage")) else { continue };
            let Ok(usage) = usage.trim().parse::<u64>() else { continue };
            let counted = total.get_or_insert(0);
            if kind.trim() != "POLL" {
                *counted += usage;
            }
        }
    }
    total
}

/// [`cpuidle_entries`] read at a moment of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleCount {
    /// When, since the run started.
    pub at: Duration,
    pub entries: u64,
}

impl IdleCount {
    fn now(started: Instant) -> Option<Self> {
        Some(Self { at: started.elapsed(), entries: cpuidle_entries(Path::new(CPU_SYSFS))? })
    }
}

/// Idle-state entries a second between two counts (`None`: no time between them, or the
/// counter went back).
pub fn idle_entries_per_second(start: &IdleCount, end: &IdleCount) -> Option<f64> {
    let wall = end.at.checked_sub(start.at)?.as_secs_f64();
    let entries = end.entries.checked_sub(start.entries)?;
    (wall > 0.0).then(|| entries as f64 / wall)
}

/// What the services' `/metrics` said during a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// One per `--metrics` URL, in the order given.
    pub services: Vec<ServiceUse>,
    /// Calls live throughout the steady window: every call that connected, from the moment the
    /// last one connected to the moment the first one ended (0: there was no such window).
    pub steady_calls: usize,
    /// Why there was no steady window.
    pub no_steady: Option<String>,
    /// How long after the calls [`ServiceUse::rss_after`] was read (zero: it was not).
    pub settle: Duration,
    /// The machine's [`cpuidle_entries`] at the start and end of the steady window.
    pub idle_start: Option<IdleCount>,
    pub idle_end: Option<IdleCount>,
}

impl Resources {
    /// The machine's idle-state entries a second over the steady window.
    pub fn idle_entries_per_second(&self) -> Option<f64> {
        idle_entries_per_second(self.idle_start.as_ref()?, self.idle_end.as_ref()?)
    }
}

/// Tracks the calls' [`LiveEvent`]s: the steady window opens when every call has connected or
/// given up before connecting, and closes when the first live call ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct LiveCount {
    calls: usize,
    connected: usize,
    never_connected: usize,
    ended: usize,
}

impl LiveCount {
    fn new(calls: usize) -> Self {
        Self { calls, ..Self::default() }
    }

    /// Counts `event`; `Some(true)` when it opens the steady window, `Some(false)` when it
    /// closes it (the first call that ended), `None` otherwise.
    fn add(&mut self, event: LiveEvent) -> Option<bool> {
        match event {
            LiveEvent::Connected => self.connected += 1,
            LiveEvent::NeverConnected => self.never_connected += 1,
            LiveEvent::Ended => {
                self.ended += 1;
                return (self.ended == 1).then_some(false);
            }
        }
        let opens = self.ended == 0 && self.connected > 0 && self.connected + self.never_connected == self.calls;
        opens.then_some(true)
    }
}

/// Keeps the highest resident memory of each service.
fn note_peak(services: &mut [ServiceUse], scrapes: &[Option<Scrape>]) {
    for (s, scrape) in services.iter_mut().zip(scrapes) {
        if let Some(v) = scrape.and_then(|s| s.rss_bytes) {
            s.rss_peak = Some(s.rss_peak.map_or(v, |p| p.max(v)));
        }
    }
}

/// The run's monitor: memory every second, progress every 5 s, the steady window's scrapes;
/// until every call is over.
async fn monitor(
    http: reqwest::Client,
    urls: Vec<String>,
    calls: usize,
    started: Instant,
    done: Arc<std::sync::atomic::AtomicUsize>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<LiveEvent>,
    mut services: Vec<ServiceUse>,
) -> Resources {
    let mut count = LiveCount::new(calls);
    let mut steady_calls = 0;
    let (mut idle_start, mut idle_end) = (None, None);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            event = events.recv() => {
                // Every call is over once every sender is gone.
                let Some(event) = event else { break };
                match count.add(event) {
                    Some(true) => {
                        idle_start = IdleCount::now(started);
                        let scrapes = scrape_all(&http, &urls, started).await;
                        note_peak(&mut services, &scrapes);
                        for (s, scrape) in services.iter_mut().zip(&scrapes) {
                            s.steady_start = *scrape;
                        }
                        steady_calls = count.connected;
                    }
                    Some(false) if steady_calls > 0 => {
                        idle_end = IdleCount::now(started);
                        let scrapes = scrape_all(&http, &urls, started).await;
                        note_peak(&mut services, &scrapes);
                        for (s, scrape) in services.iter_mut().zip(&scrapes) {
                            s.steady_end = *scrape;
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let scrapes = scrape_all(&http, &urls, started).await;
                note_peak(&mut services, &scrapes);
                if last_print.elapsed() >= Duration::from_secs(5) {
                    let finished = done.load(std::sync::atomic::Ordering::Relaxed);
                    eprintln!("loadgen: {:>5.0} s  calls done {finished}/{calls}", started.elapsed().as_secs_f64());
                    last_print = Instant::now();
                }
            }
        }
    }
    let no_steady = if count.connected == 0 {
        Some("no call connected".to_string())
    } else if steady_calls == 0 {
        Some("a call ended before every call had connected (a ramp longer than a call?)".to_string())
    } else {
        None
    };
    Resources { services, steady_calls, no_steady, settle: Duration::ZERO, idle_start, idle_end }
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

/// The calls of `o`, then, with a non-zero `settle`, that long a wait and one more read of the
/// services' memory; the summary.
pub async fn load(o: Options, settle: Duration) -> Report {
    telemetry::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client");
    let services: Vec<ServiceUse> = scrape_all(&http, &o.metrics, Instant::now())
        .await
        .into_iter()
        .zip(&o.metrics)
        .map(|(scrape, url)| {
            let rss = scrape.and_then(|s| s.rss_bytes);
            ServiceUse { url: url.clone(), rss_start: rss, rss_peak: rss, ..ServiceUse::default() }
        })
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.calls);
    for i in 0..o.calls {
        let delay = o.ramp.mul_f64(i as f64 / o.calls as f64);
        let (o2, http2, done2, live) = (o.clone(), http.clone(), done.clone(), LiveReport::new(Some(tx.clone())));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let r = call(o2, http2, Some(i + 1), live).await;
            done2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r
        }));
    }
    drop(tx);
    let monitor = tokio::spawn(monitor(http.clone(), o.metrics.clone(), o.calls, started, done, events, services));
    let mut results = Vec::with_capacity(o.calls);
    for t in tasks {
        results
            .push(t.await.unwrap_or_else(|e| CallResult { error: Some(format!("task: {e}")), ..Default::default() }));
    }
    let elapsed = started.elapsed();
    let mut resources = monitor.await.expect("monitor");
    if !settle.is_zero() {
        eprintln!("loadgen: the calls are over; reading memory again in {:.0} s", settle.as_secs_f64());
        tokio::time::sleep(settle).await;
        let scrapes = scrape_all(&http, &o.metrics, started).await;
        for (s, scrape) in resources.services.iter_mut().zip(scrapes) {
            s.rss_after = scrape.and_then(|s| s.rss_bytes);
        }
        resources.settle = settle;
    }
    summarize(&o, &results, elapsed, &resources)
}

/// The headline numbers of a run, for [`bench_row`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchRow {
    pub calls: usize,
    pub failed_calls: usize,
    pub no_reply: usize,
    /// Reply frames late by more than one frame (gap > 40 ms), in percent of the gaps.
    pub late_pct: f64,
    /// Caller-side turn latency (NaN: no turn got a reply).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub steady_calls: usize,
    pub steady_s: Option<f64>,
    /// Per `--metrics` URL, in order (`None`: not measured).
    pub cpu_ms: Vec<Option<f64>>,
    pub kib_per_call: Vec<Option<f64>>,
    pub rss_start_mib: Vec<Option<f64>>,
    pub rss_after_mib: Vec<Option<f64>>,
    /// The machine's idle-state entries a second over the steady window.
    pub idle_per_s: Option<f64>,
}

/// One line of space-separated `key=value` fields, for scripts (`scripts/bench-live.sh`):
///
/// ```text
/// bench-row calls=100 failed_calls=0 no_reply=0 late_pct=0.05 p50_ms=812.0 p99_ms=880.4 p99_p50_ms=68.4
///   steady_calls=100 steady_s=7.9 cpu_ms=0.91,0.35,0.12 cpu_total_ms=1.38 kib_per_call=180,12,3
///   rss_start_mib=21.3,15.0,14.2 rss_after_mib=-,-,- idle_per_s=1620
/// ```
/// (on one line). The comma-separated lists have one value per `--metrics` URL, in the order
/// given; `-` is a value not measured (a NaN latency too). `cpu_ms` is milliseconds of CPU per
/// live call-second, `cpu_total_ms` their sum over the measured services, `kib_per_call` the
/// resident memory growth (peak − start) per call, `rss_after_mib` the resident memory
/// `--settle-seconds` after the calls, `idle_per_s` the machine's idle-state entries a second
/// over the steady window ([`cpuidle_entries`]).
pub fn bench_row(row: &BenchRow) -> String {
    let num = |v: Option<f64>, decimals: usize| match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_string(),
    };
    let list = |values: &[Option<f64>], decimals: usize| {
        if values.is_empty() {
            return "-".to_string();
        }
        values.iter().map(|v| num(*v, decimals)).collect::<Vec<_>>().join(",")
    };
    let measured: Vec<f64> = row.cpu_ms.iter().flatten().copied().collect();
    let total = (!measured.is_empty()).then(|| measured.iter().sum());
    format!(
        "bench-row calls={} failed_calls={} no_reply={} late_pct={:.2} p50_ms={} p99_ms={} p99_p50_ms={} steady_calls={} steady_s={} cpu_ms={} cpu_total_ms={} kib_per_call={} rss_start_mib={} rss_after_mib={} idle_per_s={}",
        row.calls,
        row.failed_calls,
        row.no_reply,
        row.late_pct,
        num(Some(row.p50_ms), 1),
        num(Some(row.p99_ms), 1),
        num(Some(row.p99_ms - row.p50_ms), 1),
        row.steady_calls,
        num(row.steady_s, 1),
        list(&row.cpu_ms, 2),
        num(total, 2),
        list(&row.kib_per_call, 0),
        list(&row.rss_start_mib, 1),
        list(&row.rss_after_mib, 1),
        num(row.idle_per_s, 0),
    )
}

/// The summary table of a run, and whether it failed: a call failed, a turn got no reply, or
/// the server settled a turn `failed`.
pub fn summarize(o: &Options, results: &[CallResult], elapsed: Duration, resources: &Resources) -> Report {
    // The server's stages and outcomes of every turn.
    let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut outcomes = TurnOutcomes::default();
    for turns in results.iter().filter_map(|r| r.turns.as_ref()) {
        outcomes.add(&TurnOutcomes::count(turns));
        for turn in turn_list(turns) {
            if let Some(latency) = turn["latency"].as_object() {
                for (stage, v) in latency {
                    if let Some(v) = v.as_f64() {
                        stages.entry(stage.clone()).or_default().push(v * 1000.0);
                    }
                }
            }
        }
    }
    let unread = results.iter().filter(|r| r.id.is_some() && r.turns.is_none()).count();
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
        results.len(),
        o.turns,
        o.url,
        elapsed.as_secs_f64(),
        o.utterance.len() as f64 / 8000.0
    );
    let _ = writeln!(
        t,
        "calls: {} ok, {failed_calls} failed; turns: {} with a reply, {no_reply} without reply",
        results.len() - failed_calls,
        latencies.len()
    );
    if o.watchers > 0 {
        let streams: Vec<&StreamResult> = results.iter().flat_map(|r| &r.streams).collect();
        let failed = streams.iter().filter(|s| s.error.is_some()).count();
        let unfinished = streams.iter().filter(|s| s.error.is_none() && !s.ended).count();
        let events: usize = streams.iter().map(|s| s.events).sum();
        let mut delays: Vec<f64> = streams.iter().flat_map(|s| s.delays.iter().map(ms)).collect();
        let (p50, p99) = (pct(&mut delays, 0.50), pct(&mut delays, 0.99));
        let _ = writeln!(
            t,
            "event streams: {} per call, {} opened, {failed} failed, {unfinished} without call.ended; {events} events \
             received, {} live: event to client p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            o.watchers,
            streams.len(),
            delays.len(),
            p50,
            p99,
            delays.iter().copied().fold(0.0, f64::max)
        );
        if let Some(e) = streams.iter().find_map(|s| s.error.as_deref()) {
            let _ = writeln!(t, "event streams: first failure: {e}");
        }
    }
    if o.turn_outcomes {
        let TurnOutcomes { answered, interrupted, no_speech, failed, unknown, .. } = outcomes;
        let _ = writeln!(
            t,
            "turns by outcome: {answered} answered, {interrupted} interrupted, {no_speech} no_speech, {failed} failed, {unknown} unknown"
        );
        for (stage, count, reason) in outcomes.failed_by_stage() {
            let _ = writeln!(t, "  failed at {stage}: {count} (most often: {reason})");
        }
        if unread > 0 {
            let _ = writeln!(t, "turns not counted: {unread} call(s) whose turns could not be read");
        }
    }
    let ids: Vec<&str> = results.iter().filter_map(|r| r.id.as_deref()).collect();
    if !ids.is_empty() {
        let shown = ids.len().min(5);
        let more = if ids.len() > shown { format!(" and {} more", ids.len() - shown) } else { String::new() };
        let _ = writeln!(t, "call ids: {}{more}", ids[..shown].join(" "));
    }
    let (p50, p99) = (pct(&mut latencies, 0.5), pct(&mut latencies, 0.99));
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
    let _ = writeln!(t, "turn latency, caller side: p50 {p50:.1} ms, p99 {p99:.1} ms, p99 - p50 {:.1} ms", p99 - p50);
    let late_pct = if gaps.is_empty() { 0.0 } else { late as f64 * 100.0 / gaps.len() as f64 };
    let _ = writeln!(t, "reply frames: {frames}; late by more than one frame (gap > 40 ms): {late} ({late_pct:.2} %)");
    let mib = |bytes: f64| bytes / 1048576.0;
    for s in &resources.services {
        let Some(start) = s.rss_start else { continue };
        let after = match s.rss_after {
            Some(after) => format!(", after {:.0} s {:.1} MiB", resources.settle.as_secs_f64(), mib(after)),
            None => String::new(),
        };
        let _ = writeln!(
            t,
            "memory {}: start {:.1} MiB, peak {:.1} MiB{after}, {:.0} KiB per live call",
            s.url,
            mib(start),
            mib(s.rss_peak.unwrap_or(start)),
            s.kib_per_call(results.len()).unwrap_or(0.0)
        );
    }
    let calls = resources.steady_calls;
    let cpu: Vec<Option<f64>> = resources.services.iter().map(|s| s.cpu_ms_per_call_second(calls)).collect();
    if let Some(why) = &resources.no_steady {
        let _ = writeln!(t, "cpu: not measured: no steady window ({why})");
    } else {
        for (s, cpu) in resources.services.iter().zip(&cpu) {
            match (cpu, s.steady_seconds()) {
                (Some(cpu), Some(seconds)) => {
                    let _ = writeln!(
                        t,
                        "cpu {}: {cpu:.2} ms per call-second (steady {seconds:.1} s, {calls} calls)",
                        s.url
                    );
                }
                _ => {
                    let _ = writeln!(t, "cpu {}: not measured (no process_cpu_seconds_total at both ends)", s.url);
                }
            }
        }
        let measured: Vec<f64> = cpu.iter().flatten().copied().collect();
        if !measured.is_empty() {
            let of = if measured.len() < cpu.len() {
                format!(" ({} of {} services)", measured.len(), cpu.len())
            } else {
                String::new()
            };
            let _ = writeln!(t, "cpu total: {:.2} ms per call-second{of}", measured.iter().sum::<f64>());
        }
    }
    let idle = if calls > 0 { resources.idle_entries_per_second() } else { None };
    if let Some(idle) = idle {
        let _ = writeln!(
            t,
            "machine: {idle:.0} CPU idle-state entries a second over the steady window, polls not counted (cpuidle)"
        );
    }
    for e in results.iter().filter_map(|r| r.error.as_deref()).take(10) {
        let _ = writeln!(t, "error: {e}");
    }
    let row = BenchRow {
        calls: results.len(),
        failed_calls,
        no_reply,
        late_pct,
        p50_ms: p50,
        p99_ms: p99,
        steady_calls: calls,
        steady_s: if calls > 0 { resources.services.iter().find_map(ServiceUse::steady_seconds) } else { None },
        cpu_ms: cpu,
        kib_per_call: resources.services.iter().map(|s| s.kib_per_call(results.len())).collect(),
        rss_start_mib: resources.services.iter().map(|s| s.rss_start.map(mib)).collect(),
        rss_after_mib: resources.services.iter().map(|s| s.rss_after.map(mib)).collect(),
        idle_per_s: idle,
    };
    let _ = writeln!(t, "{}", bench_row(&row));
    let streams_failed = results.iter().flat_map(|r| &r.streams).any(|s| s.error.is_some() || !s.ended);
    Report { table: t, failed: failed_calls > 0 || no_reply > 0 || outcomes.failed > 0 || streams_failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_media_message_is_the_carriers_shape_and_call_api_reads_it_back() {
        for (seq, media_ms, payload) in [(2u64, 0u64, vec![0xFFu8; 160]), (77, 1500, vec![1, 2]), (9, 20, vec![7])] {
            let text = media_message(seq, media_ms, &payload);
            let want = json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": "MZ",
                              "media": {"track": "inbound", "chunk": seq.to_string(), "timestamp": media_ms.to_string(),
                                        "payload": STANDARD.encode(&payload)}});
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), want, "{text}");
            match call_api::media::protocol::parse(&text) {
                Ok(call_api::media::protocol::Inbound::Media { sequence_number, timestamp_ms, payload: got }) => {
                    assert_eq!((sequence_number, timestamp_ms, got), (seq, media_ms, payload));
                }
                other => panic!("{text}: {:?}", other.map(|_| ())),
            }
        }
    }

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

    /// A call-api stand-in whose media WebSocket never replies (it reads until `stop`, then
    /// closes) and whose turns answer `turns`.
    async fn silent_server(turns: Value) -> String {
        use axum::{
            Json, Router,
            extract::ws::{Message as WsMessage, WebSocketUpgrade},
            routing::{get, post},
        };
        let app = Router::new()
            .route(
                "/v1/calls",
                post(|| async {
                    Json(json!({"id": "c1", "media_url": "wss://public.example/v1/calls/c1/media?token=t"}))
                }),
            )
            .route("/v1/calls/c1/turns", get(move || async move { Json(turns) }))
            .route(
                "/v1/calls/c1/media",
                get(|ws: WebSocketUpgrade| async move {
                    ws.on_upgrade(|mut socket| async move {
                        while let Some(Ok(m)) = socket.recv().await {
                            if let WsMessage::Text(t) = m
                                && t.contains("\"stop\"")
                            {
                                let _ = socket.send(WsMessage::Close(None)).await;
                                return;
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
            turn_outcomes: false,
            watchers: 0,
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

    /// The server has settled the caller's turn `failed` and plays nothing: the turn is given up
    /// as soon as a read of the turns says so, not after the 30 s reply timeout.
    #[tokio::test]
    async fn a_turn_the_server_failed_is_given_up_as_soon_as_its_outcome_is_read() {
        telemetry::install_crypto_provider();
        let turns = json!({"turns": [
            {"seq": 1, "role": "caller", "text": "", "outcome": "failed", "stage": "stt",
             "reason": "no stt provider is configured", "fallback": false},
        ]});
        let mut o = options(silent_server(turns.clone()).await, 0);
        o.turn_outcomes = true;
        let started = Instant::now();
        let r = one_call(o, reqwest::Client::new()).await;
        assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
        assert_eq!(r.error, None);
        assert_eq!(r.turns_without_reply, 1);
        assert!(r.latencies.is_empty());
        assert_eq!(
            r.settled_early,
            [SettledTurn {
                seq: 1,
                outcome: "failed".into(),
                stage: Some("stt".into()),
                reason: Some("no stt provider is configured".into())
            }]
        );
        assert_eq!(r.settled_early[0].to_string(), "failed at stt: no stt provider is configured");
        assert_eq!(r.turns, Some(turns), "the turns are read once more at the call's end");
    }

    #[test]
    fn the_shipped_recording_gives_the_callers_words() {
        let u = utterance(RECORDING).unwrap();
        let seconds = u.len() as f64 / 8000.0;
        assert!((3.0..5.0).contains(&seconds), "{seconds}");
        assert!(utterance(b"RIFF....WAVEjunk").is_err());
    }

    /// `GET /v1/providers` of a gateway without any provider key (its defaults).
    fn nothing_configured() -> Value {
        let row = |name: &str, capability: &str, priority: u32, reason: &str| {
            json!({"name": name, "capability": capability, "configured": false, "reason": reason,
                   "priority": priority, "circuit_state": "closed"})
        };
        let openai = "OPENAI_API_KEY is not set (api.openai.com needs a key)";
        let deepgram = "DEEPGRAM_API_KEY is not set (api.deepgram.com needs a key)";
        json!({"providers": [
            row("openai", "speech_to_text", 1, openai),
            row("deepgram", "speech_to_text", 0, deepgram),
            row("openai", "chat", 0, openai),
            row("openai", "text_to_speech", 1, openai),
            row("deepgram", "text_to_speech", 0, deepgram),
            {"name": "local", "capability": "sentiment", "configured": true, "priority": 0, "circuit_state": "closed"},
        ]})
    }

    #[test]
    fn the_provider_check_names_each_missing_capability_with_the_servers_reasons() {
        let missing = unavailable_capabilities(&nothing_configured()).unwrap();
        let lines: Vec<String> = missing.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "live calls need speech_to_text, but no provider is available: deepgram: DEEPGRAM_API_KEY is not set (api.deepgram.com needs a key); openai: OPENAI_API_KEY is not set (api.openai.com needs a key)",
                "live calls need chat, but no provider is available: openai: OPENAI_API_KEY is not set (api.openai.com needs a key)",
                "live calls need text_to_speech, but no provider is available: deepgram: DEEPGRAM_API_KEY is not set (api.deepgram.com needs a key); openai: OPENAI_API_KEY is not set (api.openai.com needs a key)",
            ]
        );

        // One configured provider with a closed (or half-open) circuit is enough.
        let mut body = nothing_configured();
        for row in body["providers"].as_array_mut().unwrap() {
            if row["name"] == "openai" {
                row["configured"] = json!(true);
                row["circuit_state"] = json!("half_open");
                row.as_object_mut().unwrap().remove("reason");
            }
        }
        assert_eq!(unavailable_capabilities(&body).unwrap(), []);

        // An open circuit is not available; a capability turned off lists no provider.
        let body = json!({"providers": [
            {"name": "simulated", "capability": "speech_to_text", "configured": true, "priority": 0, "circuit_state": "open"},
            {"name": "simulated", "capability": "chat", "configured": true, "priority": 0, "circuit_state": "closed"},
        ]});
        let lines: Vec<String> = unavailable_capabilities(&body).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "live calls need speech_to_text, but no provider is available: simulated: circuit open (failing; tried again later)",
                "live calls need text_to_speech, but the server lists no provider for it",
            ]
        );
        assert!(unavailable_capabilities(&json!({"error": {"code": "unauthorized"}})).is_err());
    }

    #[test]
    fn a_settled_turn_is_the_newest_caller_turn_failed_or_without_speech() {
        let caller = |seq: i64, outcome: Value| json!({"seq": seq, "role": "caller", "text": "", "outcome": outcome});
        let agent = |seq: i64| json!({"seq": seq, "role": "agent", "text": "hi", "outcome": null, "fallback": false});
        let no_speech = json!({"turns": [agent(0), caller(1, json!("answered")), agent(2),
            {"seq": 3, "role": "caller", "text": "", "outcome": "no_speech", "stage": null, "reason": "no words in the utterance"}]});
        let settled = settled_turn(&no_speech, 2).expect("settled");
        assert_eq!((settled.seq, settled.outcome.as_str()), (3, "no_speech"));
        assert_eq!(settled.to_string(), "no_speech: no words in the utterance");
        // Turns up to `after_seq` belong to earlier turns of the load generator.
        assert_eq!(settled_turn(&no_speech, 4), None);
        // The newest caller turn still in progress (null) or answered: keep waiting, whatever
        // an earlier one was.
        let in_progress = json!({"turns": [caller(1, json!("failed")), agent(2), caller(3, Value::Null)]});
        assert_eq!(settled_turn(&in_progress, 0), None);
        let answered = json!({"turns": [caller(1, json!("failed")), caller(3, json!("answered"))]});
        assert_eq!(settled_turn(&answered, 0), None);
        // A server without outcomes, a bare array, nothing stored yet.
        assert_eq!(settled_turn(&json!({"turns": [{"seq": 1, "role": "caller", "text": "hello"}]}), 0), None);
        assert_eq!(settled_turn(&json!([caller(1, json!("failed"))]), 0).map(|s| s.seq), Some(1));
        assert_eq!(settled_turn(&json!({"turns": []}), 0), None);
    }

    #[test]
    fn caller_turns_are_counted_by_outcome_and_failures_by_stage() {
        let body = json!({"turns": [
            {"seq": 0, "role": "agent", "text": "Hello", "outcome": null},
            {"seq": 1, "role": "caller", "text": "hi", "outcome": "answered"},
            {"seq": 2, "role": "agent", "text": "yes", "outcome": null},
            {"seq": 3, "role": "caller", "text": "", "outcome": "failed", "stage": "stt", "reason": "no stt provider is configured"},
            {"seq": 4, "role": "agent", "text": "Sorry?", "fallback": true},
            {"seq": 5, "role": "caller", "text": "", "outcome": "failed", "stage": "llm", "reason": "timed out"},
            {"seq": 7, "role": "caller", "text": "", "outcome": "failed", "stage": "stt", "reason": "no stt provider is configured"},
            {"seq": 9, "role": "caller", "text": "", "outcome": "failed", "stage": "stt", "reason": "provider unavailable"},
            {"seq": 11, "role": "caller", "text": "wait", "outcome": "interrupted"},
            {"seq": 13, "role": "caller", "text": "", "outcome": "no_speech", "reason": "no words"},
            {"seq": 15, "role": "caller", "text": "still going", "outcome": null},
            {"seq": 17, "role": "caller", "text": "from an older server"},
        ]});
        let counted = TurnOutcomes::count(&body);
        assert_eq!(
            (counted.answered, counted.interrupted, counted.no_speech, counted.failed, counted.unknown),
            (1, 1, 1, 4, 2)
        );
        assert_eq!(
            counted.failed_by_stage(),
            [
                ("stt".to_string(), 3, "no stt provider is configured".to_string()),
                ("llm".to_string(), 1, "timed out".to_string())
            ]
        );
        // The turns of a server that reports no outcome: all unknown, nothing failed.
        let old = json!({"turns": [{"seq": 1, "role": "caller", "text": "hi"}, {"seq": 2, "role": "agent", "text": "yes",
            "latency": {"total": 0.5}, "interrupted": false}]});
        let counted = TurnOutcomes::count(&old);
        assert_eq!((counted.unknown, counted.failed, counted.answered), (1, 0, 0));
    }

    #[test]
    fn the_summary_counts_turns_by_outcome_and_a_failed_turn_fails_the_run() {
        let o = Options { turn_outcomes: true, turns: 2, ..options("http://vk.example".into(), 0) };
        let answered = || CallResult {
            id: Some("c1".into()),
            latencies: vec![Duration::from_millis(800), Duration::from_millis(900)],
            turns: Some(json!({"turns": [
                {"seq": 1, "role": "caller", "text": "hi", "outcome": "answered"},
                {"seq": 2, "role": "agent", "text": "yes", "latency": {"stt": 0.1, "total": 0.8}, "interrupted": false},
                {"seq": 3, "role": "caller", "text": "bye", "outcome": "answered"},
                {"seq": 4, "role": "agent", "text": "bye", "latency": {"stt": 0.2, "total": 0.9}, "interrupted": false},
            ]})),
            ..Default::default()
        };
        let none = Resources::default();
        let report = summarize(&o, &[answered(), answered()], Duration::from_secs(10), &none);
        assert!(!report.failed, "{}", report.table);
        assert!(
            report.table.contains("turns by outcome: 4 answered, 0 interrupted, 0 no_speech, 0 failed, 0 unknown"),
            "{}",
            report.table
        );
        assert!(!report.table.contains("failed at"), "{}", report.table);
        assert!(report.table.contains("calls: 2 ok, 0 failed; turns: 4 with a reply, 0 without reply"));
        assert!(report.table.contains("  server stage stt"), "{}", report.table);

        // A turn whose transcription failed, its fallback line heard: a reply, yet a failed turn.
        let failed = CallResult {
            id: Some("c2".into()),
            latencies: vec![Duration::from_millis(300)],
            settled_early: vec![SettledTurn {
                seq: 3,
                outcome: "failed".into(),
                stage: Some("stt".into()),
                reason: Some("no stt provider is configured".into()),
            }],
            turns_without_reply: 1,
            turns: Some(json!({"turns": [
                {"seq": 1, "role": "caller", "text": "", "outcome": "failed", "stage": "stt", "reason": "no stt provider is configured"},
                {"seq": 2, "role": "agent", "text": "Sorry, could you say that again?", "fallback": true},
                {"seq": 3, "role": "caller", "text": "", "outcome": "failed", "stage": "stt", "reason": "no stt provider is configured"},
            ]})),
            ..Default::default()
        };
        let unread =
            CallResult { id: Some("c3".into()), error: Some("media websocket: refused".into()), ..Default::default() };
        let report = summarize(&o, &[answered(), failed, unread], Duration::from_secs(10), &none);
        assert!(report.failed);
        for line in [
            "calls: 2 ok, 1 failed; turns: 3 with a reply, 1 without reply",
            "turns by outcome: 2 answered, 0 interrupted, 0 no_speech, 2 failed, 0 unknown",
            "  failed at stt: 2 (most often: no stt provider is configured)",
            "turns not counted: 1 call(s) whose turns could not be read",
            "call ids: c1 c2 c3",
            "error: media websocket: refused",
        ] {
            assert!(report.table.lines().any(|l| l == line), "no line {line:?} in\n{}", report.table);
        }

        // Unknown outcomes (a server that reports none) fail nothing by themselves.
        let old = CallResult {
            id: Some("c4".into()),
            latencies: vec![Duration::from_millis(500)],
            turns: Some(json!({"turns": [{"seq": 1, "role": "caller", "text": "hi"}]})),
            ..Default::default()
        };
        let report = summarize(&Options { turns: 1, ..o }, &[old], Duration::from_secs(3), &none);
        assert!(!report.failed, "{}", report.table);
        assert!(report.table.contains("0 failed, 1 unknown"), "{}", report.table);
    }

    #[test]
    fn a_metric_is_read_from_prometheus_text_with_comments_labels_and_timestamps() {
        let body = "\
# HELP process_cpu_seconds_total User and system CPU time in seconds
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# HELP process_resident_memory_bytes Resident memory size in bytes
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.5e7
process_cpu_seconds_total_created 1700000000
voice_live_calls 3
";
        assert_eq!(metric_value(body, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(metric_value(body, "process_resident_memory_bytes"), Some(25_000_000.0));
        assert_eq!(metric_value(body, "process_cpu"), None, "a prefix is not the name");
        assert_eq!(metric_value(body, "process_threads"), None);
        assert_eq!(metric_value("", "process_cpu_seconds_total"), None);
        // Label sets are summed (a `}` or `"` inside a quoted value does not end them); a
        // timestamp after the value is not part of it; an unreadable value is skipped.
        let labelled = r#"
process_cpu_seconds_total{mode="user",service="call-api"} 1.25 1700000000000
process_cpu_seconds_total{mode="system",note="a } and \" in a value"} 0.75
process_cpu_seconds_total{mode="broken"} not-a-number
process_cpu_seconds_total{unterminated="x 9
"#;
        assert_eq!(metric_value(labelled, "process_cpu_seconds_total"), Some(2.0));
    }

    fn at(seconds: f64, cpu: f64) -> Scrape {
        Scrape { at: Duration::from_secs_f64(seconds), cpu_seconds: Some(cpu), rss_bytes: None }
    }

    #[test]
    fn cpu_per_call_second_is_the_counters_growth_over_calls_times_wall_time() {
        // 1.5 CPU-seconds over 10 s with 100 calls live: 1.5 ms per call-second.
        let cpu = cpu_ms_per_call_second(&at(2.0, 40.0), &at(12.0, 41.5), 100).unwrap();
        assert!((cpu - 1.5).abs() < 1e-9, "{cpu}");
        let cpu = cpu_ms_per_call_second(&at(0.5, 3.0), &at(3.0, 3.25), 1).unwrap();
        assert!((cpu - 100.0).abs() < 1e-9, "{cpu}");
        // No time, no calls, a counter that went back (a restart), a missing counter.
        assert_eq!(cpu_ms_per_call_second(&at(2.0, 1.0), &at(2.0, 2.0), 10), None);
        assert_eq!(cpu_ms_per_call_second(&at(3.0, 1.0), &at(2.0, 2.0), 10), None);
        assert_eq!(cpu_ms_per_call_second(&at(1.0, 1.0), &at(2.0, 2.0), 0), None);
        assert_eq!(cpu_ms_per_call_second(&at(1.0, 5.0), &at(2.0, 0.1), 10), None);
        let unknown = Scrape { cpu_seconds: None, ..at(2.0, 0.0) };
        assert_eq!(cpu_ms_per_call_second(&at(1.0, 1.0), &unknown, 10), None);
        assert_eq!(cpu_ms_per_call_second(&at(1.0, 1.0), &at(2.0, 1.0), 10), Some(0.0));
    }

    #[test]
    fn the_machine_s_idle_counts_every_cpu_s_idle_states_but_polling() {
        let root = tempfile::tempdir().unwrap();
        let state = |cpu: &str, state: &str, name: &str, usage: &str| {
            let dir = root.path().join(cpu).join("cpuidle").join(state);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(dir.join("usage"), format!("{usage}\n")).unwrap();
        };
        // No CPU directories: no counters, not zero.
        assert_eq!(cpuidle_entries(root.path()), None);
        assert_eq!(cpuidle_entries(&root.path().join("absent")), None);
        state("cpu0", "state0", "POLL", "5000");
        // Only a poll state: counters exist, and no idle entry is a halt.
        assert_eq!(cpuidle_entries(root.path()), Some(0));
        state("cpu0", "state1", "haltpoll idle", "1200");
        state("cpu1", "state0", "POLL", "7");
        state("cpu1", "state1", "C1", "300");
        state("cpu1", "state2", "C2", "45");
        // Not a CPU, or a state that does not read as a count: left out.
        state("cpufreq", "state1", "C1", "999");
        state("cpu2x", "state1", "C1", "999");
        state("cpu2", "state1", "C1", "not-a-number");
        state("cpu2", "driver", "C1", "999");
        assert_eq!(cpuidle_entries(root.path()), Some(1_545));

        let at = |s: u64, entries: u64| IdleCount { at: Duration::from_secs(s), entries };
        assert_eq!(idle_entries_per_second(&at(2, 100), &at(10, 16_100)), Some(2_000.0));
        // A counter that went back (another boot) or no time between the counts: nothing.
        assert_eq!(idle_entries_per_second(&at(2, 100), &at(10, 50)), None);
        assert_eq!(idle_entries_per_second(&at(2, 100), &at(2, 200)), None);
    }

    #[test]
    fn the_steady_window_opens_when_the_last_call_connected_and_closes_when_the_first_ended() {
        use LiveEvent::*;
        let mut count = LiveCount::new(3);
        assert_eq!(count.add(Connected), None);
        assert_eq!(count.add(NeverConnected), None);
        assert_eq!(count.add(Connected), Some(true), "every call connected or gave up");
        assert_eq!(count.connected, 2);
        assert_eq!(count.add(Ended), Some(false));
        assert_eq!(count.add(Ended), None, "only the first end closes it");

        // A call ended before the last one connected: the window never opens.
        let mut count = LiveCount::new(2);
        assert_eq!(count.add(Connected), None);
        assert_eq!(count.add(Ended), Some(false));
        assert_eq!(count.add(Connected), None);

        // No call connected at all.
        let mut count = LiveCount::new(1);
        assert_eq!(count.add(NeverConnected), None);
    }

    #[test]
    fn the_summary_gives_cpu_per_call_second_memory_after_settling_and_a_bench_row() {
        let o = Options { turns: 1, ..options("http://vk.example".into(), 0) };
        let call = |ms: u64| CallResult {
            id: Some("c".into()),
            latencies: vec![Duration::from_millis(ms)],
            gaps: vec![Duration::from_millis(20); 99].into_iter().chain([Duration::from_millis(61)]).collect(),
            frames: 101,
            turns: Some(json!({"turns": [{"seq": 1, "role": "caller", "text": "hi", "outcome": "answered"}]})),
            ..Default::default()
        };
        let results: Vec<CallResult> = [800, 820, 900, 1000].into_iter().map(call).collect();
        let mib = 1048576.0;
        let service = |url: &str, cpu: (f64, f64), rss: (f64, f64, Option<f64>)| ServiceUse {
            url: url.into(),
            rss_start: Some(rss.0 * mib),
            rss_peak: Some(rss.1 * mib),
            rss_after: rss.2.map(|r| r * mib),
            steady_start: Some(Scrape { rss_bytes: None, ..at(2.0, cpu.0) }),
            steady_end: Some(Scrape { rss_bytes: None, ..at(12.0, cpu.1) }),
        };
        let resources = Resources {
            services: vec![
                service("http://a/metrics", (1.0, 1.1), (20.0, 21.0, Some(20.5))),
                service("http://b/metrics", (5.0, 5.02), (10.0, 10.0, Some(10.0))),
                ServiceUse { url: "http://c/metrics".into(), ..ServiceUse::default() },
            ],
            steady_calls: 4,
            no_steady: None,
            settle: Duration::from_secs(60),
            idle_start: Some(IdleCount { at: Duration::from_secs(2), entries: 1_000 }),
            idle_end: Some(IdleCount { at: Duration::from_secs(12), entries: 17_200 }),
        };
        let report = summarize(&o, &results, Duration::from_secs(15), &resources);
        for line in [
            "turn latency, caller side: p50 900.0 ms, p99 1000.0 ms, p99 - p50 100.0 ms",
            "reply frames: 404; late by more than one frame (gap > 40 ms): 4 (1.00 %)",
            "memory http://a/metrics: start 20.0 MiB, peak 21.0 MiB, after 60 s 20.5 MiB, 256 KiB per live call",
            "memory http://b/metrics: start 10.0 MiB, peak 10.0 MiB, after 60 s 10.0 MiB, 0 KiB per live call",
            "cpu http://a/metrics: 2.50 ms per call-second (steady 10.0 s, 4 calls)",
            "cpu http://b/metrics: 0.50 ms per call-second (steady 10.0 s, 4 calls)",
            "cpu http://c/metrics: not measured (no process_cpu_seconds_total at both ends)",
            "cpu total: 3.00 ms per call-second (2 of 3 services)",
            "machine: 1620 CPU idle-state entries a second over the steady window, polls not counted (cpuidle)",
            "bench-row calls=4 failed_calls=0 no_reply=0 late_pct=1.00 p50_ms=900.0 p99_ms=1000.0 p99_p50_ms=100.0 \
             steady_calls=4 steady_s=10.0 cpu_ms=2.50,0.50,- cpu_total_ms=3.00 kib_per_call=256,0,- \
             rss_start_mib=20.0,10.0,- rss_after_mib=20.5,10.0,- idle_per_s=1620",
        ] {
            assert!(report.table.lines().any(|l| l == line), "no line {line:?} in\n{}", report.table);
        }
        assert!(!report.failed, "{}", report.table);
        assert_eq!(report.table.lines().last().map(|l| l.starts_with("bench-row ")), Some(true));

        // Without `--settle-seconds` the memory line is as before; without a steady window
        // the CPU is not measured, and says why.
        let resources = Resources {
            services: vec![ServiceUse { rss_after: None, ..resources.services[0].clone() }],
            steady_calls: 0,
            no_steady: Some("no call connected".into()),
            settle: Duration::ZERO,
            idle_start: None,
            idle_end: None,
        };
        let failed = CallResult { error: Some("create call: refused".into()), ..Default::default() };
        let report = summarize(&o, &[failed], Duration::from_secs(1), &resources);
        for line in [
            "memory http://a/metrics: start 20.0 MiB, peak 21.0 MiB, 1024 KiB per live call",
            "cpu: not measured: no steady window (no call connected)",
            "bench-row calls=1 failed_calls=1 no_reply=0 late_pct=0.00 p50_ms=- p99_ms=- p99_p50_ms=- \
             steady_calls=0 steady_s=- cpu_ms=- cpu_total_ms=- kib_per_call=1024 rss_start_mib=20.0 rss_after_mib=- idle_per_s=-",
        ] {
            assert!(report.table.lines().any(|l| l == line), "no line {line:?} in\n{}", report.table);
        }
        assert!(!report.table.contains("cpu total"), "{}", report.table);
        assert!(!report.table.contains("machine:"), "{}", report.table);
    }
}
