//! Recording analysis against synthetic ground truth and the committed fixtures.
use crate::common::*;
use audio_dsp::analysis::{MIN_DBFS, Segment};
use audio_dsp::dtmf::detect_dtmf;
use audio_dsp::vad::{FrameDecisions, segments_from_decisions};
use audio_dsp::{AnalysisConfig, DecodedAudio, Encoding, VadKind, analyze, synth};

fn mono(rate: u32, x: Vec<i16>) -> DecodedAudio {
    DecodedAudio::new(rate, vec![x], Encoding::Pcm16).unwrap()
}

#[test]
fn levels_dc_clipping_and_dropouts_match_construction() {
    let rate = 8000;
    // 1 s tone at -20 dBFS RMS, 0.5 s of exact zeros, 1 s tone again, plus a DC offset.
    let mut x = synth::tone(rate, 440.0, -20.0, 1.0);
    x.extend(synth::silence(rate, 0.5));
    x.extend(synth::tone(rate, 440.0, -20.0, 1.0));
    let a = analyze(&mono(rate, x.clone()), &AnalysisConfig::default()).unwrap();
    let c = &a.channels[0];
    assert!((c.duration_seconds - 2.5).abs() < 1e-9);
    // RMS over 2.5 s with 2 s of tone: -20 + 10 log10(2/2.5).
    let expected_rms = -20.0 + 10.0 * (2.0f64 / 2.5).log10();
    assert!((c.rms_dbfs - expected_rms).abs() < 0.05, "rms {}", c.rms_dbfs);
    assert!((c.peak_dbfs - (-20.0 + 3.0103)).abs() < 0.05, "peak {}", c.peak_dbfs);
    assert_eq!(c.clipping_share, 0.0);
    assert!(c.dc_offset.abs() < 1e-3);
    assert_eq!(c.dropouts.count, 1);
    let run = c.dropouts.runs[0];
    assert_eq!(run.value, 0);
    assert!((run.start - 1.0).abs() < 2.0 / 8000.0, "{run:?}");
    assert!((run.end - 1.5).abs() < 2.0 / 8000.0, "{run:?}");

    // DC offset and clipping: a sine of amplitude 40000 clipped to the rails, plus +1000.
    let clipped: Vec<i16> = (0..8000)
        .map(|i| {
            let v = 40000.0 * (2.0 * std::f64::consts::PI * 100.0 * f64::from(i) / 8000.0).sin();
            (v + 1000.0).clamp(-32768.0, 32767.0) as i16
        })
        .collect();
    let truth_clip = clipped.iter().filter(|&&s| i32::from(s).abs() >= 32439).count() as f64 / 8000.0;
    let truth_dc = clipped.iter().map(|&s| f64::from(s)).sum::<f64>() / 8000.0 / 32768.0;
    let a = analyze(&mono(rate, clipped), &AnalysisConfig::default()).unwrap();
    let c = &a.channels[0];
    assert!(truth_clip > 0.2);
    assert!((c.clipping_share - truth_clip).abs() < 1e-9);
    assert!((c.dc_offset - truth_dc).abs() < 1e-9);
    assert!(c.dc_offset > 0.01);

    // μ-law clips at its own full scale (32124), not at 32767.
    let loud = vec![i16::MAX; 800];
    let mu = audio_dsp::codec::decode(Encoding::Mulaw, &audio_dsp::codec::encode(Encoding::Mulaw, &loud));
    let a = analyze(&DecodedAudio::new(8000, vec![mu], Encoding::Mulaw).unwrap(), &AnalysisConfig::default()).unwrap();
    assert_eq!(a.channels[0].clipping_share, 1.0);

    // Digital silence stays finite.
    let a = analyze(&mono(rate, vec![0; 8000]), &AnalysisConfig::default()).unwrap();
    assert_eq!(a.channels[0].rms_dbfs, MIN_DBFS);
    assert_eq!(a.channels[0].speech_seconds, 0.0);
    assert_eq!(a.channels[0].silence_share, 1.0);
}

/// Clean fixture speech placed at known offsets; truth segments from its energy.
fn placed_speech(rate: u32, items: &[(&str, f64)], total: f64) -> (Vec<i16>, Vec<(f64, f64)>) {
    let mut x = synth::silence(rate, total);
    for (name, at) in items {
        let f = fixture(name);
        let s = audio_dsp::resample::resample(&f.channels[0], 16000, rate).unwrap();
        synth::add_at(&mut x, &s, (at * f64::from(rate)) as usize);
    }
    x.truncate((total * f64::from(rate)) as usize);
    let truth = FrameDecisions { frame_seconds: 0.01, voiced: truth_frames(&x, rate as usize / 100, 40.0) };
    let segs = segments_from_decisions(&truth, &AnalysisConfig::default().segments);
    (x, segs)
}

fn within(got: &[Segment], truth: &[(f64, f64)], tol: f64) {
    assert_eq!(got.len(), truth.len(), "got {got:?} truth {truth:?}");
    for (g, t) in got.iter().zip(truth) {
        assert!((g.start - t.0).abs() <= tol && (g.end - t.1).abs() <= tol, "got {g:?} truth {t:?}");
    }
}

#[test]
fn snr_and_noise_floor_on_mixed_signal_within_3db() {
    let rate = 8000;
    let (clean, _) = placed_speech(rate, &[("speech-b.wav", 1.0), ("speech-c.wav", 6.0)], 11.0);
    let p = active_power(&clean, 160, 40.0);
    for snr in [10.0, 20.0, 30.0] {
        let noisy = synth::add_noise_at_snr(&clean, snr, p, 5);
        for kind in [VadKind::Fast, VadKind::Neural] {
            let a = analyze(&mono(rate, noisy.clone()), &AnalysisConfig::with_vad(kind)).unwrap();
            let c = &a.channels[0];
            let est = c.snr_db.unwrap();
            let noise_dbfs = 10.0 * (p / 10f64.powf(snr / 10.0) / (32768.0f64 * 32768.0)).log10();
            println!("{kind:?} snr {snr}: est {est:.2} dB, floor {:.2} vs {noise_dbfs:.2}", c.noise_floor_dbfs);
            if kind == VadKind::Fast && snr < 15.0 {
                continue; // the fast tier calls white noise at 10 dB speech; see README
            }
            assert!((est - snr).abs() <= 3.0, "{kind:?} snr {snr}: estimated {est}");
            assert!((c.noise_floor_dbfs - noise_dbfs).abs() <= 1.5, "{kind:?} floor {}", c.noise_floor_dbfs);
        }
    }
}

#[test]
fn speech_segments_within_60ms_of_truth() {
    let rate = 8000;
    let (clean, truth) = placed_speech(rate, &[("speech-b.wav", 0.7), ("speech-c.wav", 5.9)], 10.5);
    // A quiet line (45 dB SNR): truth frames reach 40 dB under the peak, so the noise must
    // stay below them for the bounds to be observable at all.
    let noisy = synth::add_noise_at_snr(&clean, 45.0, active_power(&clean, 160, 40.0), 11);
    let a = analyze(&mono(rate, noisy), &AnalysisConfig::default()).unwrap();
    let c = &a.channels[0];
    within(&c.speech_segments, &truth, 0.06);
    let truth_speech: f64 = truth.iter().map(|t| t.1 - t.0).sum();
    assert!((c.speech_seconds - truth_speech).abs() < 0.2);
    assert!((c.time_to_first_speech_seconds.unwrap() - truth[0].0).abs() < 0.06);
    assert!((c.silence_share - (1.0 - truth_speech / 10.5)).abs() < 0.03);
    // Active speech level close to the clean speech level.
    let level = 10.0 * (active_power(&clean, 160, 40.0) / (32768.0f64 * 32768.0)).log10();
    let got = c.active_speech_level_dbfs.unwrap();
    assert!((got - level).abs() < 1.5, "active level {got} vs {level}");
}

/// Two parties built in the test: agent (A then C) on channel 0, caller (B) on channel 1,
/// B starting before A ends.
#[test]
fn two_party_overlap_gaps_and_turns_match_construction() {
    let rate = 8000;
    let a_len = fixture("speech-a.wav").duration_seconds();
    let b_at = 0.5 + a_len - 0.9;
    let b_len = fixture("speech-b.wav").duration_seconds();
    let c_at = b_at + b_len + 1.2;
    let total = c_at + fixture("speech-c.wav").duration_seconds() + 0.8;
    let (agent, agent_truth) = placed_speech(rate, &[("speech-a.wav", 0.5), ("speech-c.wav", c_at)], total);
    let (caller, caller_truth) = placed_speech(rate, &[("speech-b.wav", b_at)], total);
    let audio = DecodedAudio::new(rate, vec![agent, caller], Encoding::Pcm16).unwrap();
    let a = analyze(&audio, &AnalysisConfig::default()).unwrap();
    within(&a.channels[0].speech_segments, &agent_truth, 0.06);
    within(&a.channels[1].speech_segments, &caller_truth, 0.06);
    check_conversation(&a, &agent_truth, &caller_truth);
}

fn to_segments(t: &[(f64, f64)]) -> Vec<Segment> {
    t.iter().map(|&(start, end)| Segment { start, end }).collect()
}

fn check_conversation(a: &audio_dsp::RecordingAnalysis, agent: &[(f64, f64)], caller: &[(f64, f64)]) {
    let conv = a.conversation.as_ref().expect("stereo has a conversation");
    let truth =
        audio_dsp::analysis::conversation(&[&to_segments(agent), &to_segments(caller)], a.duration_seconds, 100);
    println!(
        "truth overlap {:.3} s, got {:.3} s; truth gaps {:?}; got {:?}",
        truth.overlap_seconds, conv.overlap_seconds, truth.response_gaps.gaps, conv.response_gaps.gaps
    );
    assert!(truth.overlap_seconds > 0.15, "the construction overlaps");
    assert!((conv.overlap_seconds - truth.overlap_seconds).abs() <= 0.1);
    assert_eq!(conv.overlap_count, truth.overlap_count);
    assert_eq!(conv.interruptions, truth.interruptions);
    assert_eq!(conv.interruptions[1], 1, "the caller barges in once");
    assert_eq!(conv.turns, truth.turns);
    assert_eq!(conv.response_gaps.count, truth.response_gaps.count);
    for (g, t) in conv.response_gaps.gaps.iter().zip(&truth.response_gaps.gaps) {
        assert!((g.seconds - t.seconds).abs() <= 0.1, "{g:?} vs {t:?}");
        assert_eq!((g.from_channel, g.to_channel), (t.from_channel, t.to_channel));
    }
    assert!((conv.longest_dead_air_seconds - truth.longest_dead_air_seconds).abs() <= 0.1);
    assert!((conv.talk_share[0] - truth.talk_share[0]).abs() <= 0.03);
    let (gm, tm) = (conv.longest_monologue.unwrap(), truth.longest_monologue.unwrap());
    assert_eq!(gm.channel, tm.channel);
    assert!((gm.seconds - tm.seconds).abs() <= 0.12);
    assert!((conv.time_to_first_speech_seconds.unwrap() - truth.time_to_first_speech_seconds.unwrap()).abs() <= 0.06);
    assert!((conv.turns_per_minute - truth.turns_per_minute).abs() < 1e-9);
}

/// The committed stereo μ-law call (made by fixtures/make-fixtures.sh).
#[test]
fn stereo_call_fixture() {
    let audio = fixture("call-stereo.wav");
    assert_eq!((audio.sample_rate, audio.channels.len(), audio.encoding), (8000, 2, Encoding::Mulaw));
    let p: std::collections::HashMap<String, f64> = placements("call-stereo.txt").into_iter().collect();
    let total = audio.duration_seconds();
    let (_, agent) = placed_speech(8000, &[("speech-a.wav", p["a_at"]), ("speech-c.wav", p["c_at"])], total);
    let (_, caller) = placed_speech(8000, &[("speech-b.wav", p["b_at"])], total);
    for kind in [VadKind::Fast, VadKind::Neural] {
        let a = analyze(&audio, &AnalysisConfig::with_vad(kind)).unwrap();
        println!("{kind:?} agent {:?}\n caller {:?}", a.channels[0].speech_segments, a.channels[1].speech_segments);
        if kind == VadKind::Fast {
            within(&a.channels[0].speech_segments, &agent, 0.06);
            within(&a.channels[1].speech_segments, &caller, 0.06);
        }
        check_conversation(&a, &agent, &caller);
        assert!(a.channels.iter().all(|c| c.dtmf.is_empty()), "no digits in speech");
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("\"overlap_seconds\"") && !json.contains("NaN") && !json.contains("null,\"snr_db\""));
    }
}

#[test]
fn dtmf_sequence_with_timing() {
    let rate = 8000;
    let digits = "0123456789*#ABCD";
    let mut x = synth::white_noise(rate, 0.3, -50.0, 3);
    let mut truth = Vec::new();
    for (i, d) in digits.chars().enumerate() {
        let at = 0.3 + i as f64 * 0.15; // 70 ms tones, 80 ms gaps
        synth::add_at(&mut x, &synth::dtmf_tone(rate, d, -20.0 - (i % 3) as f64 * 5.0, 0.07), (at * 8000.0) as usize);
        truth.push((d, at, at + 0.07));
    }
    x.extend(synth::white_noise(rate, 0.5, -50.0, 4));
    for rate_out in [8000, 16000, 48000] {
        let y = audio_dsp::resample::resample(&x, 8000, rate_out).unwrap();
        let got = detect_dtmf(&y, rate_out, Default::default());
        let got_digits: String = got.iter().map(|d| d.digit).collect();
        assert_eq!(got_digits, digits, "at {rate_out} Hz");
        for (g, t) in got.iter().zip(&truth) {
            assert!((g.start - t.1).abs() < 0.02 && (g.end - t.2).abs() < 0.02, "{g:?} vs {t:?}");
        }
    }
}

#[test]
fn dtmf_twist_and_level_limits() {
    let rate = 8000;
    let key = |row_db: f64, col_db: f64| {
        let (r, c) = audio_dsp::dtmf::key_frequencies('5').unwrap();
        let mut x = synth::tone(rate, r, row_db, 0.2);
        synth::add_at(&mut x, &synth::tone(rate, c, col_db, 0.2), 0);
        detect_dtmf(&x, rate, Default::default()).len()
    };
    assert_eq!(key(-20.0, -20.0), 1);
    assert_eq!(key(-20.0, -26.0), 1, "6 dB normal twist is allowed");
    assert_eq!(key(-20.0, -30.0), 0, "10 dB normal twist is not");
    assert_eq!(key(-23.0, -20.0), 1, "3 dB reverse twist is allowed");
    assert_eq!(key(-27.0, -20.0), 0, "7 dB reverse twist is not");
    assert_eq!(key(-45.0, -45.0), 0, "too quiet");
    // One tone alone is not a digit.
    assert!(detect_dtmf(&synth::tone(rate, 770.0, -20.0, 0.3), rate, Default::default()).is_empty());
}

#[test]
fn speech_does_not_produce_digits() {
    let clean = speech_with_pauses();
    for snr in [40.0, 20.0, 10.0] {
        let noisy = synth::add_noise_at_snr(&clean, snr, active_power(&clean, 320, 40.0), 17);
        for rate in [16000, 8000] {
            let x = audio_dsp::resample::resample(&noisy, 16000, rate).unwrap();
            let got = detect_dtmf(&x, rate, Default::default());
            assert!(got.is_empty(), "false digits at {snr} dB {rate} Hz: {got:?}");
        }
    }
}

/// The committed DTMF fixture: a sentence, then digits (made by make-fixtures.sh).
#[test]
fn dtmf_fixture() {
    let audio = fixture("dtmf.wav");
    let text = std::fs::read_to_string(format!("{FIXTURES}/dtmf.txt")).unwrap();
    let truth: Vec<(char, f64, f64)> = text
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let d = it.next().unwrap().chars().next().unwrap();
            (d, it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
        })
        .collect();
    let a = analyze(&audio, &AnalysisConfig::default()).unwrap();
    let got = &a.channels[0].dtmf;
    assert_eq!(got.len(), truth.len(), "{got:?}");
    for (g, t) in got.iter().zip(&truth) {
        assert_eq!(g.digit, t.0);
        assert!((g.start - t.1).abs() < 0.02 && (g.end - t.2).abs() < 0.02, "{g:?} vs {t:?}");
    }
    // The sentence before the digits is speech.
    let segs = &a.channels[0].speech_segments;
    assert!(segs.first().is_some_and(|s| s.start < 0.6), "{segs:?}");
}
