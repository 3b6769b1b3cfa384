//! Property tests: codecs, and the decoders of outside bytes never panic or over-allocate.
use audio_dsp::codec::{alaw_decode, alaw_encode, decode, encode, mulaw_decode, mulaw_encode};
use audio_dsp::wav::encode_wav;
use audio_dsp::{
    DecodedAudio, Encoding, Frame, Limits, LiveStream, RawFormat, StreamConfig, decode_auto, decode_raw, decode_wav,
};
use proptest::prelude::*;

/// G.711 quantisation error bound: half a step of the sample's segment (steps double with
/// each segment, about |x|/16), plus the saturation at the codec's full scale.
fn max_error(x: i16, full_scale: i32) -> i32 {
    let a = i32::from(x).abs();
    if a > full_scale { a - full_scale + 1024 } else { a / 16 + 16 }
}

fn any_encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Pcm16), Just(Encoding::Mulaw), Just(Encoding::Alaw)]
}

fn check_bounded(audio: &DecodedAudio, input_len: usize) {
    let samples: usize = audio.channels.iter().map(Vec::len).sum();
    assert!(samples <= input_len, "{samples} samples from {input_len} bytes");
    for ch in &audio.channels {
        assert!(ch.capacity() <= input_len.max(1), "capacity {} for {input_len} bytes", ch.capacity());
        assert_eq!(ch.len(), audio.frames());
    }
    assert!(!audio.channels.is_empty() && audio.channels.len() <= 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mulaw_error_is_bounded_and_monotonic(x: i16, y: i16) {
        let dx = mulaw_decode(mulaw_encode(x));
        prop_assert!((i32::from(dx) - i32::from(x)).abs() <= max_error(x, 32124));
        let dy = mulaw_decode(mulaw_encode(y));
        if x <= y { prop_assert!(dx <= dy) } else { prop_assert!(dx >= dy) }
        prop_assert_eq!(mulaw_decode(mulaw_encode(dx)), dx);
    }

    #[test]
    fn alaw_error_is_bounded_and_monotonic(x: i16, y: i16) {
        let dx = alaw_decode(alaw_encode(x));
        prop_assert!((i32::from(dx) - i32::from(x)).abs() <= max_error(x, 32256));
        let dy = alaw_decode(alaw_encode(y));
        if x <= y { prop_assert!(dx <= dy) } else { prop_assert!(dx >= dy) }
        prop_assert_eq!(alaw_decode(alaw_encode(dx)), dx);
    }

    #[test]
    fn byte_streams_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..512), enc in any_encoding()) {
        let samples = decode(enc, &bytes);
        prop_assert_eq!(samples.len(), bytes.len() / enc.bytes_per_sample());
        let again = encode(enc, &samples);
        match enc {
            Encoding::Pcm16 => prop_assert_eq!(&again[..], &bytes[..bytes.len() / 2 * 2]),
            // μ-law's negative zero (0x7F) re-encodes as 0xFF; everything else is exact.
            Encoding::Mulaw => prop_assert!(again.iter().zip(&bytes).all(|(a, b)| a == b || (*b == 0x7F && *a == 0xFF))),
            Encoding::Alaw => prop_assert_eq!(&again[..], &bytes[..]),
        }
    }

    #[test]
    fn wav_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(a) = decode_wav(&bytes, &Limits::default()) {
            check_bounded(&a, bytes.len());
        }
        let mut riff = b"RIFF\xff\xff\xff\xffWAVE".to_vec();
        riff.extend_from_slice(&bytes);
        if let Ok(a) = decode_wav(&riff, &Limits::default()) {
            check_bounded(&a, riff.len());
        }
    }

    #[test]
    fn wav_decoder_survives_mutated_headers(
        enc in any_encoding(),
        stereo: bool,
        extensible: bool,
        frames in 1usize..400,
        mutations in proptest::collection::vec((0usize..80, any::<u8>()), 1..8),
        cut in 0usize..900,
    ) {
        let channels = if stereo { 2 } else { 1 };
        let audio = DecodedAudio::new(8000, vec![vec![1000i16; frames]; channels], enc).unwrap();
        let mut bytes = encode_wav(&audio, extensible);
        for (at, v) in mutations {
            if at < bytes.len() { bytes[at] = v; }
        }
        bytes.truncate(bytes.len().saturating_sub(cut));
        match decode_wav(&bytes, &Limits::default()) {
            Ok(a) => check_bounded(&a, bytes.len()),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.is_empty() && msg.chars().next().unwrap().is_lowercase(), "{msg}");
                prop_assert!(!e.is_resource_exhausted());
            }
        }
    }

    #[test]
    fn raw_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024), enc in any_encoding(), rate: u32, channels in 0u32..5) {
        let f = RawFormat { encoding: enc, sample_rate: rate, channels };
        if let Ok(a) = decode_raw(&bytes, f, &Limits::default()) {
            check_bounded(&a, bytes.len());
        }
        if let Ok(a) = decode_auto(&bytes, f, &Limits::default()) {
            check_bounded(&a, bytes.len());
        }
    }

    #[test]
    fn live_stream_never_panics_on_arbitrary_frames(
        frames in proptest::collection::vec((0u64..40, 0u64..2_000_000, proptest::collection::vec(any::<u8>(), 0..400)), 1..60),
    ) {
        let mut s = LiveStream::new(StreamConfig::default()).unwrap();
        let mut ev = Vec::new();
        for (seq, arrival, payload) in &frames {
            let _ = s.push(Frame { sequence: *seq, timestamp: seq * 160, arrival_us: *arrival, payload }, &mut ev);
        }
        s.finish(&mut ev).unwrap();
        let st = s.stats();
        prop_assert!(st.packets_accepted + st.duplicates + st.out_of_order == st.packets_received);
        prop_assert!(st.packets_received + st.rejected == frames.len() as u64);
    }
}
