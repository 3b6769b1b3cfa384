//! `drill shutdown`: SIGTERM to audio-processor, provider-gateway and call-api in turn while
//! live calls, REST creates and recording uploads run; each service is restarted before the
//! next is drilled. Checks per service: readiness fails (503) before the listener closes, exit
//! within the grace period with status 0, spans flushed to a loopback OTLP receiver after the
//! signal, a clean log. At the end: every call the API answered 201 for is stored and whole.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use telemetry::testing::{OtlpReceiver, SentrySink};

use super::{
    Options,
    report::Report,
    stack::{self, Ports, Service, Stack},
    traffic::{Plan, Traffic},
    verify,
};

const DELAY_S: u64 = 1;
const TIMEOUT_S: u64 = 10;
const FLUSH_S: u64 = 5;
/// Slack on top of delay + drain + flush: process teardown and the poll interval.
const SLACK: Duration = Duration::from_secs(2);

/// What the readiness poller saw after SIGTERM.
#[derive(Debug, Default, Clone)]
pub struct ReadyTrace {
    /// (time since SIGTERM, what `/ready` answered: a status code, or 0 = no connection).
    pub polls: Vec<(Duration, u16)>,
}

impl ReadyTrace {
    pub fn first(&self, pred: impl Fn(u16) -> bool) -> Option<Duration> {
        self.polls.iter().find(|(_, s)| pred(*s)).map(|(t, _)| *t)
    }

    /// Readiness failed first: the first answer that is not 200 is a 503, and it came before
    /// the first refused connection.
    pub fn failed_first(&self) -> bool {
        matches!(self.polls.iter().find(|(_, s)| *s != 200), Some((_, 503)))
    }
}

async fn poll_ready(url: String, since: Instant, stop: tokio_util::sync::CancellationToken) -> ReadyTrace {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client");
    let mut trace = ReadyTrace::default();
    while !stop.is_cancelled() {
        let status = match http.get(&url).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        trace.polls.push((since.elapsed(), status));
        if status == 0 && trace.polls.iter().filter(|(_, s)| *s == 0).count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trace
}

pub async fn run(o: &Options, r: &mut Report) -> Result<(), String> {
    let mut setup = setup(o, r).await?;
    let traffic = load(&setup, r);
    for s in Service::ALL {
        tokio::time::sleep(Duration::from_secs(8)).await;
        fault(&mut setup, &traffic, s, r).await?;
    }
    check(o, setup, traffic, r).await
}

/// What the drill runs on: the stack, its ports and key, and each service's telemetry receivers.
struct Setup {
    ports: Ports,
    dir: tempfile::TempDir,
    key: String,
    receivers: BTreeMap<Service, OtlpReceiver>,
    sentries: BTreeMap<Service, SentrySink>,
    stack: Stack,
}

impl Setup {
    /// Where `s` sends its spans and Sentry events.
    fn telemetry_env(&self, s: Service) -> [(&'static str, String); 2] {
        [("OTEL_EXPORTER_OTLP_ENDPOINT", self.receivers[&s].endpoint()), ("SENTRY_DSN", self.sentries[&s].dsn())]
    }
}

/// Setup: the three services with short shutdown bounds and their telemetry receivers.
async fn setup(o: &Options, r: &mut Report) -> Result<Setup, String> {
    let ports = Ports::block(0);
    stack::ports_free(&ports.all())?;
    let dir = o.workdir("shutdown")?;
    let key = stack::drill_key();
    let mut receivers = BTreeMap::new();
    let mut sentries = BTreeMap::new();
    for s in Service::ALL {
        receivers.insert(s, OtlpReceiver::start().await);
        sentries.insert(s, SentrySink::start().await);
    }
    let env = [
        ("API_KEYS", key.clone()),
        ("DATABASE_URL", format!("sqlite://{}/drill.db", dir.path().display())),
        ("STT_PROVIDERS", "simulated".into()),
        ("LLM_PROVIDERS", "simulated".into()),
        ("TTS_PROVIDERS", "simulated".into()),
        ("SHUTDOWN_DELAY_SECONDS", DELAY_S.to_string()),
        ("SHUTDOWN_TIMEOUT_SECONDS", TIMEOUT_S.to_string()),
        // call-api's live calls drain beside its HTTP requests, for as long (a production
        // default of 300 s would make the drill wait for its calls to end by themselves).
        ("LIVE_DRAIN_TIMEOUT_SECONDS", TIMEOUT_S.to_string()),
        ("TELEMETRY_FLUSH_TIMEOUT_SECONDS", FLUSH_S.to_string()),
        ("APM_ENABLED", "true".into()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        ("SENTRY_TRACES_SAMPLE_RATE", "1.0".into()),
    ];
    let stack = Stack::new(dir.path(), ports, &env).map_err(|e| e.to_string())?;
    let mut setup = Setup { ports, dir, key, receivers, sentries, stack };
    r.say(format!(
        "stack: SQLite in {}, simulated providers, SHUTDOWN_DELAY_SECONDS={DELAY_S} SHUTDOWN_TIMEOUT_SECONDS={TIMEOUT_S} LIVE_DRAIN_TIMEOUT_SECONDS={TIMEOUT_S} TELEMETRY_FLUSH_TIMEOUT_SECONDS={FLUSH_S}, OTLP/gRPC and Sentry (every transaction sampled) to the tests' loopback receivers, one per service",
        setup.dir.path().display()
    ));
    for s in Service::ALL {
        let telemetry = setup.telemetry_env(s);
        setup.stack.start(s, &telemetry)?;
    }
    for s in Service::ALL {
        setup.stack.wait_ready(s, Duration::from_secs(60)).await?;
    }
    Ok(setup)
}

/// Load: live calls, REST creates and recording uploads, for the whole drill.
fn load(setup: &Setup, r: &mut Report) -> Traffic {
    let plan = Plan { live_calls: 4, turns: 2, creates_per_second: 5.0, upload_every: Some(Duration::from_secs(3)) };
    r.say(format!(
        "traffic: {} live calls at a time ({} turns each), {} REST creates/s, a recording upload every {:?}",
        plan.live_calls,
        plan.turns,
        plan.creates_per_second,
        plan.upload_every.unwrap_or_default()
    ));
    Traffic::start(&setup.ports.api_url(), &setup.key, &plan)
}

/// Fault: SIGTERM to `s` under load; readiness first, a bounded exit, telemetry flushed, a clean
/// log; then `s` is started again.
async fn fault(setup: &mut Setup, traffic: &Traffic, s: Service, r: &mut Report) -> Result<(), String> {
    let bound = Duration::from_secs(DELAY_S + TIMEOUT_S + FLUSH_S) + SLACK;
    let name = s.name();
    let before = traffic.snapshot();
    let spans_before = setup.receivers[&s].total();
    let stop = tokio_util::sync::CancellationToken::new();
    let t0 = Instant::now();
    let poller = tokio::spawn(poll_ready(format!("{}/ready", setup.ports.admin_base(s)), t0, stop.clone()));
    tokio::time::sleep(Duration::from_millis(60)).await; // a few 200s first
    let sent = Instant::now();
    let at = traffic.elapsed();
    setup.stack.signal(s, Signal::SIGTERM);
    r.say(format!("SIGTERM → {name} (pid {})", setup.stack.pid(s).unwrap_or(0)));
    let status = setup.stack.wait_exit(s, bound + Duration::from_secs(15)).await;
    let took = sent.elapsed();
    stop.cancel();
    let trace = poller.await.unwrap_or_default();
    let since = |t: Duration| t.saturating_sub(sent - t0);
    let flushed = setup.receivers[&s].since(sent);
    let sentry_flushed = setup.sentries[&s].since(sent);
    let sentry_before = setup.sentries[&s].total() - sentry_flushed;
    let during = traffic.snapshot();
    let log = setup.stack.log(s);
    let first_503 = trace.first(|c| c == 503).map(since);
    let first_refused = trace.first(|c| c == 0).map(since);
    let codes: BTreeMap<u16, usize> = trace.polls.iter().fold(BTreeMap::new(), |mut m, (_, c)| {
        *m.entry(*c).or_insert(0) += 1;
        m
    });
    r.say(format!(
        "{name}: /ready after SIGTERM: first 503 at {}, first refused connection at {}, polls by answer {codes:?} (0 = refused)",
        fmt_opt(first_503),
        fmt_opt(first_refused)
    ));
    r.say(format!(
        "{name}: exited {} after {:.2} s; spans received: {spans_before} before SIGTERM, {flushed} after; traffic during the exit window: creates {:?}; {}",
        status.map_or("— killed, did not exit".to_string(), |st| st.to_string()),
        took.as_secs_f64(),
        during.create_outcomes(at, traffic.elapsed()),
        live_delta(&before, &during)
    ));
    r.check(
        trace.failed_first() && first_503.is_some(),
        format!("{name}: readiness fails first"),
        format!(
            "first /ready answer other than 200 after SIGTERM was {} (503 at {}, listener closed at {})",
            trace.polls.iter().find(|(_, c)| *c != 200).map_or("none".into(), |(_, c)| c.to_string()),
            fmt_opt(first_503),
            fmt_opt(first_refused)
        ),
    );
    r.check(
        status.is_some_and(|st| st.success()),
        format!("{name}: exit status 0"),
        status.map_or("did not exit; killed".into(), |st| st.to_string()),
    );
    r.check(
        status.is_some() && took <= bound,
        format!("{name}: exit within the grace period"),
        format!(
            "{:.2} s (bound {} s = SHUTDOWN_DELAY {DELAY_S} + SHUTDOWN_TIMEOUT {TIMEOUT_S} (= LIVE_DRAIN_TIMEOUT, drained at once) + TELEMETRY_FLUSH_TIMEOUT {FLUSH_S} + {} s slack)",
            took.as_secs_f64(),
            bound.as_secs(),
            SLACK.as_secs()
        ),
    );
    let flush_warned = log.contains("telemetry flush did not finish");
    r.check(
        flushed > 0 && sentry_flushed > 0 && !flush_warned,
        format!("{name}: telemetry flushed"),
        format!(
            "{flushed} spans reached the OTLP receiver and {sentry_flushed} Sentry items (before: {sentry_before}) the Sentry receiver after SIGTERM{}",
            if flush_warned { "; the log says the flush did not finish" } else { "" }
        ),
    );
    let (panics, errors, lines) = stack::bad_log_lines(&log, 5);
    let stopped = log.contains("\"message\":\"stopped\"");
    r.check(
        panics == 0 && stopped,
        format!("{name}: clean stop in the log"),
        format!(
            "'stopped' logged: {stopped}; panics {panics}; ERROR lines {errors}{}",
            lines.iter().map(|l| format!("\n      {l}")).collect::<String>()
        ),
    );
    let telemetry = setup.telemetry_env(s);
    setup.stack.start(s, &telemetry)?;
    let ready = setup.stack.wait_ready(s, Duration::from_secs(60)).await?;
    r.say(format!("{name}: restarted, ready in {:.2} s", ready.as_secs_f64()));
    Ok(())
}

/// Check: every accepted call is stored as its client was told, no live call was cut by a peer's
/// restart, and no process panicked.
async fn check(o: &Options, mut setup: Setup, traffic: Traffic, r: &mut Report) -> Result<(), String> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.say("stopping the traffic (live calls finish their current call)");
    let (ledger, cut) = traffic.stop(Duration::from_secs(90)).await;
    // Live sessions end a moment after the carrier's stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.say(ledger.live_summary());
    r.say(ledger.upload_summary());
    r.say(format!("REST creates: {:?}", ledger.create_outcomes(Duration::ZERO, Duration::MAX)));
    let http = traffic_client();
    let v = verify::verify(&http, &setup.ports.api_url(), &setup.key, &ledger, cut == 0).await;
    report_verdict(r, &v);
    let cut_by_peer: usize =
        v.states.iter().filter(|(k, _)| k.contains("audio-processor unavailable")).map(|(_, n)| n).sum();
    r.check(
        cut_by_peer == 0,
        "live calls survive a peer restart",
        format!(
            "{cut_by_peer} live calls ended failed 'audio-processor unavailable' (call-api reopens a call's audio stream when an audio-processor shuts down)"
        ),
    );
    // Everything the services logged over the drill (every run).
    for s in Service::ALL {
        let (panics, errors, lines) = stack::bad_log_lines(&setup.stack.all_logs(s), 5);
        r.say(format!(
            "{}: over all runs: panics {panics}, ERROR lines {errors}{}",
            s.name(),
            lines.iter().map(|l| format!("\n      {l}")).collect::<String>()
        ));
        if panics > 0 {
            r.check(false, format!("{}: no panic", s.name()), format!("{panics} panic lines"));
        }
    }
    setup.stack.stop_all().await;
    o.keep_if_failed(setup.dir, r);
    Ok(())
}

fn traffic_client() -> reqwest::Client {
    super::traffic::api_client(Duration::from_secs(30))
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("+{} ms", d.as_millis()))
}

fn live_delta(before: &super::traffic::Ledger, after: &super::traffic::Ledger) -> String {
    let new = &after.live[before.live.len().min(after.live.len())..];
    let failed: Vec<String> = new.iter().filter_map(|l| l.error.as_deref()).map(super::traffic::error_kind).collect();
    format!("live calls ended meanwhile: {} ({} failed: {:?})", new.len(), failed.len(), failed)
}

/// The end-of-drill checks on the stored calls (shared with the other drills).
pub fn report_verdict(r: &mut Report, v: &verify::Verdict) {
    r.say(format!("stored calls by state (accepted ones): {:?}", v.states));
    r.check(
        v.missing.is_empty() && v.unreadable.is_empty(),
        "every call answered 201 is stored",
        format!(
            "{} accepted, {} missing, {} unreadable{}",
            v.accepted,
            v.missing.len(),
            v.unreadable.len(),
            v.missing.iter().chain(v.unreadable.iter()).take(5).map(|m| format!("\n      {m}")).collect::<String>()
        ),
    );
    r.check(
        v.inconsistent.is_empty(),
        "no call half-written",
        format!(
            "{} records break the call's rules{}",
            v.inconsistent.len(),
            v.inconsistent.iter().take(8).map(|(id, p)| format!("\n      {id}: {p}")).collect::<String>()
        ),
    );
    r.check(
        v.unexpected.is_empty(),
        "stored state matches what the client was told",
        format!(
            "{} mismatches{}",
            v.unexpected.len(),
            v.unexpected.iter().take(8).map(|(id, p)| format!("\n      {id}: {p}")).collect::<String>()
        ),
    );
    r.check(
        v.unaccounted.is_empty(),
        "no stored call the client was not told about",
        format!(
            "{} calls listed, {} without a 201 to the client{}",
            v.listed,
            v.unaccounted.len(),
            v.unaccounted.iter().take(5).map(|m| format!("\n      {m}")).collect::<String>()
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(codes: &[u16]) -> ReadyTrace {
        ReadyTrace {
            polls: codes.iter().enumerate().map(|(i, c)| (Duration::from_millis(20 * i as u64), *c)).collect(),
        }
    }

    #[test]
    fn readiness_must_fail_before_the_listener_closes() {
        assert!(trace(&[200, 200, 503, 503, 0, 0]).failed_first());
        assert!(!trace(&[200, 200, 0, 0]).failed_first(), "closed without a 503");
        assert!(!trace(&[200, 500, 503, 0]).failed_first());
        assert!(!trace(&[200, 200]).failed_first(), "never failed");
        assert_eq!(trace(&[200, 503, 0]).first(|c| c == 0), Some(Duration::from_millis(40)));
    }
}
