//! Shared helpers of the integration tests: fixtures and ground truth.
#![allow(dead_code)]

use audio_dsp::synth;
use audio_dsp::{DecodedAudio, Limits, decode_wav};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture present")
}

pub fn fixture(name: &str) -> DecodedAudio {
    decode_wav(&fixture_bytes(name), &Limits::default()).expect("fixture decodes")
}

/// Reads `key=value` lines of a fixture's placement file.
pub fn placements(name: &str) -> Vec<(String, f64)> {
    std::fs::read_to_string(format!("{FIXTURES}/{name}"))
        .expect("placement file")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().parse().expect("number")))
        .collect()
}

pub fn frame_power(x: &[i16], frame: usize) -> Vec<f64> {
    x.chunks_exact(frame).map(synth::power).collect()
}

/// Ground truth per frame from the clean signal: speech when the frame is no more than
/// `below_db` under the clean signal's loudest 20 ms... expressed on `frame`-sample frames.
pub fn truth_frames(clean: &[i16], frame: usize, below_db: f64) -> Vec<bool> {
    let p = frame_power(clean, frame);
    let max = p.iter().copied().fold(0.0, f64::max);
    let thr = max * 10f64.powf(-below_db / 10.0);
    p.iter().map(|&x| x > thr).collect()
}

/// First and last sample above `below_db` under the peak frame power (10 ms frames), in
/// seconds: where speech really begins and ends in a clean utterance.
pub fn speech_bounds(clean: &[i16], rate: u32, below_db: f64) -> (f64, f64) {
    let frame = rate as usize / 100;
    let t = truth_frames(clean, frame, below_db);
    let first = t.iter().position(|&v| v).expect("speech present");
    let last = t.iter().rposition(|&v| v).expect("speech present");
    let fs = 0.01;
    (first as f64 * fs, (last + 1) as f64 * fs)
}

/// Three clean fixtures separated by silence, 16 kHz: the VAD accuracy signal.
pub fn speech_with_pauses() -> Vec<i16> {
    let mut x = synth::silence(16000, 0.8);
    for name in ["speech-a.wav", "speech-b.wav", "speech-c.wav"] {
        let a = fixture(name);
        assert_eq!(a.sample_rate, 16000);
        x.extend_from_slice(&a.channels[0]);
        x.extend(synth::silence(16000, 1.0));
    }
    x
}

/// Mean power of the truth-speech frames of `clean`.
pub fn active_power(clean: &[i16], frame: usize, below_db: f64) -> f64 {
    let p = frame_power(clean, frame);
    let t = truth_frames(clean, frame, below_db);
    let speech: Vec<f64> = p.iter().zip(&t).filter(|(_, v)| **v).map(|(p, _)| *p).collect();
    speech.iter().sum::<f64>() / speech.len() as f64
}

pub fn accuracy(decisions: &[bool], truth: &[bool]) -> f64 {
    let n = decisions.len().min(truth.len());
    let ok = decisions[..n].iter().zip(&truth[..n]).filter(|(a, b)| a == b).count();
    ok as f64 / n as f64
}
