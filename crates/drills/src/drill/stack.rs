//! The three services as child processes (`voice-kraliki serve <service>`), on
//! fixed loopback ports, with a clean environment (only what the drill sets, no `.env`: the
//! working directory is the drill's temporary folder), each run's output in its own log file.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    AudioProcessor,
    ProviderGateway,
    CallApi,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::AudioProcessor, Service::ProviderGateway, Service::CallApi];

    pub fn name(self) -> &'static str {
        match self {
            Self::AudioProcessor => "audio-processor",
            Self::ProviderGateway => "provider-gateway",
            Self::CallApi => "call-api",
        }
    }
}

/// The loopback ports of one drill.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub api: u16,
    pub audio_grpc: u16,
    pub audio_admin: u16,
    pub gateway_grpc: u16,
    pub gateway_admin: u16,
}

impl Ports {
    /// Each drill has its own block (`offset` in tens), away from the other scripts' ports.
    pub fn block(offset: u16) -> Self {
        Self {
            api: 18300 + offset,
            audio_grpc: 15351 + offset,
            audio_admin: 19391 + offset,
            gateway_grpc: 15352 + offset,
            gateway_admin: 19392 + offset,
        }
    }

    pub fn all(&self) -> [u16; 5] {
        [self.api, self.audio_grpc, self.audio_admin, self.gateway_grpc, self.gateway_admin]
    }

    /// Where `/health`, `/ready` and `/metrics` of a service are.
    pub fn admin_base(&self, s: Service) -> String {
        let port = match s {
            Service::CallApi => self.api,
            Service::AudioProcessor => self.audio_admin,
            Service::ProviderGateway => self.gateway_admin,
        };
        format!("http://127.0.0.1:{port}")
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api)
    }

    fn env(&self) -> Vec<(String, String)> {
        let v = |k: &str, val: String| (k.to_string(), val);
        vec![
            v("CALL_API_ADDR", format!("127.0.0.1:{}", self.api)),
            v("PUBLIC_BASE_URL", format!("http://127.0.0.1:{}", self.api)),
            v("AUDIO_PROCESSOR_GRPC_ADDR", format!("127.0.0.1:{}", self.audio_grpc)),
            v("AUDIO_PROCESSOR_ADMIN_ADDR", format!("127.0.0.1:{}", self.audio_admin)),
            v("PROVIDER_GATEWAY_GRPC_ADDR", format!("127.0.0.1:{}", self.gateway_grpc)),
            v("PROVIDER_GATEWAY_ADMIN_ADDR", format!("127.0.0.1:{}", self.gateway_admin)),
            v("AUDIO_PROCESSOR_URL", format!("http://127.0.0.1:{}", self.audio_grpc)),
            v("PROVIDER_GATEWAY_URL", format!("http://127.0.0.1:{}", self.gateway_grpc)),
        ]
    }
}

/// Fails when one of the ports is taken (another drill or program running).
pub fn ports_free(ports: &[u16]) -> Result<(), String> {
    for p in ports {
        if *p == 5432 {
            return Err("port 5432 belongs to the shared PostgreSQL server; a drill never uses it".into());
        }
        if std::net::TcpListener::bind(("127.0.0.1", *p)).is_err() {
            return Err(format!("port {p} on 127.0.0.1 is in use (another drill running?)"));
        }
    }
    Ok(())
}

struct Proc {
    child: Child,
    pid: u32,
    log: PathBuf,
}

pub struct Stack {
    pub dir: PathBuf,
    pub ports: Ports,
    /// Environment of every service (the ports are added per start).
    pub env: BTreeMap<String, String>,
    procs: BTreeMap<Service, Proc>,
    runs: BTreeMap<Service, u32>,
    exe: PathBuf,
}

/// A random API key for the drill's call-api.
pub fn drill_key() -> String {
    format!("drill-{}", hex::encode(rand::random::<[u8; 16]>()))
}

impl Stack {
    /// `env` is the drill's common environment (API key, database, providers, telemetry…).
    pub fn new(dir: &Path, ports: Ports, env: &[(&str, String)]) -> std::io::Result<Self> {
        let mut all: BTreeMap<String, String> = ports.env().into_iter().collect();
        all.insert("LOG_FORMAT".into(), "json".into());
        all.insert("LOG_LEVEL".into(), "info".into());
        all.insert("APM_ENABLED".into(), "false".into());
        for (k, v) in env {
            all.insert((*k).to_string(), v.clone());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            ports,
            env: all,
            procs: BTreeMap::new(),
            runs: BTreeMap::new(),
            exe: crate::voice_kraliki_bin()?,
        })
    }

    /// Starts `service` with the common environment plus `extra`.
    pub fn start(&mut self, service: Service, extra: &[(&str, String)]) -> Result<u32, String> {
        let run = self.runs.entry(service).or_insert(0);
        *run += 1;
        let log = self.dir.join(format!("{}.{}.log", service.name(), run));
        let out = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["serve", service.name()])
            .current_dir(&self.dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for keep in ["PATH", "HOME", "TMPDIR", "LANG", "TZ"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.envs(&self.env);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| format!("start {}: {e}", service.name()))?;
        let pid = child.id().ok_or("child without pid")?;
        self.procs.insert(service, Proc { child, pid, log });
        Ok(pid)
    }

    pub fn pid(&self, service: Service) -> Option<u32> {
        self.procs.get(&service).map(|p| p.pid)
    }

    pub fn log_path(&self, service: Service) -> Option<PathBuf> {
        self.procs.get(&service).map(|p| p.log.clone())
    }

    /// The current (or last) run's output.
    pub fn log(&self, service: Service) -> String {
        self.log_path(service).and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Every run's output of `service`, concatenated.
    pub fn all_logs(&self, service: Service) -> String {
        let runs = self.runs.get(&service).copied().unwrap_or(0);
        (1..=runs)
            .filter_map(|r| std::fs::read_to_string(self.dir.join(format!("{}.{r}.log", service.name()))).ok())
            .collect::<Vec<_>>()
            .join("")
    }

    /// Waits until `/ready` answers 200; fails early if the process exits.
    pub async fn wait_ready(&mut self, service: Service, timeout: Duration) -> Result<Duration, String> {
        let http = client();
        let url = format!("{}/ready", self.ports.admin_base(service));
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(p) = self.procs.get_mut(&service)
                && let Ok(Some(status)) = p.child.try_wait()
            {
                return Err(format!("{} exited during start ({status}); see {}", service.name(), p.log.display()));
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{} not ready within {timeout:?}", service.name()))
    }

    /// Starts the three services (audio-processor, provider-gateway, call-api) and waits for
    /// each to be ready.
    pub async fn start_all(&mut self) -> Result<(), String> {
        for s in Service::ALL {
            self.start(s, &[])?;
        }
        for s in Service::ALL {
            self.wait_ready(s, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    pub fn signal(&self, service: Service, sig: signal::Signal) -> bool {
        match self.pid(service) {
            Some(pid) => signal::kill(Pid::from_raw(pid as i32), sig).is_ok(),
            None => false,
        }
    }

    /// Waits for `service` to exit; kills it (and answers `None`) after `timeout`.
    pub async fn wait_exit(&mut self, service: Service, timeout: Duration) -> Option<ExitStatus> {
        let p = self.procs.get_mut(&service)?;
        match tokio::time::timeout(timeout, p.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = p.child.kill().await;
                None
            }
        }
    }

    pub fn is_running(&mut self, service: Service) -> bool {
        self.procs.get_mut(&service).is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// SIGTERM to every service (call-api first), then waits; kills what is still running.
    pub async fn stop_all(&mut self) {
        for s in [Service::CallApi, Service::ProviderGateway, Service::AudioProcessor] {
            if self.is_running(s) {
                self.signal(s, signal::Signal::SIGTERM);
            }
        }
        for s in [Service::CallApi, Service::ProviderGateway, Service::AudioProcessor] {
            let _ = self.wait_exit(s, Duration::from_secs(40)).await;
        }
    }
}

/// A plain HTTP client with a short timeout (probes, scrapes).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).pool_max_idle_per_host(0).build().expect("HTTP client")
}

/// `/metrics` of a service, parsed; empty when it cannot be read.
pub async fn scrape(http: &reqwest::Client, base: &str) -> Vec<super::prom::Sample> {
    match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => super::prom::parse(&r.text().await.unwrap_or_default()),
        Err(_) => Vec::new(),
    }
}

/// One check per service over everything it logged in the drill (every run): no panic, and
/// with `errors_too` no ERROR line either.
pub fn check_logs(r: &mut super::report::Report, stack: &Stack, errors_too: bool) {
    for s in Service::ALL {
        let (panics, errors, lines) = bad_log_lines(&stack.all_logs(s), 5);
        let (ok, what) = if errors_too {
            (panics == 0 && errors == 0, "no panic or ERROR in the log")
        } else {
            (panics == 0, "no panic")
        };
        r.check(
            ok,
            format!("{}: {what}", s.name()),
            format!(
                "panics {panics}, ERROR lines {errors}{}",
                lines.iter().map(|l| format!("\n      {l}")).collect::<String>()
            ),
        );
    }
}

/// Lines of a JSON log that show a panic or an ERROR event (at most `max`).
pub fn bad_log_lines(log: &str, max: usize) -> (usize, usize, Vec<String>) {
    let mut panics = 0;
    let mut errors = 0;
    let mut shown = Vec::new();
    for line in log.lines() {
        let panic = line.contains("panicked") || line.contains("\"panic\"");
        let error = line.contains("\"level\":\"ERROR\"");
        if panic {
            panics += 1;
        }
        if error {
            errors += 1;
        }
        if (panic || error) && shown.len() < max {
            shown.push(line.chars().take(400).collect());
        }
    }
    (panics, errors, shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_panics_and_errors_in_json_logs() {
        let log = concat!(
            r#"{"timestamp":"t","level":"INFO","message":"serving"}"#,
            "\n",
            r#"{"timestamp":"t","level":"ERROR","message":"request failed","error":"boom"}"#,
            "\n",
            "thread 'tokio-runtime-worker' panicked at src/x.rs:1:1:\n",
            r#"{"timestamp":"t","level":"WARN","message":"database unavailable"}"#,
            "\n"
        );
        let (panics, errors, shown) = bad_log_lines(log, 10);
        assert_eq!((panics, errors), (1, 1));
        assert_eq!(shown.len(), 2);
        assert!(shown[0].contains("request failed"));
        assert_eq!(bad_log_lines(log, 1).2.len(), 1);
    }

    #[test]
    fn port_blocks_do_not_overlap_and_never_touch_5432() {
        let blocks: Vec<[u16; 5]> = [0, 10, 20, 30].iter().map(|o| Ports::block(*o).all()).collect();
        let mut all: Vec<u16> = blocks.iter().flatten().copied().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(!all.contains(&5432));
        assert!(ports_free(&[5432]).is_err());
    }
}
