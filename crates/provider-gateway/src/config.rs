//! provider-gateway configuration, read once at start from the environment.

use std::net::SocketAddr;

use providers::ProvidersConfig;
use telemetry::{ConfigErrors, Env, Reader, TelemetryConfig};

/// Everything provider-gateway reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PROVIDER_GATEWAY_GRPC_ADDR`, default `0.0.0.0:50052`.
    pub grpc_addr: SocketAddr,
    /// `PROVIDER_GATEWAY_ADMIN_ADDR` (health, readiness, metrics, pprof), default `0.0.0.0:9092`.
    pub admin_addr: SocketAddr,
    /// Provider credentials, failover orders, timeouts, retries, circuit breakers: every
    /// variable of the `providers` crate's README.
    pub providers: ProvidersConfig,
    /// `LLM_MAX_TOKENS_CAP`: the most tokens a chat completion may generate; a request asking
    /// more, or naming no bound, is clamped to it. Default 1024.
    pub llm_max_tokens_cap: u32,
    /// `TRANSCRIBE_MAX_BYTES`: the largest audio of one `Transcribe` request. Default 25 MB
    /// (25,000,000 bytes): under OpenAI's transcription upload limit (25 MiB, with room for a
    /// WAV header and the form), so every provider of a failover order can take it.
    pub transcribe_max_bytes: usize,
    /// `TRANSCRIBE_BUDGET_BYTES`: `Transcribe` audio held in memory at once; a request whose
    /// size is not free is answered `ResourceExhausted`. Default 50 MB (two requests at the cap).
    pub transcribe_budget_bytes: usize,
    /// The variables common to every service.
    pub telemetry: TelemetryConfig,
}

/// Default of `TRANSCRIBE_MAX_BYTES`.
pub const DEFAULT_TRANSCRIBE_MAX_BYTES: usize = 25_000_000;
/// Largest `TRANSCRIBE_MAX_BYTES` accepted: Deepgram's 2 GB is the highest provider limit, but
/// a gateway holds a request whole in memory.
const TRANSCRIBE_MAX_BYTES_CAP: usize = 512 * 1024 * 1024;

impl Config {
    /// Reads every variable and reports every bad one, each naming its variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let telemetry = TelemetryConfig::read(&mut r);
        let grpc_addr = r.addr_or("PROVIDER_GATEWAY_GRPC_ADDR", "0.0.0.0:50052");
        let admin_addr = r.addr_or("PROVIDER_GATEWAY_ADMIN_ADDR", "0.0.0.0:9092");
        let llm_max_tokens_cap = r.positive_or("LLM_MAX_TOKENS_CAP", 1024usize, 1_000_000) as u32;
        let transcribe_max_bytes =
            r.positive_or("TRANSCRIBE_MAX_BYTES", DEFAULT_TRANSCRIBE_MAX_BYTES, TRANSCRIBE_MAX_BYTES_CAP);
        let transcribe_budget_bytes = r.positive_or("TRANSCRIBE_BUDGET_BYTES", 50_000_000, 4 * 1024 * 1024 * 1024);
        match read_providers(env, &mut r.errors) {
            Some(providers) => r.errors.into_result(Self {
                grpc_addr,
                admin_addr,
                providers,
                llm_max_tokens_cap,
                transcribe_max_bytes,
                transcribe_budget_bytes,
                telemetry,
            }),
            None => Err(r.errors),
        }
    }
}

/// The providers' variables, read with the same reader (it tells an empty `*_PROVIDERS`,
/// capability disabled, from an unset one).
fn read_providers(env: &Env, errors: &mut ConfigErrors) -> Option<ProvidersConfig> {
    match ProvidersConfig::from_env(env) {
        Ok(config) => Some(config),
        Err(bad) => {
            errors.extend(bad);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_provider_variable_is_reported_by_name_with_the_others() {
        let env = Env::from_pairs([
            ("STT_PROVIDERS", "deepgram,acme"),
            ("PROVIDER_MAX_RETRIES", "lots"),
            ("PROVIDER_GATEWAY_GRPC_ADDR", "nowhere"),
        ]);
        let errors = Config::from_env(&env).unwrap_err();
        let vars: Vec<&str> = errors.0.iter().map(|e| e.variable.as_str()).collect();
        assert_eq!(vars, ["PROVIDER_GATEWAY_GRPC_ADDR", "PROVIDER_MAX_RETRIES", "STT_PROVIDERS"], "{errors}");
        assert!(errors.to_string().contains("unknown provider `acme`"), "{errors}");
    }

    #[test]
    fn an_empty_order_disables_the_capability_while_unset_keeps_the_default() {
        let config = Config::from_env(&Env::from_pairs([("TTS_PROVIDERS", "")])).unwrap();
        assert!(config.providers.order(providers::Capability::Tts).is_empty());
        assert_eq!(config.providers.order(providers::Capability::Stt).len(), 2);
    }
}
