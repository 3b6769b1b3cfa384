//! Gateway overhead through gRPC, and calls/s on one core with the `simulated` provider.
//!
//! ```sh
//! cargo run --release -p provider-gateway --example grpc_overhead
//! ```
//!
//! 1. Overhead per call: a fake Deepgram on loopback answers `POST /v1/listen` at once. The same
//!    transcription is sent (interleaved, one at a time) directly with reqwest and through the
//!    gateway's `Transcribe` over gRPC; the difference of the percentiles is what the gateway
//!    adds (gRPC hop, validation, failover loop, breaker, limiter, metrics, spans). The same for
//!    `StreamChat` against a fake OpenAI answering a one-token SSE completion.
//! 2. Throughput: the gateway with `LLM_PROVIDERS=simulated` and `SENTIMENT_PROVIDERS=simulated`
//!    (zero latency, unpaced tokens) on a single-threaded runtime (one core), 64 concurrent gRPC
//!    callers on another thread: `StreamChat` (one message per token) and `AnalyzeSentiment`
//!    (unary).
//!
//! The gateway records metrics into a real Prometheus recorder, as in production.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt;
use kraliki_proto::provider::v1::{
    AnalyzeSentimentRequest, AudioEncoding, ChatMessage, Role, StreamChatRequest, TranscribeRequest,
    provider_gateway_client::ProviderGatewayClient,
};
use telemetry::{Env, ServiceContext, Shutdown, TelemetryConfig};
use tonic::transport::Channel;

const LISTEN_BODY: &str = r#"{"metadata":{"duration":1.0},"results":{"channels":[{"alternatives":[{"transcript":"hello","confidence":0.9,"words":[]}]}]}}"#;
const SSE_BODY: &str = concat!(
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
    "data: [DONE]\n\n"
);

async fn fake_provider() -> SocketAddr {
    let app = axum::Router::new()
        .route(
            "/v1/listen",
            axum::routing::post(|| async {
                Response::builder().header("content-type", "application/json").body(Body::from(LISTEN_BODY)).unwrap()
            }),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(|| async {
                Response::builder().header("content-type", "text/event-stream").body(Body::from(SSE_BODY)).unwrap()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Starts the gateway on its own single-threaded runtime (one core) and returns its address.
fn start_gateway(env: Env) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let config = provider_gateway::Config::from_env(&env).unwrap();
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(grpc.local_addr().unwrap()).unwrap();
            let metrics = telemetry::init(&provider_gateway::service_info(), &TelemetryConfig::from_env(&env).unwrap())
                .unwrap()
                .metrics();
            let shutdown = Shutdown::new(Duration::ZERO, Duration::from_secs(1));
            let ctx = ServiceContext::new(provider_gateway::service_info(), "bench", metrics, shutdown);
            provider_gateway::run(config, grpc, admin, ctx).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

async fn client(addr: SocketAddr) -> ProviderGatewayClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    ProviderGatewayClient::new(channel)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(what: &str, direct: &mut [Duration], gateway: &mut [Duration]) {
    direct.sort_unstable();
    gateway.sort_unstable();
    let (d50, d99) = (percentile(direct, 0.5), percentile(direct, 0.99));
    let (g50, g99) = (percentile(gateway, 0.5), percentile(gateway, 0.99));
    println!(
        "{what:<11} direct p50 {:>7.0} µs p99 {:>7.0} µs | via gateway p50 {:>7.0} µs p99 {:>7.0} µs | overhead p50 {:>6.0} µs p99 {:>6.0} µs  (n = {})",
        micros(d50),
        micros(d99),
        micros(g50),
        micros(g99),
        micros(g50) - micros(d50),
        micros(g99) - micros(d99),
        gateway.len()
    );
}

fn chat_request() -> StreamChatRequest {
    StreamChatRequest {
        messages: vec![ChatMessage { role: Role::User as i32, content: "Hello".into() }],
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    const SAMPLES: usize = 2_000;
    // reqwest here is built before the gateway's telemetry would install it.
    telemetry::install_crypto_provider();
    let fake = fake_provider().await;
    let env = Env::from_pairs([
        ("LOG_LEVEL", "error".to_owned()),
        ("DEEPGRAM_BASE_URL", format!("http://{fake}")),
        ("DEEPGRAM_API_KEY", "dg-bench-key-0123456789".to_owned()),
        ("OPENAI_BASE_URL", format!("http://{fake}/v1")),
        ("OPENAI_API_KEY", "sk-bench-0123456789abcdef".to_owned()),
        ("STT_PROVIDERS", "deepgram".to_owned()),
    ]);
    let mut gateway = client(start_gateway(env)).await;
    let http = reqwest::Client::new();
    let audio = vec![0xffu8; 1_600];
    let transcribe = || TranscribeRequest {
        audio: audio.clone(),
        encoding: AudioEncoding::Mulaw as i32,
        sample_rate_hz: 8000,
        ..Default::default()
    };

    // Warm-up: connections, code paths.
    for _ in 0..200 {
        gateway.transcribe(transcribe()).await.unwrap();
        let _ = gateway.stream_chat(chat_request()).await.unwrap().into_inner().collect::<Vec<_>>().await;
    }

    let (mut direct, mut via) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let body = http
            .post(format!("http://{fake}/v1/listen?model=nova-3&encoding=mulaw&sample_rate=8000&channels=1"))
            .header("authorization", "Token dg-bench-key-0123456789")
            .body(audio.clone())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let _: serde_json::Value = serde_json::from_slice(&body).unwrap();
        direct.push(start.elapsed());
        let start = Instant::now();
        let response = gateway.transcribe(transcribe()).await.unwrap().into_inner();
        via.push(start.elapsed());
        assert_eq!(response.text, "hello");
    }
    report("Transcribe", &mut direct, &mut via);

    let (mut direct, mut via) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let mut body = http
            .post(format!("http://{fake}/v1/chat/completions"))
            .header("authorization", "Bearer sk-bench-0123456789abcdef")
            .json(&serde_json::json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}))
            .send()
            .await
            .unwrap()
            .bytes_stream();
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
        direct.push(start.elapsed());
        let start = Instant::now();
        let messages: Vec<_> = gateway.stream_chat(chat_request()).await.unwrap().into_inner().collect().await;
        via.push(start.elapsed());
        assert_eq!(messages.len(), 2, "one delta and done");
    }
    report("StreamChat", &mut direct, &mut via);

    // Throughput with the simulated provider, gateway on one core.
    let env = Env::from_pairs([
        ("LOG_LEVEL", "error"),
        ("LLM_PROVIDERS", "simulated"),
        ("SENTIMENT_PROVIDERS", "simulated"),
        ("SIMULATED_LATENCY", "fixed:0"),
        ("SIMULATED_TTFB_SECONDS", "0"),
        ("SIMULATED_TOKENS_PER_SECOND", "0"),
        ("SIMULATED_MAX_CONCURRENCY", "1024"),
    ]);
    let shared = client(start_gateway(env)).await;
    for streamed in [true, false] {
        let callers = 64;
        let deadline = Instant::now() + Duration::from_secs(5);
        let done = Arc::new(AtomicU64::new(0));
        let messages = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let (mut c, done, messages) = (shared.clone(), Arc::clone(&done), Arc::clone(&messages));
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    if streamed {
                        let got: Vec<_> = c.stream_chat(chat_request()).await.unwrap().into_inner().collect().await;
                        messages.fetch_add(got.len() as u64, Ordering::Relaxed);
                    } else {
                        let request =
                            AnalyzeSentimentRequest { text: "thanks, that was quick".into(), ..Default::default() };
                        c.analyze_sentiment(request).await.unwrap();
                        messages.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let started = Instant::now();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let calls = done.load(Ordering::Relaxed) as f64;
        println!(
            "simulated {:<16} gateway on one core, {callers} callers: {:>6.0} calls/s ({:.1} response messages per call, {:.0} µs per call)",
            if streamed { "StreamChat," } else { "AnalyzeSentiment," },
            calls / elapsed,
            messages.load(Ordering::Relaxed) as f64 / calls,
            elapsed * 1e6 / calls
        );
    }
}
