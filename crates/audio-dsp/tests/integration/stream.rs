//! The live-stream state machine: events on real speech, transport statistics, bounds.
use crate::common::*;
use audio_dsp::codec::encode;
use audio_dsp::{Encoding, Frame, LiveStream, StreamConfig, StreamEvent, VadConfig, VadKind, synth};

/// Sends `samples` as 20 ms μ-law frames with perfect timing.
fn feed(stream: &mut LiveStream, samples: &[i16], rate: u32, encoding: Encoding) -> Vec<StreamEvent> {
    let n = rate as usize / 50;
    let mut events = Vec::new();
    for (i, chunk) in samples.chunks_exact(n).enumerate() {
        let payload = encode(encoding, chunk);
        let frame =
            Frame { sequence: i as u64, timestamp: (i * n) as u64, arrival_us: i as u64 * 20_000, payload: &payload };
        stream.push(frame, &mut events).unwrap();
    }
    stream.finish(&mut events).unwrap();
    events
}

fn speech_events(events: &[StreamEvent]) -> Vec<(f64, f64, bool, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::SpeechEnded { start, end, forced, audio } => Some((*start, *end, *forced, audio.len())),
            _ => None,
        })
        .collect()
}

#[test]
fn utterances_of_the_call_fixture_on_each_channel() {
    let call = fixture("call-stereo.wav");
    let p: std::collections::HashMap<String, f64> = placements("call-stereo.txt").into_iter().collect();
    for kind in [VadKind::Fast, VadKind::Neural] {
        let cfg = StreamConfig { vad: VadConfig::for_kind(kind), ..StreamConfig::default() };
        // Channel 0: A then C (a long gap between), channel 1: B.
        let expect =
            [vec![("speech-a.wav", p["a_at"]), ("speech-c.wav", p["c_at"])], vec![("speech-b.wav", p["b_at"])]];
        for (ch, items) in expect.iter().enumerate() {
            let mut s = LiveStream::new(cfg).unwrap();
            let events = feed(&mut s, &call.channels[ch], 8000, Encoding::Mulaw);
            let started: Vec<f64> = events
                .iter()
                .filter_map(|e| match e {
                    StreamEvent::SpeechStarted { at } => Some(*at),
                    _ => None,
                })
                .collect();
            let ended = speech_events(&events);
            println!("{kind:?} ch{ch}: {ended:.3?}");
            assert_eq!(ended.len(), items.len(), "{kind:?} ch{ch}: {ended:?}");
            assert_eq!(started.len(), items.len());
            for ((name, at), (start, end, forced, audio_len)) in items.iter().zip(&ended) {
                let clean = fixture(name);
                let (on, off) = speech_bounds(&clean.channels[0], 16000, 40.0);
                assert!((start - (at + on)).abs() <= 0.08, "{kind:?} start {start} vs {}", at + on);
                assert!((end - (at + off)).abs() <= 0.12, "{kind:?} end {end} vs {}", at + off);
                assert!(!forced);
                // 16 kHz audio covering the utterance plus up to 150 ms either side.
                let expect_len = (end - start) * 16000.0;
                assert!(
                    *audio_len as f64 >= expect_len && (*audio_len as f64) <= expect_len + 0.31 * 16000.0,
                    "{audio_len} vs {expect_len}"
                );
            }
            assert!(started.iter().zip(&ended).all(|(a, e)| (a - e.0).abs() < 1e-9));
            assert!(s.stats().packets_lost == 0 && s.stats().jitter_ms < 1e-6);
        }
    }
}

#[test]
fn utterance_audio_is_the_speech() {
    let clean = fixture("speech-b.wav");
    let mut x = synth::silence(8000, 1.0);
    let b8 = audio_dsp::resample::resample(&clean.channels[0], 16000, 8000).unwrap();
    x.extend(&b8);
    x.extend(synth::silence(8000, 1.5));
    let mut s = LiveStream::new(StreamConfig::default()).unwrap();
    let events = feed(&mut s, &x, 8000, Encoding::Mulaw);
    let audio = events
        .iter()
        .find_map(|e| match e {
            StreamEvent::SpeechEnded { audio, .. } => Some(audio.clone()),
            _ => None,
        })
        .unwrap();
    // Nearly all the speech energy of the clean utterance is in the returned audio.
    let ratio =
        synth::power(&audio) * audio.len() as f64 / (synth::power(&clean.channels[0]) * clean.channels[0].len() as f64);
    assert!(ratio > 0.9 && ratio < 1.1, "energy ratio {ratio}");
}

#[test]
fn long_speech_is_cut_at_max_utterance() {
    let mut x = Vec::new();
    for _ in 0..4 {
        for name in ["speech-a.wav", "speech-b.wav", "speech-c.wav"] {
            x.extend(audio_dsp::resample::resample(&fixture(name).channels[0], 16000, 8000).unwrap());
        }
    }
    let cfg = StreamConfig { max_utterance_ms: 5000, end_of_turn_silence_ms: 1500, ..StreamConfig::default() };
    let mut s = LiveStream::new(cfg).unwrap();
    let events = feed(&mut s, &x, 8000, Encoding::Mulaw);
    let ended = speech_events(&events);
    assert!(ended.len() >= 5, "{ended:?}");
    for (i, (start, end, forced, len)) in ended.iter().enumerate() {
        assert!(end - start <= 5.0 + 1e-6);
        assert!(*len <= (5.0 + 0.31) as usize * 16000 + 16000);
        // The last one may be closed by `finish` (also forced) at any length.
        if *forced && i + 1 < ended.len() {
            assert!((end - start - 5.0).abs() < 0.05);
        }
    }
    assert!(ended.iter().filter(|e| e.2).count() >= 3);
    assert!(s.heap_bytes() < 64 * 1024);
}

#[test]
fn dtmf_events_from_the_fixture() {
    let audio = fixture("dtmf.wav");
    let text = std::fs::read_to_string(format!("{FIXTURES}/dtmf.txt")).unwrap();
    let truth: Vec<(char, f64)> = text
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            (it.next().unwrap().chars().next().unwrap(), it.next().unwrap().parse().unwrap())
        })
        .collect();
    let mut s = LiveStream::new(StreamConfig::default()).unwrap();
    let events = feed(&mut s, &audio.channels[0], 8000, Encoding::Mulaw);
    let digits: Vec<(char, f64)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Dtmf { digit, at } => Some((*digit, *at)),
            _ => None,
        })
        .collect();
    assert_eq!(digits.len(), truth.len(), "{digits:?}");
    for (g, t) in digits.iter().zip(&truth) {
        assert_eq!(g.0, t.0);
        assert!((g.1 - t.1).abs() < 0.02);
    }
    // The digits are not reported as speech: only the sentence is.
    assert_eq!(speech_events(&events).len(), 1);
}

fn frame(seq: u64, arrival_ms: u64, payload: &[u8]) -> Frame<'_> {
    Frame { sequence: seq, timestamp: seq * 160, arrival_us: arrival_ms * 1000, payload }
}

#[test]
fn loss_duplicates_reordering_and_jitter() {
    let payload = [0xFFu8; 160];
    let mut s = LiveStream::new(StreamConfig::default()).unwrap();
    let mut ev = Vec::new();
    // 0 1 2 _ _ 5 5(dup) 3(late) 6 ... 9, then a restart at 100000.
    for (seq, at) in [(0, 0), (1, 20), (2, 40), (5, 100), (5, 101), (3, 102), (6, 120), (7, 140), (8, 160), (9, 180)] {
        s.push(frame(seq, at, &payload), &mut ev).unwrap();
    }
    let st = s.stats();
    assert_eq!(st.packets_received, 10);
    assert_eq!(st.packets_accepted, 8);
    assert_eq!(st.duplicates, 1);
    assert_eq!(st.out_of_order, 1);
    assert_eq!(st.packets_lost, 1, "4 never came; 3 came late");
    assert_eq!(st.largest_sequence_gap, 3);
    assert!((st.largest_arrival_gap_ms - 60.0).abs() < 1e-9);
    // Concealment keeps the media clock: 8 accepted frames + 2 concealed = 0.2 s.
    assert!((st.media_seconds - 0.2).abs() < 1e-9);
    s.push(frame(100_000, 200, &payload), &mut ev).unwrap();
    assert_eq!(s.stats().resyncs, 1);
    assert_eq!(s.stats().packets_lost, 1);

    // Jitter: frames alternately on time and 10 ms late converge to ~10 ms (RFC 3550).
    let mut s = LiveStream::new(StreamConfig::default()).unwrap();
    for i in 0..500u64 {
        s.push(frame(i, i * 20 + (i % 2) * 10, &payload), &mut ev).unwrap();
    }
    let j = s.stats().jitter_ms;
    assert!((j - 10.0).abs() < 0.5, "jitter {j}");
}

#[test]
fn malformed_frames_are_rejected_without_changing_state() {
    let cfg = StreamConfig { encoding: Encoding::Pcm16, sample_rate: 16000, ..StreamConfig::default() };
    let mut s = LiveStream::new(cfg).unwrap();
    let mut ev = Vec::new();
    assert!(s.push(frame(0, 0, &[0u8; 641]), &mut ev).is_err()); // odd PCM16
    assert!(s.push(frame(0, 0, &[]), &mut ev).is_err());
    assert!(s.push(frame(0, 0, &vec![0u8; 16000 * 2]), &mut ev).is_err()); // 1 s > max_frame_ms
    let st = s.stats();
    assert_eq!((st.rejected, st.packets_received, st.media_seconds), (3, 0, 0.0));
    s.push(frame(0, 0, &[0u8; 640]), &mut ev).unwrap();
    assert_eq!(s.stats().packets_accepted, 1);
    // Bad configuration is refused.
    let bad = StreamConfig { sample_rate: 44100, ..StreamConfig::default() };
    assert!(LiveStream::new(bad).is_err());
}

#[test]
fn every_rate_and_encoding_and_both_tiers() {
    let clean = fixture("speech-a.wav");
    for rate in [8000, 16000, 24000, 48000] {
        let mut x = synth::silence(rate, 0.5);
        x.extend(audio_dsp::resample::resample(&clean.channels[0], 16000, rate).unwrap());
        x.extend(synth::silence(rate, 1.0));
        for encoding in [Encoding::Pcm16, Encoding::Alaw] {
            for kind in [VadKind::Fast, VadKind::Neural] {
                let cfg = StreamConfig {
                    encoding,
                    sample_rate: rate,
                    vad: VadConfig::for_kind(kind),
                    ..StreamConfig::default()
                };
                let mut s = LiveStream::new(cfg).unwrap();
                let events = feed(&mut s, &x, rate, encoding);
                let ended = speech_events(&events);
                assert!(!ended.is_empty(), "{rate} {encoding:?} {kind:?}");
                let (on, _) = speech_bounds(&clean.channels[0], 16000, 40.0);
                assert!((ended[0].0 - (0.5 + on)).abs() < 0.08, "{rate} {encoding:?} {kind:?}: {ended:?}");
                println!("{rate} Hz {kind:?}: heap {} B", s.heap_bytes());
                assert!(s.heap_bytes() < 96 * 1024, "{rate} {kind:?} {}", s.heap_bytes());
            }
        }
    }
}

#[test]
fn memory_per_idle_stream_is_small() {
    let s = LiveStream::new(StreamConfig::default()).unwrap();
    let total = s.heap_bytes() + std::mem::size_of::<LiveStream>();
    println!("fast μ-law 8 kHz stream: {total} bytes");
    assert!(total < 16 * 1024, "{total}");
    let n =
        LiveStream::new(StreamConfig { vad: VadConfig::for_kind(VadKind::Neural), ..StreamConfig::default() }).unwrap();
    let total = n.heap_bytes() + std::mem::size_of::<LiveStream>();
    println!("neural μ-law 8 kHz stream: {total} bytes");
    assert!(total < 48 * 1024, "{total}");
}
