//! `drill provider`: the `simulated` provider first in every failover order, an always-working
//! OpenAI-compatible server on loopback second. Phase 1: simulated fails half its calls
//! (`SIMULATED_ERROR_RATE=0.5`); phase 2 (gateway restarted): it stalls half of them
//! (`SIMULATED_STALL_RATE=0.5`). Live calls and recording uploads run through each phase. Checks:
//! failover and circuit breaking show in provider-gateway's `/metrics`, and the calls complete.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    Options,
    fake_openai::FakeOpenAi,
    prom::{self, Sample},
    report::Report,
    stack::{self, Ports, Service, Stack},
    traffic::{Ledger, Plan, Traffic},
};

const PHASE: Duration = Duration::from_secs(30);

/// Counter deltas between two scrapes, by label values (only non-zero ones).
pub fn deltas(before: &[Sample], after: &[Sample], name: &str, labels: &[&str]) -> BTreeMap<String, f64> {
    let key =
        |s: &Sample| labels.iter().map(|l| s.labels.get(*l).map_or("", String::as_str)).collect::<Vec<_>>().join(" ");
    let mut out = BTreeMap::new();
    for s in after.iter().filter(|s| s.name == name) {
        *out.entry(key(s)).or_insert(0.0) += s.value;
    }
    for s in before.iter().filter(|s| s.name == name) {
        *out.entry(key(s)).or_insert(0.0) -= s.value;
    }
    out.retain(|_, v| *v != 0.0);
    out
}

fn table(r: &Report, title: &str, rows: &BTreeMap<String, f64>) {
    r.raw(format!("    {title}:"));
    if rows.is_empty() {
        r.raw("      (none)");
    }
    for (k, v) in rows {
        r.raw(format!("      {k:<58} {v:>8.0}"));
    }
}

struct Phase {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    /// Outcomes of `simulated` that show the fault.
    fault_outcomes: &'static [&'static str],
}

pub async fn run(o: &Options, r: &mut Report) -> Result<(), String> {
    let mut setup = setup(o, r).await?;
    let phases = [
        Phase {
            name: "errors (SIMULATED_ERROR_RATE=0.5)",
            env: vec![("SIMULATED_ERROR_RATE", "0.5".into())],
            fault_outcomes: &["simulated_fault"],
        },
        Phase {
            name: "stalls (SIMULATED_STALL_RATE=0.5)",
            env: vec![("SIMULATED_STALL_RATE", "0.5".into())],
            fault_outcomes: &["first_byte_timeout", "stalled"],
        },
    ];
    for (i, phase) in phases.iter().enumerate() {
        inject(&mut setup, i, phase, r).await?;
        let seen = load(&setup, r).await;
        check(r, i, phase, &seen);
    }
    stack::check_logs(r, &setup.stack, false);
    setup.stack.stop_all().await;
    o.keep_if_failed(setup.dir, r);
    Ok(())
}

/// What the drill runs on: the stack, the loopback OpenAI-compatible server behind the simulated
/// provider, and where provider-gateway's metrics are.
struct Setup {
    ports: Ports,
    dir: tempfile::TempDir,
    key: String,
    fake: FakeOpenAi,
    stack: Stack,
    http: reqwest::Client,
    gateway: String,
}

/// Setup: audio-processor and call-api up; provider-gateway starts with each phase's fault.
async fn setup(o: &Options, r: &mut Report) -> Result<Setup, String> {
    let ports = Ports::block(20);
    stack::ports_free(&ports.all())?;
    let dir = o.workdir("provider")?;
    let key = stack::drill_key();
    let fake = FakeOpenAi::start().await.map_err(|e| format!("fake OpenAI server: {e}"))?;
    let env = [
        ("API_KEYS", key.clone()),
        ("LOG_LEVEL", "warn".into()),
        ("DATABASE_URL", format!("sqlite://{}/drill.db", dir.path().display())),
        ("STT_PROVIDERS", "simulated,openai".into()),
        ("LLM_PROVIDERS", "simulated,openai".into()),
        ("TTS_PROVIDERS", "simulated,openai".into()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("SIMULATED_LATENCY", "fixed:20".into()),
        ("SIMULATED_TTFB_SECONDS", "0.02".into()),
        ("PROVIDER_CIRCUIT_OPEN_SECONDS", "5".into()),
        ("PROVIDER_FIRST_BYTE_TIMEOUT_SECONDS", "1.5".into()),
        ("PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS", "2".into()),
        ("PROVIDER_IDLE_TIMEOUT_SECONDS", "1.5".into()),
    ];
    let mut stack = Stack::new(dir.path(), ports, &env).map_err(|e| e.to_string())?;
    r.say(format!(
        "failover order STT/LLM/TTS = simulated,openai (openai = a loopback OpenAI-compatible server at {}); PROVIDER_CIRCUIT_OPEN_SECONDS=5, first-byte timeout 1.5 s, transcribe timeout 2 s, idle timeout 1.5 s; circuit opens after 5 consecutive failures or ≥ 50 % of 20",
        fake.base_url()
    ));
    stack.start(Service::AudioProcessor, &[])?;
    stack.start(Service::CallApi, &[])?;
    let http = stack::client();
    let gateway = ports.admin_base(Service::ProviderGateway);
    Ok(Setup { ports, dir, key, fake, stack, http, gateway })
}

/// Fault: provider-gateway (re)started with the phase's fault injected into the simulated
/// provider.
async fn inject(setup: &mut Setup, i: usize, phase: &Phase, r: &mut Report) -> Result<(), String> {
    if i > 0 {
        setup.stack.signal(Service::ProviderGateway, nix::sys::signal::Signal::SIGTERM);
        setup.stack.wait_exit(Service::ProviderGateway, Duration::from_secs(40)).await;
    }
    setup.stack.start(Service::ProviderGateway, &phase.env)?;
    for s in Service::ALL {
        setup.stack.wait_ready(s, Duration::from_secs(60)).await?;
    }
    r.say(format!("phase {}: {} — provider-gateway (re)started", i + 1, phase.name));
    Ok(())
}

/// What one phase's load showed.
struct Seen {
    ledger: Ledger,
    cut: usize,
    after: Vec<Sample>,
    circuit: BTreeMap<String, f64>,
    served: BTreeMap<&'static str, usize>,
    requests: BTreeMap<String, f64>,
    failovers: BTreeMap<String, f64>,
}

/// Load: live calls and recording uploads for [`PHASE`], with provider-gateway's metrics before
/// and after and its circuit states watched throughout.
async fn load(setup: &Setup, r: &mut Report) -> Seen {
    let hits_before = setup.fake.hits();
    let before = stack::scrape(&setup.http, &setup.gateway).await;
    // Circuit state over the phase: the highest value seen per provider × operation.
    let circuit: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
    let watcher = {
        let (circuit, http, gateway) = (circuit.clone(), setup.http.clone(), setup.gateway.clone());
        tokio::spawn(async move {
            loop {
                for s in stack::scrape(&http, &gateway).await.iter().filter(|s| s.name == "provider_circuit_state") {
                    let k = format!(
                        "{} {}",
                        s.labels.get("provider").map_or("", String::as_str),
                        s.labels.get("operation").map_or("", String::as_str)
                    );
                    let mut c = circuit.lock().expect("circuit");
                    let e = c.entry(k).or_insert(0.0);
                    *e = e.max(s.value);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let plan = Plan { live_calls: 4, turns: 2, creates_per_second: 0.0, upload_every: Some(Duration::from_secs(3)) };
    r.say(format!(
        "traffic for {} s: {} live calls at a time ({} turns each), a recording upload every 3 s",
        PHASE.as_secs(),
        plan.live_calls,
        plan.turns
    ));
    let traffic = Traffic::start(&setup.ports.api_url(), &setup.key, &plan);
    tokio::time::sleep(PHASE).await;
    let (ledger, cut) = traffic.stop(Duration::from_secs(90)).await;
    watcher.abort();
    let after = stack::scrape(&setup.http, &setup.gateway).await;
    let circuit = circuit.lock().expect("circuit").clone();
    let hits_after = setup.fake.hits();
    let served: BTreeMap<&str, usize> =
        hits_after.iter().map(|(k, v)| (*k, v - hits_before.get(k).copied().unwrap_or(0))).collect();
    let requests = deltas(&before, &after, "provider_requests_total", &["provider", "operation", "outcome"]);
    let failovers = deltas(&before, &after, "provider_failovers_total", &["operation", "from", "to"]);
    Seen { ledger, cut, after, circuit, served, requests, failovers }
}

/// Check: the fault was injected, the gateway failed over and opened the circuit, and every
/// live call and recording still succeeded.
fn check(r: &mut Report, i: usize, phase: &Phase, seen: &Seen) {
    let Seen { ledger, cut, after, circuit, served, requests, failovers } = seen;
    let cut = *cut;
    r.say("provider-gateway /metrics over the phase (after − before):");
    table(r, "provider_requests_total{provider, operation, outcome}", requests);
    table(r, "provider_failovers_total{operation, from, to}", failovers);
    r.raw("    provider_circuit_state{provider, operation}: highest seen during the phase (0 closed, 1 half-open, 2 open) → at the end");
    for (k, v) in circuit {
        let now = prom::max(
            after,
            "provider_circuit_state",
            &[("provider", k.split(' ').next().unwrap_or("")), ("operation", k.split(' ').nth(1).unwrap_or(""))],
        )
        .unwrap_or(f64::NAN);
        r.raw(format!("      {k:<58} {v:>8.0} → {now:.0}"));
    }
    r.say(format!("loopback OpenAI-compatible server served {served:?}"));
    r.say(ledger.live_summary());
    r.say(ledger.upload_summary());
    let faults: f64 = requests
        .iter()
        .filter(|(k, _)| k.starts_with("simulated ") && phase.fault_outcomes.iter().any(|o| k.ends_with(o)))
        .map(|(_, v)| v)
        .sum();
    let moved: f64 = failovers.iter().filter(|(k, _)| k.ends_with("simulated openai")).map(|(_, v)| v).sum();
    let short_circuited: f64 = requests
        .iter()
        .filter(|(k, _)| k.starts_with("simulated ") && k.ends_with("circuit_open"))
        .map(|(_, v)| v)
        .sum();
    let opened: Vec<&String> =
        circuit.iter().filter(|(k, v)| k.starts_with("simulated") && **v >= 2.0).map(|(k, _)| k).collect();
    let label = format!("phase {}", i + 1);
    r.check(
        faults > 0.0,
        format!("{label}: the fault is injected"),
        format!("{faults} simulated attempts ended {}", phase.fault_outcomes.join("/")),
    );
    r.check(
        moved > 0.0 && served.values().sum::<usize>() > 0,
        format!("{label}: failover to the second provider"),
        format!("{moved} failovers simulated → openai; the OpenAI-compatible server answered {served:?}"),
    );
    r.check(
        !opened.is_empty() && short_circuited > 0.0,
        format!("{label}: circuit breaker opens"),
        format!("simulated circuit seen open for {opened:?}; {short_circuited} attempts refused by the open circuit"),
    );
    let live_failed = ledger.live.iter().filter(|l| l.error.is_some()).count();
    let silent: usize = ledger.live.iter().map(|l| l.without_reply).sum();
    let answered: usize = ledger.live.iter().map(|l| l.answered).sum();
    r.check(
        !ledger.live.is_empty() && live_failed == 0 && silent == 0 && cut == 0,
        format!("{label}: live calls complete, every turn answered"),
        format!(
            "{} calls, {live_failed} failed, {answered} turns answered, {silent} without reply{}",
            ledger.live.len(),
            ledger
                .live
                .iter()
                .filter_map(|l| l.error.as_deref())
                .take(3)
                .map(|e| format!("\n      {e}"))
                .collect::<String>()
        ),
    );
    let good = ledger
        .uploads
        .iter()
        .filter(|u| {
            u.status == Some(200)
                && u.analysis_status.as_deref() == Some("done")
                && u.transcript_status.as_deref() == Some("done")
        })
        .count();
    r.check(
        !ledger.uploads.is_empty() && good == ledger.uploads.len(),
        format!("{label}: recording analyses succeed with a transcript"),
        format!("{good} of {} uploads answered 200 with analysis and transcript done", ledger.uploads.len()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_only_what_changed() {
        let before = prom::parse(
            "provider_requests_total{provider=\"simulated\",operation=\"chat\",outcome=\"success\"} 5\n\
             provider_requests_total{provider=\"openai\",operation=\"chat\",outcome=\"success\"} 2\n",
        );
        let after = prom::parse(
            "provider_requests_total{provider=\"simulated\",operation=\"chat\",outcome=\"success\"} 9\n\
             provider_requests_total{provider=\"openai\",operation=\"chat\",outcome=\"success\"} 2\n\
             provider_requests_total{provider=\"simulated\",operation=\"chat\",outcome=\"simulated_fault\"} 3\n",
        );
        let d = deltas(&before, &after, "provider_requests_total", &["provider", "operation", "outcome"]);
        assert_eq!(d.len(), 2);
        assert_eq!(d["simulated chat success"], 4.0);
        assert_eq!(d["simulated chat simulated_fault"], 3.0);
    }
}
