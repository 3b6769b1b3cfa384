//! Which providers are configured for which capability, from the environment.

use kraliki_proto::provider::v1::{Capability, CircuitState, ProviderStatus};
use telemetry::{Reader, Secret};

/// Provider credentials and endpoints.
#[derive(Debug, Clone, Default)]
pub struct ProvidersConfig {
    /// `OPENAI_API_KEY`.
    pub openai_api_key: Option<Secret>,
    /// `OPENAI_BASE_URL`; set without a key it means a keyless self-hosted server.
    pub openai_base_url: Option<String>,
    /// `DEEPGRAM_API_KEY`.
    pub deepgram_api_key: Option<Secret>,
    /// `DEEPGRAM_BASE_URL`.
    pub deepgram_base_url: Option<String>,
}

impl ProvidersConfig {
    pub fn read(r: &mut Reader<'_>) -> Self {
        let openai_base_url = r.string("OPENAI_BASE_URL").map(|_| r.url_or("OPENAI_BASE_URL", "", &["http", "https"]));
        let deepgram_base_url =
            r.string("DEEPGRAM_BASE_URL").map(|_| r.url_or("DEEPGRAM_BASE_URL", "", &["http", "https"]));
        Self {
            openai_api_key: r.secret("OPENAI_API_KEY"),
            openai_base_url,
            deepgram_api_key: r.secret("DEEPGRAM_API_KEY"),
            deepgram_base_url,
        }
    }

    /// Every known provider per capability, configured or not (with the reason).
    pub fn statuses(&self) -> Vec<ProviderStatus> {
        let openai = match (&self.openai_api_key, &self.openai_base_url) {
            (Some(_), _) | (None, Some(_)) => Ok(()),
            (None, None) => Err("OPENAI_API_KEY is not set".to_string()),
        };
        let deepgram = match &self.deepgram_api_key {
            Some(_) => Ok(()),
            None => Err("DEEPGRAM_API_KEY is not set".to_string()),
        };
        let mut out = Vec::new();
        let mut add = |name: &str, capability: Capability, priority: u32, state: &Result<(), String>| {
            out.push(ProviderStatus {
                name: name.to_string(),
                capability: capability as i32,
                configured: state.is_ok(),
                reason: state.clone().err().unwrap_or_default(),
                priority,
                model: String::new(),
                circuit_state: CircuitState::Closed as i32,
            });
        };
        add("deepgram", Capability::SpeechToText, 0, &deepgram);
        add("openai", Capability::SpeechToText, 1, &openai);
        add("openai", Capability::Chat, 0, &openai);
        add("deepgram", Capability::TextToSpeech, 0, &deepgram);
        add("openai", Capability::TextToSpeech, 1, &openai);
        add("local", Capability::Sentiment, 0, &Ok(()));
        out
    }
}
