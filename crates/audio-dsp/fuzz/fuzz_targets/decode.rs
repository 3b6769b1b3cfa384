//! Fuzzes the decoders of outside bytes: WAV, raw (format taken from the first bytes) and
//! auto-detection. Asserts that decoding never panics and never yields more samples than
//! input bytes.
#![no_main]

use audio_dsp::{decode_auto, decode_raw, decode_wav, DecodedAudio, Encoding, Limits, RawFormat};
use libfuzzer_sys::fuzz_target;

fn check(audio: &DecodedAudio, len: usize) {
    let samples: usize = audio.channels.iter().map(Vec::len).sum();
    assert!(samples <= len);
    assert!(audio.channels.iter().all(|c| c.capacity() <= len.max(1)));
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(a) = decode_wav(data, &limits) {
        check(&a, data.len());
    }
    if data.len() >= 2 {
        let encoding = match data[0] % 3 {
            0 => Encoding::Pcm16,
            1 => Encoding::Mulaw,
            _ => Encoding::Alaw,
        };
        let rates = [8000, 16000, 24000, 48000, 11025];
        let format = RawFormat {
            encoding,
            sample_rate: rates[usize::from(data[1] % 5)],
            channels: u32::from(data[1] / 5 % 4),
        };
        let body = &data[2..];
        if let Ok(a) = decode_raw(body, format, &limits) {
            check(&a, body.len());
        }
        if let Ok(a) = decode_auto(body, format, &limits) {
            check(&a, body.len());
        }
    }
});
