//! Benchmarks through the gRPC service, in process over loopback TCP.
//!
//! `cargo bench -p audio-processor` (add `-- --quick` for a short criterion run). Prints:
//! - `RTF …`: realtime factor of recording analysis (decode + levels + fast VAD on 60 s of
//!   8 kHz μ-law, one client, one request at a time) = audio seconds / wall seconds;
//! - `streams …`: for N concurrent live streams pushing 20 ms μ-law frames at real pace into
//!   a server running on ONE thread (like `WORKERS=1`), the p50/p99 latency from sending a
//!   frame to receiving the `StreamStats` that counts it (stats every 100 ms of media), and
//!   the largest N whose p99 stays within 20 ms.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audio_dsp::codec::encode;
use audio_dsp::{Encoding, Limits, decode_wav};
use criterion::{Criterion, criterion_group, criterion_main};
use kraliki_proto::audio::v1::{
    self as pb, audio_processor_client::AudioProcessorClient, stream_audio_request::Payload,
    stream_audio_response::Event,
};
use telemetry::{ServiceContext, Shutdown};
use tonic::transport::Channel;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../audio-dsp/fixtures");

/// About 60 s of telephone speech (the call fixture's agent channel, repeated), 8 kHz μ-law.
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

/// Starts the service on its own OS thread with a single-threaded runtime; returns its URL.
fn start_server(env: &[(&str, &str)]) -> (String, Shutdown) {
    let config = audio_processor::Config::from_pairs(env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(1).build().unwrap();
        rt.block_on(async move {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let shutdown = Shutdown::new(Duration::ZERO, Duration::from_secs(2));
            let ctx = ServiceContext::new(audio_processor::service_info(), "bench", None, shutdown.clone());
            tx.send((format!("http://{}", grpc.local_addr().unwrap()), shutdown)).unwrap();
            audio_processor::run(config, grpc, admin, ctx).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

async fn client(url: &str) -> AudioProcessorClient<Channel> {
    for _ in 0..100 {
        if let Ok(c) = Channel::from_shared(url.to_string()).unwrap().connect().await {
            return AudioProcessorClient::new(c).max_encoding_message_size(usize::MAX);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server did not start");
}

fn request(audio: &[u8], skip_dtmf: bool) -> pb::AnalyzeRecordingRequest {
    pb::AnalyzeRecordingRequest {
        call_id: "bench".into(),
        format: Some(pb::AudioFormat { encoding: pb::AudioEncoding::Mulaw as i32, sample_rate_hz: 8000, channels: 1 }),
        audio: audio.to_vec(),
        skip_dtmf,
        ..Default::default()
    }
}

fn bench_recording(c: &mut Criterion) {
    let (url, shutdown) = start_server(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let audio = telephone_minute();
    let seconds = audio.len() as f64 / 8000.0;
    let mut grpc = rt.block_on(client(&url));
    for (name, skip_dtmf) in [("decode+levels+fast VAD", true), ("decode+levels+fast VAD+DTMF", false)] {
        let req = request(&audio, skip_dtmf);
        rt.block_on(async {
            grpc.analyze_recording(req.clone()).await.unwrap(); // warm up
            let start = Instant::now();
            let mut runs = 0u32;
            while start.elapsed() < Duration::from_secs(3) {
                black_box(grpc.analyze_recording(req.clone()).await.unwrap());
                runs += 1;
            }
            let wall = start.elapsed().as_secs_f64() / f64::from(runs);
            println!(
                "RTF gRPC {name} (60 s of 8 kHz mu-law, one client): {:.0}x realtime ({:.2} ms per request)",
                seconds / wall,
                wall * 1e3
            );
        });
    }
    let mut g = c.benchmark_group("grpc_analyze_60s_mulaw_8k");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let req = request(&audio, true);
    g.bench_function("unary_fast_vad_no_dtmf", |b| {
        b.to_async(&rt).iter(|| {
            let mut grpc = grpc.clone();
            let req = req.clone();
            async move { black_box(grpc.analyze_recording(req).await.unwrap()) }
        })
    });
    g.finish();
    rt.block_on(async { shutdown.trigger() });
}

/// Runs `n` real-paced streams for `secs` and returns the send→stats latencies (ms).
async fn run_streams(url: &str, n: usize, secs: f64, frames: Arc<Vec<Vec<u8>>>) -> Vec<f64> {
    let connections: Vec<AudioProcessorClient<Channel>> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(client(url).await);
        }
        v
    };
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let total_frames = (secs * 50.0) as u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut grpc = connections[i % connections.len()].clone();
        let frames = frames.clone();
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let config = pb::StreamConfig {
                call_id: String::new(),
                format: Some(pb::AudioFormat {
                    encoding: pb::AudioEncoding::Mulaw as i32,
                    sample_rate_hz: 8000,
                    channels: 1,
                }),
                ..Default::default()
            };
            tx.send(pb::StreamAudioRequest { payload: Some(Payload::Config(config)) }).await.unwrap();
            let mut events =
                grpc.stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
            // Spread the streams over the 20 ms frame period.
            let offset = Duration::from_micros((i as u64 * 20_000 / n as u64) % 20_000);
            let sent_at = Arc::new(Mutex::new(Vec::with_capacity(total_frames as usize)));
            let sender = {
                let sent_at = sent_at.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(start + offset, Duration::from_millis(20));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    for k in 0..total_frames {
                        tick.tick().await;
                        let payload = frames[(k as usize + i * 37) % frames.len()].clone();
                        let f = pb::AudioFrame { sequence_number: k, payload, ..Default::default() };
                        sent_at.lock().unwrap().push(Instant::now());
                        if tx.send(pb::StreamAudioRequest { payload: Some(Payload::Frame(f)) }).await.is_err() {
                            return;
                        }
                    }
                })
            };
            let mut mine = Vec::new();
            while let Ok(Some(m)) = events.message().await {
                if let Some(Event::Stats(s)) = m.event {
                    let now = Instant::now();
                    let frames_done = s.frames_received as usize;
                    if frames_done > 0 && frames_done < total_frames as usize {
                        let sent = sent_at.lock().unwrap()[frames_done - 1];
                        mine.push(now.duration_since(sent).as_secs_f64() * 1e3);
                    }
                }
            }
            sender.await.unwrap();
            latencies.lock().unwrap().extend(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut v = std::mem::take(&mut *latencies.lock().unwrap());
    v.sort_by(f64::total_cmp);
    v
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bench_streams(_: &mut Criterion) {
    let (url, shutdown) =
        start_server(&[("AUDIO_STREAM_STATS_INTERVAL_SECONDS", "0.1"), ("AUDIO_MAX_STREAMS", "100000")]);
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(telephone_minute().chunks_exact(160).map(<[u8]>::to_vec).collect());
    // Clients get their own runtime (and, on a multi-core machine, their own core).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let secs: f64 = std::env::var("STREAM_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4.0);
    let mut best = 0;
    for n in [100usize, 250, 500, 1000, 1500, 2000, 3000] {
        let lat = rt.block_on(run_streams(&url, n, secs, frames.clone()));
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        println!("streams {n}: frame->stats latency p50 {p50:.2} ms, p99 {p99:.2} ms over {} samples", lat.len());
        if p99 <= 20.0 {
            best = n;
        } else {
            break;
        }
    }
    println!("streams per core (server on one thread, p99 <= 20 ms): {best}");
    rt.block_on(async { shutdown.trigger() });
}

criterion_group!(benches, bench_recording, bench_streams);
criterion_main!(benches);
