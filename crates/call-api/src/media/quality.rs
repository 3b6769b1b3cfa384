//! Line quality of a live call, from what the carrier already sends: the numbers on its `media`
//! messages (inbound loss, reordering, duplicates, jitter), the echoes of our `mark`s (how late
//! the caller really heard the agent), and the voice-activity events and playback state (barge-
//! ins, dead air, talk ratio); summed up as a MOS estimate. See docs/SPEC.md "Call quality".
//!
//! ```text
//! Inbound     per inbound frame, in the session task: O(1), no allocation
//! Outbound    shared by the player (writer task) and the session: marks sent and their
//!             expected playout end, agent audio, dead air; locked per sentence / talk spurt,
//!             never per frame (per frame: two relaxed atomics)
//! Summary     the figures stored when the call ends and served at GET /v1/calls/{id}/quality
//! ```

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

/// One frame of 8 kHz μ-law from the carrier or to it.
pub const FRAME: Duration = Duration::from_millis(20);
/// Sequence numbers remembered behind the highest one, to tell a duplicate from a late frame.
const WINDOW: u64 = 128;
/// A jump forward of more than this many sequence numbers (one minute of frames) is not taken
/// as loss: the frame is counted as `unknown` (RFC 3550's MAX_DROPOUT).
pub const MAX_DROPOUT: u64 = 3000;
/// A transit-time change larger than this is a timestamp reset, not jitter: the frame is
/// counted as `unknown` and the estimator restarts from it.
const MAX_TRANSIT_STEP_SECONDS: f64 = 10.0;
/// Marks remembered until their echo comes back (a few sentences; older ones are forgotten).
const PENDING_MARKS: usize = 16;
/// Agent frames further apart than this start a new talk spurt.
const SPURT_GAP: Duration = Duration::from_millis(200);

/// E-model: fixed one-way delay added to the measured one (ms): 20 ms packetisation of the
/// carrier's frames plus 20 ms for the carrier's own network path and processing.
pub const FIXED_DELAY_MS: f64 = 40.0;
/// E-model: equipment impairment of G.711 (ITU-T G.113 Appendix I).
pub const IE_G711: f64 = 0.0;
/// E-model: packet-loss robustness of G.711 with packet-loss concealment (G.113 Appendix I;
/// 4.3 without PLC). Carriers' media gateways conceal lost G.711 frames.
pub const BPL_G711_PLC: f64 = 25.1;

/// Inbound frames of one call: RFC 3550 §6.4.1 interarrival jitter and the sequence-number
/// accounting, updated per frame in O(1) without allocating.
///
/// Sequence numbers are Twilio's per-message `sequenceNumber`, shared by every message of the
/// stream: the numbers of `mark` and `dtmf` messages are reported with [`Inbound::other`] so
/// they are not taken for lost frames.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    /// The first media frame's sequence number (the base of `expected`).
    base: Option<u64>,
    highest: u64,
    /// Bit `i` set: sequence number `highest - i` was seen.
    seen: u128,
    /// Media frames with a sequence number in `base..=highest`, each once.
    received: u64,
    /// Other messages with a sequence number in `base..=highest`, each once.
    other: u64,
    late: u64,
    duplicated: u64,
    unknown: u64,
    last_transit: Option<f64>,
    /// Seconds.
    jitter: f64,
}

/// How [`Inbound::media`] took a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    InOrder,
    Late,
    Duplicated,
    Unknown,
}

impl Inbound {
    /// A media frame: its sequence number, its media timestamp (ms since the stream started),
    /// and when it arrived (seconds since any fixed instant).
    pub fn media(&mut self, seq: u64, timestamp_ms: u64, arrival_seconds: f64) -> Frame {
        let taken = match self.sequence(seq) {
            Seen::Ahead | Seen::First => Frame::InOrder,
            Seen::Behind => Frame::Late,
            Seen::Again => {
                self.duplicated += 1;
                return Frame::Duplicated;
            }
            Seen::Unknown => {
                self.unknown += 1;
                return Frame::Unknown;
            }
        };
        self.received += 1;
        if taken == Frame::Late {
            self.late += 1;
        }
        // RFC 3550 §6.4.1: D(i,j) = (Rj − Ri) − (Sj − Si) = transit j − transit i, in arrival
        // order; J += (|D| − J) / 16.
        let transit = arrival_seconds - timestamp_ms as f64 / 1000.0;
        if let Some(previous) = self.last_transit {
            let d = (transit - previous).abs();
            if d.is_finite() && d <= MAX_TRANSIT_STEP_SECONDS {
                self.jitter += (d - self.jitter) / 16.0;
            } else {
                self.unknown += 1;
            }
        }
        self.last_transit = Some(transit).filter(|t| t.is_finite());
        taken
    }

    /// Another message's sequence number (`mark`, `dtmf`): taken by no frame. `None` (missing
    /// or not a number) counts as unknown.
    pub fn other(&mut self, seq: Option<u64>) {
        let Some(seq) = seq else {
            self.unknown += 1;
            return;
        };
        if matches!(self.sequence(seq), Seen::Ahead | Seen::Behind) {
            self.other += 1;
        }
    }

    fn sequence(&mut self, seq: u64) -> Seen {
        let Some(base) = self.base else {
            self.base = Some(seq);
            self.highest = seq;
            self.seen = 1;
            return Seen::First;
        };
        if seq > self.highest {
            let ahead = seq - self.highest;
            if ahead > MAX_DROPOUT {
                return Seen::Unknown;
            }
            self.seen = if ahead >= WINDOW { 0 } else { self.seen << ahead };
            self.seen |= 1;
            self.highest = seq;
            Seen::Ahead
        } else if seq < base {
            Seen::Unknown
        } else {
            let behind = self.highest - seq;
            if behind >= WINDOW {
                // Too far back to tell: taken as late (a duplicate this old is rare).
                return Seen::Behind;
            }
            let bit = 1u128 << behind;
            if self.seen & bit != 0 {
                return Seen::Again;
            }
            self.seen |= bit;
            Seen::Behind
        }
    }

    /// Frames the sequence numbers say were sent: first to highest, less other messages.
    pub fn expected(&self) -> u64 {
        match self.base {
            None => 0,
            Some(base) => (self.highest - base).saturating_add(1).saturating_sub(self.other),
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Gaps in the sequence numbers never filled.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    pub fn late(&self) -> u64 {
        self.late
    }

    pub fn duplicated(&self) -> u64 {
        self.duplicated
    }

    pub fn unknown(&self) -> u64 {
        self.unknown
    }

    /// Interarrival jitter, seconds (≥ 0).
    pub fn jitter_seconds(&self) -> f64 {
        self.jitter
    }
}

enum Seen {
    First,
    Ahead,
    Behind,
    Again,
    Unknown,
}

/// What the agent played, shared by the player (which sends it) and the session (which hears
/// the marks come back and the caller speak).
#[derive(Debug)]
pub struct Outbound {
    /// Fixed point of the atomics below.
    epoch: Instant,
    /// When the agent's audio sent so far ends playing, µs after `epoch` (0: never).
    busy_until_us: AtomicU64,
    /// Agent frames sent.
    frames: AtomicU64,
    state: Mutex<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Marks sent and not yet echoed: name and the expected end of the audio before them.
    pending: VecDeque<(String, Instant)>,
    dead_air: DeadAir,
}

/// Periods where neither side speaks for longer than the threshold.
#[derive(Debug)]
struct DeadAir {
    threshold: Duration,
    caller_speaking: bool,
    /// Silence before this is already accounted (or was somebody speaking).
    quiet_since: Instant,
    count: u64,
    total: Duration,
}

impl DeadAir {
    /// Somebody starts talking at `at` (the agent's earlier audio ends playing at
    /// `agent_until`): a silence before it longer than the threshold is dead air.
    fn activity(&mut self, at: Instant, agent_until: Option<Instant>) {
        let agent_quiet = agent_until.is_none_or(|until| until + SPURT_GAP <= at);
        if !self.caller_speaking && agent_quiet {
            let since = agent_until.map_or(self.quiet_since, |until| until.max(self.quiet_since));
            let silent = at.saturating_duration_since(since);
            if silent > self.threshold {
                self.count += 1;
                self.total += silent;
            }
        }
        self.quiet_since = self.quiet_since.max(at);
    }
}

/// The player's bookkeeping of the sentence being played (local to the writer task).
#[derive(Debug, Default)]
pub struct Sentence {
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
    frames: u32,
    /// The agent's audio sent so far ends playing (local copy of the shared value).
    busy_until: Option<Instant>,
}

impl Outbound {
    /// `dead_air`: silence on both sides longer than this is dead air (`LIVE_DEAD_AIR_SECONDS`).
    pub fn new(dead_air: Duration) -> Self {
        let epoch = Instant::now();
        Self {
            epoch,
            busy_until_us: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            state: Mutex::new(Shared {
                pending: VecDeque::with_capacity(PENDING_MARKS),
                dead_air: DeadAir {
                    threshold: dead_air,
                    caller_speaking: false,
                    quiet_since: epoch,
                    count: 0,
                    total: Duration::ZERO,
                },
            }),
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn agent_until(&self) -> Option<Instant> {
        match self.busy_until_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(self.epoch + Duration::from_micros(us)),
        }
    }

    /// Player: a frame went out at `now`. Per frame: two relaxed atomics, and a lock only when
    /// it starts a talk spurt.
    pub fn frame_sent(&self, sentence: &mut Sentence, now: Instant) {
        let spurt = sentence.busy_until.is_none_or(|until| until + SPURT_GAP <= now);
        if spurt {
            self.shared().dead_air.activity(now, sentence.busy_until);
        }
        let until = sentence.busy_until.map_or(now, |u| u.max(now)) + FRAME;
        sentence.busy_until = Some(until);
        let us = until.saturating_duration_since(self.epoch).as_micros().max(1);
        self.busy_until_us.store(u64::try_from(us).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
        sentence.first_sent.get_or_insert(now);
        sentence.last_sent = Some(now);
        sentence.frames = sentence.frames.saturating_add(1);
    }

    /// Player: mark `name` went out at `now`, after the sentence's audio. Its expected playout
    /// end is the later of the last frame sent + 20 ms and the first frame sent + the
    /// sentence's audio length (a stall in sending delays the end); `now` without audio.
    pub fn mark_sent(&self, sentence: &mut Sentence, name: String, now: Instant) {
        let expected = match (sentence.first_sent, sentence.last_sent) {
            (Some(first), Some(last)) => (last + FRAME).max(first + FRAME * sentence.frames),
            _ => now,
        };
        sentence.first_sent = None;
        sentence.last_sent = None;
        sentence.frames = 0;
        let mut shared = self.shared();
        if shared.pending.len() == PENDING_MARKS {
            shared.pending.pop_front();
        }
        shared.pending.push_back((name, expected));
    }

    /// Player: `clear` was sent (barge-in). The marks waiting for their echo never played: their
    /// echoes (a carrier returns them at once) are not delay.
    pub fn cleared(&self, sentence: &mut Sentence) {
        sentence.first_sent = None;
        sentence.last_sent = None;
        sentence.frames = 0;
        self.shared().pending.clear();
    }

    /// Session: the carrier echoed mark `name` at `now`: the playback delay (how much later
    /// than expected the audio before it finished playing; 0 when on time or early), or `None`
    /// for a mark not waited for (cleared, unknown, or forgotten).
    pub fn mark_echoed(&self, name: &str, now: Instant) -> Option<Duration> {
        let mut shared = self.shared();
        let i = shared.pending.iter().position(|(n, _)| n == name)?;
        let (_, expected) = shared.pending.remove(i)?;
        Some(now.saturating_duration_since(expected))
    }

    /// Session: the caller's speech started at `at`.
    pub fn caller_started(&self, at: Instant) {
        let agent = self.agent_until();
        let mut shared = self.shared();
        shared.dead_air.activity(at, agent);
        shared.dead_air.caller_speaking = true;
    }

    /// Session: the caller's speech ended at `at`.
    pub fn caller_ended(&self, at: Instant) {
        let mut shared = self.shared();
        shared.dead_air.caller_speaking = false;
        shared.dead_air.quiet_since = shared.dead_air.quiet_since.max(at);
    }

    /// Session, at the end of the call (`now`): dead air (count, total) including a trailing
    /// silence, and the agent's audio sent.
    pub fn finish(&self, now: Instant) -> (u64, Duration, Duration) {
        let agent = self.agent_until();
        let mut shared = self.shared();
        shared.dead_air.activity(now, agent);
        let frames = self.frames.load(Ordering::Relaxed);
        (shared.dead_air.count, shared.dead_air.total, FRAME * u32::try_from(frames).unwrap_or(u32::MAX))
    }
}

/// Playback delays of the marks that came back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delays {
    pub count: u64,
    sum: f64,
    max: f64,
}

impl Delays {
    pub fn add(&mut self, delay: Duration) {
        let s = delay.as_secs_f64();
        self.count += 1;
        self.sum += s;
        self.max = self.max.max(s);
    }

    pub fn mean_seconds(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    pub fn max_seconds(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }
}

/// The E-model (ITU-T G.107), simplified: one-way delay `d` (ms) and packet loss `ppl` (%) on
/// G.711 with PLC, all other impairments at their defaults (R₀ − Is = 93.2, A = 0).
///
/// R = 93.2 − Id − Ie,eff; Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3);
/// Ie,eff = Ie + (95 − Ie)·Ppl / (Ppl + Bpl) with Ie = 0, Bpl = 25.1.
pub fn r_factor(d_ms: f64, ppl_percent: f64) -> f64 {
    let d = d_ms.max(0.0);
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ppl = ppl_percent.clamp(0.0, 100.0);
    let ie_eff = IE_G711 + (95.0 - IE_G711) * ppl / (ppl + BPL_G711_PLC);
    93.2 - id - ie_eff
}

/// MOS from R (G.107 Annex B): 1 + 0.035R + 7·10⁻⁶·R(R − 60)(100 − R), 1 below R = 0, and
/// clamped to [1, 4.5].
pub fn mos(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    if r >= 100.0 {
        return 4.5;
    }
    (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5)
}

/// The one-way delay the E-model is given (ms): the mean playback delay + a jitter buffer of
/// twice the inbound jitter + [`FIXED_DELAY_MS`].
pub fn one_way_delay_ms(playback_delay_seconds: f64, jitter_seconds: f64) -> f64 {
    playback_delay_seconds * 1000.0 + 2.0 * jitter_seconds * 1000.0 + FIXED_DELAY_MS
}

/// A call's line quality, as stored when the call ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallQuality {
    /// When the figures were taken (the end of the media session).
    pub measured_at: DateTime<Utc>,
    pub inbound: InboundQuality,
    pub playback: PlaybackQuality,
    pub conversation: ConversationQuality,
    /// The MOS estimate; absent when no inbound frame arrived (nothing to estimate from).
    pub estimate: Option<QualityEstimate>,
}

/// The caller's audio as it arrived (from the carrier's sequence numbers and timestamps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InboundQuality {
    /// Frames sent by the carrier per its sequence numbers (first to highest, less other
    /// messages).
    pub frames_expected: u64,
    /// Distinct frames received (late ones included, duplicates not).
    pub frames_received: u64,
    /// Sequence numbers never received.
    pub frames_lost: u64,
    /// Frames that arrived after a higher sequence number (reordered).
    pub frames_late: u64,
    /// Frames whose sequence number had already arrived.
    pub frames_duplicated: u64,
    /// Frames (and other messages) whose numbers could not be used: a jump of more than 3000
    /// sequence numbers, a number before the first frame's, a timestamp reset, a mark or dtmf
    /// without a sequence number.
    pub frames_unknown: u64,
    /// RFC 3550 interarrival jitter at the end of the call, seconds.
    pub jitter_seconds: f64,
}

/// The agent's audio as the caller heard it (from the echoes of our marks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlaybackQuality {
    /// Marks echoed back (marks cleared by barge-in are not counted).
    pub marks_returned: u64,
    /// Mean playback delay of the returned marks, seconds; absent when none returned.
    pub delay_mean_seconds: Option<f64>,
    pub delay_max_seconds: Option<f64>,
}

/// Who spoke and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConversationQuality {
    pub barge_ins: u64,
    /// Periods where neither side spoke for longer than `LIVE_DEAD_AIR_SECONDS`.
    pub dead_air_count: u64,
    pub dead_air_seconds: f64,
    /// The caller's speech per voice activity detection, seconds.
    pub caller_speech_seconds: f64,
    /// The agent's audio sent, seconds.
    pub agent_speech_seconds: f64,
    /// caller / (caller + agent); absent when neither spoke.
    pub talk_ratio: Option<f64>,
}

/// The simplified E-model's inputs and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QualityEstimate {
    /// Mean opinion score, 1 to 4.5.
    pub mos: f64,
    pub r_factor: f64,
    /// Mean playback delay + 2 × jitter + 40 ms fixed.
    pub one_way_delay_ms: f64,
    /// (lost + late) / expected, percent.
    pub loss_percent: f64,
}

/// Everything a session measured, when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Measured<'a> {
    pub inbound: &'a Inbound,
    pub delays: Delays,
    pub barge_ins: u64,
    pub dead_air: (u64, Duration),
    pub caller_speech: Duration,
    pub agent_speech: Duration,
}

impl CallQuality {
    pub fn from_measured(m: Measured<'_>, measured_at: DateTime<Utc>) -> Self {
        let i = m.inbound;
        let expected = i.expected();
        let caller = m.caller_speech.as_secs_f64();
        let agent = m.agent_speech.as_secs_f64();
        let estimate = (i.received() > 0).then(|| {
            let loss_percent =
                if expected == 0 { 0.0 } else { ((i.lost() + i.late()) as f64 / expected as f64 * 100.0).min(100.0) };
            let one_way_delay_ms = one_way_delay_ms(m.delays.mean_seconds().unwrap_or(0.0), i.jitter_seconds());
            let r = r_factor(one_way_delay_ms, loss_percent);
            QualityEstimate { mos: mos(r), r_factor: r, one_way_delay_ms, loss_percent }
        });
        Self {
            measured_at,
            inbound: InboundQuality {
                frames_expected: expected,
                frames_received: i.received(),
                frames_lost: i.lost(),
                frames_late: i.late(),
                frames_duplicated: i.duplicated(),
                frames_unknown: i.unknown(),
                jitter_seconds: i.jitter_seconds(),
            },
            playback: PlaybackQuality {
                marks_returned: m.delays.count,
                delay_mean_seconds: m.delays.mean_seconds(),
                delay_max_seconds: m.delays.max_seconds(),
            },
            conversation: ConversationQuality {
                barge_ins: m.barge_ins,
                dead_air_count: m.dead_air.0,
                dead_air_seconds: m.dead_air.1.as_secs_f64(),
                caller_speech_seconds: caller,
                agent_speech_seconds: agent,
                talk_ratio: (caller + agent > 0.0).then(|| caller / (caller + agent)),
            },
            estimate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames on a steady 20 ms clock: (seq, timestamp ms, arrival s).
    fn steady(n: u64) -> impl Iterator<Item = (u64, u64, f64)> {
        (0..n).map(|k| (k + 2, k * 20, 10.0 + k as f64 * 0.02))
    }

    #[test]
    fn a_steady_stream_has_no_jitter_or_loss() {
        let mut i = Inbound::default();
        for (s, t, a) in steady(500) {
            assert_eq!(i.media(s, t, a), Frame::InOrder);
        }
        assert_eq!(
            (i.expected(), i.received(), i.lost(), i.late(), i.duplicated(), i.unknown()),
            (500, 500, 0, 0, 0, 0)
        );
        assert!(i.jitter_seconds() < 1e-9, "{}", i.jitter_seconds());
    }

    #[test]
    fn loss_reordering_and_duplicates_are_counted_exactly() {
        let mut i = Inbound::default();
        // 2..=101, without 10 and 11 (lost), 20 after 21 (late), 30 twice (duplicate).
        for s in 2..=101u64 {
            if s == 10 || s == 11 || s == 20 {
                continue;
            }
            i.media(s, (s - 2) * 20, s as f64 * 0.02);
            if s == 21 {
                assert_eq!(i.media(20, 18 * 20, s as f64 * 0.02), Frame::Late);
            }
            if s == 30 {
                assert_eq!(i.media(30, 28 * 20, s as f64 * 0.02), Frame::Duplicated);
            }
        }
        // A mark echo's number between frames is no loss.
        i.other(Some(102));
        i.media(103, 100 * 20, 103.0 * 0.02);
        assert_eq!(i.expected(), 101);
        assert_eq!((i.received(), i.lost(), i.late(), i.duplicated(), i.unknown()), (99, 2, 1, 1, 0));
        // A mark without a usable number is unknown.
        i.other(None);
        assert_eq!(i.unknown(), 1);
        // A jump of more than a minute is unknown, not loss.
        assert_eq!(i.media(103 + MAX_DROPOUT + 1, 0, 3.0), Frame::Unknown);
        assert_eq!(i.lost(), 2);
        assert_eq!(i.media(1, 0, 3.0), Frame::Unknown, "before the first frame");
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        // Every 10th frame arrives 30 ms late: D = +30 ms then −30 ms (the next is on time).
        let mut i = Inbound::default();
        let mut j = 0.0f64;
        let mut previous: Option<f64> = None;
        for (s, t, a) in steady(1000) {
            let a = if s % 10 == 0 { a + 0.03 } else { a };
            i.media(s, t, a);
            let transit = a - t as f64 / 1000.0;
            if let Some(p) = previous {
                j += ((transit - p).abs() - j) / 16.0;
            }
            previous = Some(transit);
        }
        assert!((i.jitter_seconds() - j).abs() < 1e-12);
        // Two 30 ms steps in 10 frames: J settles around a few ms.
        assert!(i.jitter_seconds() > 0.002 && i.jitter_seconds() < 0.01, "{}", i.jitter_seconds());
    }

    #[test]
    fn e_model_matches_the_formula() {
        // No loss, 40 ms: R = 93.2 − 0.96.
        let r = r_factor(40.0, 0.0);
        assert!((r - 92.24).abs() < 1e-9);
        let expected = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r);
        assert!((mos(r) - expected).abs() < 1e-12);
        assert!(mos(r) > 4.3 && mos(r) <= 4.5);
        // 300 ms and 5 % loss.
        let r = r_factor(300.0, 5.0);
        let id = 0.024 * 300.0 + 0.11 * (300.0 - 177.3);
        let ie = 95.0 * 5.0 / (5.0 + 25.1);
        assert!((r - (93.2 - id - ie)).abs() < 1e-9);
        assert!((mos(r) - (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r))).abs() < 1e-12);
        assert_eq!(mos(-5.0), 1.0);
        assert_eq!(mos(120.0), 4.5);
        assert_eq!(mos(f64::NAN), 1.0);
        assert!(mos(r_factor(2000.0, 100.0)) >= 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn marks_measure_the_playback_delay_and_cleared_ones_do_not_count() {
        let out = Outbound::new(Duration::from_secs(3));
        let mut sentence = Sentence::default();
        let start = Instant::now();
        // 25 frames paced at 20 ms, then the mark: expected end = last + 20 ms = start + 500 ms.
        for k in 0..25 {
            out.frame_sent(&mut sentence, start + FRAME * k);
        }
        out.mark_sent(&mut sentence, "turn-2-1".into(), start + FRAME * 24);
        assert_eq!(out.mark_echoed("turn-2-1", start + Duration::from_millis(650)), Some(Duration::from_millis(150)));
        assert_eq!(out.mark_echoed("turn-2-1", start + Duration::from_millis(700)), None, "once");
        // A stall: 10 frames sent over 0.9 s: the expected end is the last + 20 ms.
        let s2 = start + Duration::from_secs(2);
        for k in 0..10 {
            out.frame_sent(&mut sentence, s2 + Duration::from_millis(100) * k);
        }
        out.mark_sent(&mut sentence, "turn-2-2".into(), s2 + Duration::from_millis(900));
        assert_eq!(out.mark_echoed("turn-2-2", s2 + Duration::from_millis(900)), Some(Duration::ZERO), "early: 0");
        // Cleared marks never count.
        out.frame_sent(&mut sentence, s2 + Duration::from_secs(1));
        out.mark_sent(&mut sentence, "turn-4-1".into(), s2 + Duration::from_secs(1));
        out.cleared(&mut sentence);
        assert_eq!(out.mark_echoed("turn-4-1", s2 + Duration::from_secs(2)), None);
        let (_, _, agent) = out.finish(s2 + Duration::from_secs(2));
        assert_eq!(agent, FRAME * 36);
    }

    #[tokio::test(start_paused = true)]
    async fn dead_air_counts_silences_longer_than_the_threshold() {
        let out = Outbound::new(Duration::from_secs(3));
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // 4 s of silence, the caller speaks 4–6 s; the agent answers at 7 s for 1 s (short gap);
        // then 5 s of silence until the caller speaks at 13 s until 14 s; the call ends at 15 s.
        out.caller_started(at(4.0));
        out.caller_ended(at(6.0));
        let mut sentence = Sentence::default();
        for k in 0..50 {
            out.frame_sent(&mut sentence, at(7.0) + FRAME * k);
        }
        // The caller starting while the agent talks is no dead air.
        out.caller_started(at(7.5));
        out.caller_ended(at(7.6));
        out.caller_started(at(13.0));
        out.caller_ended(at(14.0));
        let (count, total, agent) = out.finish(at(15.0));
        assert_eq!(count, 2, "{total:?}");
        assert!((total.as_secs_f64() - 9.0).abs() < 1e-6, "4 s + 5 s: {total:?}");
        assert_eq!(agent, Duration::from_secs(1));
    }

    proptest::proptest! {
        /// Whatever numbers arrive, the estimator answers: jitter ≥ 0 and finite, counts bounded.
        #[test]
        fn any_numbers_are_taken_without_panic(
            frames in proptest::collection::vec(
                (proptest::prop_oneof![0u64..300, proptest::num::u64::ANY], proptest::num::u64::ANY, 0.0f64..1e7, proptest::bool::ANY),
                0..400,
            ),
        ) {
            let mut i = Inbound::default();
            let mut media = 0u64;
            let all = frames.len() as u64;
            for (seq, ts, arrival, is_media) in frames {
                if is_media {
                    i.media(seq, ts, arrival);
                    media += 1;
                } else {
                    i.other(Some(seq));
                }
                proptest::prop_assert!(i.jitter_seconds() >= 0.0 && i.jitter_seconds().is_finite());
            }
            proptest::prop_assert!(i.received() + i.duplicated() <= media);
            proptest::prop_assert!(i.late() <= i.received());
            proptest::prop_assert!(i.lost() <= i.expected());
            proptest::prop_assert!(i.expected() <= all.saturating_mul(MAX_DROPOUT + 1));
            let q = CallQuality::from_measured(
                Measured { inbound: &i, delays: Delays::default(), barge_ins: 0, dead_air: (0, Duration::ZERO),
                    caller_speech: Duration::ZERO, agent_speech: Duration::ZERO },
                Utc::now(),
            );
            if let Some(e) = q.estimate {
                proptest::prop_assert!((1.0..=4.5).contains(&e.mos) && e.loss_percent >= 0.0 && e.loss_percent <= 100.0);
            }
        }
    }
}
