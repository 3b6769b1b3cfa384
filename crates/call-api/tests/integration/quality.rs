//! Line quality of a live call: the test carrier streams a conversation on a steady 20 ms clock
//! with known faults (skipped sequence numbers, a reordered pair, duplicates, every 10th frame
//! held back 100 ms) and echoes the agent's marks a known time late; the stored and served
//! figures, the metrics and the session span's attributes must match what was injected.

use std::time::{Duration, Instant};

use crate::common::{
    ACME_KEY, Backend, KEY, TestApp, TestDb,
    carrier::{Carrier, get, metric, metrics, silence},
    stack,
};
use crate::live::{ask_until_reply, caller_audio, live_stack, live_stack_env, providers, talk_over};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::SinkExt as _;
use serde_json::{Value, json};
use telemetry::testing::{FakeHttp, OtlpReceiver};
use tokio_tungstenite::tungstenite::Message;

const FRAME: Duration = Duration::from_millis(20);
/// Silence before the caller speaks (3 s).
const LEADING_SILENCE: usize = 150;
/// Frames never sent (their sequence numbers skipped).
const LOST: [usize; 5] = [51, 121, 122, 201, 331];
/// Frames sent after the next one.
const SWAPPED: [usize; 2] = [83, 263];
/// Frames sent twice.
const DUPLICATED: [usize; 3] = [105, 155, 305];
/// Every 10th frame is held back this long (the frames due meanwhile follow it at once).
const JITTER_EVERY: usize = 10;
const JITTER_DELAY: Duration = Duration::from_millis(100);
/// How long the carrier holds a mark back before echoing it.
const ECHO_HOLD: Duration = Duration::from_millis(200);
/// Silence after the reply's last mark has been echoed (4.5 s).
const TRAILING_SILENCE: usize = 225;

/// One media message as sent.
struct Sent {
    ts_ms: u64,
    at: Instant,
    duplicate: bool,
}

/// RFC 3550 §6.4.1 over the distinct frames in the order they were sent.
fn reference_jitter(sent: &[Sent]) -> f64 {
    let mut j = 0.0f64;
    let mut previous: Option<f64> = None;
    let origin = sent[0].at;
    for s in sent.iter().filter(|s| !s.duplicate) {
        let transit = s.at.duration_since(origin).as_secs_f64() - s.ts_ms as f64 / 1000.0;
        if let Some(p) = previous {
            j += ((transit - p).abs() - j) / 16.0;
        }
        previous = Some(transit);
    }
    j
}

fn media(seq: u64, ts_ms: u64, payload: &[u8]) -> Message {
    Message::text(
        json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": "MZtest",
               "media": {"track": "inbound", "chunk": seq.to_string(), "timestamp": ts_ms.to_string(),
                         "payload": STANDARD.encode(payload)}})
        .to_string(),
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

async fn injected_faults_are_measured(backend: Backend, otlp: Option<&OtlpReceiver>) {
    let Some(db) = TestDb::new(backend).await else { return };
    let endpoint = otlp.map(OtlpReceiver::endpoint);
    let mut extra = vec![];
    if let Some(endpoint) = &endpoint {
        // Spans are INFO: the tests' default level (warn) would filter them out.
        extra =
            vec![("APM_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("LOG_LEVEL", "info")];
    }
    // One reply of two sentences, 1 s of speech each.
    let fake = FakeHttp::start(providers(1.0)).await;
    let s = live_stack_env(db, fake, stack::start_audio(None).await, &extra).await;
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let path = format!("/v1/calls/{}/quality", carrier.id);
    let pending = get(app, &path).await;
    assert_eq!(pending["status"], "pending", "{pending}");
    assert!(pending.get("quality").is_none(), "{pending}");

    let caller = caller_audio();
    let utterance = &caller[(4.0 * 8000.0) as usize..(9.0 * 8000.0) as usize];
    let silence = [0xFFu8; 160];
    let payload = |k: usize| -> &[u8] {
        match k.checked_sub(LEADING_SILENCE).map(|n| n * 160) {
            Some(u) if u + 160 <= utterance.len() => &utterance[u..u + 160],
            _ => &silence,
        }
    };

    let start = tokio::time::Instant::now();
    let mut seq = 1u64; // `start` was 1
    let mut sent: Vec<Sent> = Vec::new();
    let mut last_target = start;
    let mut held: Option<(u64, usize)> = None;
    let mut marks_seen = 0;
    let mut waiting: Vec<(String, Instant)> = Vec::new();
    // (name, received, echoed)
    let mut echoes: Vec<(String, Instant, Instant)> = Vec::new();
    let mut stop_at: Option<usize> = None;
    let mut k = 0usize;
    while stop_at.is_none_or(|stop| k < stop) {
        assert!(k < 3000, "the reply's marks never came: {:?}", carrier.events("mark"));
        let delay = if k > 0 && k.is_multiple_of(JITTER_EVERY) { JITTER_DELAY } else { Duration::ZERO };
        let target = (start + FRAME * k as u32 + delay).max(last_target);
        tokio::time::sleep_until(target).await;
        last_target = target;
        // Marks held back long enough are echoed (numbered like every message).
        let marks = carrier.events("mark");
        for (at, m) in &marks[marks_seen..] {
            waiting.push((m["mark"]["name"].as_str().unwrap().to_string(), *at));
        }
        marks_seen = marks.len();
        let now = Instant::now();
        for (name, at) in std::mem::take(&mut waiting) {
            if now >= at + ECHO_HOLD {
                seq += 1;
                carrier
                    .send(json!({"event": "mark", "sequenceNumber": seq.to_string(), "streamSid": "MZtest",
                                 "mark": {"name": name}}))
                    .await;
                echoes.push((name, at, Instant::now()));
            } else {
                waiting.push((name, at));
            }
        }
        if k == 40 {
            // The echo of a mark never sent: not waited for, not counted (its number is no loss).
            seq += 1;
            carrier
                .send(json!({"event": "mark", "sequenceNumber": seq.to_string(), "streamSid": "MZtest",
                             "mark": {"name": "turn-9-9"}}))
                .await;
        }
        if stop_at.is_none() && echoes.iter().any(|(n, ..)| n == "turn-2-2") {
            stop_at = Some(k + TRAILING_SILENCE);
        }

        seq += 1;
        let ts_ms = k as u64 * 20;
        if LOST.contains(&k) {
            k += 1;
            continue;
        }
        if SWAPPED.contains(&k) {
            held = Some((seq, k));
            k += 1;
            continue;
        }
        carrier.sink.send(media(seq, ts_ms, payload(k))).await.unwrap();
        sent.push(Sent { ts_ms, at: Instant::now(), duplicate: false });
        if let Some((held_seq, held_k)) = held.take() {
            carrier.sink.send(media(held_seq, held_k as u64 * 20, payload(held_k))).await.unwrap();
            sent.push(Sent { ts_ms: held_k as u64 * 20, at: Instant::now(), duplicate: false });
        }
        if DUPLICATED.contains(&k) {
            carrier.sink.send(media(seq, ts_ms, payload(k))).await.unwrap();
            sent.push(Sent { ts_ms, at: Instant::now(), duplicate: true });
        }
        k += 1;
    }
    let frames = k as u64;
    let hang_up_at = Instant::now();
    carrier.hang_up().await;

    // What was injected.
    let expected_jitter = reference_jitter(&sent);
    let expected_delays: Vec<f64> =
        echoes.iter().map(|(_, at, echoed)| (echoed.duration_since(*at) - FRAME).as_secs_f64()).collect();
    let expected_delay = expected_delays.iter().sum::<f64>() / expected_delays.len() as f64;
    let last_agent_frame = carrier.events("media").last().expect("the agent spoke").0;
    let trailing = hang_up_at.duration_since(last_agent_frame + FRAME).as_secs_f64();
    // Before the caller's speech: the leading silence and the utterance's own 0.7 s.
    let leading = LEADING_SILENCE as f64 * 0.02 + 0.7;

    let report = get(app, &path).await;
    assert_eq!(report["status"], "measured", "{report}");
    assert_eq!(report["call_id"], carrier.id.as_str());
    let q = &report["quality"];
    let i = &q["inbound"];
    let measured_jitter = f(&i["jitter_seconds"]);
    let measured_delay = f(&q["playback"]["delay_mean_seconds"]);
    let c = &q["conversation"];
    eprintln!(
        "quality figures (expected vs measured): frames {frames} vs {}; lost {} vs {}; late {} vs {}; \
         duplicated {} vs {}; jitter {:.2} ms vs {:.2} ms; playback delay {:.1} ms (per mark {:?}) vs {:.1} ms; \
         dead air 2 vs {} periods, ~{:.2} s vs {:.2} s; barge-ins 0 vs {}; agent speech 2.0 s vs {}; \
         caller speech ~3.5 s vs {}; talk ratio {}; estimate {}",
        i["frames_expected"],
        LOST.len(),
        i["frames_lost"],
        SWAPPED.len(),
        i["frames_late"],
        DUPLICATED.len(),
        i["frames_duplicated"],
        expected_jitter * 1000.0,
        measured_jitter * 1000.0,
        expected_delay * 1000.0,
        expected_delays.iter().map(|d| (d * 1000.0).round()).collect::<Vec<_>>(),
        measured_delay * 1000.0,
        c["dead_air_count"],
        leading + trailing,
        f(&c["dead_air_seconds"]),
        c["barge_ins"],
        c["agent_speech_seconds"],
        c["caller_speech_seconds"],
        c["talk_ratio"],
        q["estimate"],
    );

    // Exact counts.
    assert_eq!(i["frames_expected"], frames, "{i}");
    assert_eq!(i["frames_lost"], LOST.len(), "{i}");
    assert_eq!(i["frames_late"], SWAPPED.len(), "{i}");
    assert_eq!(i["frames_duplicated"], DUPLICATED.len(), "{i}");
    assert_eq!(i["frames_received"], frames - LOST.len() as u64, "{i}");
    assert_eq!(i["frames_unknown"], 0, "{i}");
    // Jitter within ±30 % of the estimator run on the send times.
    assert!(expected_jitter > 0.005, "the injected jitter is substantial: {expected_jitter}");
    assert!(
        (measured_jitter - expected_jitter).abs() <= 0.3 * expected_jitter,
        "jitter {measured_jitter} vs {expected_jitter}"
    );
    // Playback delay within ±40 ms; both marks came back.
    assert_eq!(q["playback"]["marks_returned"], 2, "{q}");
    assert!((measured_delay - expected_delay).abs() <= 0.040, "playback delay {measured_delay} vs {expected_delay}");
    assert!(f(&q["playback"]["delay_max_seconds"]) >= measured_delay);
    // The conversation: no barge-in, two periods of dead air (before the caller spoke, after the
    // reply), 100 agent frames.
    assert_eq!(c["barge_ins"], 0, "{c}");
    assert_eq!(c["dead_air_count"], 2, "{c}");
    let dead_air = f(&c["dead_air_seconds"]);
    assert!((dead_air - (leading + trailing)).abs() <= 0.75, "dead air {dead_air} vs {}", leading + trailing);
    assert!((f(&c["agent_speech_seconds"]) - 2.0).abs() < 1e-9, "{c}");
    let caller_speech = f(&c["caller_speech_seconds"]);
    assert!((2.5..=4.5).contains(&caller_speech), "{c}");
    let ratio = caller_speech / (caller_speech + 2.0);
    assert!((f(&c["talk_ratio"]) - ratio).abs() < 1e-9, "{c}");
    // The MOS is the formula's, from the served figures.
    let e = &q["estimate"];
    let loss = (LOST.len() + SWAPPED.len()) as f64 / frames as f64 * 100.0;
    assert!((f(&e["loss_percent"]) - loss).abs() < 1e-9, "{e}");
    let d = measured_delay * 1000.0 + 2.0 * measured_jitter * 1000.0 + 40.0;
    assert!((f(&e["one_way_delay_ms"]) - d).abs() < 1e-6, "{e}");
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let r = 93.2 - id - 95.0 * loss / (loss + 25.1);
    assert!((f(&e["r_factor"]) - r).abs() < 1e-6, "{e}");
    let mos = (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5);
    assert!((f(&e["mos"]) - mos).abs() < 1e-9, "{e}");
    assert!(mos > 3.5 && mos < 4.5, "{mos}");

    // Another tenant does not see it; nor does anyone see a call that does not exist.
    let other = s.app.client.get(format!("{}{path}", app.base)).bearer_auth(ACME_KEY).send().await.unwrap();
    assert_eq!(other.status(), 404);
    let missing = format!("{}/v1/calls/{}/quality", app.base, uuid::Uuid::now_v7());
    assert_eq!(s.app.client.get(missing).bearer_auth(KEY).send().await.unwrap().status(), 404);

    // The metrics: per call at its end, per returned mark, frames by result.
    let m = metrics(app).await;
    assert_eq!(metric(&m, "voice_inbound_jitter_seconds_count"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "voice_call_mos_count"), Some(1.0));
    assert_eq!(metric(&m, "voice_playback_delay_seconds_count"), Some(2.0));
    assert!(metric(&m, "voice_inbound_jitter_seconds_bucket{le=\"0.5\"}").is_some(), "explicit buckets");
    assert_eq!(metric(&m, "voice_inbound_frames_total{result=\"lost\"}"), Some(LOST.len() as f64));
    assert_eq!(metric(&m, "voice_inbound_frames_total{result=\"late\"}"), Some(SWAPPED.len() as f64));
    assert_eq!(metric(&m, "voice_inbound_frames_total{result=\"duplicated\"}"), Some(DUPLICATED.len() as f64));
    assert_eq!(metric(&m, "voice_dead_air_total"), Some(2.0));
    assert!(!m.contains(&carrier.id), "no call id in a label");

    // The session's span carries the figures.
    if let Some(otlp) = otlp {
        let is_session = |s: &&telemetry::testing::ReceivedSpan| {
            s.name == "media_session" && s.attributes.iter().any(|(k, _)| k == "quality.mos")
        };
        let spans = otlp.wait_for(Duration::from_secs(30), |spans| spans.iter().any(|s| is_session(&s))).await;
        let span = spans.iter().find(is_session).unwrap_or_else(|| {
            let names: Vec<(&str, usize)> = spans.iter().map(|s| (s.name.as_str(), s.attributes.len())).collect();
            panic!("no media_session span with quality.mos: {names:?}")
        });
        let attr = |k: &str| -> f64 {
            let v = span.attributes.iter().find(|(key, _)| key == k).unwrap_or_else(|| panic!("{k} in {span:?}"));
            v.1.parse().unwrap_or_else(|_| panic!("{k} = {}", v.1))
        };
        assert!((attr("quality.mos") - f(&e["mos"])).abs() < 1e-9);
        assert!((attr("quality.jitter_ms") - measured_jitter * 1000.0).abs() < 1e-6);
        assert_eq!(attr("quality.lost"), LOST.len() as f64);
        assert_eq!(attr("quality.late"), SWAPPED.len() as f64);
        assert_eq!(attr("quality.duplicated"), DUPLICATED.len() as f64);
        assert!((attr("quality.playback_delay_ms") - measured_delay * 1000.0).abs() < 1e-6);
        assert_eq!(attr("quality.dead_air_count"), 2.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_faults_are_measured_on_sqlite() {
    let otlp = OtlpReceiver::start().await;
    injected_faults_are_measured(Backend::Sqlite, Some(&otlp)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_faults_are_measured_on_postgres() {
    injected_faults_are_measured(Backend::Postgres, None).await;
}

/// A barge-in is counted; the echo of a mark whose audio the barge-in cleared is not a delay.
#[tokio::test(flavor = "multi_thread")]
async fn a_barge_in_is_counted_and_cleared_marks_are_not() {
    // Each sentence is 5 s of speech: the caller talks over the first one.
    let Some(s) = live_stack(Backend::Sqlite, 5.0).await else { return };
    let app = &s.app;
    let mut carrier = Carrier::connect(app).await;
    let caller = caller_audio();
    ask_until_reply(&mut carrier, &caller, 25).await;
    talk_over(&mut carrier, &caller).await;
    // Echoes without numbers (counted as unknown): the cleared sentence's mark, then the next
    // reply's first one.
    let echo = |name: &str| json!({"event": "mark", "streamSid": "MZtest", "mark": {"name": name}});
    carrier.send(echo("turn-2-1")).await;
    carrier.wait_for_mark("turn-4-1", Duration::from_secs(20)).await;
    carrier.send(echo("turn-4-1")).await;
    carrier.speak(&silence(0.5)).await;
    carrier.hang_up().await;

    let report = get(app, &format!("/v1/calls/{}/quality", carrier.id)).await;
    assert_eq!(report["status"], "measured", "{report}");
    let q = &report["quality"];
    assert_eq!(q["conversation"]["barge_ins"], 1, "{q}");
    assert_eq!(q["playback"]["marks_returned"], 1, "only turn-4-1 was waited for: {q}");
    assert_eq!(q["inbound"]["frames_unknown"], 2, "{q}");
    assert_eq!(q["inbound"]["frames_lost"], 0, "{q}");
    // The agent's audio counts what was sent, not the cleared rest of the 5 s sentence.
    let agent = f(&q["conversation"]["agent_speech_seconds"]);
    let sent = carrier.events("media").len() as f64 * 0.02;
    assert!((agent - sent).abs() < 1e-9, "{agent} vs {sent}");
    assert_eq!(metric(&metrics(app).await, "voice_playback_delay_seconds_count"), Some(1.0));
}

on_both_databases!(a_call_without_media_has_no_quality);

/// Pending while the call waits for media; unavailable once it ended without any; 404 for
/// another tenant.
async fn a_call_without_media_has_no_quality(app: TestApp) {
    let call = app.create("websocket").await;
    let id = call["id"].as_str().unwrap();
    let path = format!("/v1/calls/{id}/quality");
    let (status, body) = app.get(&path, KEY).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("pending")), "{body}");
    assert_eq!(app.get(&path, ACME_KEY).await.0, 404);
    assert_eq!(app.end(id, "completed").await.0, 200);
    let (status, body) = app.get(&path, KEY).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("unavailable")), "{body}");
    assert!(body.get("quality").is_none(), "{body}");
    assert_eq!(app.get(&path, ACME_KEY).await.0, 404);
    assert_eq!(app.get("/v1/calls/not-a-uuid/quality", KEY).await.0, 404);
}
