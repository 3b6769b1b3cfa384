//! The integration tests of `audio-processor`, compiled as one binary (the helpers in `common`
//! once, one link) and still run one test per process by `cargo nextest`.

#[macro_use]
mod common;

mod legs;
mod metrics;
mod recording;
mod stream;
