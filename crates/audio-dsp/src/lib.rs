//! Signal-processing core of Voice Kraliki's `audio-processor` service: everything between
//! outside audio bytes and the numbers and events the service reports. Pure Rust, no I/O,
//! no async, no telemetry; the service wraps it in gRPC, metrics and spans.
//!
//! # Layout
//! - [`codec`]: G.711 μ-law / A-law (ITU bit-exact, table decode) and PCM16 LE;
//!   [`Encoding`].
//! - [`wav`], [`raw`]: decoding of untrusted WAV files and headerless audio into
//!   [`DecodedAudio`] under [`Limits`]; never panics, never allocates from header fields.
//! - [`resample`]: rubato FFT resampling between 8, 16, 24 and 48 kHz, offline and
//!   streaming, and a half-band filter that doubles the rate (a live call's 8 kHz utterances
//!   to 16 kHz for transcription, in less than half the time).
//! - [`vad`]: two voice-activity tiers ([`VadKind::Fast`] = the WebRTC GMM detector, earshot
//!   0.1's port vendored with overflow fixes; [`VadKind::Neural`] = earshot 1.x), a
//!   frame-level detector and the segmenter that smooths decisions into speech segments.
//! - [`dtmf`]: Goertzel touch-tone detection.
//! - [`analysis`]: recording analysis per channel and per conversation
//!   ([`analyze`] → [`RecordingAnalysis`], serde-serialisable).
//! - [`stream`]: the live-stream state machine for one call leg ([`LiveStream`]):
//!   frames in, speech/DTMF events and transport statistics out.
//! - [`transcode`]: a light streaming transcoder (any rate → any rate, PCM16 → PCM16/G.711)
//!   for synthesised speech, without rubato.
//! - Features: `analysis` (default) brings `resample`, `vad`, `analysis` and `stream` (rubato,
//!   earshot); without it the crate is the light part: codecs, WAV, raw, transcoder, DTMF.
//! - [`synth`]: deterministic test signals (tones, seeded noise, DTMF) for tests and
//!   benchmarks.
//! - [`DspError`]: the single error type; [`DspError::class`] maps it to
//!   `InvalidArgument`, `ResourceExhausted` or `Internal`.
//!
//! # Example
//! ```
//! use audio_dsp::{analyze, decode_auto, AnalysisConfig, Limits, RawFormat};
//! let bytes = vec![0xFFu8; 8000]; // one second of μ-law silence
//! let audio = decode_auto(&bytes, RawFormat::TELEPHONE, &Limits::default()).unwrap();
//! let report = analyze(&audio, &AnalysisConfig::default()).unwrap();
//! assert_eq!(report.channels[0].speech_seconds, 0.0);
//! ```

#[cfg(feature = "analysis")]
pub mod analysis;
mod audio;
pub mod codec;
pub mod dtmf;
mod error;
pub mod raw;
#[cfg(feature = "analysis")]
pub mod resample;
#[cfg(feature = "analysis")]
pub mod stream;
pub mod synth;
pub mod transcode;
#[cfg(feature = "analysis")]
pub mod vad;
pub mod wav;

#[cfg(feature = "analysis")]
pub use analysis::{AnalysisConfig, RecordingAnalysis, analyze};
pub use audio::{DecodedAudio, Limits, SUPPORTED_RATES, check_rate};
pub use codec::Encoding;
pub use error::{DspError, ErrorClass};
pub use raw::{RawFormat, decode_auto, decode_raw};
#[cfg(feature = "analysis")]
pub use stream::{Frame, LiveStream, StreamConfig, StreamEvent, StreamStats};
#[cfg(feature = "analysis")]
pub use vad::{VadConfig, VadKind};
pub use wav::decode_wav;
