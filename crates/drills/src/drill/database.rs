//! `drill database`: call-api on a throwaway PostgreSQL cluster the drill creates itself
//! (`initdb` + `pg_ctl` in a temporary folder, its own port — never the shared server on 5432),
//! REST call creates at a steady rate, the cluster stopped (`pg_ctl stop -m fast`) for 30 s and
//! started again. Checks: `/ready` 503 during the outage, only 201 or a clear 503 `unavailable`
//! (no 500, no panic), full recovery, and every 201'd call stored exactly once (counted with
//! `psql`). The cluster is removed however the drill ends.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    Options,
    report::Report,
    stack::{self, Ports, Service, Stack},
    traffic::{Ledger, Plan, Traffic},
};

const BASELINE: Duration = Duration::from_secs(10);
const OUTAGE: Duration = Duration::from_secs(30);
const AFTER: Duration = Duration::from_secs(15);
const RATE: f64 = 10.0;
/// The throwaway cluster's port unless `--pg-port` says otherwise. Below Linux's ephemeral range
/// (32768–60999), as every drill port is: a port inside it can be taken for a moment by any
/// outgoing connection's local end (55432 once was in use when this drill started, and it could
/// not run).
pub(crate) const PG_PORT: u16 = 25432;

/// A PostgreSQL cluster in a temporary folder; stopped (immediate) when dropped. Also the
/// `scale` drill's database.
pub(super) struct Cluster {
    pub(super) data: PathBuf,
    log: PathBuf,
    pub(super) port: u16,
    /// `runuser -u <user> --` when running as root (PostgreSQL refuses to run as root).
    pub(super) user: Option<String>,
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self.command(program).args(args).output().map_err(|e| format!("{program}: {e} (is it on PATH?)"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A cluster of its own on `port` (checked free), started, and said so in the report.
    pub(super) fn throwaway(root: &Path, port: u16, r: &mut Report) -> Result<Self, String> {
        stack::ports_free(&[port]).map_err(|e| format!("PostgreSQL port: {e}"))?;
        let cluster = Self::create(root, port)?;
        cluster.start()?;
        r.say(format!(
            "throwaway PostgreSQL: initdb in {} on 127.0.0.1:{}{}",
            cluster.data.display(),
            cluster.port,
            cluster.user.as_ref().map_or(String::new(), |u| format!(" (run as {u}: this drill runs as root)"))
        ));
        Ok(cluster)
    }

    fn create(root: &Path, port: u16) -> Result<Self, String> {
        let data = root.join("pgdata");
        let sock = root.join("pgsock");
        let user = is_root().then(|| std::env::var("DRILL_PG_USER").unwrap_or_else(|_| "postgres".into()));
        std::fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
        if let Some(user) = &user {
            // The temporary folder is private to root; the cluster's user needs its way in.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
            let status = Command::new("chown")
                .args([&format!("{user}:"), &sock.display().to_string()])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("chown {} to {user} failed", sock.display()));
            }
            let log = root.join("postgres.log");
            std::fs::write(&log, "").map_err(|e| e.to_string())?;
            Command::new("chown")
                .args([&format!("{user}:"), &log.display().to_string()])
                .status()
                .map_err(|e| e.to_string())?;
            let _ = Command::new("chown").args([&format!("{user}:"), &root.display().to_string()]).status();
        }
        let cluster = Self { data: data.clone(), log: root.join("postgres.log"), port, user };
        cluster.run(
            "initdb",
            &["-D", &data.display().to_string(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"],
        )?;
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 50\n",
            sock.display()
        );
        let path = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&path, existing).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(cluster)
    }

    pub(super) fn start(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &["-D", &self.data.display().to_string(), "-l", &self.log.display().to_string(), "-w", "-t", "60", "start"],
        )
        .map(drop)
    }

    pub(super) fn stop(&self, mode: &str) -> Result<(), String> {
        self.run("pg_ctl", &["-D", &self.data.display().to_string(), "-m", mode, "-w", "-t", "60", "stop"]).map(drop)
    }

    pub(super) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// One query through `psql` over TCP (rows, `|`-separated).
    pub(super) fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-AtX",
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self.stop("immediate");
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|u| u.split_whitespace().nth(1) == Some("0"))))
        .unwrap_or(false)
}

/// `/ready` answers over the drill, by time since the traffic started.
type ReadyLog = Arc<Mutex<Vec<(Duration, u16)>>>;

pub async fn run(o: &Options, r: &mut Report) -> Result<(), String> {
    let mut setup = setup(o, r).await?;
    let (traffic, ready, poller) = load(&setup, r).await;
    let outage = fault(&setup, &traffic, &ready, r).await?;
    tokio::time::sleep(AFTER).await;
    let (ledger, _cut) = traffic.stop(Duration::from_secs(30)).await;
    poller.abort();
    let ready = ready.lock().expect("ready").clone();
    check(&setup, &ledger, &ready, &outage, r).await?;
    setup.stack.stop_all().await;
    let Setup { dir, cluster, .. } = setup;
    drop(cluster);
    o.keep_if_failed(dir, r);
    Ok(())
}

/// What the drill runs on: the stack on a throwaway PostgreSQL cluster.
struct Setup {
    ports: Ports,
    dir: tempfile::TempDir,
    cluster: Cluster,
    key: String,
    stack: Stack,
}

/// Setup: a throwaway PostgreSQL cluster and the three services on it.
async fn setup(o: &Options, r: &mut Report) -> Result<Setup, String> {
    let ports = Ports::block(10);
    stack::ports_free(&ports.all())?;
    let pg_port = o.pg_port.unwrap_or(PG_PORT);
    let dir = o.workdir("database")?;
    let cluster = Cluster::throwaway(dir.path(), pg_port, r)?;
    let key = stack::drill_key();
    let env = [
        ("API_KEYS", key.clone()),
        ("DATABASE_URL", cluster.url()),
        ("STT_PROVIDERS", "simulated".into()),
        ("LLM_PROVIDERS", "simulated".into()),
        ("TTS_PROVIDERS", "simulated".into()),
    ];
    let mut stack = Stack::new(dir.path(), ports, &env).map_err(|e| e.to_string())?;
    stack.start_all().await?;
    r.say(format!("call-api on {} with DATABASE_URL={}", ports.api_url(), cluster.url()));
    Ok(Setup { ports, dir, cluster, key, stack })
}

/// Load: REST creates at a fixed rate and `/ready` polled, for the baseline and beyond.
async fn load(setup: &Setup, r: &mut Report) -> (Traffic, ReadyLog, tokio::task::JoinHandle<()>) {
    let plan = Plan { live_calls: 0, turns: 0, creates_per_second: RATE, upload_every: None };
    let traffic = Traffic::start(&setup.ports.api_url(), &setup.key, &plan);
    let ready: ReadyLog = Arc::default();
    let poller = {
        let (ready, url, started) = (ready.clone(), format!("{}/ready", setup.ports.api_url()), traffic.started);
        tokio::spawn(async move {
            let http = stack::client();
            loop {
                let code = match http.get(&url).timeout(Duration::from_secs(3)).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                ready.lock().expect("ready").push((started.elapsed(), code));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    r.say(format!("traffic: {RATE} REST creates/s; /ready polled every 200 ms; baseline {} s", BASELINE.as_secs()));
    tokio::time::sleep(BASELINE).await;
    (traffic, ready, poller)
}

/// When the outage began and ended, by time since the traffic started.
struct Outage {
    t_stop: Duration,
    t_stopped: Duration,
    t_start: Duration,
    t_ready: Option<Duration>,
}

/// Fault: PostgreSQL stopped for [`OUTAGE`], started again, and `/ready` awaited.
async fn fault(setup: &Setup, traffic: &Traffic, ready: &ReadyLog, r: &mut Report) -> Result<Outage, String> {
    let t_stop = traffic.elapsed();
    let stop_took = Instant::now();
    setup.cluster.stop("fast")?;
    let t_stopped = traffic.elapsed();
    let stopped_at = chrono_now();
    r.say(format!(
        "pg_ctl stop -m fast (took {:.2} s, returned at {stopped_at}); outage of {} s begins",
        stop_took.elapsed().as_secs_f64(),
        OUTAGE.as_secs()
    ));
    tokio::time::sleep(OUTAGE).await;
    let t_start = traffic.elapsed();
    setup.cluster.start()?;
    r.say("pg_ctl start: PostgreSQL is back");
    let recovery_deadline = Instant::now() + Duration::from_secs(60);
    let mut t_ready = None;
    while Instant::now() < recovery_deadline {
        if let Some((t, 200)) = ready.lock().expect("ready").last().copied()
            && t > t_start
        {
            t_ready = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Outage { t_stop, t_stopped, t_start, t_ready })
}

/// Check: 503s (never 500) during the outage, full recovery, and every 201'd call in the
/// database exactly once.
async fn check(
    setup: &Setup,
    ledger: &Ledger,
    ready: &[(Duration, u16)],
    window: &Outage,
    r: &mut Report,
) -> Result<(), String> {
    let t_end = traffic_end(ledger);
    // What the API answered, per phase.
    let before = ledger.create_outcomes(Duration::ZERO, window.t_stop);
    let outage = ledger.create_outcomes(window.t_stop, window.t_start);
    let recovering = ledger.create_outcomes(window.t_start, window.t_ready.unwrap_or(t_end) + Duration::from_secs(2));
    let recovered = ledger.create_outcomes(window.t_ready.unwrap_or(t_end) + Duration::from_secs(2), Duration::MAX);
    r.say(format!("creates before the outage: {before:?}"));
    r.say(format!("creates during the outage ({} s): {outage:?}", (window.t_start - window.t_stop).as_secs()));
    r.say(format!("creates from restart until ready + 2 s: {recovering:?}"));
    r.say(format!("creates after recovery: {recovered:?}"));
    let mut unavailable_ms: Vec<f64> =
        ledger.creates.iter().filter(|c| c.status == Some(503)).map(|c| c.took.as_secs_f64() * 1e3).collect();
    unavailable_ms.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (unavailable_ms.first(), unavailable_ms.last()) {
        r.say(format!(
            "503 answers took {first:.0}…{last:.0} ms (median {:.0} ms; DATABASE_ACQUIRE_TIMEOUT_SECONDS=2)",
            unavailable_ms[unavailable_ms.len() / 2]
        ));
    }
    // A create sent while the stop was under way, or in the last moments of the outage (it
    // waits up to the acquire timeout for a connection), may get a 201; none in between can.
    let wait = Duration::from_millis(2500);
    let outage_201: Vec<Duration> = ledger
        .creates
        .iter()
        .filter(|c| c.status == Some(201) && c.at >= window.t_stop && c.at < window.t_start)
        .map(|c| c.at)
        .collect();
    let during_stop = outage_201.iter().filter(|t| **t < window.t_stopped).count();
    let at_restart = outage_201.iter().filter(|t| **t >= window.t_stopped && **t + wait >= window.t_start).count();
    let while_down = outage_201.len() - during_stop - at_restart;
    r.say(format!(
        "201s among the creates sent during the outage: {} — {during_stop} sent before pg_ctl stop returned, {at_restart} in its last {:.1} s (they waited for a pool connection until PostgreSQL was back), {while_down} otherwise",
        outage_201.len(),
        wait.as_secs_f64()
    ));
    let first_503 = ready.iter().find(|(t, c)| *t >= window.t_stop && *c == 503).map(|(t, _)| *t);
    let outage_polls: Vec<u16> = ready
        .iter()
        .filter(|(t, _)| first_503.is_some_and(|f| *t >= f) && *t < window.t_start)
        .map(|(_, c)| *c)
        .collect();
    r.say(format!(
        "/ready: first 503 {} after the stop; during the outage {} polls: {} × 503, {} × 200, {} × other; 200 again {} after the restart",
        first_503.map_or("never".into(), |t| format!("{:.2} s", (t - window.t_stop).as_secs_f64())),
        outage_polls.len(),
        outage_polls.iter().filter(|c| **c == 503).count(),
        outage_polls.iter().filter(|c| **c == 200).count(),
        outage_polls.iter().filter(|c| **c != 200 && **c != 503).count(),
        window.t_ready.map_or("never".into(), |t| format!("{:.2} s", (t - window.t_start).as_secs_f64())),
    ));
    r.check(
        before.keys().all(|k| k == "201") && !before.is_empty(),
        "baseline: creates succeed",
        format!("{before:?}"),
    );
    r.check(
        first_503.is_some_and(|t| t - window.t_stop <= Duration::from_secs(5))
            && outage_polls.iter().all(|c| *c == 503),
        "/ready turns 503 during the outage (within 5 s) and stays 503",
        format!(
            "first 503 {} after the stop",
            first_503.map_or("never".into(), |t| format!("{:.2} s", (t - window.t_stop).as_secs_f64()))
        ),
    );
    let bad: Vec<String> =
        outage.keys().chain(recovering.keys()).filter(|k| *k != "201" && *k != "503 unavailable").cloned().collect();
    r.check(
        bad.is_empty() && outage.contains_key("503 unavailable"),
        "outage: only 201 or 503 {\"error\":{\"code\":\"unavailable\"}}",
        format!("answers during outage and recovery: {outage:?} + {recovering:?}"),
    );
    r.check(
        while_down == 0,
        "no 201 while PostgreSQL was down",
        format!(
            "{while_down} creates sent after the stop completed and more than 2.5 s before the restart answered 201"
        ),
    );
    r.check(
        unavailable_ms.last().is_none_or(|ms| *ms <= 8000.0),
        "503 answers come promptly",
        format!("slowest 503 took {:.0} ms (bound 8000 ms)", unavailable_ms.last().copied().unwrap_or(0.0)),
    );
    r.check(
        window.t_ready.is_some_and(|t| t - window.t_start <= Duration::from_secs(30))
            && recovered.keys().all(|k| k == "201")
            && recovered.get("201").copied().unwrap_or(0) > 0,
        "full recovery: /ready 200 within 30 s of the restart, then every create 201",
        format!("{recovered:?}"),
    );
    // The rows, straight from the database.
    let accepted: BTreeSet<String> = ledger.accepted().into_iter().map(|(id, _)| id).collect();
    let counts = setup.cluster.psql("SELECT count(*), count(DISTINCT id) FROM calls")?;
    let rows: BTreeSet<String> =
        setup.cluster.psql("SELECT id FROM calls")?.lines().map(|l| l.trim().to_string()).collect();
    let lost: Vec<&String> = accepted.difference(&rows).collect();
    let extra: Vec<&String> = rows.difference(&accepted).collect();
    r.say(format!(
        "psql: count(*), count(DISTINCT id) = {}; {} creates answered 201",
        counts.trim().replace('|', ", "),
        accepted.len()
    ));
    let (total, distinct) = counts.trim().split_once('|').unwrap_or(("?", "!"));
    r.check(
        lost.is_empty() && total == distinct && total == accepted.len().to_string(),
        "every 201'd call is in the database exactly once",
        format!("{} lost, rows {total}, distinct ids {distinct}", lost.len()),
    );
    r.check(
        extra.is_empty(),
        "no row for a create the client was told failed",
        format!(
            "{} rows without a 201{}",
            extra.len(),
            extra.iter().take(5).map(|e| format!("\n      {e}")).collect::<String>()
        ),
    );
    let http = stack::client();
    let metrics = stack::scrape(&http, &setup.ports.api_url()).await;
    let errors_5xx = super::prom::sum(&metrics, "http_requests_total", &[("status", "500")]);
    let (panics, errors, lines) = stack::bad_log_lines(&setup.stack.all_logs(Service::CallApi), 5);
    let warned = setup.stack.all_logs(Service::CallApi).matches("database unavailable").count();
    r.say(format!("call-api log: {warned} 'database unavailable' warnings"));
    r.check(
        panics == 0 && errors == 0 && errors_5xx == 0.0,
        "no 500 and no panic",
        format!(
            "http_requests_total{{status=\"500\"}} {errors_5xx}; panics {panics}; ERROR lines {errors}{}",
            lines.iter().map(|l| format!("\n      {l}")).collect::<String>()
        ),
    );
    Ok(())
}

/// Wall-clock time, UTC, to line the drill up with the logs.
fn chrono_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}.{:03} UTC", (s / 3600) % 24, (s / 60) % 60, s % 60, d.subsec_millis())
}

fn traffic_end(ledger: &super::traffic::Ledger) -> Duration {
    ledger.creates.iter().map(|c| c.at).max().unwrap_or_default()
}
