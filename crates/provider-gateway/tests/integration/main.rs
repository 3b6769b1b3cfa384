//! The integration tests of `provider-gateway`, compiled as one binary (the helpers in `common`
//! once, one link) and still run one test per process by `cargo nextest`.

#[macro_use]
mod common;

mod genai;
mod grpc;
mod hardening;
mod metrics;
mod process;
mod sentry;
