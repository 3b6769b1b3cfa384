//! Typed configuration, read once from the environment with the services' shared
//! [`telemetry::Reader`]: [`ProvidersConfig::read`] records every bad variable, each error
//! naming it. Durations are `*_SECONDS`; the older `*_MS` names are still accepted for one
//! release, with a warning. The README of this crate has the table of variables; keep the two
//! in step.

use std::collections::HashSet;
use std::time::Duration;

use crate::types::{Capability, ProviderKind};

pub use telemetry::{ConfigErrors, Env, Reader, Secret};

/// Which `max_tokens` field the OpenAI-compatible server expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensParam {
    /// `max_tokens`: every OpenAI-compatible server (vLLM, llama.cpp, Ollama) and older OpenAI models.
    MaxTokens,
    /// `max_completion_tokens`: required by OpenAI's reasoning models.
    MaxCompletionTokens,
}

impl MaxTokensParam {
    /// JSON field name.
    pub fn field(self) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// OpenAI-compatible provider settings.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// `OPENAI_API_KEY`.
    pub api_key: Option<Secret>,
    /// `OPENAI_BASE_URL` without a trailing slash.
    pub base_url: String,
    /// True when `OPENAI_BASE_URL` was set (a keyless self-hosted server is then allowed).
    pub base_url_explicit: bool,
    /// `OPENAI_CHAT_MODEL`.
    pub chat_model: String,
    /// `OPENAI_STT_MODEL`.
    pub stt_model: String,
    /// `OPENAI_TTS_MODEL`.
    pub tts_model: String,
    /// `OPENAI_TTS_VOICE`.
    pub tts_voice: String,
    /// `OPENAI_MAX_TOKENS_PARAM`.
    pub max_tokens_param: MaxTokensParam,
    /// `OPENAI_MAX_CONCURRENCY`.
    pub max_concurrency: usize,
}

/// Deepgram settings.
#[derive(Debug, Clone)]
pub struct DeepgramConfig {
    /// `DEEPGRAM_API_KEY`.
    pub api_key: Option<Secret>,
    /// `DEEPGRAM_BASE_URL` without a trailing slash.
    pub base_url: String,
    /// True when `DEEPGRAM_BASE_URL` was set (a keyless self-hosted server is then allowed).
    pub base_url_explicit: bool,
    /// `DEEPGRAM_STT_MODEL`.
    pub stt_model: String,
    /// `DEEPGRAM_TTS_MODEL` (the Aura voice model).
    pub tts_model: String,
    /// `DEEPGRAM_MAX_CONCURRENCY`.
    pub max_concurrency: usize,
}

/// Distribution of simulated latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyDistribution {
    /// Always this long.
    Fixed(Duration),
    /// Uniform between the two bounds.
    Uniform(Duration, Duration),
    /// Log-normal with this median and shape (sigma of the underlying normal).
    LogNormal {
        /// Median.
        median: Duration,
        /// Shape; 0.5 gives p99 ≈ 3.2 × median.
        sigma: f64,
    },
}

impl LatencyDistribution {
    fn parse(text: &str) -> Result<Self, String> {
        let ms = |s: &str| -> Result<Duration, String> {
            s.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("`{s}` is not a whole number of milliseconds"))
        };
        let text = text.trim();
        let (kind, rest) = text.split_once(':').unwrap_or(("fixed", text));
        match kind.to_ascii_lowercase().as_str() {
            "fixed" => Ok(Self::Fixed(ms(rest)?)),
            "uniform" => {
                let (lo, hi) = rest.split_once('-').ok_or_else(|| "uniform needs `uniform:MIN-MAX`".to_owned())?;
                let (lo, hi) = (ms(lo)?, ms(hi)?);
                if lo > hi {
                    return Err("uniform minimum exceeds maximum".into());
                }
                Ok(Self::Uniform(lo, hi))
            }
            "lognormal" => {
                let (median, sigma) =
                    rest.split_once(':').ok_or_else(|| "lognormal needs `lognormal:MEDIAN_MS:SIGMA`".to_owned())?;
                let sigma: f64 = sigma.trim().parse().map_err(|_| format!("`{sigma}` is not a number"))?;
                if !(0.0..=5.0).contains(&sigma) {
                    return Err("sigma must be between 0 and 5".into());
                }
                Ok(Self::LogNormal { median: ms(median)?, sigma })
            }
            _ => Err("expected `fixed:MS`, `uniform:MIN-MAX` or `lognormal:MEDIAN:SIGMA`".into()),
        }
    }
}

/// Settings of the `simulated` provider.
#[derive(Debug, Clone)]
pub struct SimulatedConfig {
    /// `SIMULATED_LATENCY`: whole-call latency for transcription and sentiment, and the
    /// time before the first token or audio chunk of a stream is added to it on top of
    /// `SIMULATED_TTFB_SECONDS`.
    pub latency: LatencyDistribution,
    /// `SIMULATED_TTFB_SECONDS`: fixed time to the first streamed chunk.
    pub time_to_first_byte: Duration,
    /// `SIMULATED_TOKENS_PER_SECOND`: pace of streamed tokens (0 = as fast as possible).
    pub tokens_per_second: f64,
    /// `SIMULATED_ERROR_RATE`: share of calls that fail with an unavailable error (0…1).
    pub error_rate: f64,
    /// `SIMULATED_STALL_RATE`: share of streams that stop sending midway and hang (0…1).
    pub stall_rate: f64,
    /// `SIMULATED_SEED`: seed of the random draws (same seed, same sequence of outcomes).
    pub seed: u64,
    /// `SIMULATED_MAX_CONCURRENCY`.
    pub max_concurrency: usize,
}

/// Timeouts applied to every provider call.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `PROVIDER_CONNECT_TIMEOUT_SECONDS`: TCP + TLS connect.
    pub connect: Duration,
    /// `PROVIDER_FIRST_BYTE_TIMEOUT_SECONDS`: request sent → response head (chat, speech).
    pub first_byte: Duration,
    /// `PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS`: request sent → response head for transcription,
    /// which providers only answer once the whole file is transcribed.
    pub transcribe: Duration,
    /// `PROVIDER_IDLE_TIMEOUT_SECONDS`: longest gap between two body chunks or stream items.
    pub idle: Duration,
    /// `PROVIDER_DEFAULT_DEADLINE_SECONDS`: deadline used when the caller gives none.
    pub default_deadline: Duration,
}

/// Retry policy.
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// `PROVIDER_MAX_RETRIES`: extra attempts on the same provider (0 = none).
    pub max_retries: u32,
    /// `PROVIDER_RETRY_BASE_SECONDS`: first backoff ceiling; doubles per attempt, full jitter.
    pub base: Duration,
    /// `PROVIDER_RETRY_MAX_SECONDS`: backoff ceiling.
    pub max_backoff: Duration,
    /// `PROVIDER_RETRY_AFTER_MAX_SECONDS`: a longer `Retry-After` makes us fail over instead.
    pub max_retry_after: Duration,
}

/// Circuit breaker policy (one breaker per provider × capability).
#[derive(Debug, Clone, Copy)]
pub struct CircuitConfig {
    /// `PROVIDER_CIRCUIT_FAILURES`: consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// `PROVIDER_CIRCUIT_FAILURE_RATIO`: failure share over the window that opens it.
    pub failure_ratio: f64,
    /// `PROVIDER_CIRCUIT_WINDOW`: outcomes kept for the ratio (also its minimum sample).
    pub window: u32,
    /// `PROVIDER_CIRCUIT_OPEN_SECONDS`: how long it stays open before a probe.
    pub open_for: Duration,
}

/// Everything the provider layer needs.
#[derive(Debug, Clone)]
pub struct ProvidersConfig {
    /// OpenAI-compatible provider.
    pub openai: OpenAiConfig,
    /// Deepgram.
    pub deepgram: DeepgramConfig,
    /// Simulated provider.
    pub simulated: SimulatedConfig,
    /// `LOCAL_MAX_CONCURRENCY`.
    pub local_max_concurrency: usize,
    /// `STT_PROVIDERS`.
    pub stt_order: Vec<ProviderKind>,
    /// `LLM_PROVIDERS`.
    pub llm_order: Vec<ProviderKind>,
    /// `TTS_PROVIDERS`.
    pub tts_order: Vec<ProviderKind>,
    /// `SENTIMENT_PROVIDERS`.
    pub sentiment_order: Vec<ProviderKind>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: RetryConfig,
    /// Circuit breakers.
    pub circuit: CircuitConfig,
    /// `PROVIDER_CAPTURE_CONTENT`: put prompts, completions and transcripts on spans.
    pub capture_content: bool,
}

/// Default OpenAI base URL.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Default Deepgram base URL.
pub const DEEPGRAM_DEFAULT_BASE_URL: &str = "https://api.deepgram.com";

/// A base URL (`http(s)://host[/path]`, no query or fragment), and whether it was set.
fn base_url(r: &mut Reader<'_>, var: &str, default: &str) -> (String, bool) {
    let Some(raw) = r.string(var).filter(|v| !v.is_empty()) else { return (default.to_owned(), false) };
    match reqwest::Url::parse(&raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            if url.query().is_some() || url.fragment().is_some() {
                r.error(var, "must not carry a query or fragment");
            }
            (raw.trim_end_matches('/').to_owned(), true)
        }
        Ok(_) => {
            r.error(var, "must be an http:// or https:// URL with a host");
            (default.to_owned(), false)
        }
        Err(e) => {
            r.error(var, format!("not a URL: {e}"));
            (default.to_owned(), false)
        }
    }
}

/// A failover order: provider names, comma-separated; set but empty (or `none`) turns the
/// capability off, unset is `default`.
fn order(r: &mut Reader<'_>, var: &str, capability: Capability, default: &str) -> Vec<ProviderKind> {
    let raw = r.env().get_raw(var).map(|v| v.trim().to_owned());
    let text = raw.unwrap_or_else(|| default.to_owned());
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.eq_ignore_ascii_case("none") {
            continue;
        }
        let Some(kind) = ProviderKind::parse(name) else {
            r.error(var, format!("unknown provider `{name}` (known: openai, deepgram, local, simulated)"));
            continue;
        };
        if !kind.supports(capability) {
            r.error(var, format!("provider `{kind}` does not offer {capability}"));
            continue;
        }
        if !seen.insert(kind) {
            r.error(var, format!("provider `{kind}` is listed twice"));
            continue;
        }
        out.push(kind);
    }
    out
}

/// A duration `*_SECONDS` (or its older `*_MS` name) in `[min_ms, max_ms]`.
fn seconds(r: &mut Reader<'_>, name: &str, legacy_ms: &str, default_ms: u64, min_ms: u64, max_ms: u64) -> Duration {
    r.seconds_or_legacy_ms(
        name,
        legacy_ms,
        Duration::from_millis(default_ms),
        Duration::from_millis(min_ms),
        max_ms as f64 / 1000.0,
    )
}

impl ProvidersConfig {
    /// Reads every variable of this crate from `env`; every problem found, each naming its
    /// variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let config = Self::read(&mut r);
        r.errors.into_result(config)
    }

    /// Reads every variable of this crate, recording problems in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let default_concurrency = r.number_in("PROVIDER_MAX_CONCURRENCY", 64usize, 1, 100_000);

        let (openai_base, openai_explicit) = base_url(r, "OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL);
        let max_tokens_param = match r.string("OPENAI_MAX_TOKENS_PARAM").filter(|v| !v.is_empty()).as_deref() {
            None | Some("max_tokens") => MaxTokensParam::MaxTokens,
            Some("max_completion_tokens") => MaxTokensParam::MaxCompletionTokens,
            Some(_) => {
                r.error("OPENAI_MAX_TOKENS_PARAM", "expected `max_tokens` or `max_completion_tokens`");
                MaxTokensParam::MaxTokens
            }
        };
        let openai = OpenAiConfig {
            api_key: r.secret("OPENAI_API_KEY").filter(|k| !k.expose().is_empty()),
            base_url: openai_base,
            base_url_explicit: openai_explicit,
            chat_model: r.string_or("OPENAI_CHAT_MODEL", "gpt-4o-mini"),
            stt_model: r.string_or("OPENAI_STT_MODEL", "whisper-1"),
            tts_model: r.string_or("OPENAI_TTS_MODEL", "gpt-4o-mini-tts"),
            tts_voice: r.string_or("OPENAI_TTS_VOICE", "alloy"),
            max_tokens_param,
            max_concurrency: r.number_in("OPENAI_MAX_CONCURRENCY", default_concurrency, 1, 100_000),
        };

        let (deepgram_base, deepgram_explicit) = base_url(r, "DEEPGRAM_BASE_URL", DEEPGRAM_DEFAULT_BASE_URL);
        let deepgram = DeepgramConfig {
            api_key: r.secret("DEEPGRAM_API_KEY").filter(|k| !k.expose().is_empty()),
            base_url: deepgram_base,
            base_url_explicit: deepgram_explicit,
            stt_model: r.string_or("DEEPGRAM_STT_MODEL", "nova-3"),
            tts_model: r.string_or("DEEPGRAM_TTS_MODEL", "aura-2-thalia-en"),
            max_concurrency: r.number_in("DEEPGRAM_MAX_CONCURRENCY", default_concurrency, 1, 100_000),
        };

        let latency = match r.string("SIMULATED_LATENCY").filter(|v| !v.is_empty()) {
            None => LatencyDistribution::Fixed(Duration::from_millis(50)),
            Some(text) => LatencyDistribution::parse(&text).unwrap_or_else(|msg| {
                r.error("SIMULATED_LATENCY", msg);
                LatencyDistribution::Fixed(Duration::from_millis(50))
            }),
        };
        let simulated = SimulatedConfig {
            latency,
            time_to_first_byte: seconds(r, "SIMULATED_TTFB_SECONDS", "SIMULATED_TTFB_MS", 100, 0, 600_000),
            tokens_per_second: r.number_in("SIMULATED_TOKENS_PER_SECOND", 50.0, 0.0, 1_000_000.0),
            error_rate: r.number_in("SIMULATED_ERROR_RATE", 0.0, 0.0, 1.0),
            stall_rate: r.number_in("SIMULATED_STALL_RATE", 0.0, 0.0, 1.0),
            seed: r.number_in("SIMULATED_SEED", 42u64, 0, u64::MAX),
            max_concurrency: r.number_in("SIMULATED_MAX_CONCURRENCY", default_concurrency, 1, 100_000),
        };

        let timeouts = Timeouts {
            connect: seconds(r, "PROVIDER_CONNECT_TIMEOUT_SECONDS", "PROVIDER_CONNECT_TIMEOUT_MS", 3_000, 1, 600_000),
            first_byte: seconds(
                r,
                "PROVIDER_FIRST_BYTE_TIMEOUT_SECONDS",
                "PROVIDER_FIRST_BYTE_TIMEOUT_MS",
                10_000,
                1,
                600_000,
            ),
            transcribe: seconds(
                r,
                "PROVIDER_TRANSCRIBE_TIMEOUT_SECONDS",
                "PROVIDER_TRANSCRIBE_TIMEOUT_MS",
                120_000,
                1,
                3_600_000,
            ),
            idle: seconds(r, "PROVIDER_IDLE_TIMEOUT_SECONDS", "PROVIDER_IDLE_TIMEOUT_MS", 10_000, 1, 600_000),
            default_deadline: seconds(
                r,
                "PROVIDER_DEFAULT_DEADLINE_SECONDS",
                "PROVIDER_DEFAULT_DEADLINE_MS",
                300_000,
                1,
                3_600_000,
            ),
        };
        let retry = RetryConfig {
            max_retries: r.number_in("PROVIDER_MAX_RETRIES", 2u32, 0, 10),
            base: seconds(r, "PROVIDER_RETRY_BASE_SECONDS", "PROVIDER_RETRY_BASE_MS", 200, 1, 60_000),
            max_backoff: seconds(r, "PROVIDER_RETRY_MAX_SECONDS", "PROVIDER_RETRY_MAX_MS", 2_000, 1, 600_000),
            max_retry_after: seconds(
                r,
                "PROVIDER_RETRY_AFTER_MAX_SECONDS",
                "PROVIDER_RETRY_AFTER_MAX_MS",
                10_000,
                0,
                600_000,
            ),
        };
        let circuit = CircuitConfig {
            consecutive_failures: r.number_in("PROVIDER_CIRCUIT_FAILURES", 5u32, 1, 10_000),
            failure_ratio: r.number_in("PROVIDER_CIRCUIT_FAILURE_RATIO", 0.5, 0.01, 1.0),
            window: r.number_in("PROVIDER_CIRCUIT_WINDOW", 20u32, 1, 10_000),
            open_for: seconds(r, "PROVIDER_CIRCUIT_OPEN_SECONDS", "PROVIDER_CIRCUIT_OPEN_MS", 30_000, 1, 3_600_000),
        };

        ProvidersConfig {
            openai,
            deepgram,
            simulated,
            local_max_concurrency: r.number_in("LOCAL_MAX_CONCURRENCY", 256usize, 1, 100_000),
            stt_order: order(r, "STT_PROVIDERS", Capability::Stt, "deepgram,openai"),
            llm_order: order(r, "LLM_PROVIDERS", Capability::Llm, "openai"),
            tts_order: order(r, "TTS_PROVIDERS", Capability::Tts, "deepgram,openai"),
            sentiment_order: order(r, "SENTIMENT_PROVIDERS", Capability::Sentiment, "local"),
            timeouts,
            retry,
            circuit,
            capture_content: r.bool_or("PROVIDER_CAPTURE_CONTENT", false),
        }
    }

    /// The failover order of a capability.
    pub fn order(&self, capability: Capability) -> &[ProviderKind] {
        match capability {
            Capability::Stt => &self.stt_order,
            Capability::Llm => &self.llm_order,
            Capability::Tts => &self.tts_order,
            Capability::Sentiment => &self.sentiment_order,
        }
    }

    /// Mutable failover order (handy in tests).
    pub fn order_mut(&mut self, capability: Capability) -> &mut Vec<ProviderKind> {
        match capability {
            Capability::Stt => &mut self.stt_order,
            Capability::Llm => &mut self.llm_order,
            Capability::Tts => &mut self.tts_order,
            Capability::Sentiment => &mut self.sentiment_order,
        }
    }

    /// Whether a provider has what it needs, or why not.
    pub fn availability(&self, kind: ProviderKind) -> Result<(), String> {
        match kind {
            ProviderKind::OpenAi => keyed(
                self.openai.api_key.is_some(),
                self.openai.base_url_explicit,
                &self.openai.base_url,
                "api.openai.com",
                "OPENAI_API_KEY",
                "OPENAI_BASE_URL",
            ),
            ProviderKind::Deepgram => keyed(
                self.deepgram.api_key.is_some(),
                self.deepgram.base_url_explicit,
                &self.deepgram.base_url,
                "api.deepgram.com",
                "DEEPGRAM_API_KEY",
                "DEEPGRAM_BASE_URL",
            ),
            ProviderKind::Local | ProviderKind::Simulated => Ok(()),
        }
    }

    /// Concurrency limit of a provider.
    pub fn max_concurrency(&self, kind: ProviderKind) -> usize {
        match kind {
            ProviderKind::OpenAi => self.openai.max_concurrency,
            ProviderKind::Deepgram => self.deepgram.max_concurrency,
            ProviderKind::Local => self.local_max_concurrency,
            ProviderKind::Simulated => self.simulated.max_concurrency,
        }
    }
}

/// A keyed provider is usable with its key, or without one when its base URL was pointed at a
/// self-hosted server (which often needs none). The vendor's own host always needs the key.
fn keyed(
    has_key: bool,
    explicit_base: bool,
    base: &str,
    vendor_host: &str,
    key_var: &str,
    base_var: &str,
) -> Result<(), String> {
    if has_key {
        return Ok(());
    }
    let vendor = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.eq_ignore_ascii_case(vendor_host)))
        .unwrap_or(false);
    if explicit_base && !vendor {
        Ok(())
    } else if vendor {
        Err(format!("{key_var} is not set ({vendor_host} needs a key)"))
    } else {
        Err(format!("{key_var} is not set and {base_var} does not point at a keyless server"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn defaults_without_any_variable() {
        let cfg = ProvidersConfig::from_env(&lookup(&[])).unwrap();
        assert_eq!(cfg.openai.base_url, OPENAI_DEFAULT_BASE_URL);
        assert_eq!(cfg.deepgram.base_url, DEEPGRAM_DEFAULT_BASE_URL);
        assert_eq!(cfg.stt_order, vec![ProviderKind::Deepgram, ProviderKind::OpenAi]);
        assert_eq!(cfg.sentiment_order, vec![ProviderKind::Local]);
        assert!(!cfg.capture_content);
        let reason = cfg.availability(ProviderKind::OpenAi).unwrap_err();
        assert!(reason.contains("OPENAI_API_KEY"), "{reason}");
        assert!(cfg.availability(ProviderKind::Deepgram).is_err());
        assert!(cfg.availability(ProviderKind::Local).is_ok());
    }

    #[test]
    fn keyless_self_hosted_openai_is_configured() {
        let cfg = ProvidersConfig::from_env(&lookup(&[("OPENAI_BASE_URL", "http://vllm.internal:8000/v1/")])).unwrap();
        assert_eq!(cfg.openai.base_url, "http://vllm.internal:8000/v1");
        assert!(cfg.availability(ProviderKind::OpenAi).is_ok());
        // Pointing explicitly at the vendor without a key is still not configured.
        let cfg = ProvidersConfig::from_env(&lookup(&[("OPENAI_BASE_URL", "https://api.openai.com/v1")])).unwrap();
        assert!(cfg.availability(ProviderKind::OpenAi).is_err());
    }

    #[test]
    fn every_bad_variable_is_reported_by_name() {
        let errors = ProvidersConfig::from_env(&lookup(&[
            ("OPENAI_BASE_URL", "ftp://x"),
            ("STT_PROVIDERS", "deepgram,local,acme"),
            ("PROVIDER_MAX_RETRIES", "many"),
            ("PROVIDER_CIRCUIT_FAILURE_RATIO", "2"),
            ("SIMULATED_LATENCY", "uniform:9-3"),
            ("PROVIDER_CAPTURE_CONTENT", "maybe"),
            ("LLM_PROVIDERS", "openai,openai"),
        ]))
        .unwrap_err();
        let vars: Vec<&str> = errors.0.iter().map(|e| e.variable.as_str()).collect();
        for var in [
            "OPENAI_BASE_URL",
            "STT_PROVIDERS",
            "PROVIDER_MAX_RETRIES",
            "PROVIDER_CIRCUIT_FAILURE_RATIO",
            "SIMULATED_LATENCY",
            "PROVIDER_CAPTURE_CONTENT",
            "LLM_PROVIDERS",
        ] {
            assert!(vars.contains(&var), "{var} missing from {errors:?}");
        }
        // local offers no STT, acme is unknown: two errors for STT_PROVIDERS.
        assert_eq!(vars.iter().filter(|v| **v == "STT_PROVIDERS").count(), 2);
        assert_eq!(errors.0[0].variable, "OPENAI_BASE_URL", "in the order read");
        assert!(errors.0[0].to_string().contains("OPENAI_BASE_URL: "), "{}", errors.0[0]);
    }

    #[test]
    fn secrets_do_not_print() {
        let cfg = ProvidersConfig::from_env(&lookup(&[
            ("OPENAI_API_KEY", "sk-very-secret-value"),
            ("DEEPGRAM_API_KEY", "dg-secret-value"),
        ]))
        .unwrap();
        let printed = format!("{cfg:?}");
        assert!(!printed.contains("very-secret"));
        assert!(!printed.contains("dg-secret"));
        assert!(printed.contains("[redacted]"));
        assert_eq!(cfg.openai.api_key.as_ref().unwrap().expose(), "sk-very-secret-value");
    }

    #[test]
    fn orders_and_distributions_parse() {
        let cfg = ProvidersConfig::from_env(&lookup(&[
            ("TTS_PROVIDERS", " OpenAI , simulated "),
            ("STT_PROVIDERS", ""),
            ("SIMULATED_LATENCY", "lognormal:80:0.5"),
        ]))
        .unwrap();
        assert_eq!(cfg.tts_order, vec![ProviderKind::OpenAi, ProviderKind::Simulated]);
        assert!(cfg.stt_order.is_empty());
        assert_eq!(
            cfg.simulated.latency,
            LatencyDistribution::LogNormal { median: Duration::from_millis(80), sigma: 0.5 }
        );
    }

    /// Durations are `*_SECONDS`; the `*_MS` names of the previous release still work, and the
    /// new name wins when both are set.
    #[test]
    fn durations_in_seconds_with_the_old_millisecond_names_accepted() {
        let cfg = ProvidersConfig::from_env(&lookup(&[])).unwrap();
        assert_eq!(cfg.timeouts.connect, Duration::from_secs(3));
        assert_eq!(cfg.retry.base, Duration::from_millis(200));
        assert_eq!(cfg.circuit.open_for, Duration::from_secs(30));
        let cfg = ProvidersConfig::from_env(&lookup(&[
            ("PROVIDER_CONNECT_TIMEOUT_SECONDS", "1.5"),
            ("PROVIDER_RETRY_BASE_SECONDS", "0.05"),
            ("SIMULATED_TTFB_SECONDS", "0"),
        ]))
        .unwrap();
        assert_eq!(cfg.timeouts.connect, Duration::from_millis(1500));
        assert_eq!(cfg.retry.base, Duration::from_millis(50));
        assert_eq!(cfg.simulated.time_to_first_byte, Duration::ZERO);
        let cfg = ProvidersConfig::from_env(&lookup(&[
            ("PROVIDER_CIRCUIT_OPEN_MS", "250"),
            ("PROVIDER_IDLE_TIMEOUT_MS", "4000"),
            ("PROVIDER_IDLE_TIMEOUT_SECONDS", "2"),
        ]))
        .unwrap();
        assert_eq!(cfg.circuit.open_for, Duration::from_millis(250), "the old name still works");
        assert_eq!(cfg.timeouts.idle, Duration::from_secs(2), "the new name wins");
        let errors = ProvidersConfig::from_env(&lookup(&[
            ("PROVIDER_CONNECT_TIMEOUT_SECONDS", "0"),
            ("PROVIDER_FIRST_BYTE_TIMEOUT_MS", "soon"),
            ("PROVIDER_RETRY_MAX_SECONDS", "601"),
        ]))
        .unwrap_err();
        let vars: Vec<&str> = errors.0.iter().map(|e| e.variable.as_str()).collect();
        assert_eq!(
            vars,
            ["PROVIDER_CONNECT_TIMEOUT_SECONDS", "PROVIDER_FIRST_BYTE_TIMEOUT_MS", "PROVIDER_RETRY_MAX_SECONDS"]
        );
    }
}
