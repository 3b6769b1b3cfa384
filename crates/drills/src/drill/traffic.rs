//! Steady traffic for the drills, and a ledger of what the API answered: live calls (the load
//! generator's simulated carriers), REST call creates at a fixed rate, recording uploads. Every
//! call the API answered 201 for is in the ledger, so a drill can look for each afterwards.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::loadgen;

/// What to send.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Live calls kept running at once (each a loadgen call of `turns` turns; a new one starts
    /// when one ends). 0 = none.
    pub live_calls: usize,
    pub turns: usize,
    /// REST `POST /v1/calls` per second (0 = none).
    pub creates_per_second: f64,
    /// A recording upload (create + `POST …/recording` of the shipped recording) this often.
    pub upload_every: Option<Duration>,
}

/// One `POST /v1/calls`.
#[derive(Debug, Clone)]
pub struct Create {
    pub id: Option<String>,
    pub status: Option<u16>,
    /// The error body's `error.code`.
    pub code: Option<String>,
    /// No answer: the transport error.
    pub error: Option<String>,
    /// When it was sent (since the traffic started) and how long it took.
    pub at: Duration,
    pub took: Duration,
}

impl Create {
    /// `201`, `503 unavailable`, `no answer: …`.
    pub fn outcome(&self) -> String {
        match (self.status, &self.code, &self.error) {
            (Some(s), Some(c), _) => format!("{s} {c}"),
            (Some(s), None, _) => s.to_string(),
            (None, _, Some(e)) => format!("no answer ({})", short_error(e)),
            (None, _, None) => "no answer".into(),
        }
    }
}

/// The kind of a transport error, without the URL.
fn short_error(e: &str) -> String {
    let lower = e.to_ascii_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") {
        "timeout".into()
    } else if lower.contains("refused") {
        "connection refused".into()
    } else if lower.contains("closed") || lower.contains("reset") || lower.contains("incomplete") {
        "connection closed".into()
    } else if lower.contains("connect") {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// One live call.
#[derive(Debug, Clone)]
pub struct Live {
    pub id: Option<String>,
    pub error: Option<String>,
    pub answered: usize,
    pub without_reply: usize,
    pub latencies: Vec<Duration>,
    pub frames: usize,
    /// When the call started (since the traffic started) and how long it ran.
    pub at: Duration,
    pub took: Duration,
    /// The code of the server's close frame (None: the connection ended without one).
    pub close_code: Option<u16>,
    /// Media connections refused with 503 and tried again.
    pub media_refusals: u32,
}

/// One recording upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub call: Create,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub analysis_status: Option<String>,
    pub transcript_status: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Ledger {
    pub creates: Vec<Create>,
    pub live: Vec<Live>,
    pub uploads: Vec<Upload>,
}

/// What the API accepted, and what the drill expects of it afterwards.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// A REST create answered 201: the call exists.
    Created,
    /// A live call; `completed` when the simulated carrier finished it with `stop`.
    Live { completed: bool },
    /// A recording upload answered with this status (None: no answer).
    Uploaded { status: Option<u16> },
}

impl Ledger {
    /// Every call id the API answered 201 for, with what is expected of it.
    pub fn accepted(&self) -> Vec<(String, Expect)> {
        let mut out = Vec::new();
        for c in &self.creates {
            if let (Some(id), Some(201)) = (&c.id, c.status) {
                out.push((id.clone(), Expect::Created));
            }
        }
        for l in &self.live {
            if let Some(id) = &l.id {
                out.push((id.clone(), Expect::Live { completed: l.error.is_none() }));
            }
        }
        for u in &self.uploads {
            if let (Some(id), Some(201)) = (&u.call.id, u.call.status) {
                out.push((id.clone(), Expect::Uploaded { status: u.status }));
            }
        }
        out
    }

    /// Count of create outcomes (REST creates and the creates of uploads) sent in `[from, to)`.
    pub fn create_outcomes(&self, from: Duration, to: Duration) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for c in self.creates.iter().chain(self.uploads.iter().map(|u| &u.call)) {
            if c.at >= from && c.at < to {
                *out.entry(c.outcome()).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn live_summary(&self) -> String {
        let ok = self.live.iter().filter(|l| l.error.is_none()).count();
        let answered: usize = self.live.iter().map(|l| l.answered).sum();
        let frames: usize = self.live.iter().map(|l| l.frames).sum();
        let silent: usize = self.live.iter().map(|l| l.without_reply).sum();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.live.iter().filter_map(|l| l.error.as_deref()) {
            *errors.entry(error_kind(e)).or_insert(0) += 1;
        }
        let mut lat: Vec<f64> =
            self.live.iter().flat_map(|l| l.latencies.iter().map(|d| d.as_secs_f64() * 1e3)).collect();
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() - 1) as f64 * q).round() as usize] };
        format!(
            "live calls: {} ({ok} completed, {} failed {errors:?}); turns answered {answered}, without reply {silent}; {frames} reply frames; caller-side turn latency p50 {:.0} ms, p95 {:.0} ms",
            self.live.len(),
            self.live.len() - ok,
            p(0.5),
            p(0.95)
        )
    }

    pub fn upload_summary(&self) -> String {
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        for u in &self.uploads {
            let key = match (u.call.status, u.status, &u.code, &u.error) {
                (Some(201), Some(s), Some(c), _) => format!("{s} {c}"),
                (Some(201), Some(s), None, _) => {
                    format!("{s} analysis {}", u.analysis_status.as_deref().unwrap_or("?"))
                }
                (Some(201), None, _, Some(e)) => format!("no answer ({})", short_error(e)),
                _ => format!("create {}", u.call.outcome()),
            };
            *outcomes.entry(key).or_insert(0) += 1;
        }
        format!("recording uploads: {} {outcomes:?}", self.uploads.len())
    }
}

/// A loadgen error, without ids.
pub fn error_kind(e: &str) -> String {
    let e = e.split(':').next().unwrap_or(e);
    e.chars().take(60).collect()
}

pub struct Traffic {
    stop: CancellationToken,
    tracker: TaskTracker,
    pub ledger: Arc<Mutex<Ledger>>,
    pub started: Instant,
}

pub fn api_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().expect("HTTP client")
}

/// A transport error with its causes (reqwest's own text names only the URL).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `POST /v1/calls` with a sequence number in the metadata.
pub async fn create_call(http: &reqwest::Client, url: &str, key: &str, seq: u64, started: Instant) -> Create {
    let at = started.elapsed();
    let t = Instant::now();
    let sent = http
        .post(format!("{url}/v1/calls"))
        .bearer_auth(key)
        .json(&json!({"provider": "websocket", "from": "+14155550100", "to": "+14155550199", "direction": "inbound",
                       "metadata": {"source": "voice-kraliki drill", "seq": seq}}))
        .send()
        .await;
    let mut c = Create { id: None, status: None, code: None, error: None, at, took: Duration::ZERO };
    match sent {
        Err(e) => c.error = Some(error_chain(&e)),
        Ok(r) => {
            c.status = Some(r.status().as_u16());
            match r.json::<Value>().await {
                Ok(body) => {
                    c.id = body["id"].as_str().map(str::to_string);
                    c.code = body["error"]["code"].as_str().map(str::to_string);
                }
                Err(e) => c.error = Some(format!("body: {e}")),
            }
        }
    }
    c.took = t.elapsed();
    c
}

async fn upload(http: &reqwest::Client, url: &str, key: &str, seq: u64, started: Instant) -> Upload {
    let call = create_call(http, url, key, seq, started).await;
    let mut u = Upload { call, status: None, code: None, analysis_status: None, transcript_status: None, error: None };
    let Some(id) = u.call.id.clone() else { return u };
    let sent = http
        .post(format!("{url}/v1/calls/{id}/recording?channel_labels=agent,caller"))
        .bearer_auth(key)
        .header("content-type", "audio/wav")
        .header("idempotency-key", format!("drill-{seq}"))
        .body(loadgen::RECORDING.to_vec())
        .send()
        .await;
    match sent {
        Err(e) => u.error = Some(error_chain(&e)),
        Ok(r) => {
            u.status = Some(r.status().as_u16());
            match r.json::<Value>().await {
                Ok(body) => {
                    u.code = body["error"]["code"].as_str().map(str::to_string);
                    u.analysis_status = body["status"].as_str().map(str::to_string);
                    u.transcript_status = body["transcript"]["status"].as_str().map(str::to_string);
                }
                Err(e) => u.error = Some(format!("body: {e}")),
            }
        }
    }
    u
}

impl Traffic {
    pub fn start(url: &str, key: &str, plan: &Plan) -> Self {
        Self::start_with(url, key, plan, |_| {})
    }

    /// [`Traffic::start`], with the live calls' load generator options adjusted by `tune`.
    pub fn start_with(url: &str, key: &str, plan: &Plan, tune: impl FnOnce(&mut loadgen::Options)) -> Self {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ledger: Arc<Mutex<Ledger>> = Arc::default();
        let started = Instant::now();
        let http = api_client(Duration::from_secs(30));
        if plan.live_calls > 0 {
            let mut options = loadgen::Options {
                url: url.to_string(),
                key: key.to_string(),
                calls: 1,
                turns: plan.turns,
                ramp: Duration::ZERO,
                utterance: Arc::new(loadgen::utterance(loadgen::RECORDING).expect("shipped recording")),
                metrics: Vec::new(),
                media_retries: 0,
                // A drill's carriers wait for every reply as before and read no turns.
                turn_outcomes: false,
                watchers: 0,
            };
            tune(&mut options);
            for worker in 0..plan.live_calls {
                let (o, http, stop, ledger) = (options.clone(), http.clone(), stop.clone(), ledger.clone());
                tracker.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300 * worker as u64)).await;
                    while !stop.is_cancelled() {
                        let at = started.elapsed();
                        let r = loadgen::one_call(o.clone(), http.clone()).await;
                        let failed = r.error.is_some();
                        ledger.lock().expect("ledger").live.push(Live {
                            id: r.id,
                            error: r.error,
                            answered: r.latencies.len(),
                            without_reply: r.turns_without_reply,
                            latencies: r.latencies,
                            frames: r.frames,
                            at,
                            took: started.elapsed() - at,
                            close_code: r.close_code,
                            media_refusals: r.media_refusals,
                        });
                        if failed {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                });
            }
        }
        if plan.creates_per_second > 0.0 {
            let period = Duration::from_secs_f64(1.0 / plan.creates_per_second);
            let (url, key, http, stop, ledger, inner) =
                (url.to_string(), key.to_string(), http.clone(), stop.clone(), ledger.clone(), tracker.clone());
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut seq = 0u64;
                let inflight = Arc::new(tokio::sync::Semaphore::new(64));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    seq += 1;
                    let Ok(permit) = inflight.clone().try_acquire_owned() else { continue };
                    let (url, key, http, ledger) = (url.clone(), key.clone(), http.clone(), ledger.clone());
                    inner.spawn(async move {
                        let c = create_call(&http, &url, &key, seq, started).await;
                        ledger.lock().expect("ledger").creates.push(c);
                        drop(permit);
                    });
                }
            });
        }
        if let Some(every) = plan.upload_every {
            let (url, key, stop, ledger) = (url.to_string(), key.to_string(), stop.clone(), ledger.clone());
            let http = api_client(Duration::from_secs(60));
            tracker.spawn(async move {
                let mut seq = 1_000_000u64;
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    seq += 1;
                    let u = upload(&http, &url, &key, seq, started).await;
                    ledger.lock().expect("ledger").uploads.push(u);
                }
            });
        }
        Self { stop, tracker, ledger, started }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn snapshot(&self) -> Ledger {
        self.ledger.lock().expect("ledger").clone()
    }

    /// Stops starting new work and waits up to `grace` for what is running to finish (live calls
    /// end their current call with `stop`). Returns the ledger and how many tasks were cut.
    pub async fn stop(self, grace: Duration) -> (Ledger, usize) {
        self.stop.cancel();
        self.tracker.close();
        let cut = match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        };
        let ledger = self.ledger.lock().expect("ledger").clone();
        (ledger, cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(id: Option<&str>, status: Option<u16>, code: Option<&str>) -> Create {
        Create {
            id: id.map(str::to_string),
            status,
            code: code.map(str::to_string),
            error: status.is_none().then(|| "error sending request: connection refused (connect)".to_string()),
            at: Duration::from_secs(1),
            took: Duration::ZERO,
        }
    }

    #[test]
    fn the_ledger_lists_exactly_the_accepted_calls() {
        let ledger = Ledger {
            creates: vec![
                create(Some("a"), Some(201), None),
                create(None, Some(503), Some("unavailable")),
                create(None, None, None),
            ],
            live: vec![Live {
                id: Some("b".into()),
                error: Some("media websocket: x".into()),
                answered: 0,
                without_reply: 0,
                latencies: vec![],
                frames: 0,
                at: Duration::ZERO,
                took: Duration::from_secs(1),
                close_code: None,
                media_refusals: 0,
            }],
            uploads: vec![Upload {
                call: create(Some("c"), Some(201), None),
                status: Some(200),
                code: None,
                analysis_status: Some("done".into()),
                transcript_status: Some("done".into()),
                error: None,
            }],
        };
        let accepted = ledger.accepted();
        assert_eq!(
            accepted,
            vec![
                ("a".to_string(), Expect::Created),
                ("b".to_string(), Expect::Live { completed: false }),
                ("c".to_string(), Expect::Uploaded { status: Some(200) }),
            ]
        );
        let outcomes = ledger.create_outcomes(Duration::ZERO, Duration::from_secs(10));
        assert_eq!(outcomes["201"], 2);
        assert_eq!(outcomes["503 unavailable"], 1);
        assert_eq!(outcomes["no answer (connection refused)"], 1);
        assert!(ledger.create_outcomes(Duration::from_secs(5), Duration::from_secs(10)).is_empty());
    }
}
