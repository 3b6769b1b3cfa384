//! A loopback OpenAI-compatible server that always works: the second provider of the provider
//! drill's failover order (`OPENAI_BASE_URL` pointed at it, keyless). Streamed chat completions,
//! transcriptions (`verbose_json`), speech (24 kHz PCM16). Counts what it served.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::json;

type Hits = Arc<Mutex<BTreeMap<&'static str, usize>>>;

pub struct FakeOpenAi {
    pub addr: SocketAddr,
    hits: Hits,
    _task: tokio::task::JoinHandle<()>,
}

fn hit(hits: &Hits, what: &'static str) {
    *hits.lock().expect("hits").entry(what).or_insert(0) += 1;
}

/// The SSE body of a short streamed completion.
pub fn chat_events(text: &str) -> String {
    let mut out = String::new();
    for (i, word) in text.split(' ').enumerate() {
        let delta = if i == 0 { word.to_string() } else { format!(" {word}") };
        let chunk = json!({"id": "drill", "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": null}]});
        out.push_str(&format!("data: {chunk}\n\n"));
    }
    let done = json!({"id": "drill", "object": "chat.completion.chunk",
                      "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 12, "completion_tokens": text.split(' ').count()}});
    out.push_str(&format!("data: {done}\n\ndata: [DONE]\n\n"));
    out
}

async fn chat(State(hits): State<Hits>, _body: Bytes) -> Response {
    hit(&hits, "chat");
    let body = chat_events("Thanks for calling. I can help with that. Your order ships tomorrow.");
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

async fn transcribe(State(hits): State<Hits>, _body: Bytes) -> Response {
    hit(&hits, "transcribe");
    let text = "Hello, I would like to check on my order please.";
    axum::Json(json!({
        "text": text, "language": "en", "duration": 3.0,
        "segments": [{"start": 0.0, "end": 3.0, "text": text}],
        "words": text.split(' ').enumerate().map(|(i, w)| json!({"word": w, "start": i as f64 * 0.3, "end": i as f64 * 0.3 + 0.25})).collect::<Vec<_>>()
    }))
    .into_response()
}

/// 0.8 s of a 330 Hz tone, 24 kHz mono PCM16 little-endian (what OpenAI's `pcm` format is).
pub fn speech_pcm() -> Vec<u8> {
    let samples = 24_000 * 8 / 10;
    let mut out = Vec::with_capacity(samples * 2);
    for i in 0..samples {
        let v = (5_000.0 * (2.0 * std::f64::consts::PI * 330.0 * i as f64 / 24_000.0).sin()) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

async fn speech(State(hits): State<Hits>, _body: Bytes) -> Response {
    hit(&hits, "speech");
    ([(header::CONTENT_TYPE, "application/octet-stream")], speech_pcm()).into_response()
}

impl FakeOpenAi {
    pub async fn start() -> std::io::Result<Self> {
        let hits: Hits = Arc::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/audio/transcriptions", post(transcribe))
            .route("/v1/audio/speech", post(speech))
            .with_state(hits.clone());
        let (addr, task) = super::serve_loopback(app).await?;
        Ok(Self { addr, hits, _task: task })
    }

    /// For `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn hits(&self) -> BTreeMap<&'static str, usize> {
        self.hits.lock().expect("hits").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_ends_with_a_finish_reason_and_done() {
        let events = chat_events("one two three");
        let data: Vec<&str> = events.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.len(), 5);
        let first: serde_json::Value = serde_json::from_str(data[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["content"], "one");
        let second: serde_json::Value = serde_json::from_str(data[1]).unwrap();
        assert_eq!(second["choices"][0]["delta"]["content"], " two");
        let last: serde_json::Value = serde_json::from_str(data[3]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(data[4], "[DONE]");
        assert_eq!(speech_pcm().len(), 24_000 * 8 / 10 * 2);
    }
}
