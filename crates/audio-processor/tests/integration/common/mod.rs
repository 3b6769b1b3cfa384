//! Shared helpers: the real service on port 0, a gRPC client, fixtures and their truth.
#![allow(dead_code)]

use std::time::Duration;

use audio_dsp::vad::{FrameDecisions, segments_from_decisions};
use audio_dsp::{AnalysisConfig, Limits, decode_wav, synth};
use kraliki_proto::audio::v1::{self as pb, audio_processor_client::AudioProcessorClient};
use telemetry::{ServiceContext, Shutdown};
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../audio-dsp/fixtures");

/// A running service.
pub struct App {
    pub grpc_url: String,
    pub admin_url: String,
    pub shutdown: Shutdown,
    pub server: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn client(&self) -> AudioProcessorClient<Channel> {
        let channel = Channel::from_shared(self.grpc_url.clone()).unwrap().connect().await.unwrap();
        AudioProcessorClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(usize::MAX)
    }
}

/// Starts audio-processor on port 0 with the given extra environment.
pub async fn spawn_app(env: &[(&str, &str)]) -> App {
    spawn_app_with(env, None).await
}

pub async fn spawn_app_with(env: &[(&str, &str)], metrics: Option<telemetry::MetricsHandle>) -> App {
    telemetry::install_crypto_provider();
    let config = audio_processor::Config::from_pairs(env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let shutdown = Shutdown::new(Duration::from_millis(50), Duration::from_secs(5));
    let ctx = ServiceContext::new(audio_processor::service_info(), "test", metrics, shutdown.clone());
    let server = tokio::spawn(async move {
        audio_processor::run(config, grpc, admin, ctx).await.unwrap();
    });
    // Ready once the admin port answers /ready.
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{admin_url}/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            return App { grpc_url, admin_url, shutdown, server };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("audio-processor did not become ready");
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture present")
}

pub fn format(encoding: pb::AudioEncoding, rate: u32, channels: u32) -> Option<pb::AudioFormat> {
    Some(pb::AudioFormat { encoding: encoding as i32, sample_rate_hz: rate, channels })
}

pub fn wav_request(bytes: Vec<u8>) -> pb::AnalyzeRecordingRequest {
    pb::AnalyzeRecordingRequest {
        call_id: "test-call".into(),
        format: format(pb::AudioEncoding::Wav, 0, 0),
        audio: bytes,
        ..Default::default()
    }
}

/// A WAV file around `data` (format tag 1 = PCM, 6 = A-law, 7 = μ-law).
pub fn wav(format_tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut v = Vec::new();
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&format_tag.to_le_bytes());
    v.extend_from_slice(&channels.to_le_bytes());
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
    v.extend_from_slice(&block.to_le_bytes());
    v.extend_from_slice(&bits.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// `key=value` placements of a fixture.
pub fn placements(name: &str) -> std::collections::HashMap<String, f64> {
    std::fs::read_to_string(format!("{FIXTURES}/{name}"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
        .collect()
}

/// Digits of the DTMF fixture: (digit, start, end).
pub fn dtmf_truth() -> Vec<(String, f64, f64)> {
    std::fs::read_to_string(format!("{FIXTURES}/dtmf.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            (it.next().unwrap().to_string(), it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
        })
        .collect()
}

/// Speech frames of a clean signal: 10 ms frames within 40 dB of the loudest.
fn truth_frames(clean: &[i16], frame: usize) -> Vec<bool> {
    let p: Vec<f64> = clean.chunks_exact(frame).map(synth::power).collect();
    let max = p.iter().copied().fold(0.0, f64::max);
    let thr = max * 10f64.powf(-4.0);
    p.iter().map(|&x| x > thr).collect()
}

/// Truth speech segments of clean fixture sentences placed at offsets in a silent 8 kHz
/// channel of `total` seconds, smoothed like the analysis smooths.
pub fn placed_truth(items: &[(&str, f64)], total: f64) -> Vec<(f64, f64)> {
    let rate = 8000;
    let mut x = synth::silence(rate, total);
    for (name, at) in items {
        let f = decode_wav(&fixture_bytes(name), &Limits::default()).unwrap();
        let s = audio_dsp::resample::resample(&f.channels[0], 16000, rate).unwrap();
        synth::add_at(&mut x, &s, (at * f64::from(rate)) as usize);
    }
    x.truncate((total * f64::from(rate)) as usize);
    let truth = FrameDecisions { frame_seconds: 0.01, voiced: truth_frames(&x, rate as usize / 100) };
    segments_from_decisions(&truth, &AnalysisConfig::default().segments)
}

/// Where speech begins and ends in a clean 16 kHz fixture sentence, seconds.
pub fn speech_bounds(name: &str) -> (f64, f64) {
    let f = decode_wav(&fixture_bytes(name), &Limits::default()).unwrap();
    let t = truth_frames(&f.channels[0], 160);
    let first = t.iter().position(|&v| v).unwrap();
    let last = t.iter().rposition(|&v| v).unwrap();
    (first as f64 * 0.01, (last + 1) as f64 * 0.01)
}

pub fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    let d = d.as_ref().expect("duration present");
    d.seconds as f64 + f64::from(d.nanos) * 1e-9
}

/// A generous hang-catcher around a test step.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut).await.unwrap_or_else(|_| panic!("{what} hung"))
}
