//! A real Prometheus (Debian's `prometheus`), started on loopback with `monitoring/prometheus.yml`
//! and its alert rules adapted to the test ports, scrapes all three services: `up == 1` per job,
//! and the monitoring guide's queries return series after traffic.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::*;

fn prometheus_binary() -> Option<&'static str> {
    let found = Command::new("prometheus").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    match found {
        Ok(s) if s.success() => Some("prometheus"),
        _ if std::env::var("REQUIRE_TOOLS").is_ok_and(|v| v == "1") => {
            panic!("prometheus is not installed and REQUIRE_TOOLS=1 (apt-get install prometheus)")
        }
        _ => {
            eprintln!(
                "SKIPPED: prometheus is not installed (apt-get install prometheus); set REQUIRE_TOOLS=1 to fail instead"
            );
            None
        }
    }
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(prom: &str, q: &str) -> Vec<serde_json::Value> {
    let r: serde_json::Value =
        client().get(format!("{prom}/api/v1/query?query={}", encode(q))).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "success", "{q}: {r}");
    r["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_prometheus_scrapes_every_job_and_answers_the_guide_queries() {
    let Some(bin) = prometheus_binary() else { return };
    let ports = Ports::new();
    let env = ports.env();
    let _audio = Service::start("audio-processor", &env);
    let _gateway = Service::start("provider-gateway", &env);
    let _api = Service::start("call-api", &env);
    let api = format!("http://127.0.0.1:{}", ports.api);
    wait_ready(&format!("{api}/ready"), Duration::from_secs(20)).await;

    // monitoring/prometheus.yml as shipped, pointed at this test's ports and scraping every second.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = std::fs::read_to_string(root.join("monitoring/prometheus.yml")).unwrap();
    let config = config
        .replace("call-api:8000", &format!("127.0.0.1:{}", ports.api))
        .replace("audio-processor:9091", &format!("127.0.0.1:{}", ports.audio_admin))
        .replace("provider-gateway:9092", &format!("127.0.0.1:{}", ports.gateway_admin))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("scrape_timeout: 10s", "scrape_timeout: 1s");
    let dir = temp_path("prometheus").parent().unwrap().to_path_buf();
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(root.join("monitoring/prometheus-alerts.yml"), dir.join("prometheus-alerts.yml")).unwrap();
    let prom_port = free_port();
    let prom = Killed(
        Command::new(bin)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    wait_ready(&format!("{prom_url}/-/ready"), Duration::from_secs(30)).await;

    let c = client();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        for _ in 0..5 {
            c.get(format!("{api}/v1/providers")).bearer_auth(API_KEY).send().await.unwrap();
            c.get(format!("{api}/v1/does-not-exist")).bearer_auth(API_KEY).send().await.unwrap();
        }
        let up = query(&prom_url, "up == 1").await;
        let jobs: Vec<&str> = up.iter().filter_map(|s| s["metric"]["job"].as_str()).collect();
        let all_up = ["call-api", "audio-processor", "provider-gateway"].iter().all(|j| jobs.contains(j));
        let rate = query(&prom_url, "rate(http_requests_total[1m])").await;
        let p95 =
            query(&prom_url, "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))")
                .await;
        if all_up && !rate.is_empty() && p95.iter().any(|s| s["value"][1].as_str().is_some_and(|v| v != "NaN")) {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus never saw all jobs up with traffic: up={up:?} rate={rate:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The guide's error-rate query parses and runs (no 5xx were sent, so it may be empty).
    query(&prom_url, "rate(http_requests_total{status=~\"5..\"}[5m])").await;
    let rules: serde_json::Value =
        c.get(format!("{prom_url}/api/v1/rules")).send().await.unwrap().json().await.unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    let alerts: Vec<&str> =
        groups.iter().flat_map(|g| g["rules"].as_array().unwrap()).filter_map(|r| r["name"].as_str()).collect();
    for name in ["HighErrorRate", "HighLatency", "ServiceDown"] {
        assert!(alerts.contains(&name), "{name} not loaded: {alerts:?}");
    }
    let firing: Vec<serde_json::Value> =
        query(&prom_url, "ALERTS{alertname=\"ServiceDown\", alertstate=\"firing\"}").await;
    assert!(firing.is_empty(), "ServiceDown fires while every service is up: {firing:?}");
    drop(prom);
}
