//! What `voice-kraliki`'s clients share with the operator tools (`crates/drills`): where a
//! client finds its API key, and the live-call load generator ([`loadgen`], the
//! `voice-kraliki loadgen` command; the drills' live calls are its simulated carriers), and
//! the Sentry alert rules as code ([`sentry_alerts`], `voice-kraliki sentry-alerts apply`).

pub mod loadgen;
pub mod sentry_alerts;

/// The development API key `voice-kraliki run` writes when `API_KEYS` is unset.
pub const DEV_API_KEY_FILE: &str = ".dev-api-key";

/// The API key a client uses: `VOICE_KRALIKI_API_KEY`, else the first key of `API_KEYS`
/// (`tenant:key` → key), else the development key in [`DEV_API_KEY_FILE`].
pub fn api_key() -> Option<String> {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(k) = from_env("VOICE_KRALIKI_API_KEY") {
        return Some(k.trim().to_string());
    }
    if let Some(keys) = from_env("API_KEYS") {
        let first = keys.split(',').next().unwrap_or("").trim();
        return Some(first.rsplit_once(':').map_or(first, |(_, k)| k).to_string());
    }
    std::fs::read_to_string(DEV_API_KEY_FILE).ok().map(|k| k.trim().to_string()).filter(|k| !k.is_empty())
}
