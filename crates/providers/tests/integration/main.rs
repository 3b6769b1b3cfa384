//! The integration tests of `providers`, compiled as one binary (the helpers in `common`
//! once, one link) and still run one test per process by `cargo nextest`.

#[macro_use]
mod common;

mod gateway_http;
mod sentiment_accuracy;
mod simulated;
mod tracing_spans;
