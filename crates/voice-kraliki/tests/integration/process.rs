//! The binaries as an operator runs them: bad configuration, LOG_FILE, CPU profiles, SIGTERM
//! with a request in flight, and `voice-kraliki sentry-test`.

use std::{
    io::Read,
    time::{Duration, Instant},
};

use crate::common::*;
use prost::Message;

fn exits_with_config_error(service: &'static str, var: &str, value: &str) {
    let ports = Ports::new();
    let mut env = ports.env();
    env.push((var.to_string(), value.to_string()));
    let mut s = Service::start(service, &env);
    let status = s.wait(Duration::from_secs(20)).expect("exits on bad configuration");
    assert_eq!(status.code(), Some(2), "{service} with {var}={value}");
    std::thread::sleep(Duration::from_millis(100));
    let stderr = s.stderr();
    assert_eq!(stderr.len(), 1, "one line per bad variable: {stderr:?}");
    assert!(stderr[0].contains(var), "{stderr:?}");
    assert!(s.stdout().is_empty(), "nothing started: {:?}", s.stdout());
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_variable() {
    exits_with_config_error("call-api", "SENTRY_TRACES_SAMPLE_RATE", "2");
    exits_with_config_error("audio-processor", "WORKERS", "zero");
    exits_with_config_error("provider-gateway", "PROVIDER_GATEWAY_GRPC_ADDR", "localhost:port");
    exits_with_config_error("call-api", "CALL_API_ADDR", "0.0.0.0");
    exits_with_config_error("call-api", "API_KEYS", "short");
    exits_with_config_error("call-api", "AUDIO_PROCESSOR_URL", "http://audio-a:50051,,http://audio-b:50051");
    exits_with_config_error("call-api", "PROVIDER_GATEWAY_URL", "grpc://gateway:50052");
    exits_with_config_error("call-api", "LIVE_LEASE_SECONDS", "0.1");
}

#[test]
fn a_taken_address_exits_non_zero_naming_the_variable_and_the_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut env = Ports::new().env();
    env.push(("CALL_API_ADDR".into(), addr.to_string()));
    let mut s = Service::start("call-api", &env);
    let status = s.wait(Duration::from_secs(20)).expect("exits when its address is taken");
    assert_eq!(status.code(), Some(1));
    let last = s.stderr().last().cloned().unwrap_or_default();
    // The variable, the address and the operating system's reason, on one line.
    assert!(last.starts_with(&format!("call-api: bind CALL_API_ADDR {addr}: ")), "{last}");
    assert!(last.contains("in use"), "{last}");
    // What a stack test that waits for readiness in vain reports: the service, that it exited, why.
    let report = started_report();
    assert!(report.contains(&format!("--- call-api (pid {}, exited)", s.child.id())), "{report}");
    assert!(report.contains(&format!("stderr: {last}")), "{report}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn log_file_receives_the_same_lines_as_stdout() {
    let ports = Ports::new();
    let log = temp_path("app.log");
    let mut env = ports.env();
    env.push(("LOG_FILE".into(), log.display().to_string()));
    let mut gateway = Service::start("provider-gateway", &env);
    wait_ready(&format!("http://127.0.0.1:{}/ready", ports.gateway_admin), Duration::from_secs(20)).await;
    gateway.terminate();
    assert!(gateway.wait(Duration::from_secs(15)).expect("exits").success());
    std::thread::sleep(Duration::from_millis(200));
    let file: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    assert!(file.len() >= 3, "{file:?}");
    assert_eq!(file, gateway.stdout());
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("gzip");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pprof_profile_and_sigterm_with_a_request_in_flight() {
    let ports = Ports::new();
    let mut audio = Service::start("audio-processor", &ports.env());
    let admin = format!("http://127.0.0.1:{}", ports.audio_admin);
    wait_ready(&format!("{admin}/ready"), Duration::from_secs(20)).await;

    // Keep the process busy while it profiles itself, so samples exist.
    let busy = tokio::spawn({
        let admin = admin.clone();
        async move {
            let c = client();
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                let _ = c.get(format!("{admin}/metrics")).send().await;
            }
        }
    });
    let r = client().get(format!("{admin}/debug/pprof/profile?seconds=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let profile = kraliki_proto::perftools::profiles::Profile::decode(gunzip(&r.bytes().await.unwrap()).as_slice())
        .expect("pprof protobuf");
    busy.await.unwrap();
    assert!(!profile.sample.is_empty(), "profile has samples");
    assert_eq!(profile.sample_type.len(), 2);
    assert_eq!(profile.string_table[0], "");
    assert!(profile.duration_nanos >= 1_000_000_000);
    let bad = client().get(format!("{admin}/debug/pprof/profile?seconds=999")).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    // SIGTERM while a 2-second request is in flight: it completes; new connections are refused.
    let in_flight = tokio::spawn({
        let admin = admin.clone();
        async move { client().get(format!("{admin}/debug/pprof/profile?seconds=2")).send().await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    audio.terminate();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(client().get(format!("{admin}/health")).send().await.is_err(), "new connections must be refused");
    let response = in_flight.await.unwrap().expect("in-flight request completes");
    assert_eq!(response.status(), 200);
    assert!(!response.bytes().await.unwrap().is_empty());
    let status = audio.wait(Duration::from_secs(20)).expect("exits within the drain bound");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sentry_test_command_delivers_an_event() {
    let sink = telemetry::testing::SentrySink::start().await;
    let env = vec![("SENTRY_DSN".to_string(), sink.dsn()), ("APM_ENVIRONMENT".to_string(), "ci".to_string())];
    let mut cmd = Service::start_args("voice-kraliki", &["sentry-test"], &env);
    let status = cmd.wait(Duration::from_secs(30)).expect("sentry-test exits");
    assert!(status.success(), "{:?}", cmd.stderr());
    let items = sink.wait_for(Duration::from_secs(5), |i| i.iter().any(|i| i.kind == "event")).await;
    let event = &items.iter().find(|i| i.kind == "event").expect("event delivered").payload;
    assert!(event["message"].as_str().unwrap_or_default().contains("sentry-test"), "{event}");
    assert_eq!(event["environment"], "ci");

    let mut missing = Service::start_args("voice-kraliki", &["sentry-test"], &[]);
    assert_eq!(missing.wait(Duration::from_secs(20)).unwrap().code(), Some(2), "no DSN: clear failure");
}
