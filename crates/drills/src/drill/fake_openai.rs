//! A loopback OpenAI-compatible server that always works: the second provider of the provider
//! drill's failover order (`OPENAI_BASE_URL` pointed at it, keyless). Streamed chat completions,
//! transcriptions (`verbose_json`), speech (24 kHz PCM16). Counts what it served.

use std::collections::BTreeMap;

use serde_json::json;
use telemetry::testing::{FakeHttp, FakeReply};

/// The paths it answers, and the name each is counted under.
const ROUTES: [(&str, &str); 3] =
    [("/v1/chat/completions", "chat"), ("/v1/audio/transcriptions", "transcribe"), ("/v1/audio/speech", "speech")];

/// The tests' one fake HTTP server (`telemetry::testing::FakeHttp`), scripted as OpenAI.
pub struct FakeOpenAi(FakeHttp);

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

fn transcription() -> serde_json::Value {
    let text = "Hello, I would like to check on my order please.";
    json!({
        "text": text, "language": "en", "duration": 3.0,
        "segments": [{"start": 0.0, "end": 3.0, "text": text}],
        "words": text.split(' ').enumerate().map(|(i, w)| json!({"word": w, "start": i as f64 * 0.3, "end": i as f64 * 0.3 + 0.25})).collect::<Vec<_>>()
    })
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

impl FakeOpenAi {
    pub async fn start() -> std::io::Result<Self> {
        let fake = FakeHttp::scripted().await;
        let chat = chat_events("Thanks for calling. I can help with that. Your order ships tomorrow.");
        fake.on(ROUTES[0].0, vec![FakeReply::raw(200, "text/event-stream", chat.into_bytes())]);
        fake.on(ROUTES[1].0, vec![FakeReply::json(200, transcription())]);
        fake.on(ROUTES[2].0, vec![FakeReply::raw(200, "application/octet-stream", speech_pcm())]);
        Ok(Self(fake))
    }

    /// For `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        self.0.base_url()
    }

    /// Requests served so far, by kind (`chat`, `transcribe`, `speech`).
    pub fn hits(&self) -> BTreeMap<&'static str, usize> {
        ROUTES.iter().map(|(path, name)| (*name, self.0.count(path))).filter(|(_, n)| *n > 0).collect()
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
