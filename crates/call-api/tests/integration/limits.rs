//! The API's limits: header size and read time, JSON body size, body deadlines (JSON and
//! recording uploads), per-key rate limiting, the live-call cap, the WebSocket message limit and
//! CORS. Every refusal is the SPEC error body, changes nothing, and is counted.

use crate::common;
use std::time::Duration;

use crate::common::{ACME_KEY, Backend, KEY, TestApp, TestDb, assert_error, decode, new_call, stack};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

async fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let url = db.url().to_string();
    common::spawn_app_with(db, &url, extra).await
}

async fn limited(app: &TestApp, limit: &str) -> f64 {
    app.metrics().await.value("api_requests_limited_total", &[("limit", limit)])
}

/// Reads what the server sends until it closes the connection or `bound` passes.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_per_key_answers_429_with_retry_after_and_refills() {
    let app = app_with(&[("API_RATE_LIMIT_PER_SECOND", "1"), ("API_RATE_LIMIT_BURST", "3")]).await;
    for _ in 0..3 {
        app.create("twilio").await;
    }
    let r = app.client.post(app.url("/v1/calls")).bearer_auth(KEY).json(&new_call("twilio")).send().await.unwrap();
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let refused = decode(r).await;
    assert!(refused.1["error"]["message"].as_str().unwrap().contains("retry after"), "{}", refused.1);
    assert_error(refused, 429, "rate_limited");
    // Nothing was created by the refused request.
    assert_eq!(app.db.count_calls("1=1").await, 3);
    // Another key has its own budget.
    assert_eq!(app.post_json("/v1/calls", ACME_KEY, &new_call("twilio")).await.0, 201);
    // Unauthenticated requests are 401, not counted against anyone.
    let r = app.client.get(app.url("/v1/calls")).bearer_auth("k-wrong-wrong-wrong-wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(limited(&app, "rate").await, 1.0);
    // The bucket refills at the sustained rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.get("/v1/calls", KEY).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limiting_can_be_turned_off() {
    let app = app_with(&[("API_RATE_LIMIT_PER_SECOND", "0"), ("API_RATE_LIMIT_BURST", "1")]).await;
    for _ in 0..5 {
        assert_eq!(app.get("/v1/calls", KEY).await.0, 200);
    }
    assert_eq!(limited(&app, "rate").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_bodies_over_the_limit_are_413_and_change_nothing() {
    let app = app_with(&[("HTTP_JSON_MAX_BYTES", "1024")]).await;
    let mut body = new_call("twilio");
    body["metadata"] = json!({"note": "x".repeat(2000)});
    assert_error(app.post_json("/v1/calls", KEY, &body).await, 413, "payload_too_large");
    assert_eq!(app.db.count_calls("1=1").await, 0);
    assert_eq!(limited(&app, "body_size").await, 1.0);
    // Under the limit is fine.
    body["metadata"] = json!({"note": "x".repeat(500)});
    assert_eq!(app.post_json("/v1/calls", KEY, &body).await.0, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_are_431() {
    let app = app_with(&[("HTTP_HEADER_MAX_BYTES", "2048")]).await;
    let big = "v".repeat(3000);
    let r = app.client.get(app.url("/v1/calls")).bearer_auth(KEY).header("x-padding", &big).send().await.unwrap();
    assert_error(decode(r).await, 431, "headers_too_large");
    assert_eq!(limited(&app, "header_size").await, 1.0);
    // Far beyond: the server itself refuses before reading on.
    let huge = "v".repeat(20_000);
    let r = app.client.get(app.url("/health")).header("x-padding", &huge).send().await.unwrap();
    assert_eq!(r.status(), 431);
    // Normal requests still pass.
    assert_eq!(app.get("/v1/calls", KEY).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_its_headers_is_disconnected() {
    let app = app_with(&[("HTTP_HEADER_TIMEOUT_SECONDS", "0.5")]).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Generous bound: only a hang fails this.
    let seen = read_until_closed(&mut s, Duration::from_secs(15)).await;
    assert!(seen.is_some(), "the connection stayed open");
    // The service still serves others.
    assert_eq!(app.client.get(app.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_body_that_does_not_arrive_in_time_is_408_and_changes_nothing() {
    let app = app_with(&[("HTTP_BODY_TIMEOUT_SECONDS", "0.5")]).await;
    let body = new_call("twilio").to_string();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body.as_bytes()[..10]).await.unwrap();
    let seen = read_until_closed(&mut s, Duration::from_secs(15)).await.expect("answered and closed");
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    assert!(seen.contains("request_timeout"), "{seen}");
    assert_eq!(app.db.count_calls("1=1").await, 0);
    assert_eq!(limited(&app, "body_timeout").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_upload_that_pauses_too_long_is_408_and_releases_the_call() {
    let audio = stack::start_audio(None).await;
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let app = stack::start_api(db, &audio.url(), "http://127.0.0.1:9", &[("HTTP_BODY_TIMEOUT_SECONDS", "1")]).await;
    let id = app.create("twilio").await["id"].as_str().unwrap().to_string();
    let wav = stack::call_stereo();
    // A steady upload slower than the deadline in total is fine: only pauses count.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let head = wav[..4096].to_vec();
    let upload = {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/calls/{id}/recording"));
        tokio::spawn(async move {
            let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
            let r = client.post(url).bearer_auth(KEY).header("content-type", "audio/wav").body(body).send().await;
            decode(r.unwrap()).await
        })
    };
    tx.send(Ok(head)).await.unwrap();
    for chunk in wav[4096..4096 * 5].chunks(4096) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(Ok(chunk.to_vec())).await.unwrap();
    }
    // Then it stops sending (the sender stays open).
    let answer = tokio::time::timeout(Duration::from_secs(20), upload).await.expect("answered").unwrap();
    assert_error(answer, 408, "request_timeout");
    drop(tx);
    // The call is as before: no analysis, and a new upload may start at once.
    let (status, _) = app.get(&format!("/v1/calls/{id}/analysis"), KEY).await;
    assert_eq!(status, 404);
    let m = app.metrics().await;
    assert_eq!(m.value("api_requests_limited_total", &[("limit", "body_timeout")]), 1.0);
    let r = app
        .client
        .post(app.url(&format!("/v1/calls/{id}/recording")))
        .bearer_auth(KEY)
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 409, "the stalled upload still holds the call");
}

async fn create_with_token(app: &TestApp) -> (String, String) {
    let created = app.create("twilio").await;
    let url = created["media_url"].as_str().unwrap();
    let token = url.split("token=").nth(1).unwrap().to_string();
    (created["id"].as_str().unwrap().to_string(), token)
}

#[tokio::test(flavor = "multi_thread")]
async fn live_calls_over_the_cap_are_refused_with_503_until_a_slot_frees() {
    let app = app_with(&[("LIVE_MAX_CALLS", "1")]).await;
    let (first, t1) = create_with_token(&app).await;
    let (second, t2) = create_with_token(&app).await;
    let ws = |id: &str, t: &str| format!("ws://{}/v1/calls/{id}/media?token={t}", app.addr);
    let (held, _) = tokio_tungstenite::connect_async(ws(&first, &t1)).await.expect("first call admitted");
    let refused = tokio_tungstenite::connect_async(ws(&second, &t2)).await.unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers().get("retry-after").unwrap(), "5");
            let body: Value = serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "unavailable");
            assert!(body["error"]["message"].as_str().unwrap().contains("maximum of 1 live calls"), "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    let m = app.metrics().await;
    assert_eq!(m.value("api_requests_limited_total", &[("limit", "live_calls")]), 1.0);
    assert_eq!(m.value("voice_live_calls_max", &[]), 1.0);
    // The refused call is untouched.
    assert_eq!(app.get(&format!("/v1/calls/{second}"), KEY).await.1["status"], "queued");
    // The first connection goes away: its slot frees.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio_tungstenite::connect_async(ws(&second, &t2)).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "slot never freed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_websocket_message_ends_the_stream_and_is_counted() {
    let app = app_with(&[("MEDIA_WS_MAX_MESSAGE_BYTES", "1024")]).await;
    let (id, token) = create_with_token(&app).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/calls/{id}/media?token={token}", app.addr)).await.unwrap();
    // The first message is over the limit: the stream ends, the call stays as it was.
    ws.send(Message::text("x".repeat(2000))).await.unwrap();
    // The server stops reading and closes.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open");
    assert_eq!(app.get(&format!("/v1/calls/{id}"), KEY).await.1["status"], "queued");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while limited(&app, "ws_message").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_is_off_by_default_and_allows_only_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/calls"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let acao = |r: &reqwest::Response| r.headers().get("access-control-allow-origin").cloned();

    let off = app_with(&[]).await;
    let r = preflight(&off, "https://app.example.com").await.unwrap();
    assert_eq!(acao(&r), None);
    let r = off.client.get(off.url("/v1/calls")).bearer_auth(KEY).header("origin", "https://x.example").send().await;
    assert_eq!(acao(&r.unwrap()), None);

    let on = app_with(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com, http://localhost:3000")]).await;
    let r = preflight(&on, "https://app.example.com").await.unwrap();
    assert_eq!(acao(&r).unwrap(), "https://app.example.com");
    let methods = r.headers().get("access-control-allow-methods").unwrap().to_str().unwrap().to_string();
    assert!(methods.contains("POST"), "{methods}");
    let r = preflight(&on, "https://evil.example.com").await.unwrap();
    assert_eq!(acao(&r), None);
    let r = on.client.get(on.url("/v1/calls")).bearer_auth(KEY).header("origin", "http://localhost:3000").send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(acao(&r).unwrap(), "http://localhost:3000");
}

#[tokio::test]
async fn the_openapi_document_lists_the_limit_answers_on_every_api_operation() {
    let doc = serde_json::to_value(call_api::routes::openapi()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for status in ["408", "431"] {
                assert!(responses.contains_key(status), "{method} {path} lacks {status}");
            }
            assert_eq!(responses.contains_key("429"), !path.starts_with("/v1/twilio/"), "{method} {path}");
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
}

#[test]
fn each_bad_limit_variable_is_named() {
    for (name, value) in [
        ("HTTP_JSON_MAX_BYTES", "0"),
        ("HTTP_HEADER_MAX_BYTES", "100"),
        ("HTTP_HEADER_TIMEOUT_SECONDS", "0"),
        ("HTTP_BODY_TIMEOUT_SECONDS", "soon"),
        ("API_RATE_LIMIT_PER_SECOND", "-1"),
        ("API_RATE_LIMIT_BURST", "0"),
        ("LIVE_MAX_CALLS", "0"),
        ("MEDIA_WS_MAX_MESSAGE_BYTES", "10"),
        ("CORS_ALLOWED_ORIGINS", "https://ok.example,not an origin"),
        ("CORS_ALLOWED_ORIGINS", "https://app.example.com/path"),
    ] {
        let env = telemetry::Env::from_pairs([(name, value)]);
        let errors = call_api::Config::from_env(&env).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains(name), "{name}={value}: {text}");
    }
    let c = call_api::Config::from_env(&telemetry::Env::default()).unwrap();
    assert_eq!(c.limits.live_max_calls, 100);
    assert!(c.limits.cors_allowed_origins.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_call_whose_carrier_goes_quiet_ends_and_frees_its_slot() {
    let audio = stack::start_audio(None).await;
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let extra = [("MEDIA_IDLE_TIMEOUT_SECONDS", "1"), ("LIVE_MAX_CALLS", "1")];
    let app = stack::start_api(db, &audio.url(), "http://127.0.0.1:9", &extra).await;
    let (id, token) = create_with_token(&app).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/calls/{id}/media?token={token}", app.addr)).await.unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "start": {"streamSid": "MZ1", "callSid": "CA1",
        "accountSid": "AC1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {}},
        "streamSid": "MZ1"});
    ws.send(Message::text(start.to_string())).await.unwrap();
    // Then silence on the wire: the server closes with a policy code (bound generous).
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(frame) = m {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed");
    assert_eq!(code, Some(1008));
    let (_, call) = app.get(&format!("/v1/calls/{id}"), KEY).await;
    assert_eq!(call["status"], "ended", "{call}");
    assert_eq!(call["outcome"], "failed");
    assert_eq!(call["end_reason"], "media idle: nothing received for 1 s");
    // Its slot is free again.
    let (other, t2) = create_with_token(&app).await;
    let url = format!("ws://{}/v1/calls/{other}/media?token={t2}", app.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_ok());
}

/// Frames keep a live call open past the idle bound counted from its start; once they stop,
/// the call ends after the bound counted from the last one, not earlier.
#[tokio::test(flavor = "multi_thread")]
async fn media_keeps_a_live_call_open_and_the_idle_bound_counts_from_the_last_frame() {
    let audio = stack::start_audio(None).await;
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let extra = [("MEDIA_IDLE_TIMEOUT_SECONDS", "1")];
    let app = stack::start_api(db, &audio.url(), "http://127.0.0.1:9", &extra).await;
    let (id, token) = create_with_token(&app).await;
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/calls/{id}/media?token={token}", app.addr)).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let start = json!({"event": "start", "sequenceNumber": "1", "start": {"streamSid": "MZ1", "callSid": "CA1",
        "accountSid": "AC1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {}},
        "streamSid": "MZ1"});
    tx.send(Message::text(start.to_string())).await.unwrap();
    // Whatever the server sends, and when: a close must not come while frames flow.
    let closed = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Close(frame) = m {
                return Some((std::time::Instant::now(), frame.map(|f| u16::from(f.code))));
            }
        }
        None
    });
    let payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160])
    };
    // 2.5 s of frames, one every 100 ms: well past the 1 s bound from the start.
    for i in 0..25u64 {
        let seq = (i + 2).to_string();
        let media = json!({"event": "media", "sequenceNumber": seq, "streamSid": "MZ1",
            "media": {"track": "inbound", "chunk": seq, "timestamp": (i * 100).to_string(), "payload": payload}});
        tx.send(Message::text(media.to_string())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = std::time::Instant::now();
    assert!(!closed.is_finished(), "the call ended while frames were arriving");
    let (at, code) =
        tokio::time::timeout(Duration::from_secs(20), closed).await.expect("closed").unwrap().expect("a close");
    assert_eq!(code, Some(1008));
    assert!(at.duration_since(last) >= Duration::from_millis(800), "ended {:?} after the last frame", at - last);
    let (_, call) = app.get(&format!("/v1/calls/{id}"), KEY).await;
    assert_eq!(call["end_reason"], "media idle: nothing received for 1 s", "{call}");
}
