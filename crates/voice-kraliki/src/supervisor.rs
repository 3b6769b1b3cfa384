//! Runs the three services as child processes of this binary (`voice-kraliki serve <name>`), so
//! each keeps its own ports, metrics registry and `service.name`; restarts one that crashes,
//! stops all on SIGTERM/SIGINT, and gives call-api a development API key when none is set.
//!
//! So that a live call holds a conversation out of the box, provider-gateway gets the
//! `simulated` provider for speech-to-text, chat and text-to-speech when no real provider is
//! configured for them and their `*_PROVIDERS` variable is not set ([`simulated_fallback`]);
//! a banner says so. Only this runner does it: `serve provider-gateway`, the service binaries
//! and the deployments keep "not configured".

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use providers::{Capability, ProviderKind, ProvidersConfig};
use tokio::process::{Child, Command};

const SERVICES: [&str; 3] = ["audio-processor", "provider-gateway", "call-api"];
/// Exit code services use for bad configuration: restarting would not help.
const EXIT_CONFIG: i32 = 2;
const MAX_RESTARTS: u32 = 5;

pub fn run() -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("voice-kraliki: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    runtime.block_on(supervise())
}

fn dev_api_key() -> Option<String> {
    if std::env::var("API_KEYS").is_ok_and(|v| !v.trim().is_empty()) {
        return None;
    }
    let key = format!("vk_dev_{}", hex::encode(rand::random::<[u8; 16]>()));
    Some(key)
}

/// The capabilities a live call needs, each with its failover-order variable and its name in
/// the banner.
const LIVE: [(Capability, &str, &str); 3] = [
    (Capability::Stt, "STT_PROVIDERS", "speech-to-text"),
    (Capability::Llm, "LLM_PROVIDERS", "chat"),
    (Capability::Tts, "TTS_PROVIDERS", "text-to-speech"),
];

/// What the runner gives provider-gateway when no real provider serves a live-call capability.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SimulatedFallback {
    /// `(capability, what would configure a real one)`, e.g. `("chat", "LLM_PROVIDERS, OPENAI_API_KEY")`.
    pub capabilities: Vec<(&'static str, String)>,
    /// Variables to set in provider-gateway's environment only, e.g. `("LLM_PROVIDERS", "simulated")`.
    pub env: Vec<(&'static str, &'static str)>,
}

impl SimulatedFallback {
    /// The banner, when there is anything to say.
    pub fn banner(&self) -> Option<String> {
        if self.capabilities.is_empty() {
            return None;
        }
        let list: Vec<String> = self.capabilities.iter().map(|(name, vars)| format!("{name} ({vars})")).collect();
        Some(format!(
            "voice-kraliki: no real provider is configured for {}: this run uses the simulated provider for them; its words are canned.",
            list.join(", ")
        ))
    }
}

/// The variable that makes `kind` usable, for the banner.
fn credential(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::OpenAi => Some("OPENAI_API_KEY"),
        ProviderKind::Deepgram => Some("DEEPGRAM_API_KEY"),
        ProviderKind::Local | ProviderKind::Simulated => None,
    }
}

/// Reads the provider configuration from `env` as provider-gateway will, and for each of
/// speech-to-text, chat and text-to-speech whose failover order has no configured provider and
/// whose `*_PROVIDERS` variable is unset, `*_PROVIDERS=simulated`. A variable set by the user is
/// respected (`none` and empty included); a configuration with errors is left to
/// provider-gateway to report.
pub fn simulated_fallback(env: &telemetry::Env) -> SimulatedFallback {
    let Ok(config) = ProvidersConfig::from_env(env) else { return SimulatedFallback::default() };
    let mut fallback = SimulatedFallback::default();
    for (capability, variable, name) in LIVE {
        if env.get_raw(variable).is_some() {
            continue;
        }
        let order = config.order(capability);
        if order.iter().any(|kind| config.availability(*kind).is_ok()) {
            continue;
        }
        let mut vars = vec![variable];
        let keys: Vec<&str> = order.iter().filter_map(|k| credential(*k)).collect();
        let keys = match keys.split_last() {
            None => String::new(),
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        };
        if !keys.is_empty() {
            vars.push(&keys);
        }
        fallback.capabilities.push((name, vars.join(", ")));
        fallback.env.push((variable, "simulated"));
    }
    fallback
}

fn spawn(name: &str, api_key: Option<&str>, gateway_env: &[(&str, &str)]) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["serve", name]).kill_on_drop(true);
    if let (Some(key), "call-api") = (api_key, name) {
        cmd.env("API_KEYS", key);
    }
    if name == "provider-gateway" {
        cmd.envs(gateway_env.iter().copied());
    }
    cmd.spawn()
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGTERM);
    }
}

async fn supervise() -> ExitCode {
    let api_key = dev_api_key();
    if let Some(key) = &api_key {
        let _ = std::fs::write(voice_kraliki::DEV_API_KEY_FILE, format!("{key}\n"));
        eprintln!("voice-kraliki: API_KEYS is not set; development API key for this run (also in .dev-api-key):");
        eprintln!(
            "\n    export VK_API_KEY={key}\n    curl -H \"Authorization: Bearer $VK_API_KEY\" http://127.0.0.1:8000/v1/providers\n"
        );
    }
    let fallback = simulated_fallback(&telemetry::Env::from_process());
    if let Some(banner) = fallback.banner() {
        eprintln!("{banner}");
    }
    let mut children: Vec<(String, Child, u32, Instant)> = Vec::new();
    for name in SERVICES {
        match spawn(name, api_key.as_deref(), &fallback.env) {
            Ok(child) => children.push((name.to_string(), child, 0, Instant::now())),
            Err(e) => {
                eprintln!("voice-kraliki: start {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("voice-kraliki: listen for SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut code = ExitCode::SUCCESS;
    'watch: loop {
        tokio::select! {
            _ = term.recv() => break 'watch,
            _ = tokio::signal::ctrl_c() => break 'watch,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for (name, child, restarts, started) in children.iter_mut() {
            let Ok(Some(status)) = child.try_wait() else { continue };
            if status.code() == Some(EXIT_CONFIG) {
                eprintln!("voice-kraliki: {name} rejected its configuration; stopping");
                code = ExitCode::from(2);
                break 'watch;
            }
            // A service that ran for a while earns its restart budget back.
            if started.elapsed() > Duration::from_secs(60) {
                *restarts = 0;
            }
            if *restarts >= MAX_RESTARTS {
                eprintln!("voice-kraliki: {name} keeps failing ({status}); stopping");
                code = ExitCode::FAILURE;
                break 'watch;
            }
            *restarts += 1;
            let backoff = Duration::from_millis(250 * 2u64.pow(*restarts));
            eprintln!("voice-kraliki: {name} exited ({status}); restarting in {backoff:?}");
            tokio::time::sleep(backoff).await;
            match spawn(name, api_key.as_deref(), &fallback.env) {
                Ok(c) => {
                    *child = c;
                    *started = Instant::now();
                }
                Err(e) => {
                    eprintln!("voice-kraliki: restart {name}: {e}");
                    code = ExitCode::FAILURE;
                    break 'watch;
                }
            }
        }
    }
    // call-api first, so it stops taking requests before its peers go away.
    for (_, child, _, _) in children.iter().rev() {
        terminate(child);
    }
    for (name, child, _, _) in children.iter_mut().rev() {
        match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
            Ok(Ok(status)) if !status.success() && status.code() != Some(EXIT_CONFIG) => {
                eprintln!("voice-kraliki: {name} exited with {status}");
            }
            Ok(_) => {}
            Err(_) => {
                eprintln!("voice-kraliki: {name} did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fallback(pairs: &[(&str, &str)]) -> SimulatedFallback {
        simulated_fallback(&telemetry::Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn with_no_provider_configured_the_three_live_capabilities_are_simulated() {
        let f = fallback(&[]);
        assert_eq!(
            f.env,
            [("STT_PROVIDERS", "simulated"), ("LLM_PROVIDERS", "simulated"), ("TTS_PROVIDERS", "simulated")]
        );
        assert_eq!(
            f.banner().unwrap(),
            "voice-kraliki: no real provider is configured for speech-to-text (STT_PROVIDERS, DEEPGRAM_API_KEY or OPENAI_API_KEY), \
             chat (LLM_PROVIDERS, OPENAI_API_KEY), text-to-speech (TTS_PROVIDERS, DEEPGRAM_API_KEY or OPENAI_API_KEY): \
             this run uses the simulated provider for them; its words are canned."
        );
    }

    #[test]
    fn a_configured_provider_is_used_and_only_the_rest_is_simulated() {
        // Deepgram serves speech-to-text and text-to-speech; chat has nothing.
        let f = fallback(&[("DEEPGRAM_API_KEY", "dg-key")]);
        assert_eq!(f.env, [("LLM_PROVIDERS", "simulated")]);
        assert_eq!(f.capabilities, [("chat", "LLM_PROVIDERS, OPENAI_API_KEY".to_string())]);
        // OpenAI serves all three; so does a keyless self-hosted OpenAI-compatible server.
        assert_eq!(fallback(&[("OPENAI_API_KEY", "sk-key")]), SimulatedFallback::default());
        assert_eq!(fallback(&[("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")]), SimulatedFallback::default());
        assert_eq!(fallback(&[("OPENAI_API_KEY", "sk-key")]).banner(), None);
    }

    #[test]
    fn an_explicit_order_is_respected_even_none_or_empty() {
        let f = fallback(&[("STT_PROVIDERS", "none"), ("LLM_PROVIDERS", ""), ("TTS_PROVIDERS", "openai")]);
        assert_eq!(f, SimulatedFallback::default(), "every order was chosen by the user");
        let f = fallback(&[("LLM_PROVIDERS", "openai")]);
        assert_eq!(f.env, [("STT_PROVIDERS", "simulated"), ("TTS_PROVIDERS", "simulated")]);
    }

    #[test]
    fn a_bad_provider_configuration_is_left_to_provider_gateway() {
        assert_eq!(fallback(&[("PROVIDER_MAX_RETRIES", "lots")]), SimulatedFallback::default());
    }
}
