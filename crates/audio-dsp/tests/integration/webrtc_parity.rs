//! The vendored WebRTC detector must decide exactly like earshot 0.1 (on input where
//! earshot 0.1 does not hit its debug-build overflow panics). At 16 kHz only 30 ms frames
//! are compared: earshot 0.1 zero-pads 10 and 20 ms 16 kHz frames to 30 ms after
//! downsampling (a bug the vendored copy does not have).
use crate::common::*;
use audio_dsp::vad::{FastMode, FrameVad};
use audio_dsp::{VadConfig, VadKind, synth};

#[test]
fn fast_tier_matches_earshot_0_1_frame_by_frame() {
    let clean = speech_with_pauses();
    let noisy = synth::add_noise_at_snr(&clean, 30.0, active_power(&clean, 320, 40.0), 7);
    let narrow = audio_dsp::resample::resample(&noisy, 16000, 8000).unwrap();
    let modes =
        [(FastMode::Quality, [24, 21, 24], [57, 48, 57]), (FastMode::Aggressive, [82, 78, 82], [285, 260, 285])];
    let mut compared = 0;
    let mut speech = 0;
    for (mode, local, global) in modes {
        for frame_ms in [10u32, 20, 30] {
            for (rate, x) in [(16000u32, &noisy), (8000, &narrow)] {
                if rate == 16000 && frame_ms != 30 {
                    continue;
                }
                let cfg =
                    VadConfig { kind: VadKind::Fast, fast_mode: mode, fast_frame_ms: frame_ms, ..VadConfig::default() };
                let mut ours = FrameVad::new(&cfg, rate).unwrap();
                let profile = earshot_v0::VoiceActivityProfile::new([0; 3], [0; 3], local, global);
                let mut theirs = earshot_v0::VoiceActivityDetector::new(profile);
                let n = (rate * frame_ms / 1000) as usize;
                for (i, f) in x.chunks_exact(n).enumerate() {
                    let a = ours.is_speech(f);
                    let b =
                        if rate == 8000 { theirs.predict_8khz(f).unwrap() } else { theirs.predict_16khz(f).unwrap() };
                    assert_eq!(a, b, "{mode:?} {frame_ms} ms {rate} Hz frame {i}");
                    compared += 1;
                    speech += usize::from(a);
                }
            }
        }
    }
    assert!(compared > 3000, "{compared}");
    assert!(speech > compared / 4, "the comparison must include speech frames");
}
