//! Recording analysis: levels, speech, noise, dropouts and DTMF per channel, and the
//! shape of the conversation when the recording has one channel per party.
//!
//! Level convention: dBFS = `20·log10(rms / 32768)` (a full-scale sine is -3 dBFS); levels
//! of pure digital silence are reported as [`MIN_DBFS`] so results stay finite and
//! serialisable.

use serde::{Deserialize, Serialize};

use crate::dtmf::{DtmfConfig, DtmfDigit, detect_dtmf};
use crate::vad::{
    FrameDecisions, FrameVad, SegmenterConfig, VadConfig, VadKind, detect_frames, segments_from_decisions,
};
use crate::{DecodedAudio, DspError, Encoding, check_rate};

/// Floor for every dBFS figure (digital silence).
pub const MIN_DBFS: f64 = -120.0;

/// Analysis settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalysisConfig {
    /// Voice-activity detector (tier and its settings).
    pub vad: VadConfig,
    /// How frame decisions become speech segments (minimum speech, pause bridging).
    pub segments: SegmenterConfig,
    /// Whether to look for DTMF digits.
    pub detect_dtmf: bool,
    /// DTMF thresholds.
    pub dtmf: DtmfConfig,
    /// A run of identical samples at least this long is a dropout / digital silence.
    pub dropout_min_ms: u32,
    /// At most this many dropout runs and response gaps are listed (all are counted).
    pub max_listed: usize,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            vad: VadConfig::default(),
            segments: SegmenterConfig::default(),
            detect_dtmf: true,
            dtmf: DtmfConfig::default(),
            dropout_min_ms: 100,
            max_listed: 100,
        }
    }
}

impl AnalysisConfig {
    /// Default settings with the given VAD tier.
    pub fn with_vad(kind: VadKind) -> Self {
        Self { vad: VadConfig::for_kind(kind), ..Self::default() }
    }
}

/// A time interval in seconds from the start of the recording.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start, seconds.
    pub start: f64,
    /// End, seconds (exclusive).
    pub end: f64,
}

impl Segment {
    /// Length in seconds.
    pub fn seconds(&self) -> f64 {
        self.end - self.start
    }
}

/// A run of identical samples (exact zeros or a stuck value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dropout {
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// The repeated sample value (0 for digital silence).
    pub value: i16,
}

/// Dropout / digital-silence runs of one channel.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DropoutSummary {
    /// Number of runs at least `dropout_min_ms` long.
    pub count: usize,
    /// Their total length, seconds.
    pub total_seconds: f64,
    /// The longest run, seconds (0 when none).
    pub longest_seconds: f64,
    /// The first `max_listed` runs in time order.
    pub runs: Vec<Dropout>,
}

/// Analysis of one channel (one party).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelAnalysis {
    /// Channel index (0 = first channel of the file).
    pub channel: usize,
    /// Length, seconds.
    pub duration_seconds: f64,
    /// Total length of the speech segments, seconds.
    pub speech_seconds: f64,
    /// Speech segments after smoothing, in time order.
    pub speech_segments: Vec<Segment>,
    /// Share of the duration without speech (0..1).
    pub silence_share: f64,
    /// Start of the first speech segment, seconds.
    pub time_to_first_speech_seconds: Option<f64>,
    /// Level over the speech segments, dBFS (None without speech).
    pub active_speech_level_dbfs: Option<f64>,
    /// Level over the whole channel, dBFS.
    pub rms_dbfs: f64,
    /// Largest absolute sample, dBFS.
    pub peak_dbfs: f64,
    /// Share of samples within 1% of the codec's full scale (0..1).
    pub clipping_share: f64,
    /// Mean sample value as a fraction of full scale (-1..1).
    pub dc_offset: f64,
    /// Background level, dBFS: median level of the 20 ms frames away from speech (or the
    /// 10th percentile of all frames when there is under half a second of non-speech).
    pub noise_floor_dbfs: f64,
    /// Speech-to-noise ratio, dB: speech power (noise removed) over noise power.
    pub snr_db: Option<f64>,
    /// Runs of identical samples (digital silence, dropouts, stuck converters).
    pub dropouts: DropoutSummary,
    /// DTMF digits in time order.
    pub dtmf: Vec<DtmfDigit>,
}

/// Statistics of the gaps between one party's turn ending and the other's starting.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GapStats {
    /// Number of positive gaps (handovers without overlap).
    pub count: usize,
    /// Mean gap, seconds.
    pub mean_seconds: Option<f64>,
    /// Median gap, seconds.
    pub median_seconds: Option<f64>,
    /// 90th percentile, seconds.
    pub p90_seconds: Option<f64>,
    /// Longest gap, seconds.
    pub max_seconds: Option<f64>,
    /// The first `max_listed` gaps.
    pub gaps: Vec<ResponseGap>,
}

/// One handover between parties.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResponseGap {
    /// Channel that stopped speaking.
    pub from_channel: usize,
    /// Channel that answered.
    pub to_channel: usize,
    /// When the first party stopped, seconds.
    pub at: f64,
    /// Silence before the answer, seconds.
    pub seconds: f64,
}

/// The longest stretch of one party holding the floor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Monologue {
    /// The speaking channel.
    pub channel: usize,
    /// Start, seconds.
    pub start: f64,
    /// Length, seconds.
    pub seconds: f64,
}

/// Conversation metrics across channels (present when the recording has two channels).
///
/// A *turn* is a maximal run of one party's speech segments (ordered by start) not broken by
/// a segment of the other party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationAnalysis {
    /// Each channel's share of the total speech time (sums to 1 when anyone spoke).
    pub talk_share: Vec<f64>,
    /// Channel 0's speech time divided by channel 1's (None when channel 1 is silent).
    pub talk_ratio: Option<f64>,
    /// Number of turns.
    pub turns: usize,
    /// Turns per minute of recording.
    pub turns_per_minute: f64,
    /// The longest turn.
    pub longest_monologue: Option<Monologue>,
    /// Number of intervals where both parties speak.
    pub overlap_count: usize,
    /// Total time both parties speak, seconds.
    pub overlap_seconds: f64,
    /// Per channel: how often it started speaking while the other was speaking.
    pub interruptions: Vec<usize>,
    /// Longest silence of both parties between the first and the last speech, seconds.
    pub longest_dead_air_seconds: f64,
    /// Start of the first speech of anyone, seconds.
    pub time_to_first_speech_seconds: Option<f64>,
    /// Gaps between one party stopping and the other answering.
    pub response_gaps: GapStats,
}

/// The full result of [`analyze`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingAnalysis {
    /// Sample rate of the analysed audio, Hz.
    pub sample_rate: u32,
    /// Encoding the audio arrived in.
    pub encoding: Encoding,
    /// Length, seconds.
    pub duration_seconds: f64,
    /// The VAD tier used.
    pub vad: VadKind,
    /// One entry per channel.
    pub channels: Vec<ChannelAnalysis>,
    /// Present for two-channel recordings.
    pub conversation: Option<ConversationAnalysis>,
}

fn dbfs(power: f64) -> f64 {
    if power <= 0.0 {
        return MIN_DBFS;
    }
    (10.0 * (power / (32768.0 * 32768.0)).log10()).max(MIN_DBFS)
}

/// Level statistics from one pass over the samples.
struct Levels {
    sum: i64,
    sum_sq: f64,
    peak: i32,
    clipped: usize,
    frame_len: usize,
    frame_power: Vec<f64>,
    dropouts: DropoutSummary,
}

const LEVEL_FRAME_SECONDS: f64 = 0.02;

/// Sums of one level frame (exact integers).
struct FrameLevels {
    sum: i64,
    sum_sq: i64,
    peak: i32,
    clipped: usize,
}

/// Samples per block of [`frame_levels`] (divides the 20 ms frame at every supported rate).
/// The block's sum and clip count use narrow accumulators, widened once per block; 32
/// samples cannot overflow them.
const LEVEL_BLOCK: usize = 32;

/// Sum, sum of squares, peak magnitude and count of samples with magnitude `>= clip_at`
/// (a positive value) of `frame`. One short loop per statistic over each block: each
/// vectorises on its own, fused they do not.
fn frame_levels(frame: &[i16], clip_at: i32) -> FrameLevels {
    // `clip_at` is below full scale, so it fits i16 (and `-clip` too).
    let clip = i16::try_from(clip_at).unwrap_or(i16::MAX);
    let mut sum = 0i64;
    let mut sum_sq = 0u64;
    let mut max = 0i16;
    let mut min = 0i16;
    let mut clipped = 0usize;
    let mut blocks = frame.chunks_exact(LEVEL_BLOCK);
    for block in &mut blocks {
        let mut bsum = 0i32;
        for &s in block {
            bsum += i32::from(s);
        }
        for &s in block {
            let a = u32::from(s.unsigned_abs());
            sum_sq += u64::from(a * a);
        }
        let mut bclip = 0u8;
        for &s in block {
            max = max.max(s);
            min = min.min(s);
            bclip += u8::from(s >= clip || s <= -clip);
        }
        sum += i64::from(bsum);
        clipped += usize::from(bclip);
    }
    for &s in blocks.remainder() {
        sum += i64::from(s);
        let a = u32::from(s.unsigned_abs());
        sum_sq += u64::from(a * a);
        max = max.max(s);
        min = min.min(s);
        clipped += usize::from(s >= clip || s <= -clip);
    }
    FrameLevels { sum, sum_sq: sum_sq as i64, peak: i32::from(max).max(-i32::from(min)), clipped }
}

impl Levels {
    fn new(len: usize, rate: u32) -> Self {
        let frame_len = (f64::from(rate) * LEVEL_FRAME_SECONDS) as usize;
        Self {
            sum: 0,
            sum_sq: 0.0,
            peak: 0,
            clipped: 0,
            frame_len,
            frame_power: Vec::with_capacity(len / frame_len + 1),
            dropouts: DropoutSummary::default(),
        }
    }

    /// Adds the level frames of `x`, the next samples of the channel: a whole number of
    /// frames except at the end of the channel.
    fn add(&mut self, x: &[i16], clip_at: i32) {
        for frame in x.chunks(self.frame_len) {
            let f = frame_levels(frame, clip_at);
            self.sum += f.sum;
            self.sum_sq += f.sum_sq as f64;
            self.peak = self.peak.max(f.peak);
            self.clipped += f.clipped;
            if frame.len() == self.frame_len {
                self.frame_power.push(f.sum_sq as f64 / self.frame_len as f64);
            }
        }
    }
}

fn clip_level(encoding: Encoding) -> i32 {
    (f64::from(encoding.full_scale()) * 0.99) as i32
}

#[cfg(test)]
fn dropouts(x: &[i16], rate: u32, cfg: &AnalysisConfig) -> DropoutSummary {
    let mut out = DropoutSummary::default();
    DropoutScan::new(rate, cfg).scan(x, x.len(), &mut out);
    out
}

/// Finds the runs of identical samples at least `dropout_min_ms` long.
///
/// The runs are the maximal runs of equal samples, and every run at least `min_len` long
/// contains a multiple of `min_len`: probing only those positions and growing each probe
/// into its maximal run finds the same runs, in order, as a scan of every sample.
struct DropoutScan<'a> {
    min_len: usize,
    rate: f64,
    cfg: &'a AnalysisConfig,
    probe: usize,
}

impl<'a> DropoutScan<'a> {
    fn new(rate: u32, cfg: &'a AnalysisConfig) -> Self {
        let min_len = ((f64::from(rate) * f64::from(cfg.dropout_min_ms) / 1000.0) as usize).max(2);
        Self { min_len, rate: f64::from(rate), cfg, probe: 0 }
    }

    /// Probes the positions below `until` (runs may extend past it, within `x`).
    fn scan(&mut self, x: &[i16], until: usize, out: &mut DropoutSummary) {
        let min_len = self.min_len;
        while self.probe < until {
            let probe = self.probe;
            let v = x[probe];
            let start = probe - x[..probe].iter().rev().take_while(|&&s| s == v).count();
            let end = probe + 1 + x[probe + 1..].iter().take_while(|&&s| s == v).count();
            if end - start >= min_len {
                let secs = (end - start) as f64 / self.rate;
                out.count += 1;
                out.total_seconds += secs;
                out.longest_seconds = out.longest_seconds.max(secs);
                if out.runs.len() < self.cfg.max_listed {
                    out.runs.push(Dropout { start: start as f64 / self.rate, end: end as f64 / self.rate, value: v });
                }
                // The next run starts at `end`; continue at the first probe point inside it or later.
                self.probe = end.div_ceil(min_len) * min_len;
            } else {
                self.probe += min_len;
            }
        }
    }
}

/// Levels, dropouts and VAD decisions of one channel. For the fast detector working at the
/// channel's own rate (8 and 16 kHz), all three run block by block in one pass, so each
/// block is read from memory once while it is in cache; otherwise (resampling, the neural
/// tier) levels and dropouts come from one pass and the VAD from [`detect_frames`].
fn levels_and_decisions(
    x: &[i16],
    rate: u32,
    encoding: Encoding,
    cfg: &AnalysisConfig,
) -> Result<(Levels, FrameDecisions), DspError> {
    let clip_at = clip_level(encoding);
    let mut lv = Levels::new(x.len(), rate);
    let mut scan = DropoutScan::new(rate, cfg);
    if cfg.vad.kind != VadKind::Fast || cfg.vad.detector_rate(rate) != rate {
        lv.add(x, clip_at);
        scan.scan(x, x.len(), &mut lv.dropouts);
        let decisions = detect_frames(x, rate, &cfg.vad)?;
        return Ok((lv, decisions));
    }
    check_rate(rate)?;
    let mut vad = FrameVad::new(&cfg.vad, rate)?;
    let vad_len = vad.frame_len();
    debug_assert_eq!(vad.lag_frames(), 0);
    // A block holds whole level frames and whole VAD frames (10, 20 and 30 ms all divide
    // 240 ms), so only the end of the channel leaves partial frames.
    let block = rate as usize * 240 / 1000;
    debug_assert!(block.is_multiple_of(lv.frame_len) && block.is_multiple_of(vad_len));
    let mut voiced = Vec::with_capacity(x.len() / vad_len);
    let mut at = 0;
    for b in x.chunks(block) {
        lv.add(b, clip_at);
        voiced.extend(b.chunks_exact(vad_len).map(|f| vad.is_speech(f)));
        at += b.len();
        scan.scan(x, at, &mut lv.dropouts);
    }
    Ok((lv, FrameDecisions { frame_seconds: vad.frame_seconds(), voiced }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn analyze_channel(
    index: usize,
    x: &[i16],
    rate: u32,
    encoding: Encoding,
    cfg: &AnalysisConfig,
) -> Result<ChannelAnalysis, DspError> {
    let duration = x.len() as f64 / f64::from(rate);
    let (lv, mut decisions) = levels_and_decisions(x, rate, encoding, cfg)?;
    let dtmf = if cfg.detect_dtmf { detect_dtmf(x, rate, cfg.dtmf) } else { Vec::new() };
    // Touch tones are not speech (the fast tier calls them voiced): mask their frames.
    for d in &dtmf {
        let fs = decisions.frame_seconds;
        let from = ((d.start - 0.02).max(0.0) / fs) as usize;
        let to = (((d.end + 0.02) / fs).ceil() as usize).min(decisions.voiced.len());
        decisions.voiced[from.min(to)..to].iter_mut().for_each(|v| *v = false);
    }
    let segments: Vec<Segment> = segments_from_decisions(&decisions, &cfg.segments)
        .into_iter()
        .map(|(start, end)| Segment { start, end: end.min(duration) })
        .collect();
    let speech_seconds: f64 = segments.iter().map(Segment::seconds).sum();

    // Classify 20 ms level frames: in speech (centre inside a segment), near speech (within
    // 100 ms of one) or background.
    let fs = lv.frame_len as f64 / f64::from(rate);
    let mut speech_power = Vec::new();
    let mut background = Vec::new();
    let mut seg_iter = segments.iter().peekable();
    for (k, &p) in lv.frame_power.iter().enumerate() {
        let centre = (k as f64 + 0.5) * fs;
        while seg_iter.peek().is_some_and(|s| s.end + 0.1 < centre) {
            seg_iter.next();
        }
        match seg_iter.peek() {
            Some(s) if centre >= s.start && centre < s.end => speech_power.push(p),
            Some(s) if centre >= s.start - 0.1 => {}
            _ => background.push(p),
        }
    }
    let noise_power = if background.len() as f64 * fs >= 0.5 {
        background.sort_by(f64::total_cmp);
        percentile(&background, 0.5)
    } else {
        let mut all = lv.frame_power.clone();
        all.sort_by(f64::total_cmp);
        percentile(&all, 0.1)
    };
    let (active_level, snr) = if speech_power.is_empty() {
        (None, None)
    } else {
        let p = speech_power.iter().sum::<f64>() / speech_power.len() as f64;
        let snr = if noise_power > 0.0 {
            let clean = (p - noise_power).max(noise_power * 1e-3);
            (10.0 * (clean / noise_power).log10()).clamp(-30.0, 140.0)
        } else {
            140.0
        };
        (Some(dbfs(p)), Some(snr))
    };
    let n = x.len().max(1) as f64;
    Ok(ChannelAnalysis {
        channel: index,
        duration_seconds: duration,
        speech_seconds,
        time_to_first_speech_seconds: segments.first().map(|s| s.start),
        speech_segments: segments,
        silence_share: if duration > 0.0 { (1.0 - speech_seconds / duration).clamp(0.0, 1.0) } else { 1.0 },
        active_speech_level_dbfs: active_level,
        rms_dbfs: dbfs(lv.sum_sq / n),
        peak_dbfs: if lv.peak == 0 { MIN_DBFS } else { 20.0 * (f64::from(lv.peak) / 32768.0).log10() },
        clipping_share: lv.clipped as f64 / n,
        dc_offset: lv.sum as f64 / n / 32768.0,
        noise_floor_dbfs: dbfs(noise_power),
        snr_db: snr,
        dropouts: lv.dropouts,
        dtmf,
    })
}

/// Analyses a decoded recording. Channels are analysed independently; two-channel
/// recordings also get [`ConversationAnalysis`].
pub fn analyze(audio: &DecodedAudio, config: &AnalysisConfig) -> Result<RecordingAnalysis, DspError> {
    if audio.frames() == 0 {
        return Err(DspError::Empty);
    }
    let channels = audio
        .channels
        .iter()
        .enumerate()
        .map(|(i, x)| analyze_channel(i, x, audio.sample_rate, audio.encoding, config))
        .collect::<Result<Vec<_>, _>>()?;
    let duration = audio.duration_seconds();
    let conversation = if channels.len() == 2 {
        let segs: Vec<&[Segment]> = channels.iter().map(|c| &c.speech_segments[..]).collect();
        Some(conversation(&segs, duration, config.max_listed))
    } else {
        None
    };
    Ok(RecordingAnalysis {
        sample_rate: audio.sample_rate,
        encoding: audio.encoding,
        duration_seconds: duration,
        vad: config.vad.kind,
        channels,
        conversation,
    })
}

fn intersect(a: &[Segment], b: &[Segment]) -> Vec<Segment> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end.min(b[j].end);
        if end > start {
            out.push(Segment { start, end });
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Conversation metrics from per-channel speech segments (each sorted by start).
pub fn conversation(segments: &[&[Segment]], duration_seconds: f64, max_listed: usize) -> ConversationAnalysis {
    let speech: Vec<f64> = segments.iter().map(|s| s.iter().map(Segment::seconds).sum()).collect();
    let total: f64 = speech.iter().sum();
    let talk_share = speech.iter().map(|s| if total > 0.0 { s / total } else { 0.0 }).collect();
    let talk_ratio = (speech.len() == 2 && speech[1] > 0.0).then(|| speech[0] / speech[1]);

    // All segments tagged with their channel, by start time.
    let mut all: Vec<(usize, Segment)> =
        segments.iter().enumerate().flat_map(|(c, s)| s.iter().map(move |seg| (c, *seg))).collect();
    all.sort_by(|a, b| a.1.start.total_cmp(&b.1.start));

    // Turns.
    let mut turns: Vec<(usize, f64, f64)> = Vec::new();
    for &(c, s) in &all {
        match turns.last_mut() {
            Some(t) if t.0 == c => t.2 = t.2.max(s.end),
            _ => turns.push((c, s.start, s.end)),
        }
    }
    let longest_monologue = turns
        .iter()
        .max_by(|a, b| (a.2 - a.1).total_cmp(&(b.2 - b.1)))
        .map(|&(channel, start, end)| Monologue { channel, start, seconds: end - start });

    // Response gaps between consecutive turns of different parties.
    let mut gaps = Vec::new();
    for w in turns.windows(2) {
        let gap = w[1].1 - w[0].2;
        if gap > 0.0 {
            gaps.push(ResponseGap { from_channel: w[0].0, to_channel: w[1].0, at: w[0].2, seconds: gap });
        }
    }
    let mut sorted: Vec<f64> = gaps.iter().map(|g| g.seconds).collect();
    sorted.sort_by(f64::total_cmp);
    let response_gaps = GapStats {
        count: sorted.len(),
        mean_seconds: (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / sorted.len() as f64),
        median_seconds: (!sorted.is_empty()).then(|| percentile(&sorted, 0.5)),
        p90_seconds: (!sorted.is_empty()).then(|| percentile(&sorted, 0.9)),
        max_seconds: sorted.last().copied(),
        gaps: gaps.into_iter().take(max_listed).collect(),
    };

    // Overlap and interruptions (defined for two parties).
    let (overlaps, interruptions) = if segments.len() == 2 {
        let ov = intersect(segments[0], segments[1]);
        let mut intr = vec![0usize; 2];
        for (c, seg) in &all {
            let other = segments[1 - c];
            if other.iter().any(|o| o.start < seg.start && seg.start < o.end) {
                intr[*c] += 1;
            }
        }
        (ov, intr)
    } else {
        (Vec::new(), vec![0; segments.len()])
    };

    // Dead air: gaps in the union of everyone's speech.
    let mut longest_dead_air = 0f64;
    let mut covered_until: Option<f64> = None;
    for (_, s) in &all {
        if let Some(u) = covered_until {
            longest_dead_air = longest_dead_air.max(s.start - u);
            covered_until = Some(u.max(s.end));
        } else {
            covered_until = Some(s.end);
        }
    }

    ConversationAnalysis {
        talk_share,
        talk_ratio,
        turns: turns.len(),
        turns_per_minute: if duration_seconds > 0.0 { turns.len() as f64 / (duration_seconds / 60.0) } else { 0.0 },
        longest_monologue,
        overlap_count: overlaps.len(),
        overlap_seconds: overlaps.iter().map(Segment::seconds).sum(),
        interruptions,
        longest_dead_air_seconds: longest_dead_air,
        time_to_first_speech_seconds: all.first().map(|(_, s)| s.start),
        response_gaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: f64, end: f64) -> Segment {
        Segment { start, end }
    }

    #[test]
    fn conversation_metrics_from_known_segments() {
        let a = [seg(1.0, 4.0), seg(9.0, 12.0)];
        let b = [seg(3.5, 6.0), seg(7.0, 8.0), seg(10.0, 10.5)];
        let c = conversation(&[&a, &b], 60.0, 10);
        assert_eq!(c.turns, 4); // a, b(3.5-8), a, b(10-10.5)
        assert_eq!(c.turns_per_minute, 4.0);
        assert!((c.overlap_seconds - 1.0).abs() < 1e-9);
        assert_eq!(c.overlap_count, 2);
        assert_eq!(c.interruptions, vec![0, 2]);
        assert!((c.longest_dead_air_seconds - 1.0).abs() < 1e-9);
        assert_eq!(c.time_to_first_speech_seconds, Some(1.0));
        let m = c.longest_monologue.unwrap();
        assert_eq!((m.channel, m.start, m.seconds), (1, 3.5, 4.5));
        assert_eq!(c.response_gaps.count, 1);
        assert!((c.response_gaps.max_seconds.unwrap() - 1.0).abs() < 1e-9);
        assert!((c.talk_share[0] - 6.0 / 10.0).abs() < 1e-9);
        assert!((c.talk_ratio.unwrap() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn dropout_runs() {
        let mut x = vec![5i16; 100];
        x.extend(vec![0i16; 1000]);
        x.extend((0..500).map(|i| (i % 7 + 1) as i16));
        x.extend(vec![77i16; 900]);
        let cfg = AnalysisConfig::default();
        let d = dropouts(&x, 8000, &cfg);
        assert_eq!(d.count, 2);
        assert_eq!(d.runs[0].value, 0);
        assert!((d.runs[0].start - 100.0 / 8000.0).abs() < 1e-9);
        assert!((d.longest_seconds - 0.125).abs() < 1e-9);
        assert_eq!(d.runs[1].value, 77);
    }

    /// The probing search must find exactly the runs of a sample-by-sample scan.
    #[test]
    fn dropout_probing_matches_a_full_scan() {
        fn scan(x: &[i16], min_len: usize) -> Vec<(usize, usize, i16)> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < x.len() {
                let (start, v) = (i, x[i]);
                while i < x.len() && x[i] == v {
                    i += 1;
                }
                if i - start >= min_len {
                    out.push((start, i, v));
                }
            }
            out
        }
        let mut rng = crate::synth::Rng::new(7);
        for case in 0..300 {
            let mut x = Vec::new();
            while x.len() < 3000 {
                let len = match rng.next_u64() % 4 {
                    0 => 1 + (rng.next_u64() % 3) as usize,
                    1 => 1 + (rng.next_u64() % 40) as usize,
                    _ => 1 + (rng.next_u64() % 200) as usize,
                };
                let v = (rng.next_u64() % 3) as i16;
                x.extend(std::iter::repeat_n(v, len));
            }
            x.truncate(1000 + case * 7);
            for ms in [1u32, 2, 5, 10, 20] {
                let cfg = AnalysisConfig { dropout_min_ms: ms, max_listed: usize::MAX, ..AnalysisConfig::default() };
                let min_len = ((8000 * ms / 1000) as usize).max(2);
                let expected = scan(&x, min_len);
                let got = dropouts(&x, 8000, &cfg);
                assert_eq!(got.count, expected.len(), "case {case} ms {ms}");
                for (r, &(s, e, v)) in got.runs.iter().zip(&expected) {
                    assert_eq!((r.start, r.end, r.value), (s as f64 / 8000.0, e as f64 / 8000.0, v));
                }
            }
        }
    }
}
