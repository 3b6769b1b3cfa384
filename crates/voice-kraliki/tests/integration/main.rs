//! The integration tests of `voice-kraliki`, compiled as one binary (the helpers in `common`
//! once, one link) and still run one test per process by `cargo nextest`.

#[macro_use]
mod common;

mod artefacts;
mod balancing;
mod console;
mod demo;
mod exposition;
mod health;
mod loadgen;
mod metrics;
mod metrics_disabled_in_process;
mod monitoring;
mod process;
mod prometheus;
mod runner;
mod secrets;
mod sentry_alerts;
mod trace;
