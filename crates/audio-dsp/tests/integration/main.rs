//! The integration tests of `audio-dsp`, compiled as one binary (the helpers in `common`
//! once, one link) and still run one test per process by `cargo nextest`.

#[macro_use]
mod common;

mod analysis;
mod proptests;
mod stream;
mod vad_accuracy;
mod webrtc_parity;
