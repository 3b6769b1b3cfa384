//! The adversarial probe's findings, each as it was reproduced from outside: tokenless media
//! sockets squatting live-call slots, a signed Twilio form re-split into another CallSid, the
//! bearer scheme's case, and too-short E.164 numbers.

use crate::common;
use std::time::{Duration, Instant};

use crate::common::{ACME_KEY, Backend, KEY, TestApp, TestDb, assert_error, new_call, spawn_app_with, stack};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::{SinkExt as _, StreamExt as _};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn sign(path: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = format!("https://calls.example.test{path}");
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = <Hmac<sha1::Sha1>>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

fn encode(params: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.finish()
}

async fn voice(app: &common::TestApp, params: &[(&str, &str)], signature: &str) -> (u16, String) {
    let r = app
        .client
        .post(format!("{}/v1/twilio/voice", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(encode(params))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn tokenless_squatters_take_no_live_call_slot() {
    let audio = stack::start_audio(None).await;
    let audio_url = audio.url();
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let url = db.url().to_string();
    let env = [
        ("TWILIO_ACCOUNT_SID", SID),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("LIVE_MAX_CALLS", "3"),
        ("MEDIA_UNAUTHENTICATED_PER_IP", "8"),
        ("AUDIO_PROCESSOR_URL", audio_url.as_str()),
    ];
    let app = spawn_app_with(db, &url, &env).await;
    // Ten sockets to random call ids, no token, saying nothing.
    let mut squatters = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let target = format!("ws://{}/v1/calls/{}/media", app.addr, uuid::Uuid::new_v4());
        match tokio_tungstenite::connect_async(target).await {
            Ok((ws, _)) => squatters.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 429, "one address holds at most a few unproven sockets");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((squatters.len(), refused), (8, 2));
    // The Twilio voice webhook still connects a call…
    let params = [("AccountSid", SID), ("CallSid", "CA00000000000000000000000000000abc"), ("From", "+14155550100")];
    let (status, twiml) = voice(&app, &params, &sign("/v1/twilio/voice", &params)).await;
    assert_eq!(status, 200);
    assert!(twiml.contains("<Connect><Stream"), "not busy: {twiml}");
    // …and a real call's media (token in the URL) is admitted and starts.
    let (_, created) = app.post_json("/v1/calls", KEY, &new_call("websocket")).await;
    let media_url =
        created["media_url"].as_str().unwrap().replace("wss://calls.example.test", &format!("ws://{}", app.addr));
    let (mut ws, _) = tokio_tungstenite::connect_async(media_url).await.expect("a real call is admitted");
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {"streamSid": "MZ1",
        "callSid": "CA1", "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}});
    ws.send(Message::text(start.to_string())).await.unwrap();
    let id = created["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.get(&format!("/v1/calls/{id}"), KEY).await.1["status"] != "in_progress" {
        assert!(Instant::now() < deadline, "the real call never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The squatters are cut after their short window (5 s), and counted.
    let started = Instant::now();
    for mut s in squatters {
        let close = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = s.next().await {
                if let Ok(Message::Close(frame)) = m {
                    return frame.map(|f| u16::from(f.code));
                }
            }
            None
        })
        .await
        .expect("closed");
        assert_eq!(close, Some(1008));
    }
    assert!(started.elapsed() < Duration::from_secs(8), "held {:?}", started.elapsed());
    let m = app.metrics().await;
    assert_eq!(m.value("api_requests_limited_total", &[("limit", "media_unauthenticated")]), 10.0);
    assert_eq!(m.value("api_requests_limited_total", &[("limit", "live_calls")]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_voice_form_cannot_be_re_split_into_another_call_sid() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let url = db.url().to_string();
    let app = spawn_app_with(db, &url, &[("TWILIO_ACCOUNT_SID", SID), ("TWILIO_AUTH_TOKEN", TOKEN)]).await;
    let sid = "CA0123456789abcdef0123456789abcdef";
    let params = [("CallSid", sid), ("CallStatus", "ringing")];
    let signature = sign("/v1/twilio/voice", &params);
    assert_eq!(voice(&app, &params, &signature).await.0, 200);
    // The same signed bytes, split differently: name+value pairs concatenate to the same text.
    let resplit_sid = format!("{sid}CallStatusringing");
    let resplit = [("CallSid", resplit_sid.as_str())];
    assert_eq!(sign("/v1/twilio/voice", &resplit), signature, "the probe's forgery verifies");
    let (status, body) = voice(&app, &resplit, &signature).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app.db.count_calls("1 = 1").await, 1, "no second call");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive_and_numbers_need_8_digits() {
    let Some(app) = common::spawn_app(Backend::Sqlite).await else { return };
    let r = app
        .client
        .get(format!("{}/v1/calls", app.base))
        .header("authorization", format!("BEARER {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = new_call("sip");
    body["from"] = json!("+12");
    assert_error(app.post_json("/v1/calls", KEY, &body).await, 422, "validation_failed");
}

on_both_databases!(nul_characters_and_far_away_times_are_refused_alike);

/// PostgreSQL answered 500 (and logged an ERROR) where SQLite stored the value.
async fn nul_characters_and_far_away_times_are_refused_alike(app: TestApp) {
    let mut body = new_call("sip");
    body["metadata"] = json!({"note": "a\u{0}b"});
    assert_error(app.post_json("/v1/calls", KEY, &body).await, 422, "validation_failed");
    body["metadata"] = json!({"a\u{0}": 1});
    assert_error(app.post_json("/v1/calls", KEY, &body).await, 422, "validation_failed");
    assert_eq!(app.db.count_calls("1 = 1").await, 0, "nothing stored");
    for query in ["created_after=-262143-01-01T00:00:00Z", "created_before=%2B262142-12-31T23:59:59Z"] {
        assert_error(app.get(&format!("/v1/calls?{query}"), KEY).await, 422, "validation_failed");
    }
    // A cursor carrying an instant far outside the years 1–9999.
    let cursor = STANDARD.encode("v1:-8210298412800000000:00000000000000000000000000000000");
    let cursor = cursor.trim_end_matches('=').replace('+', "-").replace('/', "_");
    assert_error(app.get(&format!("/v1/calls?cursor={cursor}"), KEY).await, 400, "bad_request");
    // Ordinary values still work.
    assert_eq!(app.get("/v1/calls?created_after=2020-01-01T00:00:00Z", KEY).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_is_bound_to_its_body() {
    let audio = stack::start_audio(None).await;
    let gateway = stack::start_gateway(None, &[]).await;
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &[]).await;
    let (_, call) = app.post_json("/v1/calls", KEY, &new_call("sip")).await;
    let id = call["id"].as_str().unwrap();
    let wav = stack::call_stereo();
    let upload = |body: Vec<u8>| {
        app.client
            .post(format!("{}/v1/calls/{id}/recording", app.base))
            .bearer_auth(KEY)
            .header("content-type", "audio/wav")
            .header("idempotency-key", "upload-1")
            .body(body)
            .send()
    };
    let first = upload(wav.clone()).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    // The same key and body: answered from storage.
    let again = upload(wav.clone()).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    // The same key with another body (even one that is not audio): refused, nothing changes.
    for other in [wav[..wav.len() / 2].to_vec(), b"not audio".to_vec()] {
        let r = upload(other).await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_error((status, body), 422, "idempotency_key_reused");
    }
    let (_, stored) = app.get(&format!("/v1/calls/{id}/analysis"), KEY).await;
    assert_eq!(stored["completed_at"], first["completed_at"], "the stored analysis is the first one");
}

/// A chunked upload that sends 2 bytes of a WAV file every 300 ms and never finishes.
fn trickle(app: &TestApp, key: &str, id: &str) -> tokio::task::JoinHandle<()> {
    let (addr, key, id) = (app.addr, key.to_string(), id.to_string());
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/calls/{id}/recording HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: audio/wav\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let wav = stack::call_stereo();
        for pair in wav.chunks(2) {
            let chunk = format!("{:x}\r\n", pair.len());
            if s.write_all(chunk.as_bytes()).await.is_err()
                || s.write_all(pair).await.is_err()
                || s.write_all(b"\r\n").await.is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Creates a call with `key` and uploads the stereo fixture as its recording, at once.
async fn upload_new_call(app: &TestApp, key: &str) -> reqwest::Response {
    let (_, call) = app.post_json("/v1/calls", key, &new_call("sip")).await;
    let id = call["id"].as_str().unwrap();
    app.client
        .post(format!("{}/v1/calls/{id}/recording", app.base))
        .bearer_auth(key)
        .header("content-type", "audio/wav")
        .body(stack::call_stereo())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_trickling_uploads_leave_anothers_recording_alone() {
    // Two analyses at once in audio-processor: what two slow uploads took before.
    let audio = stack::start_audio_with(None, &[("AUDIO_MAX_CONCURRENT_ANALYSES", "2")]).await;
    let gateway = stack::start_gateway(None, &[]).await;
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &[]).await;
    let mut trickles = Vec::new();
    for _ in 0..2 {
        let (_, call) = app.post_json("/v1/calls", ACME_KEY, &new_call("sip")).await;
        trickles.push(trickle(&app, ACME_KEY, call["id"].as_str().unwrap()));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = upload_new_call(&app, KEY).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(trickles.iter().all(|t| !t.is_finished()), "tenant A is still sending");
    // A tenant may have only so many uploads in progress on a replica.
    let mut more = Vec::new();
    for _ in 0..2 {
        let (_, call) = app.post_json("/v1/calls", ACME_KEY, &new_call("sip")).await;
        more.push(trickle(&app, ACME_KEY, call["id"].as_str().unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = upload_new_call(&app, ACME_KEY).await;
    assert_eq!(r.status(), 429, "a fifth upload of one tenant waits its turn");
    assert!(r.headers().get("retry-after").is_some());
    for t in trickles.into_iter().chain(more) {
        t.abort();
    }
}

/// Finding 4: memory. Uploads beyond `RECORDING_MAX_CONCURRENT_ANALYSES` wait on disk for a
/// place (each analysis holds its speech audio in memory until its transcription ends), and
/// none is lost: with one place, two uploads both succeed, one analysis after the other.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_beyond_the_analysis_places_wait_their_turn() {
    let audio = stack::start_audio_with(None, &[("AUDIO_MAX_CONCURRENT_ANALYSES", "2")]).await;
    // Each transcription request takes 1.5 s: an analysis holds its place at least that long.
    let gateway =
        stack::start_gateway(None, &[("STT_PROVIDERS", "simulated"), ("SIMULATED_LATENCY", "fixed:1500")]).await;
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &[("RECORDING_MAX_CONCURRENT_ANALYSES", "1")]).await;
    let started = Instant::now();
    let mut uploads = Vec::new();
    for _ in 0..2 {
        let (_, call) = app.post_json("/v1/calls", KEY, &new_call("sip")).await;
        let id = call["id"].as_str().unwrap().to_string();
        let (client, base) = (app.client.clone(), app.base.clone());
        uploads.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/v1/calls/{id}/recording"))
                .bearer_auth(KEY)
                .header("content-type", "audio/wav")
                .body(stack::call_stereo())
                .send()
                .await
                .unwrap();
            let status = r.status();
            let doc: serde_json::Value = r.json().await.unwrap();
            (status, doc, started.elapsed().as_secs_f64())
        }));
    }
    let mut done = Vec::new();
    for u in uploads {
        done.push(u.await.unwrap());
    }
    done.sort_by(|a, b| a.2.total_cmp(&b.2));
    for (status, doc, _) in &done {
        assert_eq!(*status, 200, "{doc}");
        assert_eq!(doc["transcript"]["status"], "done", "{doc}");
    }
    // The later answer came no sooner than both analyses run one after the other.
    let (first, second) = (
        done[0].1["timings"]["total_seconds"].as_f64().unwrap(),
        done[1].1["timings"]["total_seconds"].as_f64().unwrap(),
    );
    assert!(first >= 1.5 && second >= 1.5, "each analysis transcribed for 1.5 s: {first} {second}");
    assert!(
        done[1].2 >= first + second,
        "the second analysis waited for the first: answered at {:.2} s, analyses took {first:.2} + {second:.2} s",
        done[1].2
    );
    let metrics = app.metrics().await;
    assert_eq!(metrics.find("api_requests_limited_total", &[("limit", "analyses")]), Some(0.0), "none refused");
}
