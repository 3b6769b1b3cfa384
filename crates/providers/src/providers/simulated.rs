//! The `simulated` provider: synthetic answers with configurable latency, time to first byte,
//! token rate, error rate and stalls, for load tests and fault drills. It is used only when a
//! `*_PROVIDERS` variable names it.
//!
//! Draws come from a seeded generator advanced once per call, so a given seed and call
//! sequence always gives the same outcomes and the same text.

use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{CallCtx, Opened};
use crate::config::{LatencyDistribution, SimulatedConfig};
use crate::error::ProviderError;
use crate::providers::local::Local;
use crate::types::{
    AudioEncoding, ChatChunk, ChatRequest, FinishReason, OutputEncoding, Segment, SentimentResult, SynthesisRequest,
    Transcript, TranscriptionRequest, Usage, Word,
};
use audio_dsp::codec::mulaw_encode;

pub(crate) const MODEL: &str = "simulated-1";
const NAME: &str = "simulated";

const WORDS: &[&str] = &[
    "thank", "you", "for", "calling", "how", "can", "I", "help", "with", "your", "account", "today", "sure", "let",
    "me", "check", "that", "order", "for", "you", "one", "moment", "please",
];

/// Words per sentence of a simulated chat answer.
const SENTENCE_WORDS: usize = 8;

pub(crate) struct Simulated {
    config: SimulatedConfig,
    calls: AtomicU64,
    local: Local,
}

/// The fate of one call, drawn up front.
struct Plan {
    latency: Duration,
    fail: bool,
    stall: bool,
    rng: StdRng,
}

impl Simulated {
    pub(crate) fn new(config: SimulatedConfig) -> Self {
        Self { config, calls: AtomicU64::new(0), local: Local::new() }
    }

    fn plan(&self) -> Plan {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(self.config.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let latency = match self.config.latency {
            LatencyDistribution::Fixed(d) => d,
            LatencyDistribution::Uniform(lo, hi) => {
                if hi > lo {
                    rng.random_range(lo..=hi)
                } else {
                    lo
                }
            }
            LatencyDistribution::LogNormal { median, sigma } => {
                // Box–Muller: one standard normal draw.
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                median.mul_f64((sigma * z).exp().min(1_000.0))
            }
        };
        let fail = rng.random_bool(self.config.error_rate);
        let stall = rng.random_bool(self.config.stall_rate);
        Plan { latency, fail, stall, rng }
    }

    fn token_gap(&self) -> Duration {
        if self.config.tokens_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / self.config.tokens_per_second)
        } else {
            Duration::ZERO
        }
    }

    async fn wait(d: Duration) {
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// Latency, then either the fault, a hang, or go.
    async fn head(&self, plan: &Plan, extra: Duration) -> Result<(), ProviderError> {
        Self::wait(plan.latency + extra).await;
        if plan.fail {
            return Err(ProviderError::SimulatedFault);
        }
        Ok(())
    }

    pub(crate) async fn transcribe(
        &self,
        req: &TranscriptionRequest,
        ctx: &CallCtx,
    ) -> Result<Transcript, ProviderError> {
        let mut plan = self.plan();
        if plan.stall {
            // A transcription that never answers, cut like a silent HTTP server would be.
            return Err(hang(ctx, ctx.timeouts.transcribe).await);
        }
        self.head(&plan, Duration::ZERO).await?;
        ctx.mark_first_byte();
        let bytes_per_second = match req.encoding {
            AudioEncoding::Pcm16 => f64::from(req.sample_rate) * 2.0 * f64::from(req.channels),
            AudioEncoding::Mulaw | AudioEncoding::Alaw => f64::from(req.sample_rate) * f64::from(req.channels),
            _ => 16_000.0,
        };
        let duration = req.audio.len() as f64 / bytes_per_second.max(1.0);
        let count = ((duration * 2.5) as usize).clamp(1, 2_000);
        let offset = plan.rng.random_range(0..WORDS.len());
        let step = duration / count as f64;
        let words: Vec<Word> = (0..count)
            .map(|i| Word {
                word: WORDS[(offset + i) % WORDS.len()].to_owned(),
                start: i as f64 * step,
                end: (i as f64 + 0.8) * step,
                confidence: Some(0.9),
                speaker: None,
                channel: None,
            })
            .collect();
        let text = words.iter().map(|w| w.word.as_str()).collect::<Vec<_>>().join(" ");
        Ok(Transcript {
            segments: vec![Segment { start: 0.0, end: duration, text: text.clone(), speaker: None, channel: None }],
            text,
            language: req.language.clone().or_else(|| Some("en".to_owned())),
            words,
            duration_seconds: Some(duration),
            provider: NAME.to_owned(),
            model: MODEL.to_owned(),
        })
    }

    pub(crate) async fn chat(&self, req: &ChatRequest, _ctx: &CallCtx) -> Result<Opened<ChatChunk>, ProviderError> {
        let mut plan = self.plan();
        self.head(&plan, self.config.time_to_first_byte).await?;
        let prompt_tokens: u64 = req.messages.iter().map(|m| m.content.split_whitespace().count() as u64 + 4).sum();
        let count = req.max_tokens.unwrap_or(24).clamp(1, 4_096) as usize;
        let offset = plan.rng.random_range(0..WORDS.len());
        let stall_at = plan.stall.then_some(count / 2);
        let gap = self.token_gap();
        let stream = futures_util::stream::iter(0..=count).then(move |i| async move {
            if stall_at == Some(i) {
                pending::<()>().await;
            }
            if i == count {
                return Ok(ChatChunk {
                    delta: String::new(),
                    finish_reason: Some(FinishReason::Length),
                    usage: Some(Usage {
                        prompt_tokens,
                        completion_tokens: count as u64,
                        total_tokens: prompt_tokens + count as u64,
                    }),
                    model: None,
                });
            }
            if i > 0 {
                Self::wait(gap).await;
            }
            let word = WORDS[(offset + i) % WORDS.len()];
            // Sentences of 8 words, the last one ended too: a voice agent speaks each sentence
            // as it completes, so an answer without any would be held to its end.
            let stop = if (i + 1) % SENTENCE_WORDS == 0 || i + 1 == count { "." } else { "" };
            let delta = if i == 0 { format!("{word}{stop}") } else { format!(" {word}{stop}") };
            Ok(ChatChunk { delta, ..ChatChunk::default() })
        });
        Ok(Opened { model: MODEL.to_owned(), stream: Box::pin(stream) })
    }

    pub(crate) async fn synthesize(
        &self,
        req: &SynthesisRequest,
        _ctx: &CallCtx,
    ) -> Result<Opened<Bytes>, ProviderError> {
        let plan = self.plan();
        self.head(&plan, self.config.time_to_first_byte).await?;
        // 60 ms of a 440 Hz tone per character, in 20 ms frames.
        let frames = (req.text.chars().count() * 3).clamp(1, 30_000);
        let frame_samples = (req.sample_rate / 50).max(1) as usize;
        let stall_at = plan.stall.then_some(frames / 2);
        let gap = self.token_gap();
        let (encoding, rate) = (req.encoding, req.sample_rate);
        // One period of the tone (440 Hz at `rate` repeats every rate / gcd(rate, 440) samples),
        // encoded once per request: a frame is a copy out of it, not an encode per sample.
        let tone = std::sync::Arc::<[u8]>::from(encoded_tone(rate, encoding));
        let frame_bytes = frame_samples * encoding.bytes_per_sample();
        let stream = futures_util::stream::iter(0..frames).then(move |i| {
            let tone = tone.clone();
            async move {
                if stall_at == Some(i) {
                    pending::<()>().await;
                }
                if i > 0 {
                    Self::wait(gap).await;
                }
                let out = tone_frame(&tone, i, frame_bytes);
                Ok(out.freeze())
            }
        });
        Ok(Opened { model: MODEL.to_owned(), stream: Box::pin(stream) })
    }

    pub(crate) async fn sentiment(&self, text: &str, ctx: &CallCtx) -> Result<SentimentResult, ProviderError> {
        let plan = self.plan();
        if plan.stall {
            return Err(hang(ctx, ctx.timeouts.first_byte).await);
        }
        self.head(&plan, Duration::ZERO).await?;
        let mut result = self.local.analyze(text);
        result.provider = NAME.to_owned();
        Ok(result)
    }
}

/// One period of the simulated voice, a 440 Hz tone at `rate`, in `encoding`.
fn encoded_tone(rate: u32, encoding: OutputEncoding) -> Vec<u8> {
    let period = (rate / gcd(rate, 440)).max(1) as usize;
    let mut out = Vec::with_capacity(period * encoding.bytes_per_sample());
    for n in 0..period {
        let v = (6_000.0 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / f64::from(rate)).sin()) as i16;
        match encoding {
            OutputEncoding::Pcm16 => out.put_i16_le(v),
            OutputEncoding::Mulaw => out.put_u8(mulaw_encode(v)),
        }
    }
    out
}

/// Frame `i` of `frame_bytes` bytes of the repeating `tone`.
fn tone_frame(tone: &[u8], i: usize, frame_bytes: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(frame_bytes);
    let mut at = (i * frame_bytes) % tone.len();
    while out.len() < frame_bytes {
        let n = (frame_bytes - out.len()).min(tone.len() - at);
        out.extend_from_slice(&tone[at..at + n]);
        at = 0;
    }
    out
}

/// The greatest common divisor of `a` and `b`, at least 1.
fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

/// Wait as a client would for an answer that never comes: until the first-byte timeout or
/// the deadline, whichever is first.
async fn hang(ctx: &CallCtx, first_byte: Duration) -> ProviderError {
    let limit = (tokio::time::Instant::now() + first_byte).min(ctx.deadline);
    tokio::time::sleep_until(limit).await;
    if tokio::time::Instant::now() >= ctx.deadline {
        ProviderError::DeadlineExceeded
    } else {
        ProviderError::FirstByteTimeout { provider: NAME, timeout: first_byte }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tone_repeats_every_period_samples() {
        assert_eq!(gcd(8000, 440), 40);
        assert_eq!(8000 / gcd(8000, 440), 200);
        assert_eq!(gcd(0, 440), 440);
        assert_eq!(gcd(7, 0), 7);
        // The sine at n and at n + period agree: the table is the whole signal.
        for rate in [8000u32, 16_000, 24_000, 44_100] {
            let period = rate / gcd(rate, 440);
            for n in [0u32, 3, 17, 199] {
                let at = |n: u32| (2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / f64::from(rate)).sin();
                assert!((at(n) - at(n + period)).abs() < 1e-9, "{rate} {n}");
            }
        }
    }

    #[test]
    fn frames_are_the_tone_sample_by_sample_across_period_boundaries() {
        for (encoding, rate) in
            [(OutputEncoding::Mulaw, 8000u32), (OutputEncoding::Pcm16, 16_000), (OutputEncoding::Pcm16, 44_100)]
        {
            let tone = encoded_tone(rate, encoding);
            let frame_bytes = (rate / 50) as usize * encoding.bytes_per_sample();
            // 33 frames: several periods, frames starting anywhere in one.
            let got: Vec<u8> = (0..33).flat_map(|i| tone_frame(&tone, i, frame_bytes)).collect();
            let mut want = Vec::new();
            for n in 0..33 * (rate / 50) as usize {
                let v = (6_000.0 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / f64::from(rate)).sin()) as i16;
                match encoding {
                    OutputEncoding::Pcm16 => want.put_i16_le(v),
                    OutputEncoding::Mulaw => want.put_u8(mulaw_encode(v)),
                }
            }
            assert_eq!(got.len(), want.len(), "{encoding:?} {rate}");
            // The sine at n + period equals the one at n to 1e-9, which may round a value the
            // other way now and then; nothing else may differ.
            let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert!(off * 1000 <= got.len(), "{encoding:?} {rate}: {off} bytes differ");
        }
    }
}
