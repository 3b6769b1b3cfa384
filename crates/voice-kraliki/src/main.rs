//! `voice-kraliki`: the whole stack with one command, plus operator tooling.
//!
//! ```text
//! voice-kraliki [run]              start audio-processor, provider-gateway and call-api as
//!                                  supervised child processes, each on its own ports
//! voice-kraliki serve <service>    run one service in this process (what `run` starts)
//! voice-kraliki demo               against a running stack: create a call, upload the shipped
//!                                  recording, print its analysis
//! voice-kraliki loadgen [options]  against a running stack: simulated carriers hold live
//!                                  calls, then a table of turn outcomes and latency
//!                                  (`voice_kraliki::loadgen`)
//! voice-kraliki sentry-test        send a test event to SENTRY_DSN
//! voice-kraliki sentry-alerts apply --org ORG --project PROJECT [--file PATH] [--dry-run]
//!                                  create or update the Sentry alert rules of
//!                                  monitoring/sentry/alerts.json (`voice_kraliki::sentry_alerts`)
//! ```
//!
//! The reliability drills are operator tools in their own crate (`crates/drills`).

mod demo;
mod supervisor;

use std::process::ExitCode;

const USAGE: &str = "usage: voice-kraliki [run | serve <call-api|audio-processor|provider-gateway> | demo | loadgen [options] | sentry-test | sentry-alerts apply [options] | help]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["run"] => supervisor::run(),
        ["serve", "call-api"] => call_api::main(),
        ["serve", "audio-processor"] => audio_processor::main(),
        ["serve", "provider-gateway"] => provider_gateway::main(),
        ["demo"] => demo::run(),
        ["loadgen", rest @ ..] => voice_kraliki::loadgen::run(rest),
        ["sentry-test"] => sentry_test(),
        ["sentry-alerts", rest @ ..] => voice_kraliki::sentry_alerts::run(rest),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Sends one test event (the guide's troubleshooting step) and waits for it to be delivered.
fn sentry_test() -> ExitCode {
    let env = telemetry::Env::from_process();
    let config = match telemetry::TelemetryConfig::from_env(&env) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("voice-kraliki: {e}");
            }
            return ExitCode::from(2);
        }
    };
    if !config.sentry_enabled() {
        eprintln!("voice-kraliki: SENTRY_DSN is not set (or APM_ENABLED=false): nothing to test");
        return ExitCode::from(2);
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let info = telemetry::ServiceInfo::new("voice-kraliki", env!("CARGO_PKG_VERSION"));
        let telemetry = match telemetry::init(&info, &config) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("voice-kraliki: {e}");
                return ExitCode::FAILURE;
            }
        };
        let id = sentry::capture_message(
            "voice-kraliki sentry-test: this is a test event, Sentry is configured correctly",
            sentry::Level::Info,
        );
        telemetry.shutdown().await;
        println!("sent test event {id} to Sentry (environment {})", config.environment);
        ExitCode::SUCCESS
    })
}
