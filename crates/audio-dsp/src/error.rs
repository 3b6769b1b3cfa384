//! The one error type of the crate.

use thiserror::Error;

/// How a caller should classify a [`DspError`] at a service boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input is malformed or unsupported (gRPC `InvalidArgument`, HTTP 400/415/422).
    InvalidInput,
    /// The input is well formed but larger than the configured [`crate::Limits`]
    /// (gRPC `ResourceExhausted`, HTTP 413).
    ResourceExhausted,
    /// A fault inside this crate or a dependency, not caused by the input (gRPC `Internal`).
    Internal,
}

/// Everything that can go wrong while decoding, resampling or analysing audio.
///
/// Display messages are lowercase, contain no internal detail and are safe to return to a
/// client.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum DspError {
    /// The payload is larger than [`crate::Limits::max_bytes`].
    #[error("audio payload of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the payload.
        bytes: u64,
        /// The configured limit.
        max: u64,
    },
    /// The audio is longer than [`crate::Limits::max_seconds`].
    #[error("audio of {seconds:.2} seconds exceeds the limit of {max:.2} seconds")]
    TooLong {
        /// Duration of the audio.
        seconds: f64,
        /// The configured limit.
        max: f64,
    },
    /// The bytes are not a RIFF/WAVE file.
    #[error("not a wav file: {0}")]
    NotWav(&'static str),
    /// The WAV structure is broken (missing or truncated chunks, inconsistent fields).
    #[error("malformed wav: {0}")]
    MalformedWav(&'static str),
    /// The WAV (or raw) audio uses a codec or sample size this crate does not decode.
    #[error("unsupported audio format: {0} (supported: pcm16, mu-law, a-law)")]
    UnsupportedFormat(String),
    /// The sample rate is not one of 8000, 16000, 24000 or 48000 Hz.
    #[error("unsupported sample rate {0} hz (supported: 8000, 16000, 24000, 48000)")]
    UnsupportedSampleRate(u32),
    /// The channel count is zero or above the configured maximum.
    #[error("unsupported channel count {got} (supported: 1 to {max})")]
    UnsupportedChannels {
        /// Channel count found in the input.
        got: u32,
        /// The largest channel count accepted.
        max: u32,
    },
    /// The payload length is not a whole number of sample frames.
    #[error("payload of {len} bytes is not a whole number of {block}-byte sample frames")]
    PartialFrame {
        /// Payload length in bytes.
        len: usize,
        /// Bytes per sample frame (all channels).
        block: usize,
    },
    /// The input holds no audio samples.
    #[error("audio contains no samples")]
    Empty,
    /// A configuration value is out of range (e.g. a zero frame length).
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A live-stream frame was rejected (too long, wrong size).
    #[error("invalid frame: {0}")]
    InvalidFrame(&'static str),
    /// The resampler failed; this is a bug, not bad input.
    #[error("internal resampling error")]
    Resample,
}

impl DspError {
    /// How a service should report this error (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::TooLarge { .. } | Self::TooLong { .. } => ErrorClass::ResourceExhausted,
            Self::Resample => ErrorClass::Internal,
            _ => ErrorClass::InvalidInput,
        }
    }

    /// True when the input exceeded a [`crate::Limits`] bound (gRPC `ResourceExhausted`).
    pub fn is_resource_exhausted(&self) -> bool {
        self.class() == ErrorClass::ResourceExhausted
    }

    /// True when the input itself is bad (gRPC `InvalidArgument`).
    pub fn is_invalid_input(&self) -> bool {
        self.class() == ErrorClass::InvalidInput
    }
}
