//! The integration tests of `call-api`, compiled as one binary (the helpers in `common`
//! once, one link) and still run one test per process by `cargo nextest`.

#[macro_use]
mod common;

mod audio_stream;
mod calls;
mod concurrency;
mod console;
mod cost;
mod event_stream;
mod failed_turns;
mod hardening;
mod limits;
mod live;
mod metrics;
mod observability;
mod outage;
mod pipeline;
mod quality;
mod replicas;
mod tenancy;
mod twilio;
mod webhooks;
