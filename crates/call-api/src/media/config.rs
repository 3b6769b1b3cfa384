//! Live-call settings (`LIVE_*`).

use std::time::Duration;

use telemetry::Reader;

use super::turn::TurnLimits;

/// Live calls on the media WebSocket.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// `LIVE_SYSTEM_PROMPT`: the agent's instructions, unless the call's metadata has a
    /// `system_prompt` string.
    pub system_prompt: String,
    /// `LIVE_LANGUAGE`: language hint for transcription (BCP-47), detected when unset.
    pub language: Option<String>,
    /// `LIVE_BARGE_IN_SECONDS`: how long the caller must keep talking over the agent (after the
    /// detector's minimum speech) before the agent stops; shorter sounds are ignored. Default 0.3.
    pub barge_in: Duration,
    /// `LIVE_GREETING`: what the agent says as soon as a live call's media starts, before the
    /// caller speaks; unset, the agent waits for the caller. A call's `metadata.greeting` string
    /// overrides it (an empty one turns it off for that call).
    pub greeting: Option<String>,
    /// `LIVE_END_OF_TURN_SECONDS`: silence after the caller's speech that ends their turn,
    /// default 0.7. Shorter answers sooner but cuts callers who pause mid-sentence.
    pub end_of_turn: Duration,
    /// `LIVE_TRANSCRIBE_TIMEOUT_SECONDS`, `LIVE_REPLY_TIMEOUT_SECONDS`,
    /// `LIVE_SPEECH_TIMEOUT_SECONDS`, `LIVE_MAX_TOKENS`: the bounds of each turn's provider
    /// requests (15 s, 30 s, 30 s) and of a reply's length (300 tokens).
    pub turn: TurnLimits,
    /// `LIVE_FALLBACK_TEXT`: what the agent says when hearing the caller or the reply fails
    /// (speech synthesis still working), so the caller is not left in silence; empty turns it
    /// off.
    pub fallback: Option<std::sync::Arc<str>>,
    /// `LIVE_DEAD_AIR_SECONDS`: silence on both sides longer than this counts as dead air in
    /// the call's line quality, default 3.
    pub dead_air: Duration,
    /// `LIVE_AUDIO_FRAMES_PER_MESSAGE`: inbound 20 ms frames sent to audio-processor in one
    /// message, 1–10, default 2. More spares CPU on both services (the cost is per message)
    /// and delays voice activity, hence the end of each turn and barge-in, by up to 20 ms per
    /// frame added.
    pub audio_frames_per_message: usize,
    /// `LIVE_AUDIO_GATHER_MS`: 0 gives each call its own `StreamAudio` stream; 1–100 (default
    /// 10) puts the replica's calls on one shared `StreamAudioCalls` stream per audio-processor
    /// endpoint, their messages gathered and sent together every that many milliseconds
    /// (`media/legs.rs`).
    pub audio_gather: Duration,
}

/// Longest greeting, in bytes (a few sentences).
pub const MAX_GREETING_BYTES: usize = 1024;

/// The default fallback line (`LIVE_FALLBACK_TEXT`).
pub const DEFAULT_FALLBACK_TEXT: &str = "Sorry, I did not catch that. Could you say it again?";

/// The agent's default instructions.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are the voice agent of a company on a phone call. Answer briefly \
     and clearly, in one or two short sentences, without lists or formatting, as you would speak.";

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            language: None,
            barge_in: Duration::from_millis(300),
            greeting: None,
            end_of_turn: Duration::from_millis(700),
            turn: TurnLimits::default(),
            fallback: Some(DEFAULT_FALLBACK_TEXT.into()),
            dead_air: Duration::from_secs(3),
            audio_frames_per_message: 2,
            audio_gather: Duration::from_millis(10),
        }
    }
}

impl LiveConfig {
    pub(crate) fn read(r: &mut Reader<'_>) -> Self {
        let d = Self::default();
        let system_prompt = r.string("LIVE_SYSTEM_PROMPT").map(|p| p.trim().to_string()).filter(|p| !p.is_empty());
        if system_prompt.as_ref().is_some_and(|p| p.len() > 16 * 1024) {
            r.error("LIVE_SYSTEM_PROMPT", "must be at most 16 KiB");
        }
        let language = r.string("LIVE_LANGUAGE").map(|l| l.trim().to_string()).filter(|l| !l.is_empty());
        if language.as_ref().is_some_and(|l| l.len() > 35 || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            r.error("LIVE_LANGUAGE", "must be a BCP-47 tag such as en or en-US");
        }
        let barge_in = r.seconds_or("LIVE_BARGE_IN_SECONDS", d.barge_in, 5.0);
        let greeting = r.string("LIVE_GREETING").map(|g| g.trim().to_string()).filter(|g| !g.is_empty());
        if greeting.as_ref().is_some_and(|g| g.len() > MAX_GREETING_BYTES) {
            r.error("LIVE_GREETING", "must be at most 1 KiB");
        }
        let end_of_turn = r.seconds_or("LIVE_END_OF_TURN_SECONDS", d.end_of_turn, 10.0);
        if end_of_turn < Duration::from_millis(100) {
            r.error("LIVE_END_OF_TURN_SECONDS", "must be at least 0.1 seconds");
        }
        // Set but empty turns it off (`string` reads empty as unset).
        let fallback = match r.env().get_raw("LIVE_FALLBACK_TEXT").map(str::to_string) {
            None => d.fallback,
            Some(text) if text.trim().is_empty() => None,
            Some(text) => {
                if text.trim().len() > MAX_GREETING_BYTES {
                    r.error("LIVE_FALLBACK_TEXT", "must be at most 1 KiB");
                }
                Some(text.trim().into())
            }
        };
        let turn = TurnLimits {
            transcribe_timeout: at_least_one_second(r, "LIVE_TRANSCRIBE_TIMEOUT_SECONDS", d.turn.transcribe_timeout),
            reply_timeout: at_least_one_second(r, "LIVE_REPLY_TIMEOUT_SECONDS", d.turn.reply_timeout),
            speech_timeout: at_least_one_second(r, "LIVE_SPEECH_TIMEOUT_SECONDS", d.turn.speech_timeout),
            max_tokens: r.positive_or("LIVE_MAX_TOKENS", d.turn.max_tokens as usize, 100_000) as u32,
        };
        let dead_air = r.seconds_or("LIVE_DEAD_AIR_SECONDS", d.dead_air, 600.0);
        if dead_air < Duration::from_millis(500) {
            r.error("LIVE_DEAD_AIR_SECONDS", "must be at least 0.5 seconds");
        }
        let audio_frames_per_message = r.positive_or("LIVE_AUDIO_FRAMES_PER_MESSAGE", d.audio_frames_per_message, 10);
        let audio_gather = match r.string("LIVE_AUDIO_GATHER_MS") {
            None => d.audio_gather,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms <= 100 => Duration::from_millis(ms),
                _ => {
                    r.error("LIVE_AUDIO_GATHER_MS", "must be a whole number of milliseconds from 0 to 100");
                    d.audio_gather
                }
            },
        };
        Self {
            system_prompt: system_prompt.unwrap_or(d.system_prompt),
            language,
            barge_in,
            greeting,
            end_of_turn,
            turn,
            fallback,
            dead_air,
            audio_frames_per_message,
            audio_gather,
        }
    }
}

/// A timeout of at least one second and at most ten minutes, `default` when unset.
fn at_least_one_second(r: &mut Reader<'_>, name: &str, default: Duration) -> Duration {
    let d = r.seconds_or(name, default, 600.0);
    if d < Duration::from_secs(1) {
        r.error(name, "must be at least 1 second");
    }
    d
}
