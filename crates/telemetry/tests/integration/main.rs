//! The integration tests of `telemetry`, compiled as one binary (the helpers in `common`
//! once, one link) and still run one test per process by `cargo nextest`.

#[macro_use]
mod common;

mod apm_disabled;
mod otlp_logs;
mod sentry;
mod unreachable;
