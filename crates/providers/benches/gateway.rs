//! Gateway overhead and throughput.
//!
//! - overhead per call: a chat completion through the gateway vs. the same request sent with a
//!   bare reqwest client, both against a zero-latency fake OpenAI server on loopback (p50/p99
//!   printed, criterion groups for the means);
//! - streamed-token pass-through latency: the fake stamps each SSE token with its send time,
//!   the consumer measures the delay through the gateway;
//! - calls per second on one core (current-thread runtime) with the `simulated` provider.
//!
//! Run: `cargo bench -p providers --bench gateway`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::Response;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use providers::{ChatMessage, ChatRequest, Gateway, ProvidersConfig, Role};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

const SSE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\ndata: [DONE]\n\n";

async fn fake_server() -> String {
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(|| async {
                Response::builder().header("content-type", "text/event-stream").body(Body::from(SSE)).unwrap()
            }),
        )
        .route(
            "/stamped/v1/chat/completions",
            axum::routing::post(|| async {
                // 50 tokens, 2 ms apart, each carrying its send time in microseconds since EPOCH.
                let stream = futures_util::stream::iter(0..=50).then(|i| async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let event = if i == 50 {
                        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_owned()
                    } else {
                        let sent = epoch().elapsed().as_micros();
                        format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{sent} \"}},\"finish_reason\":null}}]}}\n\n")
                    };
                    Ok::<_, Infallible>(Bytes::from(event))
                });
                Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn gateway(vars: &[(&str, &str)]) -> Gateway {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Gateway::new(ProvidersConfig::from_env(&providers::config::Env::from_pairs(map)).unwrap()).unwrap()
}

fn request() -> ChatRequest {
    ChatRequest { messages: vec![ChatMessage::new(Role::User, "hello")], max_tokens: Some(1), ..ChatRequest::default() }
}

async fn via_gateway(gw: &Gateway) {
    let stream = gw.chat(request(), None).await.unwrap();
    let chunks: Vec<_> = stream.collect().await;
    assert!(chunks.iter().all(Result::is_ok));
}

async fn via_reqwest(client: &reqwest::Client, url: &str) {
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": true});
    let mut stream = client.post(url).json(&body).send().await.unwrap().bytes_stream();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!("{name}: n={} p50={:?} p99={:?}", samples.len(), p50, p99);
    (p50, p99)
}

fn benches(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let base = rt.block_on(fake_server());
    let openai_vars = |url: &str| vec![("OPENAI_BASE_URL", url.to_owned()), ("OPENAI_API_KEY", "sk-bench".to_owned())];
    let gw_http = {
        let vars = openai_vars(&format!("{base}/v1"));
        gateway(&vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
    };
    let client = reqwest::Client::new();
    let chat_url = format!("{base}/v1/chat/completions");

    // Overhead per call: percentiles over interleaved samples.
    let (mut gw_samples, mut raw_samples) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..200 {
            via_gateway(&gw_http).await;
            via_reqwest(&client, &chat_url).await;
        }
        for _ in 0..3000 {
            let t = Instant::now();
            via_gateway(&gw_http).await;
            gw_samples.push(t.elapsed());
            let t = Instant::now();
            via_reqwest(&client, &chat_url).await;
            raw_samples.push(t.elapsed());
        }
    });
    let (g50, g99) = report("chat via gateway (fake, zero latency)", gw_samples);
    let (r50, r99) = report("chat via bare reqwest (same fake)", raw_samples);
    println!("gateway overhead per call: p50 {:?}, p99 {:?}", g50.saturating_sub(r50), g99.saturating_sub(r99));

    // Streamed-token pass-through latency.
    let gw_stamped = {
        let vars = openai_vars(&format!("{base}/stamped/v1"));
        gateway(&vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
    };
    let mut delays = Vec::new();
    rt.block_on(async {
        for _ in 0..40 {
            let mut stream = gw_stamped.chat(request(), None).await.unwrap();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap();
                if let Ok(sent) = chunk.delta.trim().parse::<u128>() {
                    let now = epoch().elapsed().as_micros();
                    delays.push(Duration::from_micros(now.saturating_sub(sent) as u64));
                }
            }
        }
    });
    report("streamed token pass-through (server write -> caller)", delays);

    // Calls per second on one core with the simulated provider, 64 concurrent callers.
    let gw_sim = gateway(&[
        ("LLM_PROVIDERS", "simulated"),
        ("SIMULATED_LATENCY", "fixed:0"),
        ("SIMULATED_TTFB_SECONDS", "0"),
        ("SIMULATED_TOKENS_PER_SECOND", "0"),
        ("SIMULATED_MAX_CONCURRENCY", "1000"),
    ]);
    let calls_per_worker = 2_000;
    let started = Instant::now();
    rt.block_on(async {
        let workers: Vec<_> = (0..64)
            .map(|_| {
                let gw = gw_sim.clone();
                tokio::spawn(async move {
                    for _ in 0..calls_per_worker {
                        via_gateway(&gw).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    println!(
        "simulated chat on one core: {} calls in {:?} = {:.0} calls/s",
        64 * calls_per_worker,
        elapsed,
        f64::from(64 * calls_per_worker) / elapsed.as_secs_f64()
    );

    let mut group = c.benchmark_group("chat");
    group.sample_size(30).measurement_time(Duration::from_secs(3));
    group.bench_function("gateway_fake_http", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    via_gateway(&gw_http).await;
                }
                t.elapsed()
            })
        })
    });
    group.bench_function("bare_reqwest_fake_http", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    via_reqwest(&client, &chat_url).await;
                }
                t.elapsed()
            })
        })
    });
    group.bench_function("gateway_simulated", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    via_gateway(&gw_sim).await;
                }
                t.elapsed()
            })
        })
    });
    group.finish();
    c.bench_function("sentiment_local", |b| {
        b.iter(|| providers::sentiment::analyze("The agent was polite, but honestly my problem still isn't fixed."))
    });
}

criterion_group!(gateway_benches, benches);
criterion_main!(gateway_benches);
