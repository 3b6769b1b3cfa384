//! Criterion benchmarks plus explicit realtime-factor figures.
//!
//! `cargo bench -p audio-dsp` (add `-- --quick` for a short run). Besides criterion's
//! timings, each group prints `RTF = audio_seconds / cpu_seconds` measured over a fixed
//! amount of work on one thread, the live streams one core sustains, and memory per stream.

use std::hint::black_box;
use std::time::{Duration, Instant};

use audio_dsp::codec::encode;
use audio_dsp::resample::{resample, upsample_2x};
use audio_dsp::{
    AnalysisConfig, Encoding, Frame, Limits, LiveStream, RawFormat, StreamConfig, VadConfig, VadKind, analyze,
    decode_raw, decode_wav,
};
use criterion::{Criterion, criterion_group, criterion_main};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

/// About 60 s of telephone audio (the stereo call fixture's agent channel, repeated) as raw
/// μ-law bytes.
fn telephone_minute() -> Vec<u8> {
    let wav = std::fs::read(format!("{FIXTURES}/call-stereo.wav")).expect("fixture");
    let call = decode_wav(&wav, &Limits::default()).expect("fixture decodes");
    let one = encode(Encoding::Mulaw, &call.channels[0]);
    let mut out = Vec::new();
    while out.len() < 60 * 8000 {
        out.extend_from_slice(&one);
    }
    out.truncate(60 * 8000);
    out
}

/// Runs `f` repeatedly for at least `min` and prints the realtime factor.
fn report_rtf(name: &str, audio_seconds: f64, min: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < min {
        f();
        runs += 1;
    }
    let cpu = start.elapsed().as_secs_f64() / f64::from(runs);
    let rtf = audio_seconds / cpu;
    println!("RTF {name}: {rtf:.0}x realtime ({:.3} ms per {audio_seconds:.0} s of audio)", cpu * 1e3);
    rtf
}

fn analysis_config(kind: VadKind, dtmf: bool) -> AnalysisConfig {
    AnalysisConfig { detect_dtmf: dtmf, ..AnalysisConfig::with_vad(kind) }
}

fn bench_recording(c: &mut Criterion) {
    let bytes = telephone_minute();
    let seconds = bytes.len() as f64 / 8000.0;
    let fmt = RawFormat::TELEPHONE;
    let limits = Limits::default();
    let run = |cfg: &AnalysisConfig| {
        let audio = decode_raw(black_box(&bytes), fmt, &limits).unwrap();
        black_box(analyze(&audio, cfg).unwrap());
    };
    let fast = analysis_config(VadKind::Fast, false);
    let fast_all = analysis_config(VadKind::Fast, true);
    let neural = analysis_config(VadKind::Neural, false);
    let budget = Duration::from_secs(2);
    report_rtf("decode+levels+fast VAD (8 kHz mu-law)", seconds, budget, || run(&fast));
    report_rtf("decode+levels+fast VAD+DTMF", seconds, budget, || run(&fast_all));
    report_rtf("decode+levels+neural VAD (incl. 8->16 kHz resampling)", seconds, budget, || run(&neural));
    report_rtf("decode only", seconds, budget, || {
        black_box(decode_raw(black_box(&bytes), fmt, &limits).unwrap());
    });

    let mut g = c.benchmark_group("recording_60s_mulaw_8k");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("decode_levels_fast_vad", |b| b.iter(|| run(&fast)));
    g.bench_function("decode_levels_fast_vad_dtmf", |b| b.iter(|| run(&fast_all)));
    g.bench_function("decode_levels_neural_vad", |b| b.iter(|| run(&neural)));
    g.finish();
}

/// Pushes one 20 ms frame into each of `streams` live streams, `rounds` times.
fn push_round(streams: &mut [LiveStream], frames: &[Vec<u8>], round: u64, events: &mut Vec<StreamEvent>) {
    for (i, s) in streams.iter_mut().enumerate() {
        let payload = &frames[(round as usize + i * 7) % frames.len()];
        let f = Frame { sequence: round, timestamp: round * 160, arrival_us: round * 20_000, payload };
        s.push(f, events).unwrap();
        events.clear();
    }
}

use audio_dsp::StreamEvent;

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn bench_streams(c: &mut Criterion) {
    let bytes = telephone_minute();
    let frames: Vec<Vec<u8>> = bytes.chunks_exact(160).map(<[u8]>::to_vec).collect();
    for kind in [VadKind::Fast, VadKind::Neural] {
        let cfg = StreamConfig { vad: VadConfig::for_kind(kind), ..StreamConfig::default() };
        // Memory: RSS growth for 2000 fresh streams.
        let before = rss_bytes();
        let streams: Vec<LiveStream> = (0..2000).map(|_| LiveStream::new(cfg).unwrap()).collect();
        if let (Some(a), Some(b)) = (before, rss_bytes()) {
            println!(
                "memory {}: {:.1} KiB per idle stream (RSS), {:.1} KiB by heap_bytes()+size_of",
                kind.as_str(),
                (b.saturating_sub(a)) as f64 / 2000.0 / 1024.0,
                (streams[0].heap_bytes() + std::mem::size_of::<LiveStream>()) as f64 / 1024.0
            );
        }
        drop(streams);

        // Throughput: 200 streams, frames of real speech, after a warm-up second.
        let n = 200usize;
        let mut streams: Vec<LiveStream> = (0..n).map(|_| LiveStream::new(cfg).unwrap()).collect();
        let mut events = Vec::new();
        let mut round = 0u64;
        for _ in 0..50 {
            push_round(&mut streams, &frames, round, &mut events);
            round += 1;
        }
        let start = Instant::now();
        let mut pushed = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            push_round(&mut streams, &frames, round, &mut events);
            round += 1;
            pushed += n as u64;
        }
        let per_frame = start.elapsed().as_secs_f64() / pushed as f64;
        println!(
            "streams {}: {:.2} us per 20 ms frame -> {:.0} concurrent streams per core (RTF {:.0}x)",
            kind.as_str(),
            per_frame * 1e6,
            0.02 / per_frame,
            0.02 / per_frame
        );
        let mut g = c.benchmark_group(format!("live_streams_{}", kind.as_str()));
        g.sample_size(10).measurement_time(Duration::from_secs(3));
        g.bench_function("200_streams_one_20ms_frame_each", |b| {
            b.iter(|| {
                push_round(&mut streams, &frames, round, &mut events);
                round += 1;
            })
        });
        g.finish();
    }
}

/// An ended utterance's resampling for transcription: what a live stream does once per turn
/// (3.8 s of the caller's speech, 8 kHz to 16 kHz): the half-band filter live streams use, and
/// the FFT resampler (recordings, and every other pair of rates) for comparison.
fn bench_utterance_resample(c: &mut Criterion) {
    let bytes = telephone_minute();
    let clip =
        decode_raw(&bytes[..30_400], RawFormat::TELEPHONE, &Limits::default()).expect("decodes").channels.remove(0);
    report_rtf("utterance_upsample_2x_8k_to_16k", 3.8, Duration::from_secs(2), || {
        black_box(upsample_2x(black_box(&clip)));
    });
    report_rtf("utterance_resample_fft_8k_to_16k", 3.8, Duration::from_secs(2), || {
        black_box(resample(black_box(&clip), 8000, 16000).unwrap());
    });
    let mut g = c.benchmark_group("utterance_resample");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.bench_function("3.8_s_8k_to_16k_half_band", |b| b.iter(|| upsample_2x(black_box(&clip))));
    g.bench_function("3.8_s_8k_to_16k_fft", |b| b.iter(|| resample(black_box(&clip), 8000, 16000).unwrap()));
    g.finish();
}

criterion_group!(benches, bench_recording, bench_streams, bench_utterance_resample);
criterion_main!(benches);
