//! A carrier's `media` message read by `protocol::parse`: the one-scan path carriers' messages
//! take, against the same message through `serde_json` (an escape in `streamSid` sends it
//! there), and what each costs per live call-second (50 messages a second).
//!
//! `cargo bench -p call-api --bench protocol` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Instant;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use call_api::media::protocol::{Inbound, parse};
use criterion::{Criterion, criterion_group, criterion_main};

/// A 20 ms frame as Twilio sends it, with `stream_sid` as written (JSON) in the message.
fn message(stream_sid: &str) -> String {
    let payload = STANDARD.encode((0..160u8).map(|i| i.wrapping_mul(37)).collect::<Vec<u8>>());
    format!(
        r#"{{"event":"media","sequenceNumber":"4711","media":{{"track":"inbound","chunk":"4710","timestamp":"94200","payload":"{payload}"}},"streamSid":"{stream_sid}"}}"#
    )
}

/// Nanoseconds per parse over `n` parses on this thread.
fn per_parse(text: &str, n: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let parsed = parse(black_box(text));
        assert!(matches!(parsed, Ok(Inbound::Media { ref payload, .. }) if payload.len() == 160));
        black_box(parsed).ok();
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn bench(c: &mut Criterion) {
    let scanned = message("MZ18ad3ab5a668481ce02b83e7395059f0");
    let full = message(r"MZ18ad3ab5a668481ce02b83e7395059f\u0030");
    let mut group = c.benchmark_group("carrier_media_message");
    group.bench_function("scan", |b| b.iter(|| parse(black_box(&scanned))));
    group.bench_function("serde_json", |b| b.iter(|| parse(black_box(&full))));
    group.finish();
    let n = 200_000;
    let (fast, slow) = (per_parse(&scanned, n), per_parse(&full, n));
    println!(
        "media message ({} bytes): scan {fast:.0} ns, serde_json {slow:.0} ns per message; \
         {:.4} against {:.4} ms of CPU per live call-second (50 messages)",
        scanned.len(),
        fast * 50.0 / 1e6,
        slow * 50.0 / 1e6
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
