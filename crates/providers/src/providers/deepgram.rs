//! Deepgram: pre-recorded transcription (`POST {base}/v1/listen`) and Aura speech
//! (`POST {base}/v1/speak`), authenticated with `Authorization: Token <key>`.

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{CallCtx, Opened};
use crate::audio::Transcoder;
use crate::config::DeepgramConfig;
use crate::error::ProviderError;
use crate::http;
use crate::types::{AudioEncoding, OutputEncoding, Segment, SynthesisRequest, Transcript, TranscriptionRequest, Word};

const NAME: &str = "deepgram";
const TRANSCRIPT_LIMIT: usize = 32 * 1024 * 1024;

pub(crate) struct Deepgram {
    pub(crate) config: DeepgramConfig,
    client: reqwest::Client,
}

impl Deepgram {
    pub(crate) fn new(config: DeepgramConfig, client: reqwest::Client) -> Self {
        Self { config, client }
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> Result<reqwest::Url, ProviderError> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.config.base_url))
            .map_err(|e| ProviderError::Internal(format!("bad deepgram url: {e}")))?;
        url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        Ok(url)
    }

    fn post(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let builder = self.client.post(url);
        match &self.config.api_key {
            Some(key) => builder.header(reqwest::header::AUTHORIZATION, format!("Token {}", key.expose())),
            None => builder,
        }
    }

    fn secrets(&self) -> Vec<&str> {
        self.config.api_key.iter().map(|k| k.expose()).collect()
    }

    pub(crate) async fn transcribe(
        &self,
        req: &TranscriptionRequest,
        ctx: &CallCtx,
    ) -> Result<Transcript, ProviderError> {
        let model = ctx.model.clone();
        let mut query = vec![
            ("model", model.clone()),
            ("punctuate", "true".to_owned()),
            ("smart_format", "true".to_owned()),
            ("utterances", "true".to_owned()),
        ];
        match &req.language {
            Some(lang) => query.push(("language", lang.clone())),
            None => query.push(("detect_language", "true".to_owned())),
        }
        if req.diarize {
            query.push(("diarize", "true".to_owned()));
        }
        if req.per_channel {
            query.push(("multichannel", "true".to_owned()));
        }
        let raw_encoding = match req.encoding {
            AudioEncoding::Pcm16 => Some("linear16"),
            AudioEncoding::Mulaw => Some("mulaw"),
            AudioEncoding::Alaw => Some("alaw"),
            _ => None,
        };
        if let Some(encoding) = raw_encoding {
            // Raw audio has no header: Deepgram must be told what it is.
            query.push(("encoding", encoding.to_owned()));
            query.push(("sample_rate", req.sample_rate.to_string()));
            query.push(("channels", req.channels.to_string()));
        }
        let content_type = if raw_encoding.is_some() { "application/octet-stream" } else { req.encoding.mime() };
        let url = self.url("/v1/listen", &query)?;
        http::record_target(ctx, "POST", &url);
        let request = self.post(url).header(reqwest::header::CONTENT_TYPE, content_type).body(req.audio.clone());
        let response = http::send(ctx, request, ctx.timeouts.transcribe, &self.secrets()).await?;
        ctx.mark_first_byte();
        let raw = http::read_limited(ctx, response, TRANSCRIPT_LIMIT, ctx.timeouts.idle).await?;
        let parsed: ListenBody = serde_json::from_slice(&raw)
            .map_err(|e| ProviderError::Malformed { provider: NAME, detail: format!("invalid json: {e}") })?;
        Ok(to_transcript(parsed, req, model))
    }

    pub(crate) async fn synthesize(
        &self,
        req: &SynthesisRequest,
        ctx: &CallCtx,
    ) -> Result<Opened<Bytes>, ProviderError> {
        // For Deepgram the voice is the model (`aura-2-thalia-en`): see `Backend::model_for`.
        let model = ctx.model.clone();
        // Ask for the caller's format when Deepgram offers it, else 24 kHz PCM and convert here.
        let native = match req.encoding {
            OutputEncoding::Pcm16 => [8_000, 16_000, 24_000, 32_000, 48_000].contains(&req.sample_rate),
            OutputEncoding::Mulaw => [8_000, 16_000].contains(&req.sample_rate),
        };
        let (encoding, rate) = if native { (req.encoding, req.sample_rate) } else { (OutputEncoding::Pcm16, 24_000) };
        let query = [
            ("model", model.clone()),
            ("encoding", if encoding == OutputEncoding::Mulaw { "mulaw" } else { "linear16" }.to_owned()),
            ("sample_rate", rate.to_string()),
            ("container", "none".to_owned()),
        ];
        let url = self.url("/v1/speak", &query)?;
        http::record_target(ctx, "POST", &url);
        let request = self.post(url).json(&json!({ "text": req.text }));
        let response = http::send(ctx, request, ctx.timeouts.first_byte, &self.secrets()).await?;
        let mut transcoder = if native {
            // Same rate and encoding: only keeps chunks on whole samples.
            if encoding == OutputEncoding::Pcm16 {
                Some(Transcoder::new(rate, rate, OutputEncoding::Pcm16))
            } else {
                None
            }
        } else {
            Some(Transcoder::new(rate, req.sample_rate, req.encoding))
        };
        let stream = response
            .bytes_stream()
            .map(move |item| match item {
                Ok(chunk) => Ok(match transcoder.as_mut() {
                    Some(t) => t.push(&chunk),
                    None => chunk,
                }),
                Err(e) => Err(http::transport_error(NAME, &e, true)),
            })
            .filter(|item| std::future::ready(!matches!(item, Ok(b) if b.is_empty())));
        Ok(Opened { model, stream: Box::pin(stream) })
    }
}

#[derive(Deserialize)]
struct ListenBody {
    metadata: Option<Metadata>,
    results: Results,
}

#[derive(Deserialize)]
struct Metadata {
    duration: Option<f64>,
}

#[derive(Deserialize)]
struct Results {
    #[serde(default)]
    channels: Vec<Channel>,
    #[serde(default)]
    utterances: Vec<Utterance>,
}

#[derive(Deserialize)]
struct Channel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
    detected_language: Option<String>,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    words: Vec<DgWord>,
}

#[derive(Deserialize)]
struct DgWord {
    word: String,
    punctuated_word: Option<String>,
    start: f64,
    end: f64,
    confidence: Option<f32>,
    speaker: Option<u32>,
}

#[derive(Deserialize)]
struct Utterance {
    start: f64,
    end: f64,
    #[serde(default)]
    transcript: String,
    speaker: Option<u32>,
    channel: Option<u32>,
}

fn to_transcript(body: ListenBody, req: &TranscriptionRequest, model: String) -> Transcript {
    let multi = req.per_channel && body.results.channels.len() > 1;
    let mut texts = Vec::new();
    let mut words = Vec::new();
    let mut language = None;
    for (index, channel) in body.results.channels.into_iter().enumerate() {
        language = language.or(channel.detected_language);
        let Some(best) = channel.alternatives.into_iter().next() else { continue };
        texts.push(best.transcript);
        let channel_index = multi.then_some(index as u32);
        words.extend(best.words.into_iter().map(|w| Word {
            word: w.punctuated_word.unwrap_or(w.word),
            start: w.start,
            end: w.end,
            confidence: w.confidence,
            speaker: w.speaker,
            channel: channel_index,
        }));
    }
    let segments = body
        .results
        .utterances
        .into_iter()
        .map(|u| Segment {
            start: u.start,
            end: u.end,
            text: u.transcript,
            speaker: u.speaker,
            channel: if multi { u.channel } else { None },
        })
        .collect();
    Transcript {
        text: texts.join("\n").trim().to_owned(),
        language: language.or_else(|| req.language.clone()),
        segments,
        words,
        duration_seconds: body.metadata.and_then(|m| m.duration),
        provider: NAME.to_owned(),
        model,
    }
}
