//! Live streams over gRPC against the real service: speech and DTMF events from fixtures,
//! transport statistics, protocol errors, the stream cap and shutdown.
use std::time::Duration;

use crate::common::*;
use audio_dsp::codec::encode;
use audio_dsp::{Encoding, Limits, decode_wav};
use kraliki_proto::audio::v1::{
    self as pb, audio_processor_client::AudioProcessorClient, stream_audio_request::Payload,
    stream_audio_response::Event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};

pub(crate) fn config(encoding: pb::AudioEncoding, rate: u32) -> pb::StreamAudioRequest {
    pb::StreamAudioRequest {
        payload: Some(Payload::Config(pb::StreamConfig {
            call_id: "live-test".into(),
            format: format(encoding, rate, 1),
            ..Default::default()
        })),
    }
}

pub(crate) fn frame(seq: u64, payload: Vec<u8>, samples_per_frame: u64, rate: u64) -> pb::StreamAudioRequest {
    let ts = seq * samples_per_frame * 1_000_000_000 / rate;
    let arrival = 1_700_000_000_000_000_000u64 + ts;
    pb::StreamAudioRequest {
        payload: Some(Payload::Frame(pb::AudioFrame {
            sequence_number: seq,
            timestamp: Some(prost_types::Duration {
                seconds: (ts / 1_000_000_000) as i64,
                nanos: (ts % 1_000_000_000) as i32,
            }),
            payload,
            received_at: Some(prost_types::Timestamp {
                seconds: (arrival / 1_000_000_000) as i64,
                nanos: (arrival % 1_000_000_000) as i32,
            }),
        })),
    }
}

/// 20 ms μ-law frames of 8 kHz samples.
pub(crate) fn mulaw_frames(x: &[i16]) -> Vec<Vec<u8>> {
    x.chunks_exact(160).map(|c| encode(Encoding::Mulaw, c)).collect()
}

/// Opens a stream whose requests the test controls.
async fn open(
    client: &mut AudioProcessorClient<Channel>,
    first: pb::StreamAudioRequest,
) -> Result<(mpsc::Sender<pb::StreamAudioRequest>, Streaming<pb::StreamAudioResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.unwrap();
    let response = within("open stream", client.stream_audio(ReceiverStream::new(rx))).await?;
    Ok((tx, response.into_inner()))
}

/// Reads every event until the stream ends; the final status too.
async fn drain(mut events: Streaming<pb::StreamAudioResponse>) -> (Vec<Event>, Option<tonic::Status>) {
    let mut out = Vec::new();
    loop {
        match within("next event", events.message()).await {
            Ok(Some(m)) => out.push(m.event.expect("event set")),
            Ok(None) => return (out, None),
            Err(status) => return (out, Some(status)),
        }
    }
}

fn last_stats(events: &[Event]) -> pb::StreamStats {
    events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Stats(s) => Some(*s),
            _ => None,
        })
        .expect("stats sent")
}

#[tokio::test]
async fn speech_of_the_call_fixture_gives_started_then_ended_with_audio() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let call = decode_wav(&fixture_bytes("call-stereo.wav"), &Limits::default()).unwrap();
    // The caller's channel: one sentence.
    let frames = mulaw_frames(&call.channels[1]);
    let (tx, events) = open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await.unwrap();
    let sender = tokio::spawn(async move {
        for (i, f) in frames.into_iter().enumerate() {
            tx.send(frame(i as u64, f, 160, 8000)).await.unwrap();
        }
    });
    let (events, status) = drain(events).await;
    sender.await.unwrap();
    assert!(status.is_none(), "{status:?}");

    let speech: Vec<&Event> = events.iter().filter(|e| !matches!(e, Event::Stats(_))).collect();
    assert_eq!(speech.len(), 2, "{speech:?}");
    let Event::SpeechStarted(started) = speech[0] else { panic!("first event {:?}", speech[0]) };
    let Event::SpeechEnded(ended) = speech[1] else { panic!("second event {:?}", speech[1]) };
    let p = placements("call-stereo.txt");
    let (on, off) = speech_bounds("speech-b.wav");
    let (truth_start, truth_end) = (p["b_at"] + on, p["b_at"] + off);
    let at = seconds(&started.at);
    let (start, end) = (seconds(&ended.start), seconds(&ended.end));
    assert!((at - truth_start).abs() <= 0.08, "started {at} vs {truth_start}");
    assert!((start - truth_start).abs() <= 0.08, "start {start} vs {truth_start}");
    assert!((end - truth_end).abs() <= 0.12, "end {end} vs {truth_end}");
    assert!(!ended.truncated);
    // 16 kHz PCM16 of the utterance plus a little padding either side.
    let samples = ended.pcm16_16khz.len() as f64 / 2.0;
    assert!(samples >= (end - start) * 16000.0 && samples <= (end - start + 0.5) * 16000.0, "{samples}");
    let pcm: Vec<i16> = ended.pcm16_16khz.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    assert!(pcm.iter().map(|s| i32::from(*s).abs()).max().unwrap() > 3000);

    // Stats every 5 s of media and at the end; a clean stream loses nothing.
    let stats: Vec<&pb::StreamStats> = events
        .iter()
        .filter_map(|e| match e {
            Event::Stats(s) => Some(s),
            _ => None,
        })
        .collect();
    let media = call.duration_seconds();
    assert!(stats.len() >= (media / 5.0) as usize, "{} stats over {media} s", stats.len());
    let fin = stats.last().unwrap();
    let n = (call.channels[1].len() / 160) as u64;
    assert_eq!((fin.frames_received, fin.frames_accepted, fin.frames_lost), (n, n, 0));
    assert_eq!((fin.frames_duplicated, fin.frames_out_of_order, fin.frames_rejected), (0, 0, 0));
    assert!((seconds(&fin.media_duration) - n as f64 * 0.02).abs() < 1e-6);
    assert!(seconds(&fin.jitter) < 0.001, "perfect timing has no jitter");
    assert!(matches!(events.last(), Some(Event::Stats(_))), "the final message is the stats");
}

#[tokio::test]
async fn dtmf_digits_from_the_dtmf_fixture() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let audio = decode_wav(&fixture_bytes("dtmf.wav"), &Limits::default()).unwrap();
    let (tx, events) = open(&mut client, config(pb::AudioEncoding::Mulaw, 0)).await.unwrap();
    for (i, f) in mulaw_frames(&audio.channels[0]).into_iter().enumerate() {
        tx.send(frame(i as u64, f, 160, 8000)).await.unwrap();
    }
    drop(tx);
    let (events, status) = drain(events).await;
    assert!(status.is_none());
    let digits: Vec<(String, f64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Dtmf(d) => Some((d.digit.clone(), seconds(&d.at))),
            _ => None,
        })
        .collect();
    let truth = dtmf_truth();
    assert_eq!(digits.iter().map(|d| d.0.as_str()).collect::<String>(), "159#0*D");
    for (d, t) in digits.iter().zip(&truth) {
        assert!((d.1 - t.1).abs() < 0.03, "{d:?} vs {t:?}");
    }
    // The spoken sentence before the digits is one utterance; the tones are not speech.
    let ended: Vec<&pb::SpeechEnded> = events
        .iter()
        .filter_map(|e| match e {
            Event::SpeechEnded(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    // It starts with the sentence. (Live, the first 40 ms of each tone reach the VAD before the
    // DTMF detector confirms the digit, so an utterance followed by digits within the
    // end-of-turn silence runs on over them; the recording analysis masks them afterwards.)
    assert!(seconds(&ended[0].start) < 0.8, "{:?}", ended[0].start);
}

#[tokio::test]
async fn duplicate_lost_and_out_of_order_frames_are_counted_not_fatal() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let silence = vec![0xFFu8; 160];
    let (tx, events) = open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await.unwrap();
    // 0..=9, 10 twice, 12 before 11, 13 lost, then 14..=19; one empty payload.
    let order = [0u64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 12, 11, 14, 15, 16, 17, 18, 19];
    for seq in order {
        tx.send(frame(seq, silence.clone(), 160, 8000)).await.unwrap();
    }
    tx.send(frame(20, Vec::new(), 160, 8000)).await.unwrap();
    drop(tx);
    let (events, status) = drain(events).await;
    assert!(status.is_none(), "{status:?}");
    let s = last_stats(&events);
    assert_eq!(s.frames_duplicated, 1, "{s:?}");
    assert_eq!(s.frames_out_of_order, 1, "{s:?}");
    assert_eq!(s.frames_lost, 1, "{s:?}");
    assert_eq!(s.frames_rejected, 1, "{s:?}");
    assert_eq!(s.frames_received, order.len() as u64);
    assert_eq!(s.frames_accepted, 18);
    // The lost frame is concealed with silence: media time runs to the end of frame 19.
    assert!((seconds(&s.media_duration) - 0.4).abs() < 1e-6, "{s:?}");
}

#[tokio::test]
async fn protocol_errors_are_invalid_argument_and_the_service_keeps_answering() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let bad_first: Vec<(&str, pb::StreamAudioRequest)> = vec![
        ("frame first", frame(0, vec![0xFF; 160], 160, 8000)),
        ("empty message", pb::StreamAudioRequest { payload: None }),
        ("wav frames", config(pb::AudioEncoding::Wav, 8000)),
        ("no encoding", config(pb::AudioEncoding::Unspecified, 8000)),
        ("absurd rate", config(pb::AudioEncoding::Pcm16, 96_000_000)),
        (
            "stereo",
            pb::StreamAudioRequest {
                payload: Some(Payload::Config(pb::StreamConfig {
                    format: format(pb::AudioEncoding::Mulaw, 8000, 2),
                    ..Default::default()
                })),
            },
        ),
        ("no format", pb::StreamAudioRequest { payload: Some(Payload::Config(pb::StreamConfig::default())) }),
        (
            "tiny max utterance",
            pb::StreamAudioRequest {
                payload: Some(Payload::Config(pb::StreamConfig {
                    format: format(pb::AudioEncoding::Mulaw, 8000, 1),
                    max_utterance: Some(prost_types::Duration { seconds: 0, nanos: 1000 }),
                    ..Default::default()
                })),
            },
        ),
    ];
    for (what, first) in bad_first {
        let err = match open(&mut client, first).await {
            Err(e) => e,
            Ok((_tx, events)) => drain(events).await.1.unwrap_or_else(|| panic!("{what} was accepted")),
        };
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }

    // Mid-stream: a second config, and an oversized frame.
    for (what, second) in [
        ("second config", config(pb::AudioEncoding::Mulaw, 8000)),
        ("oversized frame", frame(1, vec![0xFF; 64_000], 160, 8000)),
    ] {
        let (tx, events) = open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await.unwrap();
        tx.send(frame(0, vec![0xFF; 160], 160, 8000)).await.unwrap();
        tx.send(second).await.unwrap();
        let (_, status) = drain(events).await;
        let status = status.unwrap_or_else(|| panic!("{what} ended cleanly"));
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }

    // Still serving.
    let (tx, events) = open(&mut client, config(pb::AudioEncoding::Pcm16, 16000)).await.unwrap();
    tx.send(frame(0, vec![0; 640], 320, 16000)).await.unwrap();
    drop(tx);
    let (events, status) = drain(events).await;
    assert!(status.is_none());
    assert_eq!(last_stats(&events).frames_accepted, 1);
}

#[tokio::test]
async fn stream_cap_is_resource_exhausted_and_slots_come_back() {
    let app = spawn_app(&[("AUDIO_MAX_STREAMS", "2")]).await;
    let mut client = app.client().await;
    let a = open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await.unwrap();
    let b = open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await.unwrap();
    let err =
        open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await.map(|_| ()).expect_err("third stream refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    drop(a.0);
    let (_, status) = drain(a.1).await;
    assert!(status.is_none());
    // The slot is free once the first stream's task has ended.
    let mut reopened = None;
    for _ in 0..200 {
        match open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(reopened.is_some());
    drop(b);
}

#[tokio::test]
async fn shutdown_flushes_open_utterances_and_ends_streams() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let speech = decode_wav(&fixture_bytes("dtmf.wav"), &Limits::default()).unwrap();
    let (tx, mut events) = open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await.unwrap();
    // Two seconds: mid-sentence.
    for (i, f) in mulaw_frames(&speech.channels[0][..16000]).into_iter().enumerate() {
        tx.send(frame(i as u64, f, 160, 8000)).await.unwrap();
    }
    // Wait for the utterance to start, then shut the server down.
    loop {
        match within("speech start", events.message()).await.unwrap() {
            Some(pb::StreamAudioResponse { event: Some(Event::SpeechStarted(_)) }) => break,
            Some(_) => {}
            None => panic!("stream ended before speech started"),
        }
    }
    app.shutdown.trigger();
    let (rest, status) = drain(events).await;
    let status = status.expect("shutdown ends the stream with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let ended: Vec<&pb::SpeechEnded> = rest
        .iter()
        .filter_map(|e| match e {
            Event::SpeechEnded(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(ended.len(), 1, "the open utterance is flushed: {rest:?}");
    assert!(ended[0].truncated && !ended[0].pcm16_16khz.is_empty());
    assert_eq!(last_stats(&rest).frames_accepted, 100);
    drop(tx);
    within("server stops", app.server).await.unwrap();
}

#[tokio::test]
async fn a_live_stream_that_sends_nothing_ends_after_the_idle_bound_and_frees_its_slot() {
    let app = spawn_app(&[("AUDIO_MAX_STREAMS", "1"), ("AUDIO_STREAM_IDLE_TIMEOUT_SECONDS", "0.5")]).await;
    let mut client = app.client().await;
    // Config, a few frames, then silence on the wire with the sender still open.
    let (tx, events) = open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await.unwrap();
    for seq in 0..5 {
        tx.send(frame(seq, vec![0xff; 160], 160, 8000)).await.unwrap();
    }
    let started = std::time::Instant::now();
    let (_, status) = drain(events).await;
    let status = status.expect("the idle stream ends with a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("idle"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Its slot is free again.
    let mut reopened = false;
    for _ in 0..200 {
        match open(&mut client, config(pb::AudioEncoding::Mulaw, 8000)).await {
            Ok(_) => {
                reopened = true;
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(reopened);
    drop(tx);
}

/// Frames grouped `n` to a `frames` message.
fn batched(frames: Vec<pb::StreamAudioRequest>, n: usize) -> Vec<pb::StreamAudioRequest> {
    let frames: Vec<pb::AudioFrame> = frames
        .into_iter()
        .map(|m| match m.payload {
            Some(Payload::Frame(f)) => f,
            other => panic!("not a frame: {other:?}"),
        })
        .collect();
    frames
        .chunks(n)
        .map(|c| pb::StreamAudioRequest { payload: Some(Payload::Frames(pb::AudioFrames { frames: c.to_vec() })) })
        .collect()
}

/// Sends `messages` on a new stream, half-closes, and returns its events and ending.
pub(crate) async fn run_stream(
    client: &mut AudioProcessorClient<Channel>,
    messages: Vec<pb::StreamAudioRequest>,
) -> (Vec<Event>, Option<tonic::Status>) {
    run_stream_in_parts(client, 0, messages).await
}

#[tokio::test]
async fn batched_frames_give_the_same_events_and_statistics_as_frames_sent_one_by_one() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let call = decode_wav(&fixture_bytes("call-stereo.wav"), &Limits::default()).unwrap();
    let mut singles: Vec<pb::StreamAudioRequest> =
        mulaw_frames(&call.channels[1]).into_iter().enumerate().map(|(i, f)| frame(i as u64, f, 160, 8000)).collect();
    // A lost frame and a duplicate, so that the counters have something to agree on.
    singles.remove(30);
    singles.insert(40, singles[39].clone());

    // The speech events in full (the utterance's audio as its length and a checksum, to keep a
    // failure readable), and the final statistics. Interim statistics go out at the first
    // message past each 5 s of media, so a batch moves them by up to its length.
    let summary = |events: &[Event]| -> (Vec<String>, pb::StreamStats) {
        let speech = events
            .iter()
            .filter_map(|e| match e {
                Event::SpeechStarted(s) => Some(format!("started {:?}", s.at)),
                Event::SpeechEnded(s) => Some(format!(
                    "ended {:?}..{:?} truncated {} audio {} bytes sum {}",
                    s.start,
                    s.end,
                    s.truncated,
                    s.pcm16_16khz.len(),
                    s.pcm16_16khz.iter().map(|b| u64::from(*b)).sum::<u64>()
                )),
                Event::Dtmf(d) => Some(format!("dtmf {} {:?}", d.digit, d.at)),
                Event::Stats(_) | Event::SpeechAudio(_) => None,
            })
            .collect();
        (speech, last_stats(events))
    };
    let (one_by_one, status) = run_stream(&mut client, singles.clone()).await;
    assert!(status.is_none(), "{status:?}");
    let expected = summary(&one_by_one);
    assert_eq!(expected.0.len(), 2, "{:?}", expected.0);
    assert_eq!((expected.1.frames_lost, expected.1.frames_duplicated), (1, 1), "{:?}", expected.1);
    for n in [2, 3, 50] {
        let (events, status) = run_stream(&mut client, batched(singles.clone(), n)).await;
        assert!(status.is_none(), "{n} per message: {status:?}");
        assert_eq!(summary(&events), expected, "{n} frames per message");
        assert!(matches!(events.last(), Some(Event::Stats(_))), "{n} per message: the final message is the stats");
    }
}

#[tokio::test]
async fn an_empty_overlong_or_oversized_batch_is_invalid_argument() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let silence = || vec![0xFFu8; 160];
    let frames = |n: u64| -> Vec<pb::StreamAudioRequest> { (0..n).map(|i| frame(i, silence(), 160, 8000)).collect() };

    let empty = pb::StreamAudioRequest { payload: Some(Payload::Frames(pb::AudioFrames { frames: vec![] })) };
    let (events, status) = run_stream(&mut client, vec![empty]).await;
    let status = status.expect("an empty batch ends the stream");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1 to 50"), "{}", status.message());
    assert!(events.is_empty(), "{events:?}");

    let (_, status) = run_stream(&mut client, batched(frames(51), 51)).await;
    assert_eq!(status.expect("51 frames in one message").code(), Code::InvalidArgument);

    // Frames before an oversized one run (as they would one by one), then the stream ends.
    let mut batch = frames(3);
    if let Some(Payload::Frame(f)) = &mut batch[2].payload {
        f.payload = vec![0xFF; 8000 * 2]; // 2 s: over the 200 ms bound
    }
    let (events, status) = run_stream(&mut client, batched(batch, 3)).await;
    let status = status.expect("an oversized frame ends the stream");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("exceeds 200 ms"), "{}", status.message());
    assert!(events.is_empty(), "no stats before the error: {events:?}");

    // The service goes on answering.
    let (events, status) = run_stream(&mut client, batched(frames(10), 5)).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(last_stats(&events).frames_received, 10);
}

/// The config of a μ-law 8 kHz stream asking for the utterance audio in parts of `part_bytes`.
pub(crate) fn config_in_parts(part_bytes: u32) -> pb::StreamAudioRequest {
    let mut first = config(pb::AudioEncoding::Mulaw, 8000);
    if let Some(Payload::Config(c)) = &mut first.payload {
        c.speech_audio_part_bytes = part_bytes;
    }
    first
}

/// Runs `messages` on a μ-law 8 kHz stream whose config asks for the utterance audio in parts
/// of `part_bytes` (0: whole).
pub(crate) async fn run_stream_in_parts(
    client: &mut AudioProcessorClient<Channel>,
    part_bytes: u32,
    messages: Vec<pb::StreamAudioRequest>,
) -> (Vec<Event>, Option<tonic::Status>) {
    let (tx, events) = open(client, config_in_parts(part_bytes)).await.unwrap();
    let sender = tokio::spawn(async move {
        for m in messages {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let out = drain(events).await;
    sender.await.unwrap();
    out
}

#[tokio::test]
async fn an_utterance_asked_for_in_parts_arrives_in_bounded_parts_before_its_end() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let call = decode_wav(&fixture_bytes("call-stereo.wav"), &Limits::default()).unwrap();
    let singles: Vec<pb::StreamAudioRequest> =
        mulaw_frames(&call.channels[1]).into_iter().enumerate().map(|(i, f)| frame(i as u64, f, 160, 8000)).collect();

    let (whole, status) = run_stream(&mut client, singles.clone()).await;
    assert!(status.is_none(), "{status:?}");
    assert!(!whole.iter().any(|e| matches!(e, Event::SpeechAudio(_))), "parts only when asked for");
    let Some(Event::SpeechEnded(expected)) = whole.iter().find(|e| matches!(e, Event::SpeechEnded(_))) else {
        panic!("no speech_ended in {whole:?}")
    };
    assert!(expected.pcm16_16khz.len() > 3 * 3_000, "a long enough utterance: {}", expected.pcm16_16khz.len());

    // An odd size is rounded down to whole samples.
    let (parted, status) = run_stream_in_parts(&mut client, 3_001, singles).await;
    assert!(status.is_none(), "{status:?}");
    let speech: Vec<&Event> = parted.iter().filter(|e| !matches!(e, Event::Stats(_))).collect();
    let Event::SpeechStarted(_) = speech[0] else { panic!("first event {:?}", speech[0]) };
    let Some(Event::SpeechEnded(ended)) = speech.last() else { panic!("last event {:?}", speech.last()) };
    let parts: Vec<&[u8]> = speech[1..speech.len() - 1]
        .iter()
        .map(|e| match e {
            Event::SpeechAudio(a) => &a.pcm16_16khz[..],
            other => panic!("between the start and the end of speech: {other:?}"),
        })
        .collect();
    assert!(parts.len() >= 3, "{} parts", parts.len());
    assert!(parts.iter().all(|p| p.len() == 3_000), "{:?}", parts.iter().map(|p| p.len()).collect::<Vec<_>>());
    assert!(!ended.pcm16_16khz.is_empty() && ended.pcm16_16khz.len() <= 3_000, "{}", ended.pcm16_16khz.len());
    let joined: Vec<u8> = parts.concat().into_iter().chain(ended.pcm16_16khz.iter().copied()).collect();
    assert_eq!(joined, expected.pcm16_16khz, "the parts and the last are the utterance");
    assert_eq!((ended.start, ended.end, ended.truncated), (expected.start, expected.end, expected.truncated));
}

#[tokio::test]
async fn an_out_of_range_part_size_is_invalid_argument() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    for bad in [1, 1_023, 1_048_577, u32::MAX] {
        let status = match open(&mut client, config_in_parts(bad)).await {
            Err(status) => status,
            Ok((_tx, events)) => drain(events).await.1.expect("a status"),
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}: {status:?}");
        assert!(status.message().contains("speech_audio_part_bytes"), "{bad}: {}", status.message());
    }
}
