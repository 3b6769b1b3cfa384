//! Pipeline bench: the time to analyse a 5-minute two-party stereo call end to end, and the
//! share of each stage, without provider latency. All three services run in this process on
//! loopback (call-api on SQLite, audio-processor, provider-gateway); transcription goes to a
//! fake OpenAI-compatible server that answers at once, sentiment to the built-in lexicon.
//!
//! `cargo bench -p call-api --bench pipeline` (part of `make bench`). `BENCH_RUNS` (default 5)
//! sets the number of uploads; `BENCH_RECORDING_SECONDS` (default 300) the recording's length.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telemetry::{
    Env, ServiceContext, Shutdown,
    testing::{FakeHttp, FakeReply},
};
use tokio::net::TcpListener;

const KEY: &str = "bench-key-1234567890abcdef";

fn context(info: telemetry::ServiceInfo, shutdown: &Shutdown) -> ServiceContext {
    ServiceContext::new(info, "bench", None, shutdown.clone())
}

/// The shipped 14 s two-party call (8 kHz stereo μ-law) repeated to `seconds`.
fn long_call(seconds: f64) -> Vec<u8> {
    let wav = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../audio-dsp/fixtures/call-stereo.wav")).unwrap();
    let data_at = wav.windows(4).position(|w| w == b"data").expect("data chunk");
    let len = u32::from_le_bytes(wav[data_at + 4..data_at + 8].try_into().unwrap()) as usize;
    let data = &wav[data_at + 8..data_at + 8 + len];
    let wanted = (seconds * 16_000.0) as usize & !1; // 2 bytes per stereo frame
    let body: Vec<u8> = data.iter().copied().cycle().take(wanted).collect();
    let mut out = wav[..data_at + 4].to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let riff = (out.len() + body.len() - 8) as u32;
    out[4..8].copy_from_slice(&riff.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn main() {
    telemetry::install_crypto_provider();
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let seconds: f64 = std::env::var("BENCH_RECORDING_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300.0);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let shutdown = Shutdown::new(Duration::ZERO, Duration::from_secs(5));
        let fake = FakeHttp::start(|_| {
            FakeReply::json(
                200,
                json!({"text": "Thank you for calling.", "language": "english", "duration": 1.0,
                       "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": " Thank you for calling."}]}),
            )
        })
        .await;
        let quiet = [("LOG_LEVEL", "error"), ("APM_ENABLED", "false")];

        let audio_grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let audio_url = format!("http://{}", audio_grpc.local_addr().unwrap());
        let audio_config = audio_processor::Config::from_env(&Env::from_pairs(quiet)).unwrap();
        let ctx = context(audio_processor::service_info(), &shutdown);
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(audio_processor::run(audio_config, audio_grpc, admin, ctx));

        let gateway_grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_url = format!("http://{}", gateway_grpc.local_addr().unwrap());
        let base = fake.base_url();
        let mut env = Env::from_pairs(quiet);
        env.set("OPENAI_API_KEY", "sk-bench-0123456789abcdef");
        env.set("OPENAI_BASE_URL", base.as_str());
        env.set("STT_PROVIDERS", "openai");
        let gateway_config = provider_gateway::Config::from_env(&env).unwrap();
        let ctx = context(provider_gateway::service_info(), &shutdown);
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(provider_gateway::run(gateway_config, gateway_grpc, admin, ctx));

        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("bench.db").display());
        let mut env = Env::from_pairs(quiet);
        env.set("API_KEYS", KEY);
        env.set("DATABASE_URL", db.as_str());
        env.set("AUDIO_PROCESSOR_URL", audio_url.as_str());
        env.set("PROVIDER_GATEWAY_URL", gateway_url.as_str());
        let api_config = call_api::Config::from_env(&env).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let ctx = context(call_api::service_info(), &shutdown);
        tokio::spawn(call_api::run(api_config, listener, ctx));

        let client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
        while !client.get(format!("{api}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let recording = long_call(seconds);
        println!(
            "pipeline: {seconds:.0} s stereo 8 kHz μ-law call ({} bytes), {runs} uploads, provider answers at once",
            recording.len()
        );
        let mut rows: Vec<[f64; 5]> = Vec::new();
        for run in 0..=runs {
            let call: Value = client
                .post(format!("{api}/v1/calls"))
                .bearer_auth(KEY)
                .json(&json!({"provider": "sip", "from": "+14155550100", "to": "+14155550199", "direction": "inbound"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = call["id"].as_str().unwrap();
            let started = Instant::now();
            let r = client
                .post(format!("{api}/v1/calls/{id}/recording?channel_labels=agent,caller"))
                .bearer_auth(KEY)
                .header("content-type", "audio/wav")
                .body(recording.clone())
                .send()
                .await
                .unwrap();
            let status = r.status();
            let doc: Value = r.json().await.unwrap();
            let end_to_end = started.elapsed().as_secs_f64();
            assert_eq!(status, 200, "{doc}");
            assert_eq!(doc["transcript"]["status"], "done", "{doc}");
            let t = &doc["timings"];
            let f = |k: &str| t[k].as_f64().unwrap();
            if run == 0 {
                continue; // warm-up: connections, SQLite pages
            }
            let row = [end_to_end, f("audio_seconds"), f("transcription_seconds"), f("sentiment_seconds"), 0.0];
            // Storing and answering: what the client waited beyond the pipeline's own stages.
            rows.push([row[0], row[1], row[2], row[3], (end_to_end - f("total_seconds")).max(0.0)]);
            let requests = fake.requests().len();
            if run == 1 {
                println!("transcription requests per upload: {}", requests / 2);
            }
        }
        let median = |i: usize| {
            let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let total = median(0);
        println!(
            "end to end (client upload → stored analysis answered): median {:.3} s = {:.0}x realtime",
            total,
            seconds / total
        );
        for (i, name) in [
            (1, "upload + audio analysis"),
            (2, "transcription (chunks via gateway)"),
            (3, "sentiment"),
            (4, "store + answer"),
        ] {
            let m = median(i);
            println!("  {name:<36} {m:>7.3} s  {:>5.1} %", m / total * 100.0);
        }
        shutdown.trigger();
    });
}
