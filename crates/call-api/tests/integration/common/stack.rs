//! The whole stack in one process: audio-processor and provider-gateway on port 0 next to
//! call-api, each with its own shutdown; provider-gateway reaches fake providers over HTTP.

use std::{net::SocketAddr, time::Duration};

use telemetry::{Env, ServiceContext, Shutdown, testing::FakeHttp};
use tokio::net::TcpListener;

use super::{TestApp, TestDb, spawn_app_with};

/// A gRPC service running in this process.
pub struct Peer {
    pub addr: SocketAddr,
    shutdown: Shutdown,
}

impl Peer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn context(info: telemetry::ServiceInfo) -> (ServiceContext, Shutdown) {
    let shutdown = Shutdown::new(Duration::ZERO, Duration::from_secs(5));
    (ServiceContext::new(info, "test", None, shutdown.clone()), shutdown)
}

/// audio-processor on `grpc` (port 0 when `None`).
pub async fn start_audio(grpc: Option<TcpListener>) -> Peer {
    start_audio_with(grpc, &[]).await
}

/// audio-processor on `grpc` (port 0 when `None`) with `extra` variables.
pub async fn start_audio_with(grpc: Option<TcpListener>, extra: &[(&str, &str)]) -> Peer {
    let mut env = Env::from_pairs([("LOG_LEVEL", "warn")]);
    for (k, v) in extra {
        env.set(*k, *v);
    }
    let config = audio_processor::Config::from_env(&env).expect("audio config");
    let grpc = match grpc {
        Some(l) => l,
        None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (ctx, shutdown) = context(audio_processor::service_info());
    tokio::spawn(audio_processor::run(config, grpc, admin, ctx));
    Peer { addr, shutdown }
}

/// provider-gateway with `env`; with `openai`, OpenAI is configured against that fake.
pub async fn start_gateway(openai: Option<&FakeHttp>, extra: &[(&str, &str)]) -> Peer {
    let mut env = Env::from_pairs([("LOG_LEVEL", "warn"), ("PROVIDER_MAX_RETRIES", "0")]);
    let base;
    if let Some(fake) = openai {
        base = fake.base_url();
        env.set("OPENAI_API_KEY", "sk-test-0123456789abcdef");
        env.set("OPENAI_BASE_URL", base.as_str());
        env.set("STT_PROVIDERS", "openai");
    }
    for (k, v) in extra {
        env.set(*k, *v);
    }
    let config = provider_gateway::Config::from_env(&env).expect("gateway config");
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (ctx, shutdown) = context(provider_gateway::service_info());
    tokio::spawn(provider_gateway::run(config, grpc, admin, ctx));
    Peer { addr, shutdown }
}

/// call-api over `db`, talking to the given peers.
pub async fn start_api(db: TestDb, audio_url: &str, gateway_url: &str, extra: &[(&str, &str)]) -> TestApp {
    let url = db.url().to_string();
    let mut env = vec![("AUDIO_PROCESSOR_URL", audio_url), ("PROVIDER_GATEWAY_URL", gateway_url)];
    env.extend_from_slice(extra);
    spawn_app_with(db, &url, &env).await
}

/// The shipped two-party recording: 8 kHz stereo μ-law, channel 0 the agent, 1 the caller.
pub fn call_stereo() -> Vec<u8> {
    std::fs::read(fixture("call-stereo.wav")).expect("fixture call-stereo.wav")
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../audio-dsp/fixtures").join(name)
}

/// `a_at`, `b_at`, `c_at` of call-stereo.txt: where each utterance was placed.
pub fn call_stereo_timings() -> [f64; 3] {
    let text = std::fs::read_to_string(fixture("call-stereo.txt")).unwrap();
    let get = |k: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).and_then(|v| v.trim().parse().ok()).unwrap()
    };
    [get("a_at"), get("b_at"), get("c_at")]
}

/// The `data` chunk of a WAV file.
pub fn wav_data(wav: &[u8]) -> &[u8] {
    let mut i = 12;
    while i + 8 <= wav.len() {
        let len = u32::from_le_bytes(wav[i + 4..i + 8].try_into().unwrap()) as usize;
        if &wav[i..i + 4] == b"data" {
            return &wav[i + 8..(i + 8 + len).min(wav.len())];
        }
        i += 8 + len + (len & 1);
    }
    panic!("no data chunk");
}
