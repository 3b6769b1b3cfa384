//! A test carrier: a real WebSocket client speaking the Twilio Media Streams protocol to a
//! call's media URL, recording everything it receives; and small readers of the API.
#![allow(dead_code)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{KEY, TestApp, new_call};

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// A test carrier on one call: sends like Twilio, records everything it receives.
pub struct Carrier {
    pub id: String,
    pub sink: Sink,
    pub received: Arc<Mutex<Vec<(Instant, Value)>>>,
    pub reader: tokio::task::JoinHandle<Option<u16>>,
    seq: u64,
    media_ms: u64,
}

pub async fn create_call(app: &TestApp) -> (String, String) {
    let created: Value = app
        .client
        .post(format!("{}/v1/calls", app.base))
        .bearer_auth(KEY)
        .json(&new_call("websocket"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let token = created["media_url"].as_str().unwrap().split("token=").nth(1).unwrap().to_string();
    (id, token)
}

pub fn start_message(token: &str) -> Message {
    Message::text(
        json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZtest", "start": {
            "accountSid": "AC1", "callSid": "CA1", "streamSid": "MZtest", "tracks": ["inbound"],
            "customParameters": {"token": token},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        .to_string(),
    )
}

impl Carrier {
    /// Creates a call and connects to its media WebSocket (token as the `start` custom parameter).
    pub async fn connect(app: &TestApp) -> Self {
        let (id, token) = create_call(app).await;
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/v1/calls/{id}/media", app.addr)).await.expect("upgrade");
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()))
            .await
            .unwrap();
        sink.send(start_message(&token)).await.unwrap();
        let received: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
        let r = received.clone();
        let reader = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                match message {
                    Ok(Message::Text(t)) => {
                        r.lock().unwrap().push((Instant::now(), serde_json::from_str(&t).unwrap()));
                    }
                    Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
            None
        });
        Self { id, sink, received, reader, seq: 1, media_ms: 0 }
    }

    /// Streams `audio` (8 kHz μ-law) in 20 ms frames at real time.
    pub async fn speak(&mut self, audio: &[u8]) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for frame in audio.chunks(160) {
            tick.tick().await;
            self.seq += 1;
            let m = json!({"event": "media", "sequenceNumber": self.seq.to_string(), "streamSid": "MZtest",
                           "media": {"track": "inbound", "chunk": self.seq.to_string(), "timestamp": self.media_ms.to_string(),
                                     "payload": STANDARD.encode(frame)}});
            self.media_ms += 20;
            if self.sink.send(Message::text(m.to_string())).await.is_err() {
                return;
            }
        }
    }

    /// Sends `stop` and waits for the server to close the stream normally (1000).
    pub async fn hang_up(&mut self) {
        self.send_stop().await;
        let close =
            tokio::time::timeout(Duration::from_secs(10), &mut self.reader).await.expect("server closes").unwrap();
        assert_eq!(close, Some(1000));
    }

    /// The carrier's `stop` (the caller hung up), without waiting for the server to close.
    pub async fn send_stop(&mut self) {
        self.send(json!({"event": "stop", "sequenceNumber": "999", "streamSid": "MZtest", "stop": {"callSid": "CA1"}}))
            .await;
    }

    pub async fn send(&mut self, v: Value) {
        self.sink.send(Message::text(v.to_string())).await.unwrap();
    }

    pub fn events(&self, kind: &str) -> Vec<(Instant, Value)> {
        self.received.lock().unwrap().iter().filter(|(_, v)| v["event"] == kind).cloned().collect()
    }

    pub async fn wait_for_mark(&self, name: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.events("mark").iter().any(|(_, v)| v["mark"]["name"] == name) {
            assert!(Instant::now() < deadline, "no mark {name}: got {:?}", self.received.lock().unwrap().len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Silence (μ-law 0xFF) of `seconds`.
pub fn silence(seconds: f64) -> Vec<u8> {
    vec![0xFF; (8000.0 * seconds) as usize]
}

pub async fn get(app: &TestApp, path: &str) -> Value {
    app.client.get(format!("{}{path}", app.base)).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
}

pub async fn metrics(app: &TestApp) -> String {
    app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap()
}

pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok()))
}

pub async fn wait_until(mut ok: impl AsyncFnMut() -> bool, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
