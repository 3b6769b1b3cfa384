//! One live stream: frames from the client through [`LiveStream`], events back.
//!
//! [`Live`] is a stream's state and its work, whoever reads its messages: a `StreamAudio`
//! stream's own task ([`StreamTask`]), or a shared `StreamAudioCalls` stream's routing task,
//! which runs each of its legs' messages itself (`legs.rs`). A message (one frame, or a batch
//! of up to [`MAX_FRAMES_PER_MESSAGE`] that runs as if each frame had come alone) runs its
//! frames (a few microseconds each for the fast VAD, so inline on the async worker) and gives
//! the resulting responses; `StreamStats` come every `stats_interval` of media and at the end.
//!
//! A `StreamAudio` task sends the responses into a small bounded channel: a client that stops
//! reading stops the task from reading further frames, so a stream's memory stays bounded by
//! the `LiveStream` state plus [`EVENT_BUFFER`] events.
//!
//! Endings: the client half-closes → `finish` (an open utterance is emitted, forced), final
//! stats, OK. Server shutdown, the call's deadline or no message for the idle bound → the same
//! flush, then `Unavailable` / `DeadlineExceeded`. A protocol error (second config, oversized
//! frame, empty or overlong batch) → `InvalidArgument`. The client going away → the stream
//! stops.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use audio_dsp::{Frame, LiveStream, StreamEvent};
use kraliki_proto::audio::v1::{self as pb, stream_audio_request::Payload, stream_audio_response::Event as PbEvent};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::convert::{self, proto_duration};
use crate::metrics;

/// Most frames one `frames` message may carry (a second of 20 ms frames).
pub(crate) const MAX_FRAMES_PER_MESSAGE: usize = 50;

/// The frames of one message: a lone `frame`, or a `frames` batch.
enum Frames {
    One(Option<pb::AudioFrame>),
    Many(std::vec::IntoIter<pb::AudioFrame>),
}

impl Iterator for Frames {
    type Item = pb::AudioFrame;
    fn next(&mut self) -> Option<pb::AudioFrame> {
        match self {
            Frames::One(f) => f.take(),
            Frames::Many(it) => it.next(),
        }
    }
}

/// Events buffered towards a slow `StreamAudio` client before its stream stops reading frames.
pub(crate) const EVENT_BUFFER: usize = 8;

pub(crate) type EventSender = mpsc::Sender<Result<pb::StreamAudioResponse, Status>>;

/// How a stream ends.
pub(crate) enum End {
    /// The client half-closed: flush and finish OK.
    HalfClose,
    /// Flush, then end with this status.
    Flush(Status),
    /// End with this status at once.
    Fail(Status),
    /// The client is gone.
    Gone,
}

/// Samples as PCM16 little-endian bytes.
fn pcm16_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Microseconds since the Unix epoch.
fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

struct Clock {
    rate: u64,
    first_sequence: Option<u64>,
}

impl Clock {
    /// The frame's media timestamp in samples: from `timestamp` when given, else from its
    /// sequence number and length.
    fn timestamp(&mut self, f: &pb::AudioFrame, samples: u64) -> u64 {
        let first = *self.first_sequence.get_or_insert(f.sequence_number);
        match &f.timestamp {
            Some(d) if d.seconds >= 0 && d.nanos >= 0 => {
                (d.seconds as u64).saturating_mul(self.rate).saturating_add(d.nanos as u64 * self.rate / 1_000_000_000)
            }
            _ => f.sequence_number.saturating_sub(first).saturating_mul(samples),
        }
    }
}

fn arrival_us(f: &pb::AudioFrame) -> u64 {
    match &f.received_at {
        Some(t) if t.seconds >= 0 && t.nanos >= 0 => (t.seconds as u64) * 1_000_000 + (t.nanos as u64) / 1000,
        _ => micros(SystemTime::now()),
    }
}

/// One live stream's state: its `LiveStream`, its clock and counters, its slot.
pub(crate) struct Live {
    live: LiveStream,
    clock: Clock,
    max_frame_bytes: usize,
    bytes_per_sample: usize,
    events: Vec<StreamEvent>,
    stats_interval: f64,
    next_stats: f64,
    reported_seconds: f64,
    utterances: u64,
    /// An utterance's audio goes in `speech_audio` parts of at most this many bytes before its
    /// `speech_ended` (the client asked for it), or whole in `speech_ended` (`None`).
    speech_audio_part_bytes: Option<usize>,
    /// The stream's span (`audio.stream`), entered while it works.
    pub span: tracing::Span,
    _active: metrics::ActiveStream,
    _permit: OwnedSemaphorePermit,
}

impl Live {
    pub(crate) fn new(
        live: LiveStream,
        stats_interval: Duration,
        speech_audio_part_bytes: Option<usize>,
        span: tracing::Span,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let cfg = *live.config();
        let bytes_per_sample = cfg.encoding.bytes_per_sample();
        Self {
            max_frame_bytes: cfg.sample_rate as usize * cfg.max_frame_ms as usize / 1000 * bytes_per_sample,
            bytes_per_sample,
            clock: Clock { rate: u64::from(cfg.sample_rate), first_sequence: None },
            live,
            events: Vec::with_capacity(4),
            stats_interval: stats_interval.as_secs_f64(),
            next_stats: stats_interval.as_secs_f64(),
            reported_seconds: 0.0,
            utterances: 0,
            speech_audio_part_bytes,
            span,
            _active: metrics::ActiveStream::open(),
            _permit: permit,
        }
    }

    /// Runs one message of the client's; its responses go to `out`. An error is the status the
    /// stream ends with (a protocol error), after the responses already in `out`.
    pub(crate) fn message(
        &mut self,
        message: pb::StreamAudioRequest,
        out: &mut Vec<pb::StreamAudioResponse>,
    ) -> Result<(), Status> {
        let frames = match message.payload {
            Some(Payload::Frame(frame)) => Frames::One(Some(frame)),
            Some(Payload::Frames(batch)) => {
                if batch.frames.is_empty() || batch.frames.len() > MAX_FRAMES_PER_MESSAGE {
                    return Err(Status::invalid_argument(format!(
                        "a frames message carries {} frames; it must carry 1 to {MAX_FRAMES_PER_MESSAGE}",
                        batch.frames.len()
                    )));
                }
                Frames::Many(batch.frames.into_iter())
            }
            Some(Payload::Config(_)) => {
                return Err(Status::invalid_argument("config may only be the first message of a stream"));
            }
            None => return Err(Status::invalid_argument("message carries neither config nor frame")),
        };
        let entered = self.span.enter();
        let mut oversized = None;
        for frame in frames {
            // Checked before the frame runs: a batch with an oversized frame runs the frames
            // before it, then ends the stream, as the same frames sent one by one would.
            if frame.payload.len() > self.max_frame_bytes {
                oversized = Some(frame.payload.len());
                break;
            }
            let samples = (frame.payload.len() / self.bytes_per_sample) as u64;
            let timestamp = self.clock.timestamp(&frame, samples);
            let dsp_frame = Frame {
                sequence: frame.sequence_number,
                timestamp,
                arrival_us: arrival_us(&frame),
                payload: &frame.payload,
            };
            if let Err(e) = self.live.push(dsp_frame, &mut self.events) {
                // Counted in `frames_rejected`; the stream goes on.
                tracing::debug!(error = %e, "live frame rejected");
            }
        }
        drop(entered);
        self.take_events(out);
        if let Some(len) = oversized {
            return Err(Status::invalid_argument(format!(
                "frame payload of {len} bytes exceeds {} ms of audio ({} bytes)",
                self.live.config().max_frame_ms,
                self.max_frame_bytes
            )));
        }
        let media = self.live.stats().media_seconds;
        if media >= self.next_stats {
            self.next_stats = media + self.stats_interval;
            metrics::audio_processed(self.live.config().encoding, media - self.reported_seconds);
            self.reported_seconds = media;
            out.push(self.stats());
        }
        Ok(())
    }

    /// Ends the stream as `end` says: a flush (the open utterance, final stats) goes to `out`;
    /// the returned status is the one to end with (`None`: OK, or nobody to tell).
    pub(crate) fn end(mut self, end: End, out: &mut Vec<pb::StreamAudioResponse>) -> Option<Status> {
        let _entered = self.span.clone().entered();
        let status = match end {
            End::Gone => None,
            End::Fail(status) => Some(status),
            End::HalfClose | End::Flush(_) => {
                if let Err(e) = self.live.finish(&mut self.events) {
                    tracing::warn!(error = %e, "flushing live stream failed");
                }
                self.take_events(out);
                out.push(self.stats());
                match end {
                    End::Flush(status) => Some(status),
                    _ => None,
                }
            }
        };
        let stats = self.live.stats();
        metrics::audio_processed(self.live.config().encoding, stats.media_seconds - self.reported_seconds);
        self.span.record("frames", stats.packets_received);
        self.span.record("utterances", self.utterances);
        self.span.record("media_seconds", stats.media_seconds);
        tracing::debug!(frames = stats.packets_received, lost = stats.packets_lost, "live stream ended");
        status
    }

    fn stats(&self) -> pb::StreamAudioResponse {
        pb::StreamAudioResponse { event: Some(PbEvent::Stats(convert::stream_stats(&self.live.stats()))) }
    }

    /// Moves the stream's pending events to `out` as responses.
    fn take_events(&mut self, out: &mut Vec<pb::StreamAudioResponse>) {
        for e in self.events.drain(..) {
            let (name, event) = match e {
                StreamEvent::SpeechStarted { at } => {
                    ("speech_started", PbEvent::SpeechStarted(pb::SpeechStarted { at: Some(proto_duration(at)) }))
                }
                StreamEvent::SpeechEnded { start, end, forced, audio } => {
                    self.utterances += 1;
                    let mut samples = &audio[..];
                    if let Some(part) = self.speech_audio_part_bytes {
                        // Every part but the last goes ahead; the last rides in speech_ended.
                        let per_part = part / 2;
                        while samples.len() > per_part {
                            let (head, rest) = samples.split_at(per_part);
                            samples = rest;
                            let event = PbEvent::SpeechAudio(pb::SpeechAudio { pcm16_16khz: pcm16_bytes(head) });
                            out.push(pb::StreamAudioResponse { event: Some(event) });
                        }
                    }
                    (
                        "speech_ended",
                        PbEvent::SpeechEnded(pb::SpeechEnded {
                            start: Some(proto_duration(start)),
                            end: Some(proto_duration(end)),
                            pcm16_16khz: pcm16_bytes(samples),
                            truncated: forced,
                        }),
                    )
                }
                StreamEvent::Dtmf { digit, at } => {
                    ("dtmf", PbEvent::Dtmf(pb::Dtmf { digit: digit.to_string(), at: Some(proto_duration(at)) }))
                }
            };
            metrics::vad_event(name);
            out.push(pb::StreamAudioResponse { event: Some(event) });
        }
    }
}

/// A `StreamAudio` stream's task: its own gRPC stream in, its own channel out.
pub(crate) struct StreamTask {
    pub live: Live,
    pub inbound: Box<Streaming<pb::StreamAudioRequest>>,
    pub tx: EventSender,
    pub stopping: CancellationToken,
    pub deadline: Option<Instant>,
    /// No message for this long ends the stream (`DeadlineExceeded`).
    pub idle_timeout: Duration,
}

/// The status a stream ends with when it has had no message for `idle`.
pub(crate) fn idle_status(idle: Duration) -> Status {
    Status::deadline_exceeded(format!("no message for {} s: the stream is idle", idle.as_secs_f64()))
}

/// The status a stream ends with at its deadline.
pub(crate) fn deadline_status() -> Status {
    Status::deadline_exceeded("stream deadline reached")
}

/// The status a stream ends with when the server shuts down.
pub(crate) fn shutdown_status() -> Status {
    Status::unavailable("server is shutting down; reconnect to another replica")
}

impl StreamTask {
    /// Runs the stream to its end.
    pub(crate) async fn run(mut self) {
        let mut out = Vec::new();
        // The two timers live for the whole stream (one idle timer reset per message, rather than
        // a new timer per 20 ms frame).
        let deadline = sleep_until(self.deadline);
        tokio::pin!(deadline);
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let end = loop {
            let message = tokio::select! {
                biased;
                () = self.stopping.cancelled() => break End::Flush(shutdown_status()),
                () = &mut deadline => break End::Flush(deadline_status()),
                () = &mut idle => break End::Flush(idle_status(self.idle_timeout)),
                m = self.inbound.message() => m,
            };
            idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
            let result = match message {
                Ok(Some(message)) => self.live.message(message, &mut out),
                Ok(None) => break End::HalfClose,
                Err(status) => {
                    tracing::debug!(parent: &self.live.span, code = ?status.code(), "live stream input ended with an error");
                    break End::Gone;
                }
            };
            if !send(&self.tx, &mut out).await {
                break End::Gone;
            }
            if let Err(status) = result {
                break End::Fail(status);
            }
        };
        let gone = matches!(end, End::Gone);
        let status = self.live.end(end, &mut out);
        if !gone
            && send(&self.tx, &mut out).await
            && let Some(status) = status
        {
            let _ = self.tx.send(Err(status)).await;
        }
    }
}

/// Sends and clears `out`; false when the client is gone.
async fn send(tx: &EventSender, out: &mut Vec<pb::StreamAudioResponse>) -> bool {
    for response in out.drain(..) {
        if tx.send(Ok(response)).await.is_err() {
            return false;
        }
    }
    true
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
