//! RIFF/WAVE decoding of outside bytes.
//!
//! Accepts format tag 1 (PCM, 16-bit only), 6 (A-law), 7 (μ-law) and
//! `WAVE_FORMAT_EXTENSIBLE` (0xFFFE) carrying one of those. Chunks may come in any order;
//! unknown chunks are skipped; odd-sized chunks are padded as RIFF requires (a missing pad
//! byte at the end is tolerated). A `data` chunk that claims more bytes than the file holds
//! (a truncated upload, or the 0xFFFFFFFF "unknown size" of streaming writers) is decoded up
//! to the bytes present; a trailing partial sample frame is dropped. `block_align` and
//! `byte_rate` are derived, never trusted. Nothing is ever allocated from a header field:
//! allocation is bounded by the bytes actually present.

use crate::audio::{check_rate, deinterleave};
use crate::{DecodedAudio, DspError, Encoding, Limits};

const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_ALAW: u16 = 6;
const WAVE_FORMAT_MULAW: u16 = 7;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;
/// The GUID tail shared by all `KSDATAFORMAT_SUBTYPE_*` formats derived from a format tag.
const SUBFORMAT_TAIL: [u8; 14] = [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71];

/// What the `fmt ` chunk says, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFormat {
    /// Sample encoding.
    pub encoding: Encoding,
    /// Channel count.
    pub channels: u32,
    /// Sample rate in Hz.
    pub sample_rate: u32,
}

/// True when `bytes` starts like a RIFF/WAVE file.
pub fn looks_like_wav(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE"
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_fmt(body: &[u8], limits: &Limits) -> Result<WavFormat, DspError> {
    if body.len() < 16 {
        return Err(DspError::MalformedWav("fmt chunk shorter than 16 bytes"));
    }
    let mut tag = u16_at(body, 0);
    let channels = u32::from(u16_at(body, 2));
    let sample_rate = u32_at(body, 4);
    let bits = u16_at(body, 14);
    if tag == WAVE_FORMAT_EXTENSIBLE {
        // cbSize(2) validBits(2) channelMask(4) subFormat GUID(16)
        if body.len() < 40 || u16_at(body, 16) < 22 {
            return Err(DspError::MalformedWav("extensible fmt chunk too short"));
        }
        if body[26..40] != SUBFORMAT_TAIL {
            return Err(DspError::UnsupportedFormat("wave_format_extensible with a non-standard subformat".into()));
        }
        tag = u16_at(body, 24);
        let valid_bits = u16_at(body, 18);
        if valid_bits != 0 && valid_bits != bits {
            return Err(DspError::UnsupportedFormat(format!("{valid_bits} valid bits in {bits}-bit containers")));
        }
    }
    let encoding = match (tag, bits) {
        (WAVE_FORMAT_PCM, 16) => Encoding::Pcm16,
        (WAVE_FORMAT_PCM, b) => {
            return Err(DspError::UnsupportedFormat(format!("pcm with {b} bits")));
        }
        (WAVE_FORMAT_ALAW, 8) => Encoding::Alaw,
        (WAVE_FORMAT_MULAW, 8) => Encoding::Mulaw,
        (WAVE_FORMAT_ALAW | WAVE_FORMAT_MULAW, b) => {
            return Err(DspError::UnsupportedFormat(format!("g.711 with {b} bits")));
        }
        (3, _) => return Err(DspError::UnsupportedFormat("ieee float".into())),
        (t, _) => {
            return Err(DspError::UnsupportedFormat(format!("wav format tag {t:#06x}")));
        }
    };
    limits.check_channels(channels)?;
    check_rate(sample_rate)?;
    Ok(WavFormat { encoding, channels, sample_rate })
}

/// Walks the chunks and returns the format and the audio bytes of the `data` chunk.
///
/// Borrowed from the input, so it costs nothing but the walk; use it to validate or to
/// stream-decode without holding a second copy.
pub fn parse_wav<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(WavFormat, &'a [u8]), DspError> {
    limits.check_bytes(bytes.len() as u64)?;
    if bytes.len() < 12 {
        return Err(DspError::NotWav("shorter than a riff header"));
    }
    if &bytes[0..4] != b"RIFF" {
        if &bytes[0..4] == b"RF64" || &bytes[0..4] == b"RIFX" {
            return Err(DspError::UnsupportedFormat("rf64/rifx container".into()));
        }
        return Err(DspError::NotWav("missing riff signature"));
    }
    if &bytes[8..12] != b"WAVE" {
        return Err(DspError::NotWav("riff file is not wave"));
    }
    // The RIFF size is ignored on purpose: writers that stream get it wrong, and the chunk
    // walk below is bounded by the bytes present anyway.
    let mut pos = 12usize;
    let mut format: Option<WavFormat> = None;
    let mut data: Option<&[u8]> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let declared = u32_at(bytes, pos + 4) as usize;
        let body_start = pos + 8;
        let available = bytes.len() - body_start;
        let len = declared.min(available);
        let body = &bytes[body_start..body_start + len];
        match id {
            b"fmt " => {
                if format.is_some() {
                    return Err(DspError::MalformedWav("more than one fmt chunk"));
                }
                if declared > available {
                    return Err(DspError::MalformedWav("truncated fmt chunk"));
                }
                format = Some(parse_fmt(body, limits)?);
            }
            b"data" if data.is_none() => data = Some(body),
            _ => {}
        }
        if declared >= available {
            break;
        }
        // Chunks are word aligned; `declared < available` so this cannot overflow.
        pos = body_start + declared + (declared & 1);
    }
    let format = format.ok_or(DspError::MalformedWav("missing fmt chunk"))?;
    let data = data.ok_or(DspError::MalformedWav("missing data chunk"))?;
    Ok((format, data))
}

/// Decodes a WAV file into per-channel linear samples, applying `limits`.
pub fn decode_wav(bytes: &[u8], limits: &Limits) -> Result<DecodedAudio, DspError> {
    let (format, data) = parse_wav(bytes, limits)?;
    let block = format.encoding.bytes_per_sample() * format.channels as usize;
    let frames = data.len() / block;
    if frames == 0 {
        return Err(DspError::Empty);
    }
    limits.check_seconds(frames as f64 / f64::from(format.sample_rate))?;
    let channels = deinterleave(format.encoding, format.channels as usize, &data[..frames * block]);
    Ok(DecodedAudio { sample_rate: format.sample_rate, channels, encoding: format.encoding })
}

/// Wraps already-encoded samples (`data`) in a RIFF/WAV header: PCM16 (format 1, 16-bit),
/// μ-law (7) or A-law (6, both 8-bit, with the 18-byte `fmt ` chunk non-PCM formats carry).
/// For servers that sniff containers and cannot read raw audio.
pub fn wrap_encoded(encoding: Encoding, sample_rate: u32, channels: u16, data: &[u8]) -> Vec<u8> {
    let (format_tag, bits): (u16, u16) = match encoding {
        Encoding::Mulaw => (7, 8),
        Encoding::Alaw => (6, 8),
        Encoding::Pcm16 => (1, 16),
    };
    let block_align = channels * bits / 8;
    let byte_rate = sample_rate * u32::from(block_align);
    let fmt_len: u32 = if format_tag == 1 { 16 } else { 18 };
    let data_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(data.len() + 46);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(4 + (8 + fmt_len) + 8 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&fmt_len.to_le_bytes());
    out.extend_from_slice(&format_tag.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&byte_rate.to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    if fmt_len == 18 {
        out.extend_from_slice(&0u16.to_le_bytes());
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Builds a canonical WAV file (44-byte header, or the extensible 68-byte header) from
/// per-channel samples; used by tests, fixtures and playback paths.
pub fn encode_wav(audio: &DecodedAudio, extensible: bool) -> Vec<u8> {
    let enc = audio.encoding;
    let channels = audio.channels.len();
    let bps = enc.bytes_per_sample();
    let frames = audio.frames();
    let data_len = frames * channels * bps;
    let tag = match enc {
        Encoding::Pcm16 => WAVE_FORMAT_PCM,
        Encoding::Alaw => WAVE_FORMAT_ALAW,
        Encoding::Mulaw => WAVE_FORMAT_MULAW,
    };
    let fmt_len: u32 = if extensible { 40 } else { 16 };
    let mut out = Vec::with_capacity(28 + fmt_len as usize + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((20 + fmt_len as usize + data_len) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&fmt_len.to_le_bytes());
    let head_tag = if extensible { WAVE_FORMAT_EXTENSIBLE } else { tag };
    out.extend_from_slice(&head_tag.to_le_bytes());
    out.extend_from_slice(&(channels as u16).to_le_bytes());
    out.extend_from_slice(&audio.sample_rate.to_le_bytes());
    out.extend_from_slice(&(audio.sample_rate * (channels * bps) as u32).to_le_bytes());
    out.extend_from_slice(&((channels * bps) as u16).to_le_bytes());
    out.extend_from_slice(&((bps * 8) as u16).to_le_bytes());
    if extensible {
        out.extend_from_slice(&22u16.to_le_bytes());
        out.extend_from_slice(&((bps * 8) as u16).to_le_bytes());
        out.extend_from_slice(&(if channels == 1 { 4u32 } else { 3u32 }).to_le_bytes());
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&SUBFORMAT_TAIL);
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for i in 0..frames {
        for ch in &audio.channels {
            let s = ch[i];
            match enc {
                Encoding::Pcm16 => out.extend_from_slice(&s.to_le_bytes()),
                Encoding::Mulaw => out.push(crate::codec::mulaw_encode(s)),
                Encoding::Alaw => out.push(crate::codec::alaw_encode(s)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(enc: Encoding, channels: usize) -> DecodedAudio {
        let ch: Vec<Vec<i16>> =
            (0..channels).map(|c| (0..800).map(|i| ((i * 37 + c * 1000) % 20000) as i16 - 10000).collect()).collect();
        let ch = ch
            .into_iter()
            .map(|v| {
                // Keep values representable so G.711 round trips exactly.
                let e = crate::codec::encode(enc, &v);
                crate::codec::decode(enc, &e)
            })
            .collect();
        DecodedAudio::new(8000, ch, enc).unwrap()
    }

    #[test]
    fn wrapped_samples_are_a_valid_wav() {
        let wav = wrap_encoded(Encoding::Mulaw, 8000, 1, &[0xff; 80]);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[4..8].try_into().unwrap()) as usize, wav.len() - 8);
        assert_eq!(u16::from_le_bytes([wav[20], wav[21]]), 7);
        assert_eq!(&wav[38..42], b"data");
        let decoded = decode_wav(&wav, &Limits::default()).unwrap();
        assert_eq!((decoded.encoding, decoded.sample_rate, decoded.channels[0].len()), (Encoding::Mulaw, 8000, 80));
        let pcm = wrap_encoded(Encoding::Pcm16, 16000, 2, &[0; 64]);
        assert_eq!(u32::from_le_bytes(pcm[28..32].try_into().unwrap()), 64000);
        assert_eq!(pcm.len(), 44 + 64);
        assert_eq!(decode_wav(&pcm, &Limits::default()).unwrap().channels.len(), 2);
    }

    #[test]
    fn round_trips_all_encodings_and_layouts() {
        for enc in [Encoding::Pcm16, Encoding::Mulaw, Encoding::Alaw] {
            for channels in [1, 2] {
                for ext in [false, true] {
                    let a = audio(enc, channels);
                    let bytes = encode_wav(&a, ext);
                    let d = decode_wav(&bytes, &Limits::default()).unwrap();
                    assert_eq!(d, a, "{enc:?} {channels} ext={ext}");
                }
            }
        }
    }

    #[test]
    fn chunks_in_any_order_with_padding_and_unknown_chunks() {
        let a = audio(Encoding::Mulaw, 1);
        let canonical = encode_wav(&a, false);
        let fmt = &canonical[12..36];
        let data = &canonical[36..];
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF\0\0\0\0WAVE");
        b.extend_from_slice(b"LIST\x03\0\0\0abc\0"); // odd chunk + pad byte
        b.extend_from_slice(data);
        b.extend_from_slice(fmt); // fmt after data
        let d = decode_wav(&b, &Limits::default()).unwrap();
        assert_eq!(d, a);
    }

    #[test]
    fn data_size_larger_than_file_uses_what_is_there() {
        let a = audio(Encoding::Pcm16, 2);
        let mut b = encode_wav(&a, false);
        b[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        b.truncate(b.len() - 3); // and a partial trailing frame
        let d = decode_wav(&b, &Limits::default()).unwrap();
        assert_eq!(d.frames(), 799);
        assert_eq!(d.channels[1][..799], a.channels[1][..799]);
    }

    #[test]
    fn rejects_bad_input_with_the_right_class() {
        let a = audio(Encoding::Pcm16, 1);
        let good = encode_wav(&a, false);
        let with = |at: usize, val: &[u8]| {
            let mut b = good.clone();
            b[at..at + val.len()].copy_from_slice(val);
            decode_wav(&b, &Limits::default()).unwrap_err()
        };
        assert!(matches!(with(24, &44100u32.to_le_bytes()), DspError::UnsupportedSampleRate(44100)));
        assert!(matches!(with(22, &9u16.to_le_bytes()), DspError::UnsupportedChannels { got: 9, .. }));
        assert!(matches!(with(22, &0u16.to_le_bytes()), DspError::UnsupportedChannels { got: 0, .. }));
        assert!(matches!(with(34, &24u16.to_le_bytes()), DspError::UnsupportedFormat(_)));
        assert!(matches!(with(20, &3u16.to_le_bytes()), DspError::UnsupportedFormat(_)));
        assert!(matches!(with(0, b"RIFX"), DspError::UnsupportedFormat(_)));
        assert!(matches!(with(8, b"AVI "), DspError::NotWav(_)));
        let err = with(36, b"junk");
        assert_eq!(err, DspError::MalformedWav("missing data chunk"));
        assert!(err.is_invalid_input());
        let err = decode_wav(&good[..30], &Limits::default()).unwrap_err();
        assert_eq!(err, DspError::MalformedWav("truncated fmt chunk"));
        let err = decode_wav(&good[..44], &Limits::default()).unwrap_err();
        assert_eq!(err, DspError::Empty);

        let small = Limits { max_bytes: 100, ..Limits::default() };
        let err = decode_wav(&good, &small).unwrap_err();
        assert!(err.is_resource_exhausted(), "{err}");
        let short = Limits { max_seconds: 0.05, ..Limits::default() };
        let err = decode_wav(&good, &short).unwrap_err();
        assert!(err.is_resource_exhausted(), "{err}");
        assert_eq!(err.to_string(), "audio of 0.10 seconds exceeds the limit of 0.05 seconds");
    }
}
