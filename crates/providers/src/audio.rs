//! Audio for the providers, from `audio_dsp`'s light part (no resampling library): the WAV
//! header for raw uploads, G.711, and the streaming transcoder that brings synthesised speech
//! to exactly the format the caller asked for.

use bytes::Bytes;

pub(crate) use audio_dsp::transcode::Transcoder as DspTranscoder;

use crate::types::{AudioEncoding, OutputEncoding};

/// Wrap raw samples in a RIFF/WAV header (servers that sniff containers cannot read raw audio).
pub(crate) fn wav_wrap(encoding: AudioEncoding, sample_rate: u32, channels: u16, data: &[u8]) -> Bytes {
    let encoding = match encoding {
        AudioEncoding::Mulaw => audio_dsp::Encoding::Mulaw,
        AudioEncoding::Alaw => audio_dsp::Encoding::Alaw,
        _ => audio_dsp::Encoding::Pcm16,
    };
    Bytes::from(audio_dsp::wav::wrap_encoded(encoding, sample_rate, channels, data))
}

/// PCM16 at `in_rate` to `encoding` at `out_rate`, chunk by chunk.
#[derive(Debug)]
pub(crate) struct Transcoder(DspTranscoder);

impl Transcoder {
    pub(crate) fn new(in_rate: u32, out_rate: u32, encoding: OutputEncoding) -> Self {
        let encoding = match encoding {
            OutputEncoding::Pcm16 => audio_dsp::Encoding::Pcm16,
            OutputEncoding::Mulaw => audio_dsp::Encoding::Mulaw,
        };
        Self(DspTranscoder::new(in_rate, out_rate, encoding))
    }

    /// Convert the next chunk. Output always holds whole samples.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Bytes {
        Bytes::from(self.0.push(chunk))
    }
}
