//! `drill soak`: steady load for a configurable time (default 10 minutes): live calls, REST
//! creates and recording uploads. Every `--sample-seconds` it reads each service's resident
//! memory (`VmRSS`), open descriptors and threads from `/proc/<pid>`, and its in-flight gauges
//! from `/metrics` (no service exports a tokio task count). After the warm-up, the first sample
//! is the baseline; the last sample under load is compared with it:
//!
//! - RSS: end ≤ 1.5 × baseline + 32 MiB
//! - open descriptors: end ≤ baseline + 50
//! - threads: end ≤ baseline + 20
//!
//! and once the load has stopped, the in-flight gauges must fall back to zero.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{
    Options,
    procfs::{self, ProcSample, mib},
    prom,
    report::Report,
    stack::{self, Ports, Service, Stack},
    traffic::{Ledger, Plan, Traffic},
};

/// How far the end of the soak may sit above the post-warm-up baseline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rss_factor: f64,
    pub rss_slack_bytes: u64,
    pub fds_slack: u64,
    pub threads_slack: u64,
}

pub const LIMITS: Limits = Limits { rss_factor: 1.5, rss_slack_bytes: 32 << 20, fds_slack: 50, threads_slack: 20 };

impl Limits {
    /// What grew beyond its bound (empty = flat enough).
    pub fn breaches(&self, base: ProcSample, end: ProcSample) -> Vec<String> {
        let mut out = Vec::new();
        let rss_bound = (base.rss_bytes as f64 * self.rss_factor) as u64 + self.rss_slack_bytes;
        if end.rss_bytes > rss_bound {
            out.push(format!("RSS {:.1} MiB > bound {:.1} MiB", mib(end.rss_bytes), mib(rss_bound)));
        }
        if end.fds > base.fds + self.fds_slack {
            out.push(format!("fds {} > bound {}", end.fds, base.fds + self.fds_slack));
        }
        if end.threads > base.threads + self.threads_slack {
            out.push(format!("threads {} > bound {}", end.threads, base.threads + self.threads_slack));
        }
        out
    }
}

/// Least-squares slope of `(minutes, value)` points, per minute.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// The in-flight gauges of a service.
fn inflight(s: Service, samples: &[prom::Sample]) -> BTreeMap<&'static str, f64> {
    let mut m = BTreeMap::new();
    m.insert("http_inprogress", prom::sum(samples, "http_requests_inprogress", &[]));
    match s {
        Service::CallApi => {
            m.insert("active_calls", prom::sum(samples, "active_calls", &[]));
        }
        Service::AudioProcessor => {
            m.insert("audio_active_streams", prom::sum(samples, "audio_active_streams", &[]));
        }
        Service::ProviderGateway => {
            m.insert("provider_inflight", prom::sum(samples, "provider_inflight_requests", &[]));
        }
    }
    m
}

struct Point {
    at: Duration,
    proc: ProcSample,
    gauges: BTreeMap<&'static str, f64>,
}

pub async fn run(o: &Options, r: &mut Report) -> Result<(), String> {
    let mut setup = setup(o).await?;
    let warmup = o.warmup.unwrap_or_else(|| (o.soak / 5).clamp(Duration::from_secs(30), Duration::from_secs(120)));
    let warmup = warmup.min(o.soak / 2);
    let plan = Plan { live_calls: 8, turns: 2, creates_per_second: 5.0, upload_every: Some(Duration::from_secs(5)) };
    r.say(format!(
        "soak {:.1} min (warm-up {} s, a sample every {} s): {} live calls at a time ({} turns each), {} REST creates/s, a recording upload every 5 s; simulated providers (50 ms latency, 100 ms to first byte, unpaced tokens)",
        o.soak.as_secs_f64() / 60.0,
        warmup.as_secs(),
        o.sample.as_secs_f64(),
        plan.live_calls,
        plan.turns,
        plan.creates_per_second
    ));
    r.say(format!(
        "limits after warm-up: RSS end ≤ {}× baseline + {} MiB; fds end ≤ baseline + {}; threads end ≤ baseline + {}",
        LIMITS.rss_factor,
        LIMITS.rss_slack_bytes >> 20,
        LIMITS.fds_slack,
        LIMITS.threads_slack
    ));
    let (series, after, ledger, cut) = load(o, &mut setup, warmup, &plan, r).await?;
    check(r, warmup, &series, &after, &ledger, cut);
    stack::check_logs(r, &setup.stack, true);
    let Setup { mut stack, dir, .. } = setup;
    stack.stop_all().await;
    o.keep_if_failed(dir, r);
    Ok(())
}

/// What the soak runs on: the stack and the pids it samples.
struct Setup {
    ports: Ports,
    dir: tempfile::TempDir,
    key: String,
    stack: Stack,
    pids: BTreeMap<Service, u32>,
    http: reqwest::Client,
}

impl Setup {
    /// Each service's process figures and in-flight gauges now (`at` into the soak).
    async fn sample(&self, at: Duration) -> BTreeMap<Service, Point> {
        let mut points = BTreeMap::new();
        for (s, pid) in &self.pids {
            let metrics = stack::scrape(&self.http, &self.ports.admin_base(*s)).await;
            if let Some(proc) = procfs::sample(*pid) {
                points.insert(*s, Point { at, proc, gauges: inflight(*s, &metrics) });
            }
        }
        points
    }
}

/// Setup: the three services with simulated providers at full speed.
async fn setup(o: &Options) -> Result<Setup, String> {
    let ports = Ports::block(30);
    stack::ports_free(&ports.all())?;
    let dir = o.workdir("soak")?;
    let key = stack::drill_key();
    let env = [
        ("API_KEYS", key.clone()),
        ("LOG_LEVEL", "warn".into()),
        ("DATABASE_URL", format!("sqlite://{}/drill.db", dir.path().display())),
        ("STT_PROVIDERS", "simulated".into()),
        ("LLM_PROVIDERS", "simulated".into()),
        ("TTS_PROVIDERS", "simulated".into()),
        // Unpaced simulated output: shorter turns, more calls through the soak.
        ("SIMULATED_TOKENS_PER_SECOND", "0".into()),
    ];
    let mut stack = Stack::new(dir.path(), ports, &env).map_err(|e| e.to_string())?;
    stack.start_all().await?;
    let pids: BTreeMap<Service, u32> = Service::ALL.iter().filter_map(|s| Some((*s, stack.pid(*s)?))).collect();
    Ok(Setup { ports, dir, key, stack, pids, http: stack::client() })
}

type Series = BTreeMap<Service, Vec<Point>>;

/// Load: steady traffic for the soak, sampled every `o.sample`; then the figures once idle.
async fn load(
    o: &Options,
    setup: &mut Setup,
    warmup: Duration,
    plan: &Plan,
    r: &mut Report,
) -> Result<(Series, BTreeMap<Service, Point>, Ledger, usize), String> {
    let idle = setup.sample(Duration::ZERO).await;
    for (s, p) in &idle {
        r.say(format!(
            "{:<17} idle before load: RSS {:.1} MiB, fds {}, threads {}",
            s.name(),
            mib(p.proc.rss_bytes),
            p.proc.fds,
            p.proc.threads
        ));
    }
    let traffic = Traffic::start(&setup.ports.api_url(), &setup.key, plan);
    let started = Instant::now();
    let mut series: BTreeMap<Service, Vec<Point>> = BTreeMap::new();
    r.raw(format!("{:>7}  {:<17} {:>9} {:>5} {:>7}  in flight", "t", "service", "RSS MiB", "fds", "threads"));
    while started.elapsed() < o.soak {
        let next = (o.sample).min(o.soak.saturating_sub(started.elapsed()));
        tokio::time::sleep(next).await;
        let at = started.elapsed();
        for (s, p) in setup.sample(at).await {
            r.raw(format!(
                "{:>6.0}s  {:<17} {:>9.1} {:>5} {:>7}  {}{}",
                at.as_secs_f64(),
                s.name(),
                mib(p.proc.rss_bytes),
                p.proc.fds,
                p.proc.threads,
                p.gauges.iter().map(|(k, v)| format!("{k}={}", v.abs())).collect::<Vec<_>>().join(" "),
                if at < warmup { "  (warm-up)" } else { "" }
            ));
            series.entry(s).or_default().push(p);
        }
        for s in Service::ALL {
            if !setup.stack.is_running(s) {
                return Err(format!(
                    "{} exited during the soak; see {}",
                    s.name(),
                    setup.stack.log_path(s).unwrap_or_default().display()
                ));
            }
        }
    }
    r.say("load stops; live calls finish their current call");
    let (ledger, cut) = traffic.stop(Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = setup.sample(started.elapsed()).await;
    r.say(ledger.live_summary());
    r.say(ledger.upload_summary());
    r.say(format!("REST creates: {:?}", ledger.create_outcomes(Duration::ZERO, Duration::MAX)));
    Ok((series, after, ledger, cut))
}

/// Check: each service flat after the warm-up, nothing left in flight, the load itself fine.
fn check(
    r: &mut Report,
    warmup: Duration,
    series: &Series,
    after: &BTreeMap<Service, Point>,
    ledger: &Ledger,
    cut: usize,
) {
    r.raw(format!(
        "{:<17} {:>26} {:>26} {:>26} {:>20} {:>12}",
        "service",
        "baseline RSS/fds/threads",
        "end RSS/fds/threads",
        "peak RSS/fds/threads",
        "idle after load",
        "RSS slope"
    ));
    // Checks are printed after the table.
    let mut verdicts: Vec<(bool, String, String)> = Vec::new();
    let fmt = |p: &ProcSample| format!("{:.1} MiB/{}/{}", mib(p.rss_bytes), p.fds, p.threads);
    for s in Service::ALL {
        let Some(points) = series.get(&s) else {
            verdicts.push((false, format!("{}: sampled", s.name()), "no sample".into()));
            continue;
        };
        let steady: Vec<&Point> = points.iter().filter(|p| p.at >= warmup).collect();
        let (Some(base), Some(end)) = (steady.first(), steady.last()) else {
            verdicts.push((
                false,
                format!("{}: sampled after the warm-up", s.name()),
                "no sample after the warm-up".into(),
            ));
            continue;
        };
        let peak = ProcSample {
            rss_bytes: points.iter().map(|p| p.proc.rss_bytes).max().unwrap_or(0),
            fds: points.iter().map(|p| p.proc.fds).max().unwrap_or(0),
            threads: points.iter().map(|p| p.proc.threads).max().unwrap_or(0),
        };
        let rss_slope =
            slope(&steady.iter().map(|p| (p.at.as_secs_f64() / 60.0, mib(p.proc.rss_bytes))).collect::<Vec<_>>());
        let idle_after = after.get(&s).map_or("—".to_string(), |p| fmt(&p.proc));
        r.raw(format!(
            "{:<17} {:>26} {:>26} {:>26} {:>20} {:>8.2} MiB/min",
            s.name(),
            fmt(&base.proc),
            fmt(&end.proc),
            fmt(&peak),
            idle_after,
            rss_slope
        ));
        let breaches = LIMITS.breaches(base.proc, end.proc);
        verdicts.push((
            breaches.is_empty(),
            format!("{}: flat under steady load", s.name()),
            if breaches.is_empty() {
                format!(
                    "RSS {:.1} → {:.1} MiB, fds {} → {}, threads {} → {} (baseline at {:.0} s → end at {:.0} s)",
                    mib(base.proc.rss_bytes),
                    mib(end.proc.rss_bytes),
                    base.proc.fds,
                    end.proc.fds,
                    base.proc.threads,
                    end.proc.threads,
                    base.at.as_secs_f64(),
                    end.at.as_secs_f64()
                )
            } else {
                breaches.join("; ")
            },
        ));
        if let Some(p) = after.get(&s) {
            let left: Vec<String> =
                p.gauges.iter().filter(|(_, v)| **v != 0.0).map(|(k, v)| format!("{k}={v}")).collect();
            verdicts.push((
                left.is_empty(),
                format!("{}: nothing left in flight after the load", s.name()),
                if left.is_empty() { "every in-flight gauge back to 0".to_string() } else { left.join(", ") },
            ));
        }
    }
    for (ok, what, detail) in verdicts {
        r.check(ok, what, detail);
    }
    let live_failed = ledger.live.iter().filter(|l| l.error.is_some()).count();
    let silent: usize = ledger.live.iter().map(|l| l.without_reply).sum();
    let creates = ledger.create_outcomes(Duration::ZERO, Duration::MAX);
    let uploads_ok = ledger.uploads.iter().filter(|u| u.status == Some(200)).count();
    r.check(
        live_failed == 0 && silent == 0 && cut == 0 && creates.keys().all(|k| k == "201") && uploads_ok == ledger.uploads.len(),
        "the load itself succeeded",
        format!(
            "{} live calls ({live_failed} failed, {silent} turns without reply), creates {creates:?}, uploads {uploads_ok}/{} answered 200",
            ledger.live.len(),
            ledger.uploads.len()
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(rss_mib: u64, fds: u64, threads: u64) -> ProcSample {
        ProcSample { rss_bytes: rss_mib << 20, fds, threads }
    }

    #[test]
    fn noise_passes_and_growth_fails() {
        let base = s(40, 30, 12);
        assert!(LIMITS.breaches(base, s(60, 60, 20)).is_empty(), "within 1.5× + 32 MiB, +50 fds, +20 threads");
        assert!(LIMITS.breaches(base, s(92, 80, 32)).is_empty(), "exactly at the bounds");
        let b = LIMITS.breaches(base, s(93, 81, 33));
        assert_eq!(b.len(), 3, "{b:?}");
        assert!(b[0].starts_with("RSS"));
        // A small service: the fixed slack dominates.
        assert!(LIMITS.breaches(s(10, 10, 5), s(45, 10, 5)).is_empty());
        assert_eq!(LIMITS.breaches(s(10, 10, 5), s(48, 10, 5)).len(), 1);
    }

    #[test]
    fn slope_is_per_minute() {
        assert_eq!(slope(&[(0.0, 10.0), (1.0, 12.0), (2.0, 14.0)]), 2.0);
        assert_eq!(slope(&[(0.0, 10.0), (1.0, 10.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 10.0)]), 0.0);
        assert!(slope(&[(0.0, 10.0), (1.0, 9.0), (2.0, 11.0), (3.0, 10.0)]).abs() < 0.5);
    }
}
