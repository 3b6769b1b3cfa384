//! CPU profiles on demand: `GET /debug/pprof/profile?seconds=N` samples the process for N
//! seconds and answers a gzip-compressed pprof protobuf, readable by `go tool pprof` and
//! Grafana Pyroscope. (The Rust Sentry SDK has no profiler; this takes its place.)

use std::{
    collections::HashMap,
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::Query,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use kraliki_proto::perftools::profiles as pb;
use prost::Message;
use serde::Deserialize;

/// Longest profile one request may ask for.
pub const MAX_SECONDS: u64 = 60;
const FREQUENCY_HZ: i32 = 99;

static RUNNING: AtomicBool = AtomicBool::new(false);

#[derive(Deserialize)]
struct Params {
    seconds: Option<String>,
}

/// Router with `GET /debug/pprof/profile`.
pub fn router() -> Router {
    Router::new().route("/debug/pprof/profile", get(profile_handler))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn profile_handler(Query(params): Query<Params>) -> Response {
    let seconds = match params.seconds.as_deref().map(str::parse::<u64>) {
        None => 30,
        Some(Ok(s)) if (1..=MAX_SECONDS).contains(&s) => s,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                &format!("seconds must be a whole number between 1 and {MAX_SECONDS}"),
            );
        }
    };
    if RUNNING.swap(true, Ordering::SeqCst) {
        return error(StatusCode::CONFLICT, "conflict", "a profile is already being taken");
    }
    let result = tokio::task::spawn_blocking(move || capture(Duration::from_secs(seconds))).await;
    RUNNING.store(false, Ordering::SeqCst);
    match result {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"profile.pb.gz\""),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(message)) => {
            tracing::warn!(error = %message, "cpu profile failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the profile could not be taken")
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the profile could not be taken"),
    }
}

/// Samples the process for `duration` and returns the gzipped pprof profile.
pub fn capture(duration: Duration) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(duration);
    let report = guard.report().build().map_err(|e| e.to_string())?;
    let profile = encode(&report);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.encode_to_vec()).map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}

struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        // The string table's first entry must be empty.
        Self { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }
    fn id(&mut self, s: &str) -> i64 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

fn encode(report: &pprof::Report) -> pb::Profile {
    let mut strings = Strings::new();
    let mut functions: HashMap<String, u64> = HashMap::new();
    let (mut function_table, mut location_table, mut samples) = (Vec::new(), Vec::new(), Vec::new());
    let period = 1_000_000_000 / i64::from(report.timing.frequency.max(1));
    let thread_key = strings.id("thread");
    for (frames, count) in &report.data {
        let mut location_ids = Vec::new();
        for frame in &frames.frames {
            for symbol in frame {
                let name = symbol.name();
                if let Some(id) = functions.get(&name) {
                    location_ids.push(*id);
                    continue;
                }
                let id = function_table.len() as u64 + 1;
                function_table.push(pb::Function {
                    id,
                    name: strings.id(&name),
                    system_name: strings.id(&String::from_utf8_lossy(symbol.raw_name())),
                    filename: strings.id(&symbol.filename()),
                    ..Default::default()
                });
                location_table.push(pb::Location {
                    id,
                    line: vec![pb::Line { function_id: id, line: i64::from(symbol.lineno()) }],
                    ..Default::default()
                });
                functions.insert(name, id);
                location_ids.push(id);
            }
        }
        let count = *count as i64;
        samples.push(pb::Sample {
            location_id: location_ids,
            value: vec![count, count * period],
            label: vec![pb::Label {
                key: thread_key,
                str: strings.id(&frames.thread_name_or_id()),
                ..Default::default()
            }],
        });
    }
    let samples_type = pb::ValueType { ty: strings.id("samples"), unit: strings.id("count") };
    let cpu_type = pb::ValueType { ty: strings.id("cpu"), unit: strings.id("nanoseconds") };
    pb::Profile {
        sample_type: vec![samples_type, cpu_type],
        sample: samples,
        function: function_table,
        location: location_table,
        time_nanos: report.timing.start_time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()
            as i64,
        duration_nanos: report.timing.duration.as_nanos() as i64,
        period_type: Some(cpu_type),
        period,
        string_table: strings.table,
        ..Default::default()
    }
}
