//! One live stream: frames from the client through [`LiveStream`], events back.
//!
//! The task reads a message (one frame, or a batch of up to [`MAX_FRAMES_PER_MESSAGE`] that
//! runs as if each frame had come alone), runs its frames (a few microseconds each for the fast
//! VAD, so inline on the async worker), and sends the resulting events into a small bounded channel: a client that
//! stops reading stops the task from reading further frames, so a stream's memory stays
//! bounded by the `LiveStream` state plus [`EVENT_BUFFER`] events. `StreamStats` go out every
//! `stats_interval` of media and at the end.
//!
//! Endings: the client half-closes → `finish` (an open utterance is emitted, forced), final
//! stats, OK. Server shutdown, the call's deadline or no message for the idle bound → the same flush, then `Unavailable` /
//! `DeadlineExceeded`. A protocol error (second config, oversized frame, empty or
//! overlong batch) → `InvalidArgument`.
//! The client going away → the task stops.

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

/// Events buffered towards a slow client before the stream stops reading frames.
pub(crate) const EVENT_BUFFER: usize = 8;

pub(crate) type EventSender = mpsc::Sender<Result<pb::StreamAudioResponse, Status>>;

/// Where a stream's messages come from: its own `StreamAudio` gRPC stream, or its leg of a
/// shared `StreamAudioCalls` stream (the shared stream's task hands it the leg's messages; the
/// channel closing is the leg's half-close, an error is the client gone).
pub(crate) enum Inbound {
    Grpc(Box<Streaming<pb::StreamAudioRequest>>),
    Leg(mpsc::Receiver<Result<pb::StreamAudioRequest, Status>>),
}

impl Inbound {
    async fn message(&mut self) -> Result<Option<pb::StreamAudioRequest>, Status> {
        match self {
            Inbound::Grpc(s) => s.message().await,
            Inbound::Leg(rx) => rx.recv().await.transpose(),
        }
    }
}

/// Everything one stream task owns.
pub(crate) struct StreamTask {
    pub live: LiveStream,
    pub inbound: Inbound,
    pub tx: EventSender,
    pub stopping: CancellationToken,
    pub deadline: Option<Instant>,
    /// No message for this long ends the stream (`DeadlineExceeded`).
    pub idle_timeout: Duration,
    pub stats_interval: Duration,
    /// An utterance's audio goes in `speech_audio` parts of at most this many bytes before its
    /// `speech_ended` (the client asked for it), or whole in `speech_ended` (`None`).
    pub speech_audio_part_bytes: Option<usize>,
    pub permit: OwnedSemaphorePermit,
}

enum End {
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

impl StreamTask {
    /// Runs the stream to its end.
    pub(crate) async fn run(mut self) {
        let _active = metrics::ActiveStream::open();
        let cfg = *self.live.config();
        let max_frame_bytes =
            cfg.sample_rate as usize * cfg.max_frame_ms as usize / 1000 * cfg.encoding.bytes_per_sample();
        let bytes_per_sample = cfg.encoding.bytes_per_sample();
        let mut clock = Clock { rate: u64::from(cfg.sample_rate), first_sequence: None };
        let mut events = Vec::with_capacity(4);
        let mut next_stats = self.stats_interval.as_secs_f64();
        let mut reported_seconds = 0.0;
        let mut utterances = 0u64;

        // The two timers live for the whole stream (one idle timer reset per message, rather than
        // a new timer per 20 ms frame).
        let deadline = sleep_until(self.deadline);
        tokio::pin!(deadline);
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let end = loop {
            let message = tokio::select! {
                biased;
                () = self.stopping.cancelled() => break End::Flush(Status::unavailable("server is shutting down; reconnect to another replica")),
                () = &mut deadline => break End::Flush(Status::deadline_exceeded("stream deadline reached")),
                () = &mut idle => break End::Flush(Status::deadline_exceeded(format!(
                    "no message for {} s: the stream is idle",
                    self.idle_timeout.as_secs_f64()
                ))),
                m = self.inbound.message() => m,
            };
            idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
            let frames = match message {
                Ok(Some(pb::StreamAudioRequest { payload: Some(Payload::Frame(frame)) })) => Frames::One(Some(frame)),
                Ok(Some(pb::StreamAudioRequest { payload: Some(Payload::Frames(batch)) })) => {
                    if batch.frames.is_empty() || batch.frames.len() > MAX_FRAMES_PER_MESSAGE {
                        break End::Fail(Status::invalid_argument(format!(
                            "a frames message carries {} frames; it must carry 1 to {MAX_FRAMES_PER_MESSAGE}",
                            batch.frames.len()
                        )));
                    }
                    Frames::Many(batch.frames.into_iter())
                }
                Ok(Some(pb::StreamAudioRequest { payload: Some(Payload::Config(_)) })) => {
                    break End::Fail(Status::invalid_argument("config may only be the first message of a stream"));
                }
                Ok(Some(pb::StreamAudioRequest { payload: None })) => {
                    break End::Fail(Status::invalid_argument("message carries neither config nor frame"));
                }
                Ok(None) => break End::HalfClose,
                Err(status) => {
                    tracing::debug!(code = ?status.code(), "live stream input ended with an error");
                    break End::Gone;
                }
            };
            let mut oversized = None;
            for frame in frames {
                // Checked before the frame runs: a batch with an oversized frame runs the frames
                // before it, then ends the stream, as the same frames sent one by one would.
                if frame.payload.len() > max_frame_bytes {
                    oversized = Some(frame.payload.len());
                    break;
                }
                let samples = (frame.payload.len() / bytes_per_sample) as u64;
                let timestamp = clock.timestamp(&frame, samples);
                let dsp_frame = Frame {
                    sequence: frame.sequence_number,
                    timestamp,
                    arrival_us: arrival_us(&frame),
                    payload: &frame.payload,
                };
                if let Err(e) = self.live.push(dsp_frame, &mut events) {
                    // Counted in `frames_rejected`; the stream goes on.
                    tracing::debug!(error = %e, "live frame rejected");
                }
            }
            utterances += events.iter().filter(|e| matches!(e, StreamEvent::SpeechEnded { .. })).count() as u64;
            if !self.send_events(&mut events).await {
                break End::Gone;
            }
            if let Some(len) = oversized {
                break End::Fail(Status::invalid_argument(format!(
                    "frame payload of {len} bytes exceeds {} ms of audio ({max_frame_bytes} bytes)",
                    cfg.max_frame_ms
                )));
            }
            let media = self.live.stats().media_seconds;
            if media >= next_stats {
                next_stats = media + self.stats_interval.as_secs_f64();
                metrics::audio_processed(cfg.encoding, media - reported_seconds);
                reported_seconds = media;
                if !self.send_stats().await {
                    break End::Gone;
                }
            }
        };

        let status = match end {
            End::Gone => None,
            End::Fail(status) => Some(status),
            End::HalfClose | End::Flush(_) => {
                if let Err(e) = self.live.finish(&mut events) {
                    tracing::warn!(error = %e, "flushing live stream failed");
                }
                utterances += events.iter().filter(|e| matches!(e, StreamEvent::SpeechEnded { .. })).count() as u64;
                let _ = self.send_events(&mut events).await && self.send_stats().await;
                match end {
                    End::Flush(status) => Some(status),
                    _ => None,
                }
            }
        };
        if let Some(status) = status {
            let _ = self.tx.send(Err(status)).await;
        }
        let stats = self.live.stats();
        metrics::audio_processed(cfg.encoding, stats.media_seconds - reported_seconds);
        let span = tracing::Span::current();
        span.record("frames", stats.packets_received);
        span.record("utterances", utterances);
        span.record("media_seconds", stats.media_seconds);
        tracing::debug!(frames = stats.packets_received, lost = stats.packets_lost, "live stream ended");
        drop(self.permit);
    }

    /// Sends and clears `events`; false when the client is gone.
    async fn send_events(&mut self, events: &mut Vec<StreamEvent>) -> bool {
        for e in events.drain(..) {
            let (name, event) = match e {
                StreamEvent::SpeechStarted { at } => {
                    ("speech_started", PbEvent::SpeechStarted(pb::SpeechStarted { at: Some(proto_duration(at)) }))
                }
                StreamEvent::SpeechEnded { start, end, forced, audio } => {
                    let mut samples = &audio[..];
                    if let Some(part) = self.speech_audio_part_bytes {
                        // Every part but the last goes ahead; the last rides in speech_ended.
                        let per_part = part / 2;
                        while samples.len() > per_part {
                            let (head, rest) = samples.split_at(per_part);
                            samples = rest;
                            let event = PbEvent::SpeechAudio(pb::SpeechAudio { pcm16_16khz: pcm16_bytes(head) });
                            if self.tx.send(Ok(pb::StreamAudioResponse { event: Some(event) })).await.is_err() {
                                return false;
                            }
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
            if self.tx.send(Ok(pb::StreamAudioResponse { event: Some(event) })).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn send_stats(&mut self) -> bool {
        let stats = convert::stream_stats(&self.live.stats());
        self.tx.send(Ok(pb::StreamAudioResponse { event: Some(PbEvent::Stats(stats)) })).await.is_ok()
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
