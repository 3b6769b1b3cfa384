//! The Prometheus recorder, the metric names this crate owns (SPEC §6), `build_info` and the
//! standard `process_*` metrics.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ServiceInfo;

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const HTTP_REQUESTS_INPROGRESS: &str = "http_requests_inprogress";
pub const GRPC_SERVER_STARTED_TOTAL: &str = "grpc_server_started_total";
pub const GRPC_SERVER_HANDLED_TOTAL: &str = "grpc_server_handled_total";
pub const GRPC_SERVER_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
pub const GRPC_CLIENT_STARTED_TOTAL: &str = "grpc_client_started_total";
pub const GRPC_CLIENT_HANDLED_TOTAL: &str = "grpc_client_handled_total";
pub const GRPC_CLIENT_HANDLING_SECONDS: &str = "grpc_client_handling_seconds";
pub const BUILD_INFO: &str = "build_info";

/// Request latency buckets (seconds) for HTTP and gRPC; alert thresholds sit on boundaries.
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Renders this process's metrics in the Prometheus text format.
#[derive(Clone)]
pub struct MetricsHandle {
    inner: PrometheusHandle,
}

impl MetricsHandle {
    /// The current metrics as Prometheus text, with fresh process metrics.
    pub fn render(&self) -> String {
        self.inner.run_upkeep();
        let mut out = self.inner.render();
        process::render(&mut out);
        float_counters::render(&mut out);
        out
    }
}

pub use float_counters::{add_float_counter, describe_float_counter};

/// Counters of amounts that are not whole numbers (money): the recorder's counters are
/// integers, so these are kept here and rendered as text after the others, as counters.
mod float_counters {
    use std::{
        collections::BTreeMap,
        fmt::Write,
        sync::{Mutex, PoisonError},
    };

    /// Labels, in the order given, with their values.
    type Labels = Vec<(&'static str, String)>;

    #[derive(Default)]
    struct Counter {
        help: &'static str,
        series: BTreeMap<Labels, f64>,
    }

    static COUNTERS: Mutex<BTreeMap<&'static str, Counter>> = Mutex::new(BTreeMap::new());

    /// Sets the help text of `name` (and makes it appear, without series, until one is added).
    pub fn describe_float_counter(name: &'static str, help: &'static str) {
        let mut counters = COUNTERS.lock().unwrap_or_else(PoisonError::into_inner);
        counters.entry(name).or_default().help = help;
    }

    /// Adds `amount` (ignored unless finite and not negative: a counter never goes down) to
    /// the series of `name` with `labels`; 0 creates the series.
    pub fn add_float_counter(name: &'static str, labels: &[(&'static str, &str)], amount: f64) {
        if !amount.is_finite() || amount < 0.0 {
            return;
        }
        let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
        let mut counters = COUNTERS.lock().unwrap_or_else(PoisonError::into_inner);
        *counters.entry(name).or_default().series.entry(labels).or_insert(0.0) += amount;
    }

    pub(super) fn render(out: &mut String) {
        let counters = COUNTERS.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, counter) in counters.iter().filter(|(_, c)| !c.series.is_empty()) {
            if !counter.help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {}", counter.help);
            }
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in &counter.series {
                let _ = write!(out, "{name}");
                if !labels.is_empty() {
                    let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                    let _ = write!(out, "{{{}}}", body.join(","));
                }
                let _ = writeln!(out, " {value}");
            }
        }
    }

    fn escape(v: &str) -> String {
        v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn amounts_add_up_per_series_and_render_as_counters() {
            describe_float_counter("test_money_total", "Money spent");
            add_float_counter("test_money_total", &[("currency", "USD"), ("model", "a\"b")], 0.25);
            add_float_counter("test_money_total", &[("currency", "USD"), ("model", "a\"b")], 0.5);
            add_float_counter("test_money_total", &[("currency", "EUR"), ("model", "x")], 0.0);
            add_float_counter("test_money_total", &[("currency", "EUR"), ("model", "x")], -3.0);
            add_float_counter("test_money_total", &[("currency", "EUR"), ("model", "x")], f64::NAN);
            let mut out = String::new();
            render(&mut out);
            assert!(out.contains("# HELP test_money_total Money spent\n# TYPE test_money_total counter\n"), "{out}");
            assert!(out.contains("test_money_total{currency=\"USD\",model=\"a\\\"b\"} 0.75\n"), "{out}");
            assert!(out.contains("test_money_total{currency=\"EUR\",model=\"x\"} 0\n"), "{out}");
        }
    }
}

/// Installs the global recorder (once per process; later calls return the same handle).
pub(crate) fn install(info: &ServiceInfo, release: &str) -> MetricsHandle {
    let handle = HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        // Every histogram gets explicit buckets; without them the exporter renders summaries.
        builder = builder.set_buckets(LATENCY_BUCKETS).expect("non-empty buckets");
        for (name, buckets) in &info.histograms {
            builder = builder.set_buckets_for_metric(Matcher::Full(name.clone()), buckets).expect("non-empty buckets");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed by a test harness; recording then goes there.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    });
    metrics::gauge!(BUILD_INFO, "service" => info.name.clone(), "version" => release.to_string(), "git_sha" => info.git_sha.clone())
        .set(1.0);
    MetricsHandle { inner: handle.clone() }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests handled, by route template and status");
    describe_histogram!(HTTP_REQUEST_DURATION_SECONDS, Unit::Seconds, "HTTP request latency");
    describe_gauge!(HTTP_REQUESTS_INPROGRESS, "HTTP requests being served");
    describe_counter!(GRPC_SERVER_STARTED_TOTAL, "gRPC calls started on the server");
    describe_counter!(GRPC_SERVER_HANDLED_TOTAL, "gRPC calls completed on the server, by status code");
    describe_histogram!(GRPC_SERVER_HANDLING_SECONDS, Unit::Seconds, "gRPC server handling time");
    describe_counter!(GRPC_CLIENT_STARTED_TOTAL, "gRPC calls started by this client");
    describe_counter!(GRPC_CLIENT_HANDLED_TOTAL, "gRPC calls completed by this client, by status code");
    describe_histogram!(GRPC_CLIENT_HANDLING_SECONDS, Unit::Seconds, "gRPC client call time");
    describe_gauge!(BUILD_INFO, "Always 1; labels carry the service, version and git revision");
}

/// `process_*` metrics read from `/proc/self` at scrape time (Linux; absent elsewhere),
/// rendered as text because the recorder's counters are integers and CPU seconds are not.
mod process {
    use std::fmt::Write;

    pub(super) fn render(out: &mut String) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
        // Fields after the command name, which is in parentheses and may contain spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // USER_HZ is 100 and pages are 4 KiB on every Linux target this runs on.
        let (ticks, page) = (100.0, 4096.0);
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        };
        metric(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time in seconds",
            (num(11) + num(12)) / ticks,
        );
        metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes", num(21) * page);
        metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes", num(20));
        metric("process_threads", "gauge", "OS threads", num(17));
        if let Some(boot) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok()))
        {
            metric(
                "process_start_time_seconds",
                "gauge",
                "Start time since the Unix epoch in seconds",
                boot + num(19) / ticks,
            );
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            metric("process_open_fds", "gauge", "Open file descriptors", dir.count() as f64);
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
            && let Some(line) = limits.lines().find(|l| l.starts_with("Max open files"))
            && let Some(soft) = line.split_whitespace().nth(3).and_then(|v| v.parse::<f64>().ok())
        {
            metric("process_max_fds", "gauge", "Maximum number of open file descriptors", soft);
        }
    }
}
