//! The carrier side's floor: what a server that does nothing with a live call but take its
//! frames and send paced frames back costs, in milliseconds of CPU per live call-second, on the
//! machine it runs on. It is the part of call-api's figure on the live-call bench
//! (`scripts/bench-live.sh`) that no change inside the services can remove while the carrier
//! speaks Twilio's media-stream protocol: one WebSocket message per 20 ms frame each way, each a
//! `recv` or a `send` and, on an idle thread, a wake-up.
//!
//! ```text
//! cargo run --release -p voice-kraliki --example carrier_floor -- [--calls 100,300,500]
//!     [--send-share 0.6] [--seconds 15] [--workers N] [--raw]
//! ```
//!
//! `--raw` runs the same server without a WebSocket library or HTTP server (the handshake by
//! hand, then plain reads and a prebuilt frame written every 20 ms): what is left is the
//! kernel's and the runtime's part. On the bench machine it reads the same as the full stack,
//! within the run-to-run spread.
//!
//! The server runs as a child process (this binary with `serve`), on the same stack as call-api
//! (axum's WebSocket on hyper, a tokio runtime of `--workers` threads, default the CPU count):
//! per call one task reads and drops each message, and one task sends a Twilio `media`
//! message (one 160-byte μ-law frame, a new `String` each) every 20 ms for `--send-share` of
//! the time (default 0.6: what the two-turn bench plays). The load runs in this process, as
//! the load generator runs beside the services on the bench: each call sends a Twilio inbound
//! `media` message every 20 ms (random phase, ramped over 2 s) and reads what comes back. Per
//! level it prints `floor calls=… cpu_ms_per_call_s=… recv_per_s=… sent_per_s=…`, CPU from the
//! server's `/proc/<pid>/stat` over `--seconds` after 3 s of warm-up.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::ws::{Message, WebSocket, WebSocketUpgrade},
    routing::get,
};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
// The WebSocket read buffer on both ends, as call-api's and the load generator's.
use voice_kraliki::loadgen::WS_READ_BUFFER;

/// Frames per cycle of the server's sending pattern (one second).
const CYCLE: u32 = 50;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let workers: usize = match opt("--workers") {
        Some(w) => w.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    if args.first().map(String::as_str) == Some("serve") {
        let share: f64 = opt("--send-share").map_or(Ok(0.6), |s| s.parse())?;
        if args.iter().any(|a| a == "--raw") {
            return runtime.block_on(serve_raw(share));
        }
        return runtime.block_on(serve(share));
    }
    let levels: Vec<usize> =
        opt("--calls").unwrap_or_else(|| "100,300,500".into()).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let seconds: u64 = opt("--seconds").map_or(Ok(15), |s| s.parse())?;
    let share = opt("--send-share").unwrap_or_else(|| "0.6".into());
    let mut server = Command::new(std::env::current_exe()?)
        .args(["serve", "--send-share", &share, "--workers", &workers.to_string()])
        .args(args.iter().any(|a| a == "--raw").then_some("--raw"))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("piped stdout")).read_line(&mut line)?;
    let port: u16 =
        line.trim().strip_prefix("port ").ok_or_else(|| anyhow::anyhow!("server said {line:?}"))?.parse()?;
    let result = runtime.block_on(async {
        for calls in levels {
            load(port, server.id(), calls, Duration::from_secs(seconds)).await?;
        }
        anyhow::Ok(())
    });
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The server: per call a reader that drops what comes and a writer that sends a frame every
/// 20 ms for `share` of each second.
async fn serve(share: f64) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("port {}", listener.local_addr()?.port());
    let on = (share.clamp(0.0, 1.0) * f64::from(CYCLE)).round() as u32;
    let app = Router::new().route(
        "/media",
        // call-api's settings: a 4 KiB read buffer (tungstenite zero-fills the free part of it
        // before every read; the default 128 KiB made that memset 40 % of this server's CPU),
        // each message written as sent.
        get(move |ws: WebSocketUpgrade| async move {
            ws.read_buffer_size(WS_READ_BUFFER).write_buffer_size(0).on_upgrade(move |socket| call(socket, on))
        }),
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// The same server without a WebSocket library or HTTP server: the handshake by hand, then
/// raw reads (dropped) and a prebuilt unmasked text frame written every 20 ms.
async fn serve_raw(share: f64) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("port {}", listener.local_addr()?.port());
    let on = (share.clamp(0.0, 1.0) * f64::from(CYCLE)).round() as u32;
    loop {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = vec![0u8; WS_READ_BUFFER];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            let key = text
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
            let text = format!(
                r#"{{"event":"media","streamSid":"MZ00000000000000000000000000000000","media":{{"payload":"{payload}"}}}}"#
            );
            let mut frame = vec![0x81u8, 126];
            frame.extend_from_slice(&(text.len() as u16).to_be_bytes());
            frame.extend_from_slice(text.as_bytes());
            let (mut rd, mut wr) = stream.into_split();
            let writer = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
                for n in 0u32.. {
                    tick.tick().await;
                    if n % CYCLE < on && wr.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            writer.abort();
        });
    }
}

async fn call(socket: WebSocket, on: u32) {
    let (mut tx, mut rx) = socket.split();
    let writer = tokio::spawn(async move {
        let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
        let message = format!(
            r#"{{"event":"media","streamSid":"MZ00000000000000000000000000000000","media":{{"payload":"{payload}"}}}}"#
        );
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        for n in 0u32.. {
            tick.tick().await;
            if n % CYCLE < on && tx.send(Message::Text(message.clone().into())).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(_)) = rx.next().await {}
    writer.abort();
}

/// One level: `calls` carriers, CPU of the server measured over `window` after the ramp and
/// 3 s of warm-up.
async fn load(port: u16, server: u32, calls: usize, window: Duration) -> anyhow::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(calls);
    let ramp = Duration::from_secs(2);
    for i in 0..calls {
        let (received, sent) = (received.clone(), sent.clone());
        let start = tokio::time::Instant::now() + ramp.mul_f64(i as f64 / calls as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let config = WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER);
            let url = format!("ws://127.0.0.1:{port}/media");
            let Ok((ws, _)) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await else {
                eprintln!("call {i} could not connect");
                return;
            };
            let (mut tx, mut rx) = ws.split();
            let reader = tokio::spawn(async move {
                while let Some(Ok(_)) = rx.next().await {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
            let payload = base64::engine::general_purpose::STANDARD.encode([0x7Fu8; 160]);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for seq in 1u64.. {
                tick.tick().await;
                let message = format!(
                    r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{seq}","timestamp":"{}","payload":"{payload}"}},"streamSid":"MZ00000000000000000000000000000000"}}"#,
                    seq * 20
                );
                if tx.send(tokio_tungstenite::tungstenite::Message::text(message)).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            reader.abort();
        }));
    }
    tokio::time::sleep(ramp + Duration::from_secs(3)).await;
    let (cpu0, at0) = (cpu_seconds(server)?, Instant::now());
    let (sent0, received0) = (sent.load(Ordering::Relaxed), received.load(Ordering::Relaxed));
    tokio::time::sleep(window).await;
    let (cpu1, at1) = (cpu_seconds(server)?, Instant::now());
    let (sent1, received1) = (sent.load(Ordering::Relaxed), received.load(Ordering::Relaxed));
    for t in &tasks {
        t.abort();
    }
    let wall = at1.duration_since(at0).as_secs_f64();
    println!(
        "floor calls={calls} cpu_ms_per_call_s={:.3} recv_per_s={:.0} sent_per_s={:.0}",
        (cpu1 - cpu0) * 1000.0 / (calls as f64 * wall),
        (sent1 - sent0) as f64 / wall,
        (received1 - received0) as f64 / wall,
    );
    // The server sees the calls close before the next level starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// User and system CPU seconds of process `pid` (USER_HZ 100, as in telemetry's `process_*`).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow::anyhow!("bad stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((num(11) + num(12)) / 100.0)
}
