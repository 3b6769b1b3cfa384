//! `drill scale`: two replicas of each service (call-api, audio-processor, provider-gateway) on
//! one throwaway PostgreSQL, a loopback round-robin TCP balancer in front of the two call-apis
//! (standing in for a Kubernetes Service), live calls through it. Each call-api lists both
//! replicas of each peer (`AUDIO_PROCESSOR_URL`, `PROVIDER_GATEWAY_URL`), has its own
//! `REPLICA_ID` and a short `LIVE_LEASE_SECONDS`. Phases:
//!
//! 1. spread: each audio-processor replica got ≥ 20 % of the calls' live audio streams, each
//!    provider-gateway replica a share of the gRPC calls (their own `/metrics`);
//! 2. rolling restart of every process, one at a time, under traffic: no call cut, no turn
//!    without a reply; a draining call-api's calls end by themselves;
//! 3. one call-api SIGKILLed while it carries calls: each of them ends `failed`, `replica lost`,
//!    within 2 × `LIVE_LEASE_SECONDS`; the other replica's calls complete;
//! 4. a live call ended (`POST /v1/calls/{id}/end`) on the replica that does not carry it: its
//!    WebSocket closes with 1000 within 1 s; a second end is 409;
//! 5. every call ended exactly once: every call `ended` with one outcome, and the replicas'
//!    `voice_calls_total` increments add up to the calls ended (no double counting).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use futures_util::{SinkExt as _, StreamExt as _};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{
    Options,
    balancer::{Balancer, Readiness},
    database::Cluster,
    prom,
    report::Report,
    stack::{self, Ports, Service, Stack},
    traffic::{self, Ledger, Live, Plan, Traffic},
    verify,
};

/// The throwaway cluster's port unless `--pg-port` says otherwise (the database drill: 25432).
const PG_PORT: u16 = 25433;
/// The balancer: the address clients use, as they would a Service's.
const BALANCER_PORT: u16 = 18340;
const LEASE_S: u64 = 3;
const DRAIN_S: u64 = 60;
const RESOLVE_S: u64 = 1;
const LIVE_CALLS: usize = 6;
const WARMUP: Duration = Duration::from_secs(20);
/// After a restarted process is ready: peers re-resolve (1 s) and the balancer polls (0.2 s).
const SETTLE: Duration = Duration::from_secs(3);
const HANGUPS: usize = 6;
const HANGUP_BOUND: Duration = Duration::from_secs(1);
/// How long a phase-4 carrier waits for the close before it sends `stop` itself.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Traffic of the last window (phase 4 runs within it).
const FINAL_TRAFFIC: Duration = Duration::from_secs(15);
/// Seconds of the caller's speech per turn: short calls, so that a draining replica's calls
/// end soon.
const UTTERANCE_S: f64 = 2.0;

const NAMES: [&str; 2] = ["a", "b"];
const ROLLING: [(usize, Service); 6] = [
    (0, Service::AudioProcessor),
    (1, Service::AudioProcessor),
    (0, Service::ProviderGateway),
    (1, Service::ProviderGateway),
    (0, Service::CallApi),
    (1, Service::CallApi),
];

/// Replica `i`'s ports (a: call-api 18341, audio-processor 15391/19431, provider-gateway
/// 15392/19432; b: 18342, 15396/19436, 15397/19437).
pub fn replica_ports(i: usize) -> Ports {
    let o = 5 * i as u16;
    Ports {
        api: 18341 + i as u16,
        audio_grpc: 15391 + o,
        audio_admin: 19431 + o,
        gateway_grpc: 15392 + o,
        gateway_admin: 19432 + o,
    }
}

fn label(i: usize, s: Service) -> String {
    format!("{} {}", s.name(), NAMES[i])
}

/// One line of the closing table.
struct Row {
    phase: &'static str,
    what: String,
    ok: bool,
    figure: String,
}

struct Drill {
    stacks: Vec<Stack>,
    balancer: Balancer,
    key: String,
    audio_list: String,
    gateway_list: String,
    rows: Vec<Row>,
    http: reqwest::Client,
}

impl Drill {
    fn check(&mut self, r: &mut Report, phase: &'static str, ok: bool, what: impl Into<String>, detail: String) {
        let what = what.into();
        let figure: String = detail.lines().next().unwrap_or("").chars().take(70).collect();
        r.check(ok, format!("{phase}: {what}"), detail);
        self.rows.push(Row { phase, what, ok, figure });
    }

    fn call_api_env(&self, i: usize) -> Vec<(&'static str, String)> {
        let (audio, gateway) = (self.audio_list.clone(), self.gateway_list.clone());
        vec![
            ("REPLICA_ID", format!("api-{}", NAMES[i])),
            ("PUBLIC_BASE_URL", self.balancer.url()),
            ("AUDIO_PROCESSOR_URL", audio),
            ("PROVIDER_GATEWAY_URL", gateway),
        ]
    }

    fn start(&mut self, i: usize, s: Service) -> Result<u32, String> {
        let extra = if s == Service::CallApi { self.call_api_env(i) } else { Vec::new() };
        self.stacks[i].start(s, &extra)
    }

    fn api(&self, i: usize) -> String {
        self.stacks[i].ports.api_url()
    }

    /// Calls whose media WebSocket the balancer gave to replica `i` (since `since`) and whose
    /// carrier is still on the call.
    fn live_on(&self, ledger: &Ledger, i: usize, since: Instant) -> BTreeSet<String> {
        let done: BTreeSet<&str> = ledger.live.iter().filter_map(|l| l.id.as_deref()).collect();
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for route in self.balancer.routes() {
            if route.at >= since {
                last.insert(route.call, route.backend);
            }
        }
        last.into_iter().filter(|(id, b)| *b == i && !done.contains(id.as_str())).map(|(id, _)| id).collect()
    }

    async fn get_call(&self, base: &str, id: &str) -> Option<Value> {
        let r = self.http.get(format!("{base}/v1/calls/{id}")).bearer_auth(&self.key).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    /// Sum of `name` over both call-apis' `/metrics` (None when one cannot be read).
    async fn api_sum(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let mut total = 0.0;
        for i in 0..2 {
            let samples = stack::scrape(&self.http, &self.api(i)).await;
            if samples.is_empty() {
                return None;
            }
            total += prom::sum(&samples, name, filter);
        }
        Some(total)
    }

    /// Waits (up to `timeout`) until neither call-api carries a live call.
    async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.api_sum("active_calls", &[]).await == Some(0.0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `p50 … ms, max … ms` of `values` (milliseconds).
fn p50_max(values: &[f64]) -> String {
    if values.is_empty() {
        return "no samples".into();
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    format!("p50 {:.0} ms, max {:.0} ms", v[(v.len() - 1) / 2], v[v.len() - 1])
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

fn state_of(call: &Value) -> String {
    let mut k = call["status"].as_str().unwrap_or("?").to_string();
    if let Some(o) = call["outcome"].as_str() {
        k = format!("{k}/{o}");
    }
    if let Some(reason) = call["end_reason"].as_str() {
        k = format!("{k}: {reason}");
    }
    k
}

fn count<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// What a live call's carrier saw, in a word: `completed` or why not.
fn carrier_outcome(l: &Live) -> String {
    match (&l.error, l.close_code) {
        (Some(e), code) => format!(
            "{}{}",
            traffic::error_kind(e),
            code.map_or(" (no close frame)".to_string(), |c| format!(" (close {c})"))
        ),
        (None, Some(1000)) => "completed".into(),
        (None, code) => format!("completed, then close {}", code.map_or("without a frame".into(), |c| c.to_string())),
    }
}

/// Carriers whose `POST /v1/calls` failed, by error.
fn create_failures(calls: &[&Live]) -> BTreeMap<String, usize> {
    count(calls.iter().filter(|l| l.id.is_none()).filter_map(|l| l.error.as_deref().map(traffic::error_kind)))
}

/// Why each of `calls` was not a clean call: carrier error, abnormal close, turns without reply,
/// or a stored `failed` outcome (from `stored`).
/// A carrier whose create got no call (no id) is not a call; [`create_failures`] counts those.
fn cuts(calls: &[&Live], stored: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for l in calls {
        let Some(id) = l.id.as_deref() else { continue };
        let carrier = carrier_outcome(l);
        let stored_state = l.id.as_ref().and_then(|id| stored.get(id)).map(state_of);
        let failed = stored_state.as_deref().is_some_and(|s| s.contains("/failed"));
        if carrier != "completed" || failed {
            out.push(format!("{id}: carrier {carrier}; stored {}", stored_state.unwrap_or_else(|| "?".into())));
        }
    }
    out
}

pub async fn run(o: &Options, r: &mut Report) -> Result<(), String> {
    let ports = [replica_ports(0), replica_ports(1)];
    let mut all_ports: Vec<u16> = ports.iter().flat_map(|p| p.all()).collect();
    all_ports.push(BALANCER_PORT);
    stack::ports_free(&all_ports)?;
    let pg_port = o.pg_port.unwrap_or(PG_PORT);
    let dir = o.workdir("scale")?;
    let cluster = Cluster::throwaway(dir.path(), pg_port, r)?;
    let key = stack::drill_key();
    let env = [
        ("API_KEYS", key.clone()),
        ("DATABASE_URL", cluster.url()),
        ("STT_PROVIDERS", "simulated".into()),
        ("LLM_PROVIDERS", "simulated".into()),
        ("TTS_PROVIDERS", "simulated".into()),
        // Unpaced simulated output: shorter turns.
        ("SIMULATED_TOKENS_PER_SECOND", "0".into()),
        ("PEER_RESOLVE_INTERVAL_SECONDS", RESOLVE_S.to_string()),
        ("LIVE_LEASE_SECONDS", LEASE_S.to_string()),
        ("LIVE_DRAIN_TIMEOUT_SECONDS", DRAIN_S.to_string()),
    ];
    let mut stacks = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let sub = dir.path().join(NAMES[i]);
        std::fs::create_dir_all(&sub).map_err(|e| format!("create {}: {e}", sub.display()))?;
        stacks.push(Stack::new(&sub, *p, &env).map_err(|e| e.to_string())?);
    }
    let backends = ports.map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p.api)));
    let balancer = Balancer::start(([127, 0, 0, 1], BALANCER_PORT).into(), &backends, Readiness::Poll)
        .await
        .map_err(|e| format!("balancer on 127.0.0.1:{BALANCER_PORT}: {e}"))?;
    let list =
        |f: fn(&Ports) -> u16| ports.iter().map(|p| format!("http://127.0.0.1:{}", f(p))).collect::<Vec<_>>().join(",");
    let mut d = Drill {
        stacks,
        balancer,
        key: key.clone(),
        audio_list: list(|p| p.audio_grpc),
        gateway_list: list(|p| p.gateway_grpc),
        rows: Vec::new(),
        http: traffic::api_client(Duration::from_secs(10)),
    };
    let outcome = phases(r, &mut d).await;
    for s in &mut d.stacks {
        s.stop_all().await;
    }
    if let Err(e) = outcome {
        r.check(false, "the drill ran to its end", e);
    }
    // What call-api warned about over the drill (a sentence not spoken during a restart shows
    // here, not as a turn without reply).
    let mut warnings: BTreeMap<String, usize> = BTreeMap::new();
    for s in &d.stacks {
        for line in s.all_logs(Service::CallApi).lines().filter(|l| l.contains("\"level\":\"WARN\"")) {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            let mut k = v["message"].as_str().unwrap_or("?").to_string();
            if let Some(code) = v["code"].as_str() {
                k = format!("{k} ({code})");
            }
            *warnings.entry(k).or_insert(0) += 1;
        }
    }
    r.say(format!("call-api warnings over the drill (both replicas, every run): {warnings:?}"));
    // Every run's log of every process.
    let mut panics = Vec::new();
    for (i, s) in d.stacks.iter().enumerate() {
        for svc in Service::ALL {
            let (p, _, lines) = stack::bad_log_lines(&s.all_logs(svc), 3);
            if p > 0 {
                panics.push(format!(
                    "{}: {p} panic lines{}",
                    label(i, svc),
                    lines.iter().map(|l| format!("\n      {l}")).collect::<String>()
                ));
            }
        }
    }
    d.check(
        r,
        "all",
        panics.is_empty(),
        "no panic in any process's log (every run)",
        if panics.is_empty() { "6 processes, every run".into() } else { panics.join("\n    ") },
    );
    let width = d.rows.iter().map(|row| row.what.chars().count()).max().unwrap_or(5);
    r.raw("");
    r.raw(format!("    {:<8} {:<width$} {:<6} {}", "phase", "check", "result", "figures"));
    for row in &d.rows {
        r.raw(format!(
            "    {:<8} {:<width$} {:<6} {}",
            row.phase,
            row.what,
            if row.ok { "PASS" } else { "FAIL" },
            row.figure
        ));
    }
    r.raw("");
    drop(d);
    drop(cluster);
    o.keep_if_failed(dir, r);
    Ok(())
}

async fn phases(r: &mut Report, d: &mut Drill) -> Result<(), String> {
    setup(r, d).await?;
    let load = Load::new(r, d)?;
    let traffic = load.start(d);
    tokio::time::sleep(WARMUP).await;
    phase_spread(r, d).await;
    phase_rolling_restart(r, d, &traffic).await?;
    phase_kill(r, d, &traffic).await?;
    let first = end_window(r, d, traffic).await;
    // Phase 4 runs under the last window's traffic.
    let (hangups, second) = phase_hang_up(r, d, &load).await;
    phase_every_call_ended_once(r, d, &load, &first, &second, &hangups).await
}

/// Setup: peers first, then call-api a (it migrates the schema), then b; the balancer sees both.
async fn setup(r: &mut Report, d: &mut Drill) -> Result<(), String> {
    for i in 0..2 {
        d.start(i, Service::AudioProcessor)?;
        d.start(i, Service::ProviderGateway)?;
    }
    for i in 0..2 {
        for s in [Service::AudioProcessor, Service::ProviderGateway] {
            d.stacks[i].wait_ready(s, Duration::from_secs(60)).await?;
        }
    }
    for (i, name) in NAMES.iter().enumerate() {
        d.start(i, Service::CallApi)?;
        if let Err(e) = d.stacks[i].wait_ready(Service::CallApi, Duration::from_secs(60)).await {
            let said: String = d.stacks[i]
                .log(Service::CallApi)
                .lines()
                .rev()
                .find(|l| l.contains("URL"))
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            return Err(format!("call-api {name} did not start: {e} {said}"));
        }
    }
    d.check(
        r,
        "setup",
        true,
        "call-api starts with both replicas of each peer listed",
        format!("AUDIO_PROCESSOR_URL={} PROVIDER_GATEWAY_URL={}", d.audio_list, d.gateway_list),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(d.balancer.is_ready(0) && d.balancer.is_ready(1)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.say(format!(
        "6 processes up: call-api a {} b {}, audio-processor a/b gRPC {}/{}, provider-gateway a/b gRPC {}/{}; balancer on {} → call-api a, b (/ready polled every 200 ms); REPLICA_ID api-a/api-b, LIVE_LEASE_SECONDS={LEASE_S}, LIVE_DRAIN_TIMEOUT_SECONDS={DRAIN_S}, PEER_RESOLVE_INTERVAL_SECONDS={RESOLVE_S}",
        d.stacks[0].ports.api,
        d.stacks[1].ports.api,
        d.stacks[0].ports.audio_grpc,
        d.stacks[1].ports.audio_grpc,
        d.stacks[0].ports.gateway_grpc,
        d.stacks[1].ports.gateway_grpc,
        d.balancer.url()
    ));
    Ok(())
}

/// The traffic of every window: live calls through the balancer, each turn a short utterance.
struct Load {
    url: String,
    plan: Plan,
    utterance: std::sync::Arc<Vec<u8>>,
}

impl Load {
    fn new(r: &mut Report, d: &Drill) -> Result<Self, String> {
        let mut utterance = crate::loadgen::utterance(crate::loadgen::RECORDING)?;
        utterance.truncate((UTTERANCE_S * 8000.0) as usize);
        r.say(format!(
            "traffic through the balancer: {LIVE_CALLS} live calls at a time, 2 turns of {UTTERANCE_S} s of speech each; a media connection refused with 503 is tried again after its Retry-After (≤ 2 s, 5 times)"
        ));
        Ok(Self {
            url: d.balancer.url(),
            plan: Plan { live_calls: LIVE_CALLS, turns: 2, creates_per_second: 0.0, upload_every: None },
            utterance: std::sync::Arc::new(utterance),
        })
    }

    fn start(&self, d: &Drill) -> Traffic {
        let utterance = self.utterance.clone();
        Traffic::start_with(&self.url, &d.key, &self.plan, move |o: &mut crate::loadgen::Options| {
            o.utterance = utterance;
            o.media_retries = 5;
        })
    }
}

/// The end of a traffic window: its carriers' ledger, how many were still running, whether the
/// call-apis fell idle, and `voice_calls_total` (both replicas) when it was read.
struct WindowEnd {
    ledger: Ledger,
    cut: usize,
    idle: bool,
    calls_total: Option<f64>,
    at: chrono::DateTime<Utc>,
}

async fn end_window(r: &mut Report, d: &Drill, traffic: Traffic) -> WindowEnd {
    r.say("stopping the traffic (live calls finish their current call)");
    let (ledger, cut) = traffic.stop(Duration::from_secs(60)).await;
    let idle = d.wait_idle(Duration::from_secs(15)).await;
    r.say(format!("{}; {cut} carriers still running after 60 s; call-apis idle: {idle}", ledger.live_summary()));
    let calls_total = d.api_sum("voice_calls_total", &[]).await;
    WindowEnd { ledger, cut, idle, calls_total, at: Utc::now() }
}

/// Phase 2: rolling restart, one process at a time, under traffic.
async fn phase_rolling_restart(r: &mut Report, d: &mut Drill, traffic: &Traffic) -> Result<(), String> {
    let url = d.balancer.url();
    let p2_start = traffic.elapsed();
    r.say("phase 2: rolling restart, one process at a time: SIGTERM, exit, start, /ready, 3 s, next");
    let mut table = Vec::new();
    let mut bad_restarts = Vec::new();
    let mut drained: Vec<(usize, BTreeSet<String>)> = Vec::new();
    for (i, s) in ROLLING {
        let on_it =
            if s == Service::CallApi { d.live_on(&traffic.snapshot(), i, traffic.started) } else { BTreeSet::new() };
        let pid = d.stacks[i].pid(s).unwrap_or(0);
        let sent = Instant::now();
        d.stacks[i].signal(s, Signal::SIGTERM);
        let bound = if s == Service::CallApi { Duration::from_secs(DRAIN_S + 15) } else { Duration::from_secs(40) };
        let status = d.stacks[i].wait_exit(s, bound).await;
        let exited = sent.elapsed();
        d.start(i, s)?;
        let ready = d.stacks[i].wait_ready(s, Duration::from_secs(60)).await;
        let exit = status.map_or("killed (did not exit)".to_string(), |st| st.to_string());
        let ready_text = match &ready {
            Ok(t) => format!("{:.2} s", t.as_secs_f64()),
            Err(e) => e.clone(),
        };
        r.say(format!(
            "{}: SIGTERM (pid {pid}) → {exit} after {:.2} s{}; restarted, ready in {ready_text}",
            label(i, s),
            exited.as_secs_f64(),
            if s == Service::CallApi { format!("; it carried {} live calls", on_it.len()) } else { String::new() }
        ));
        if !status.is_some_and(|st| st.success()) || ready.is_err() {
            bad_restarts.push(format!("{}: {exit}, ready: {ready_text}", label(i, s)));
        }
        table.push((label(i, s), exit, exited, ready_text, on_it.len()));
        if s == Service::CallApi {
            drained.push((i, on_it));
        }
        ready?;
        tokio::time::sleep(SETTLE).await;
    }
    let p2_end = traffic.elapsed();
    r.raw(format!(
        "    {:<20} {:<22} {:>14} {:>12} {:>16}",
        "process", "exit", "SIGTERM→exit", "ready in", "live calls on it"
    ));
    for (name, exit, took, ready, live) in &table {
        r.raw(format!("    {name:<20} {exit:<22} {:>12.2} s {ready:>12} {live:>16}", took.as_secs_f64()));
    }
    let snapshot = traffic.snapshot();
    let in_phase: Vec<&Live> = snapshot.live.iter().filter(|l| l.at < p2_end && l.at + l.took > p2_start).collect();
    let still_running = d.live_on(&snapshot, 0, traffic.started).len() + d.live_on(&snapshot, 1, traffic.started).len();
    let mut stored = BTreeMap::new();
    for l in &in_phase {
        if let Some(id) = &l.id
            && let Some(call) = d.get_call(&url, id).await
        {
            stored.insert(id.clone(), call);
        }
    }
    r.say(format!(
        "phase 2: {} live calls ran during the restarts and ended: carriers {:?}; stored {:?}; {} more still running; media connections refused with 503 and tried again: {}; creates that failed: {:?}",
        in_phase.len(),
        count(in_phase.iter().map(|l| carrier_outcome(l))),
        count(stored.values().map(state_of)),
        still_running,
        in_phase.iter().map(|l| l.media_refusals).sum::<u32>(),
        create_failures(&in_phase)
    ));
    d.check(
        r,
        "phase 2",
        bad_restarts.is_empty(),
        "every process exits by itself (status 0) and is ready again",
        if bad_restarts.is_empty() { "6 of 6".into() } else { bad_restarts.join("; ") },
    );
    for (i, on_it) in &drained {
        let theirs: Vec<&Live> =
            snapshot.live.iter().filter(|l| l.id.as_ref().is_some_and(|id| on_it.contains(id))).collect();
        let mut stored_theirs = BTreeMap::new();
        for id in on_it {
            if let Some(call) = d.get_call(&url, id).await {
                stored_theirs.insert(id.clone(), call);
            }
        }
        let problems = cuts(&theirs, &stored_theirs);
        let unfinished = on_it.len() - theirs.len();
        d.check(
            r,
            "phase 2",
            problems.is_empty() && unfinished == 0 && !on_it.is_empty(),
            format!("call-api {}: its live calls end by themselves during the drain", NAMES[*i]),
            format!(
                "{} live calls at SIGTERM; stored {:?}; {unfinished} not finished{}",
                on_it.len(),
                count(stored_theirs.values().map(state_of)),
                problems.iter().take(5).map(|p| format!("\n      {p}")).collect::<String>()
            ),
        );
    }
    let problems = cuts(&in_phase, &stored);
    d.check(
        r,
        "phase 2",
        problems.is_empty() && !in_phase.is_empty(),
        "0 calls cut (no call failed, no WebSocket closed abnormally)",
        format!(
            "{} cut of {}{}",
            problems.len(),
            in_phase.iter().filter(|l| l.id.is_some()).count(),
            problems.iter().take(8).map(|p| format!("\n      {p}")).collect::<String>()
        ),
    );
    let turns: usize = in_phase.iter().map(|l| l.answered).sum();
    let silent: usize = in_phase.iter().map(|l| l.without_reply).sum();
    d.check(
        r,
        "phase 2",
        silent == 0 && turns > 0,
        "0 turns failed (every turn got a reply)",
        format!("{turns} turns answered, {silent} without reply"),
    );
    Ok(())
}

/// Phase 3: a call-api killed, once each replica carries at least two calls.
async fn phase_kill(r: &mut Report, d: &mut Drill, traffic: &Traffic) -> Result<(), String> {
    let url = d.balancer.url();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut on_a, mut on_b);
    loop {
        let snap = traffic.snapshot();
        on_a = d.live_on(&snap, 0, traffic.started);
        on_b = d.live_on(&snap, 1, traffic.started);
        if (on_a.len() >= 2 && on_b.len() >= 2) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_metrics = stack::scrape(&d.http, &d.api(1)).await;
    let reaped_before = prom::sum(&b_metrics, "voice_calls_reaped_total", &[("reason", "replica_lost")]);
    let pid = d.stacks[0].pid(Service::CallApi).unwrap_or(0);
    let kill_wall = Utc::now();
    let killed = Instant::now();
    d.stacks[0].signal(Service::CallApi, Signal::SIGKILL);
    let _ = d.stacks[0].wait_exit(Service::CallApi, Duration::from_secs(10)).await;
    r.say(format!(
        "phase 3: SIGKILL → call-api a (pid {pid}) at {} carrying {} live calls; call-api b carries {}",
        kill_wall.format("%H:%M:%S%.3f UTC"),
        on_a.len(),
        on_b.len()
    ));
    let bound = Duration::from_secs(2 * LEASE_S);
    let wait_until = killed + bound + Duration::from_secs(5);
    let mut ended: BTreeMap<String, Value> = BTreeMap::new();
    while Instant::now() < wait_until && ended.len() < on_a.len() {
        for id in &on_a {
            if !ended.contains_key(id)
                && let Some(call) = d.get_call(&url, id).await
                && call["status"] == "ended"
            {
                ended.insert(id.clone(), call);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut lost = Vec::new();
    let mut before_kill = 0;
    let mut wrong = Vec::new();
    for id in &on_a {
        match ended.get(id) {
            None => {
                let now = d.get_call(&url, id).await.map_or("unreadable".into(), |c| state_of(&c));
                wrong.push(format!(
                    "{id}: not ended {:.0} s after the kill ({now})",
                    (bound + Duration::from_secs(5)).as_secs_f64()
                ));
            }
            Some(call) => {
                let at = parse_time(&call["ended_at"]);
                let after = at.map(|t| (t - kill_wall).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3);
                match after {
                    Some(ms) if ms < 0.0 => before_kill += 1,
                    _ if call["outcome"] != "failed" || call["end_reason"] != "replica lost" => {
                        wrong.push(format!("{id}: {}", state_of(call)))
                    }
                    Some(ms) => lost.push(ms),
                    None => wrong.push(format!("{id}: ended without ended_at")),
                }
            }
        }
    }
    let late = lost.iter().filter(|t| **t > ms(bound)).count();
    r.say(format!(
        "phase 3: the killed replica's calls: {} ended failed 'replica lost' ({}, kill → ended_at), {before_kill} had ended before the kill, {} otherwise",
        lost.len(),
        p50_max(&lost),
        wrong.len()
    ));
    // Restart the killed one.
    d.start(0, Service::CallApi)?;
    let ready = d.stacks[0].wait_ready(Service::CallApi, Duration::from_secs(60)).await?;
    r.say(format!("phase 3: call-api a restarted, ready in {:.2} s", ready.as_secs_f64()));
    // The other replica's calls run to their end.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let snap = traffic.snapshot();
        let done = snap.live.iter().filter(|l| l.id.as_ref().is_some_and(|id| on_b.contains(id))).count();
        if done == on_b.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let snap = traffic.snapshot();
    let lost_carriers: Vec<String> =
        snap.live.iter().filter(|l| l.id.as_ref().is_some_and(|id| on_a.contains(id))).map(carrier_outcome).collect();
    r.say(format!("phase 3: the killed replica's carriers saw {:?}", count(lost_carriers)));
    let d_check_lost = wrong.is_empty() && late == 0 && !lost.is_empty();
    d.check(
        r,
        "phase 3",
        d_check_lost,
        format!(
            "every call on the killed call-api ends failed 'replica lost' within 2 × LIVE_LEASE_SECONDS ({} s)",
            bound.as_secs()
        ),
        format!(
            "{} of {} reaped, {} after {:.0} ms; kill → ended_at {}{}",
            lost.len(),
            on_a.len() - before_kill,
            late,
            ms(bound),
            p50_max(&lost),
            wrong.iter().take(8).map(|w| format!("\n      {w}")).collect::<String>()
        ),
    );
    let theirs: Vec<&Live> = snap.live.iter().filter(|l| l.id.as_ref().is_some_and(|id| on_b.contains(id))).collect();
    let mut stored_b = BTreeMap::new();
    for id in &on_b {
        if let Some(call) = d.get_call(&url, id).await {
            stored_b.insert(id.clone(), call);
        }
    }
    let problems = cuts(&theirs, &stored_b);
    let silent: usize = theirs.iter().map(|l| l.without_reply).sum();
    d.check(
        r,
        "phase 3",
        problems.is_empty() && silent == 0 && theirs.len() == on_b.len() && !on_b.is_empty(),
        "every call on the other call-api completes",
        format!(
            "{} live on call-api b at the kill, {} finished: stored {:?}; {silent} turns without reply{}",
            on_b.len(),
            theirs.len(),
            count(stored_b.values().map(state_of)),
            problems.iter().take(5).map(|p| format!("\n      {p}")).collect::<String>()
        ),
    );
    let reaped_after = d.api_sum("voice_calls_reaped_total", &[("reason", "replica_lost")]).await.unwrap_or(f64::NAN);
    let counted = reaped_after - reaped_before;
    d.check(
        r,
        "phase 3",
        !lost.is_empty() && counted == lost.len() as f64,
        "each lost call reaped once (voice_calls_reaped_total{reason=\"replica_lost\"}, both replicas)",
        format!("{} calls reaped, counted {counted}", lost.len()),
    );
    Ok(())
}

/// Phase 4: hang-up from the other replica, under a second window of traffic.
async fn phase_hang_up(r: &mut Report, d: &mut Drill, load: &Load) -> (Vec<HangUp>, WindowEnd) {
    let traffic2 = load.start(d);
    let started2 = Instant::now();
    r.say(format!(
        "phase 4: {HANGUPS} live calls, each on one call-api directly (a, b, a, …), ended by POST /v1/calls/{{id}}/end on the other; traffic through the balancer meanwhile"
    ));
    let mut hangups = Vec::new();
    for n in 0..HANGUPS {
        let h = hang_up(d, n).await;
        r.say(format!("  {}", h.line()));
        hangups.push(h);
    }
    let closes: Vec<f64> = hangups.iter().filter_map(|h| h.close.map(|(t, _)| ms(t))).collect();
    let bad: Vec<String> = hangups.iter().filter(|h| !h.closed_in_time()).map(HangUp::line).collect();
    d.check(
        r,
        "phase 4",
        bad.is_empty() && hangups.len() == HANGUPS,
        "hang-up on the other replica closes the carrier's WebSocket (1000) within 1 s",
        format!(
            "{} of {HANGUPS} within {} ms: POST /end → close frame {}{}",
            HANGUPS - bad.len(),
            HANGUP_BOUND.as_millis(),
            p50_max(&closes),
            bad.iter().take(6).map(|b| format!("\n      {b}")).collect::<String>()
        ),
    );
    let twice: Vec<String> =
        hangups.iter().filter(|h| h.again != Some(409) || h.stored != "ended/completed").map(HangUp::line).collect();
    d.check(
        r,
        "phase 4",
        twice.is_empty(),
        "a second end answers 409; the call is stored ended/completed",
        format!(
            "second end: {:?}; stored {:?}{}",
            count(hangups.iter().map(|h| h.again.map_or("no answer".into(), |s| s.to_string()))),
            count(hangups.iter().map(|h| h.stored.clone())),
            twice.iter().take(6).map(|b| format!("\n      {b}")).collect::<String>()
        ),
    );
    let left = FINAL_TRAFFIC.saturating_sub(started2.elapsed());
    tokio::time::sleep(left).await;
    let second = end_window(r, d, traffic2).await;
    (hangups, second)
}

/// Phase 5: every call ended exactly once.
async fn phase_every_call_ended_once(
    r: &mut Report,
    d: &mut Drill,
    load: &Load,
    first: &WindowEnd,
    second: &WindowEnd,
    hangups: &[HangUp],
) -> Result<(), String> {
    let mut all = Ledger::default();
    all.live.extend(first.ledger.live.iter().cloned());
    all.live.extend(second.ledger.live.iter().cloned());
    for h in hangups {
        all.live.push(Live {
            id: Some(h.id.clone()),
            error: None,
            answered: 0,
            without_reply: 0,
            latencies: Vec::new(),
            frames: 0,
            at: Duration::ZERO,
            took: Duration::ZERO,
            close_code: h.close.and_then(|(_, c)| c),
            media_refusals: 0,
        });
    }
    let v = verify::verify(&d.http, &load.url, &d.key, &all, first.cut == 0 && second.cut == 0).await;
    let listed = list_calls(&d.http, &load.url, &d.key).await?;
    let states = count(listed.iter().map(state_of));
    r.say(format!("phase 5: {} calls stored, by state: {states:?}", listed.len()));
    let not_ended: Vec<String> = listed
        .iter()
        .filter(|c| c["status"] != "ended" || c["outcome"].is_null() || c["ended_at"].is_null())
        .map(|c| format!("{}: {}", c["id"].as_str().unwrap_or("?"), state_of(c)))
        .collect();
    let shown: String = not_ended
        .iter()
        .cloned()
        .chain(
            v.inconsistent
                .iter()
                .filter(|(id, _)| !not_ended.iter().any(|n| n.starts_with(id.as_str())))
                .map(|(id, p)| format!("{id}: {p}")),
        )
        .take(8)
        .map(|m| format!("\n      {m}"))
        .collect();
    d.check(
        r,
        "phase 5",
        not_ended.is_empty()
            && v.missing.is_empty()
            && v.unreadable.is_empty()
            && v.inconsistent.is_empty()
            && !listed.is_empty(),
        "every call is ended, with one outcome (none left queued or in_progress)",
        format!(
            "{} calls, {} not ended; {} missing, {} unreadable, {} breaking the record's rules{}",
            listed.len(),
            not_ended.len(),
            v.missing.len(),
            v.unreadable.len(),
            v.inconsistent.len(),
            shown
        ),
    );
    d.check(
        r,
        "phase 5",
        v.unexpected.is_empty() && v.unaccounted.is_empty(),
        "stored outcomes match the carriers; no call the client was not told about",
        format!(
            "{} mismatches, {} unaccounted{}",
            v.unexpected.len(),
            v.unaccounted.len(),
            v.unexpected
                .iter()
                .map(|(id, p)| format!("{id}: {p}"))
                .chain(v.unaccounted.iter().cloned())
                .take(8)
                .map(|m| format!("\n      {m}"))
                .collect::<String>()
        ),
    );
    let ended_in_window =
        listed.iter().filter(|c| parse_time(&c["ended_at"]).is_some_and(|t| t > first.at && t <= second.at)).count();
    let counted = match (first.calls_total, second.calls_total) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    d.check(
        r,
        "phase 5",
        first.idle && second.idle && counted == Some(ended_in_window as f64) && ended_in_window > 0,
        "voice_calls_total counts each ended call once (both replicas, last window)",
        format!(
            "{ended_in_window} calls ended from {} to {}, counted {} (both call-apis first.idle at both ends: {})",
            first.at.format("%H:%M:%S%.3f"),
            second.at.format("%H:%M:%S%.3f"),
            counted.map_or("? (a /metrics unreadable)".into(), |c| c.to_string()),
            first.idle && second.idle
        ),
    );
    let stats = d.balancer.stats();
    r.say(format!(
        "balancer: connections to call-api a {} (refused {}), to b {} (refused {}), closed for want of a ready backend {}; media WebSockets routed {}",
        stats[0].forwarded,
        stats[0].refused,
        stats[1].forwarded,
        stats[1].refused,
        d.balancer.dropped(),
        d.balancer.routes().len()
    ));
    Ok(())
}

/// Phase 1: the share of each peer replica, from its own `/metrics`.
async fn phase_spread(r: &mut Report, d: &mut Drill) {
    let mut streams = [0.0; 2];
    let mut gateway = [0.0; 2];
    for i in 0..2 {
        let a = stack::scrape(&d.http, &d.stacks[i].ports.admin_base(Service::AudioProcessor)).await;
        // Calls' live streams, their own or legs of a shared stream (LIVE_AUDIO_GATHER_MS).
        streams[i] = prom::sum(&a, "audio_streams_opened_total", &[]);
        let g = stack::scrape(&d.http, &d.stacks[i].ports.admin_base(Service::ProviderGateway)).await;
        gateway[i] =
            prom::sum(&g, "grpc_server_started_total", &[("grpc_service", "kraliki.provider.v1.ProviderGateway")]);
    }
    let share = |v: [f64; 2], i: usize| if v[0] + v[1] > 0.0 { 100.0 * v[i] / (v[0] + v[1]) } else { 0.0 };
    r.say(format!("phase 1: after {} s of traffic, per replica (its own /metrics):", WARMUP.as_secs()));
    r.raw(format!(
        "    {:<10} {:>20} {:>7} {:>26} {:>7}",
        "replica", "live audio streams", "share", "provider-gateway calls", "share"
    ));
    for (i, name) in NAMES.iter().enumerate() {
        r.raw(format!(
            "    {:<10} {:>20} {:>6.0}% {:>26} {:>6.0}%",
            name,
            streams[i],
            share(streams, i),
            gateway[i],
            share(gateway, i)
        ));
    }
    let mut seen = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let m = stack::scrape(&d.http, &d.api(i)).await;
        let eps: Vec<String> = m
            .iter()
            .filter(|s| s.name == "peer_endpoints")
            .map(|s| format!("{}={}", s.labels.get("peer").map_or("?", String::as_str), s.value))
            .collect();
        seen.push(format!("call-api {name}: {}", if eps.is_empty() { "not exported".into() } else { eps.join(", ") }));
    }
    r.say(format!("phase 1: peer_endpoints — {}", seen.join("; ")));
    d.check(
        r,
        "phase 1",
        (0..2).all(|i| share(streams, i) >= 20.0),
        "live audio streams spread over both audio-processor replicas (each ≥ 20 %)",
        format!("a {} ({:.0} %), b {} ({:.0} %)", streams[0], share(streams, 0), streams[1], share(streams, 1)),
    );
    d.check(
        r,
        "phase 1",
        (0..2).all(|i| share(gateway, i) >= 10.0),
        "gRPC calls spread over both provider-gateway replicas (each ≥ 10 %)",
        format!("a {} ({:.0} %), b {} ({:.0} %)", gateway[0], share(gateway, 0), gateway[1], share(gateway, 1)),
    );
}

/// Every stored call of the drill's tenant.
async fn list_calls(http: &reqwest::Client, url: &str, key: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let page_url = match &cursor {
            Some(c) => format!("{url}/v1/calls?limit=200&cursor={c}"),
            None => format!("{url}/v1/calls?limit=200"),
        };
        let page: Value = http
            .get(&page_url)
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| format!("GET /v1/calls: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET /v1/calls: {e}"))?;
        out.extend(page["calls"].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    Ok(out)
}

/// One phase-4 call.
struct HangUp {
    id: String,
    /// The replica carrying the media session; the end goes to the other.
    carrier: usize,
    end_status: Option<u16>,
    /// POST /end → the carrier's close frame (its code; None: the connection ended without one).
    close: Option<(Duration, Option<u16>)>,
    again: Option<u16>,
    stored: String,
    error: Option<String>,
}

impl HangUp {
    fn closed_in_time(&self) -> bool {
        self.error.is_none()
            && self.end_status == Some(200)
            && self.close.is_some_and(|(t, code)| t <= HANGUP_BOUND && code == Some(1000))
    }

    fn line(&self) -> String {
        let close = match self.close {
            Some((t, Some(code))) => format!("close {code} after {:.0} ms", ms(t)),
            Some((t, None)) => format!("connection dropped without a close frame after {:.0} ms", ms(t)),
            None => format!("no close within {} s", CLOSE_WAIT.as_secs()),
        };
        format!(
            "{} on call-api {}, ended on {}: POST /end {}, {close}; second end {}; stored {}{}",
            self.id,
            NAMES[self.carrier],
            NAMES[1 - self.carrier],
            self.end_status.map_or("no answer".into(), |s| s.to_string()),
            self.again.map_or("no answer".into(), |s| s.to_string()),
            self.stored,
            self.error.as_ref().map_or(String::new(), |e| format!(" ({e})"))
        )
    }
}

async fn hang_up(d: &Drill, n: usize) -> HangUp {
    let x = n % 2;
    let mut h = HangUp {
        id: String::new(),
        carrier: x,
        end_status: None,
        close: None,
        again: None,
        stored: "?".into(),
        error: None,
    };
    if let Err(e) = hang_up_inner(d, &mut h).await {
        h.error = Some(e);
    }
    if !h.id.is_empty()
        && let Some(call) = d.get_call(&d.api(x), &h.id).await
    {
        h.stored = state_of(&call);
    }
    h
}

async fn hang_up_inner(d: &Drill, h: &mut HangUp) -> Result<(), String> {
    let (x, y) = (h.carrier, 1 - h.carrier);
    let (carrier_api, other_api) = (d.api(x), d.api(y));
    let created: Value = d
        .http
        .post(format!("{carrier_api}/v1/calls"))
        .bearer_auth(&d.key)
        .json(&json!({"provider": "websocket", "from": "+14155550100", "to": "+14155550199", "direction": "inbound",
                       "metadata": {"source": "voice-kraliki drill", "phase": "hang-up"}}))
        .send()
        .await
        .map_err(|e| format!("create: {e}"))?
        .json()
        .await
        .map_err(|e| format!("create: {e}"))?;
    h.id = created["id"].as_str().ok_or_else(|| format!("create: {created}"))?.to_string();
    let id = h.id.clone();
    let media_url = created["media_url"].as_str().ok_or("no media_url")?;
    let path = media_url.split_once("/v1/").map(|(_, p)| p).ok_or("bad media_url")?;
    let ws_url = format!("{}/v1/{path}", carrier_api.replacen("http", "ws", 1));
    let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.map_err(|e| format!("media websocket: {e}"))?;
    let (mut sink, mut stream) = ws.split();
    for m in crate::loadgen::carrier_start(&id) {
        sink.send(m).await.map_err(|e| e.to_string())?;
    }
    let send = |v: Value| Message::text(v.to_string());
    let mut reader = tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            match m {
                Ok(Message::Close(frame)) => return (Instant::now(), Some(frame.map_or(1005, |f| u16::from(f.code)))),
                Ok(_) => {}
                Err(_) => return (Instant::now(), None),
            }
        }
        (Instant::now(), None)
    });
    // Silence in 20 ms frames, as a phone line carries, until the call is over.
    let quiet = CancellationToken::new();
    let sender = {
        let quiet = quiet.clone();
        tokio::spawn(async move {
            let payload = STANDARD.encode([0xFFu8; 160]);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut seq = 1u64;
            loop {
                tokio::select! {
                    () = quiet.cancelled() => break,
                    _ = tick.tick() => {}
                }
                seq += 1;
                let m = json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": "MZ",
                               "media": {"track": "inbound", "chunk": seq.to_string(), "timestamp": ((seq - 2) * 20).to_string(), "payload": payload}});
                if sink.send(Message::text(m.to_string())).await.is_err() {
                    break;
                }
            }
            (sink, seq)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(call) = d.get_call(&other_api, &id).await
            && call["status"] == "in_progress"
        {
            break;
        }
        if Instant::now() > deadline {
            quiet.cancel();
            return Err("not in_progress within 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let end = d
        .http
        .post(format!("{other_api}/v1/calls/{id}/end"))
        .bearer_auth(&d.key)
        .json(&json!({"outcome": "completed"}))
        .send()
        .await;
    h.end_status = end.as_ref().ok().map(|r| r.status().as_u16());
    if let Ok(Ok((at, code))) = tokio::time::timeout(CLOSE_WAIT, &mut reader).await {
        h.close = Some((at.saturating_duration_since(sent), code));
    }
    quiet.cancel();
    if let Ok((mut sink, seq)) = sender.await
        && h.close.is_none()
    {
        // No close came: end the call from the carrier's side.
        let _ = sink
            .send(send(
                json!({"event": "stop", "sequenceNumber": (seq + 1).to_string(), "streamSid": "MZ", "stop": {}}),
            ))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut reader).await;
        let _ = sink.close().await;
    }
    reader.abort();
    h.again = d
        .http
        .post(format!("{carrier_api}/v1/calls/{id}/end"))
        .bearer_auth(&d.key)
        .json(&json!({"outcome": "completed"}))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_ports_are_their_own() {
        let mut all: Vec<u16> = [0, 10, 20, 30].iter().flat_map(|o| Ports::block(*o).all()).collect();
        all.extend(replica_ports(0).all());
        all.extend(replica_ports(1).all());
        all.push(BALANCER_PORT);
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no port shared with another drill or between the replicas");
        assert!(!all.contains(&5432) && PG_PORT != crate::drill::database::PG_PORT);
        // Below Linux's default ephemeral range: an outgoing connection never holds one.
        all.extend([PG_PORT, crate::drill::database::PG_PORT]);
        assert!(all.iter().all(|p| *p < 32768), "{all:?}");
    }

    #[test]
    fn a_call_is_cut_when_the_carrier_or_the_record_says_so() {
        let live = |error: Option<&str>, close: Option<u16>| Live {
            id: Some("c".into()),
            error: error.map(str::to_string),
            answered: 2,
            without_reply: 0,
            latencies: vec![],
            frames: 10,
            at: Duration::ZERO,
            took: Duration::from_secs(10),
            close_code: close,
            media_refusals: 0,
        };
        let completed = BTreeMap::from([("c".to_string(), json!({"status": "ended", "outcome": "completed"}))]);
        let failed = BTreeMap::from([(
            "c".to_string(),
            json!({"status": "ended", "outcome": "failed", "end_reason": "service shutting down"}),
        )]);
        assert!(cuts(&[&live(None, Some(1000))], &completed).is_empty());
        assert_eq!(cuts(&[&live(None, Some(1001))], &completed).len(), 1, "closed with 1001 after stop");
        assert_eq!(cuts(&[&live(Some("the server closed the media connection"), Some(1001))], &completed).len(), 1);
        assert_eq!(cuts(&[&live(None, Some(1000))], &failed).len(), 1);
        assert_eq!(p50_max(&[3.0, 1.0, 2.0, 10.0]), "p50 2 ms, max 10 ms");
        assert_eq!(p50_max(&[]), "no samples");
    }
}
