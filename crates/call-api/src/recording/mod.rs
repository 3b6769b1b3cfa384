//! Recording analysis (SPEC §4): an uploaded recording is analysed, transcribed and scored, and
//! the result stored on its call.
//!
//! ```text
//! config.rs     RECORDING_* settings
//! upload.rs     claim the call's analysis → spool the body → run the pipeline → store the
//!               outcome; per-replica and per-tenant upload places, analysis places
//! pipeline.rs   the pipeline: upload → audio-processor → transcription → sentiment
//! document.rs   the analysis document and the pure functions building it
//! ```
//!
//! `routes/recording.rs` holds only the HTTP handlers.

pub mod config;
pub mod document;
pub mod pipeline;
pub mod upload;

pub use config::RecordingConfig;
