//! Typed configuration, read once from environment variables through a lookup closure.
//!
//! [`ProvidersConfig::from_lookup`] reports every bad variable at once, each error naming it.
//! The README of this crate has the table of variables; keep the two in step.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use crate::types::{Capability, ProviderKind};

/// A credential. `Debug` prints `Secret([redacted])` and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// One bad variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The variable's name.
    pub variable: &'static str,
    /// What is wrong with it (never its value when it is a secret).
    pub message: String,
}

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
    /// `SIMULATED_TTFB_MS`.
    pub latency: LatencyDistribution,
    /// `SIMULATED_TTFB_MS`: fixed time to the first streamed chunk.
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
    /// `PROVIDER_CONNECT_TIMEOUT_MS`: TCP + TLS connect.
    pub connect: Duration,
    /// `PROVIDER_FIRST_BYTE_TIMEOUT_MS`: request sent → response head (chat, speech).
    pub first_byte: Duration,
    /// `PROVIDER_TRANSCRIBE_TIMEOUT_MS`: request sent → response head for transcription,
    /// which providers only answer once the whole file is transcribed.
    pub transcribe: Duration,
    /// `PROVIDER_IDLE_TIMEOUT_MS`: longest gap between two body chunks or stream items.
    pub idle: Duration,
    /// `PROVIDER_DEFAULT_DEADLINE_MS`: deadline used when the caller gives none.
    pub default_deadline: Duration,
}

/// Retry policy.
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// `PROVIDER_MAX_RETRIES`: extra attempts on the same provider (0 = none).
    pub max_retries: u32,
    /// `PROVIDER_RETRY_BASE_MS`: first backoff ceiling; doubles per attempt, full jitter.
    pub base: Duration,
    /// `PROVIDER_RETRY_MAX_MS`: backoff ceiling.
    pub max_backoff: Duration,
    /// `PROVIDER_RETRY_AFTER_MAX_MS`: a longer `Retry-After` makes us fail over instead.
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
    /// `PROVIDER_CIRCUIT_OPEN_MS`: how long it stays open before a probe.
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

struct Reader<F> {
    get: F,
    errors: Vec<ConfigError>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// Unset and empty (or all-blank) values are the same: compose files often pass `VAR=`.
    fn raw(&self, var: &'static str) -> Option<String> {
        (self.get)(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn string(&self, var: &'static str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_owned())
    }

    fn fail(&mut self, variable: &'static str, message: impl Into<String>) {
        self.errors.push(ConfigError { variable, message: message.into() });
    }

    fn number<T: std::str::FromStr + PartialOrd + Copy + fmt::Display>(
        &mut self,
        var: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> T {
        let Some(raw) = self.raw(var) else { return default };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            Ok(_) => {
                self.fail(var, format!("must be between {min} and {max}"));
                default
            }
            Err(_) => {
                self.fail(var, format!("`{raw}` is not a number"));
                default
            }
        }
    }

    fn millis(&mut self, var: &'static str, default_ms: u64, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(self.number(var, default_ms, min_ms, max_ms))
    }

    fn flag(&mut self, var: &'static str, default: bool) -> bool {
        let Some(raw) = self.raw(var) else { return default };
        match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                self.fail(var, format!("`{raw}` is not a boolean (true/false)"));
                default
            }
        }
    }

    fn secret(&self, var: &'static str) -> Option<Secret> {
        self.raw(var).map(Secret)
    }

    fn base_url(&mut self, var: &'static str, default: &str) -> (String, bool) {
        let Some(raw) = self.raw(var) else { return (default.to_owned(), false) };
        match reqwest::Url::parse(&raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.query().is_some() || url.fragment().is_some() {
                    self.fail(var, "must not carry a query or fragment");
                }
                (raw.trim_end_matches('/').to_owned(), true)
            }
            Ok(_) => {
                self.fail(var, "must be an http:// or https:// URL with a host");
                (default.to_owned(), false)
            }
            Err(e) => {
                self.fail(var, format!("not a URL: {e}"));
                (default.to_owned(), false)
            }
        }
    }

    fn order(&mut self, var: &'static str, capability: Capability, default: &str) -> Vec<ProviderKind> {
        let raw = (self.get)(var).map(|v| v.trim().to_owned());
        let text = raw.unwrap_or_else(|| default.to_owned());
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name.eq_ignore_ascii_case("none") {
                continue;
            }
            let Some(kind) = ProviderKind::parse(name) else {
                self.fail(var, format!("unknown provider `{name}` (known: openai, deepgram, local, simulated)"));
                continue;
            };
            if !kind.supports(capability) {
                self.fail(var, format!("provider `{kind}` does not offer {capability}"));
                continue;
            }
            if !seen.insert(kind) {
                self.fail(var, format!("provider `{kind}` is listed twice"));
                continue;
            }
            out.push(kind);
        }
        out
    }
}

impl ProvidersConfig {
    /// Read the configuration through `get` (usually `|k| std::env::var(k).ok()`).
    /// Returns every problem found, each naming its variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<ConfigError>> {
        let mut r = Reader { get, errors: Vec::new() };

        let default_concurrency = r.number("PROVIDER_MAX_CONCURRENCY", 64usize, 1, 100_000);

        let (openai_base, openai_explicit) = r.base_url("OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL);
        let max_tokens_param = match r.raw("OPENAI_MAX_TOKENS_PARAM").as_deref() {
            None | Some("max_tokens") => MaxTokensParam::MaxTokens,
            Some("max_completion_tokens") => MaxTokensParam::MaxCompletionTokens,
            Some(_) => {
                r.fail("OPENAI_MAX_TOKENS_PARAM", "expected `max_tokens` or `max_completion_tokens`");
                MaxTokensParam::MaxTokens
            }
        };
        let openai = OpenAiConfig {
            api_key: r.secret("OPENAI_API_KEY"),
            base_url: openai_base,
            base_url_explicit: openai_explicit,
            chat_model: r.string("OPENAI_CHAT_MODEL", "gpt-4o-mini"),
            stt_model: r.string("OPENAI_STT_MODEL", "whisper-1"),
            tts_model: r.string("OPENAI_TTS_MODEL", "gpt-4o-mini-tts"),
            tts_voice: r.string("OPENAI_TTS_VOICE", "alloy"),
            max_tokens_param,
            max_concurrency: r.number("OPENAI_MAX_CONCURRENCY", default_concurrency, 1, 100_000),
        };

        let (deepgram_base, deepgram_explicit) = r.base_url("DEEPGRAM_BASE_URL", DEEPGRAM_DEFAULT_BASE_URL);
        let deepgram = DeepgramConfig {
            api_key: r.secret("DEEPGRAM_API_KEY"),
            base_url: deepgram_base,
            base_url_explicit: deepgram_explicit,
            stt_model: r.string("DEEPGRAM_STT_MODEL", "nova-3"),
            tts_model: r.string("DEEPGRAM_TTS_MODEL", "aura-2-thalia-en"),
            max_concurrency: r.number("DEEPGRAM_MAX_CONCURRENCY", default_concurrency, 1, 100_000),
        };

        let latency = match r.raw("SIMULATED_LATENCY") {
            None => LatencyDistribution::Fixed(Duration::from_millis(50)),
            Some(text) => LatencyDistribution::parse(&text).unwrap_or_else(|msg| {
                r.fail("SIMULATED_LATENCY", msg);
                LatencyDistribution::Fixed(Duration::from_millis(50))
            }),
        };
        let simulated = SimulatedConfig {
            latency,
            time_to_first_byte: r.millis("SIMULATED_TTFB_MS", 100, 0, 600_000),
            tokens_per_second: r.number("SIMULATED_TOKENS_PER_SECOND", 50.0, 0.0, 1_000_000.0),
            error_rate: r.number("SIMULATED_ERROR_RATE", 0.0, 0.0, 1.0),
            stall_rate: r.number("SIMULATED_STALL_RATE", 0.0, 0.0, 1.0),
            seed: r.number("SIMULATED_SEED", 42u64, 0, u64::MAX),
            max_concurrency: r.number("SIMULATED_MAX_CONCURRENCY", default_concurrency, 1, 100_000),
        };

        let timeouts = Timeouts {
            connect: r.millis("PROVIDER_CONNECT_TIMEOUT_MS", 3_000, 1, 600_000),
            first_byte: r.millis("PROVIDER_FIRST_BYTE_TIMEOUT_MS", 10_000, 1, 600_000),
            transcribe: r.millis("PROVIDER_TRANSCRIBE_TIMEOUT_MS", 120_000, 1, 3_600_000),
            idle: r.millis("PROVIDER_IDLE_TIMEOUT_MS", 10_000, 1, 600_000),
            default_deadline: r.millis("PROVIDER_DEFAULT_DEADLINE_MS", 300_000, 1, 3_600_000),
        };
        let retry = RetryConfig {
            max_retries: r.number("PROVIDER_MAX_RETRIES", 2u32, 0, 10),
            base: r.millis("PROVIDER_RETRY_BASE_MS", 200, 1, 60_000),
            max_backoff: r.millis("PROVIDER_RETRY_MAX_MS", 2_000, 1, 600_000),
            max_retry_after: r.millis("PROVIDER_RETRY_AFTER_MAX_MS", 10_000, 0, 600_000),
        };
        let circuit = CircuitConfig {
            consecutive_failures: r.number("PROVIDER_CIRCUIT_FAILURES", 5u32, 1, 10_000),
            failure_ratio: r.number("PROVIDER_CIRCUIT_FAILURE_RATIO", 0.5, 0.01, 1.0),
            window: r.number("PROVIDER_CIRCUIT_WINDOW", 20u32, 1, 10_000),
            open_for: r.millis("PROVIDER_CIRCUIT_OPEN_MS", 30_000, 1, 3_600_000),
        };

        let config = ProvidersConfig {
            openai,
            deepgram,
            simulated,
            local_max_concurrency: r.number("LOCAL_MAX_CONCURRENCY", 256usize, 1, 100_000),
            stt_order: r.order("STT_PROVIDERS", Capability::Stt, "deepgram,openai"),
            llm_order: r.order("LLM_PROVIDERS", Capability::Llm, "openai"),
            tts_order: r.order("TTS_PROVIDERS", Capability::Tts, "deepgram,openai"),
            sentiment_order: r.order("SENTIMENT_PROVIDERS", Capability::Sentiment, "local"),
            timeouts,
            retry,
            circuit,
            capture_content: r.flag("PROVIDER_CAPTURE_CONTENT", false),
        };
        if r.errors.is_empty() { Ok(config) } else { Err(r.errors) }
    }

    /// Read from the process environment.
    pub fn from_env() -> Result<Self, Vec<ConfigError>> {
        Self::from_lookup(|k| std::env::var(k).ok())
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
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_without_any_variable() {
        let cfg = ProvidersConfig::from_lookup(lookup(&[])).unwrap();
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
        let cfg =
            ProvidersConfig::from_lookup(lookup(&[("OPENAI_BASE_URL", "http://vllm.internal:8000/v1/")])).unwrap();
        assert_eq!(cfg.openai.base_url, "http://vllm.internal:8000/v1");
        assert!(cfg.availability(ProviderKind::OpenAi).is_ok());
        // Pointing explicitly at the vendor without a key is still not configured.
        let cfg = ProvidersConfig::from_lookup(lookup(&[("OPENAI_BASE_URL", "https://api.openai.com/v1")])).unwrap();
        assert!(cfg.availability(ProviderKind::OpenAi).is_err());
    }

    #[test]
    fn every_bad_variable_is_reported_by_name() {
        let errors = ProvidersConfig::from_lookup(lookup(&[
            ("OPENAI_BASE_URL", "ftp://x"),
            ("STT_PROVIDERS", "deepgram,local,acme"),
            ("PROVIDER_MAX_RETRIES", "many"),
            ("PROVIDER_CIRCUIT_FAILURE_RATIO", "2"),
            ("SIMULATED_LATENCY", "uniform:9-3"),
            ("PROVIDER_CAPTURE_CONTENT", "maybe"),
            ("LLM_PROVIDERS", "openai,openai"),
        ]))
        .unwrap_err();
        let vars: Vec<&str> = errors.iter().map(|e| e.variable).collect();
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
        assert!(errors[0].to_string().starts_with("OPENAI_BASE_URL: "));
    }

    #[test]
    fn secrets_do_not_print() {
        let cfg = ProvidersConfig::from_lookup(lookup(&[
            ("OPENAI_API_KEY", "sk-very-secret-value"),
            ("DEEPGRAM_API_KEY", "dg-secret-value"),
        ]))
        .unwrap();
        let printed = format!("{cfg:?}");
        assert!(!printed.contains("very-secret"));
        assert!(!printed.contains("dg-secret"));
        assert!(printed.contains("Secret([redacted])"));
        assert_eq!(cfg.openai.api_key.as_ref().unwrap().expose(), "sk-very-secret-value");
    }

    #[test]
    fn orders_and_distributions_parse() {
        let cfg = ProvidersConfig::from_lookup(lookup(&[
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
}
