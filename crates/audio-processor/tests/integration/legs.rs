//! `StreamAudioCalls`: call legs on one shared stream behave as their own `StreamAudio` streams.
use std::collections::HashMap;

use crate::common::*;
use crate::stream::{config, config_in_parts, frame, mulaw_frames, run_stream, run_stream_in_parts};
use audio_dsp::{Limits, decode_wav};
use kraliki_proto::audio::v1::{
    self as pb, audio_processor_client::AudioProcessorClient, call_event::Kind, stream_audio_request::Payload,
    stream_audio_response::Event,
};
use kraliki_proto::errors::{self, Reason};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};

/// What a leg got: `opened` first or not, its events in order, and its end (`None`: not yet).
#[derive(Debug, Default)]
struct LegLog {
    opened: bool,
    events: Vec<Event>,
    ended: Option<tonic::Status>,
    /// Something arrived after `ended`.
    after_end: bool,
}

async fn open_shared(
    client: &mut AudioProcessorClient<Channel>,
) -> (mpsc::Sender<pb::StreamAudioCallsRequest>, Streaming<pb::StreamAudioCallsResponse>) {
    let (tx, rx) = mpsc::channel(64);
    let response = within("open shared stream", client.stream_audio_calls(ReceiverStream::new(rx))).await.unwrap();
    (tx, response.into_inner())
}

fn leg(leg: u64, request: pb::StreamAudioRequest) -> pb::CallAudio {
    pb::CallAudio { leg, request: Some(request), end: false, traceparent: String::new() }
}

fn end(leg: u64) -> pb::CallAudio {
    pb::CallAudio { leg, request: None, end: true, traceparent: String::new() }
}

fn record(logs: &mut HashMap<u64, LegLog>, message: pb::StreamAudioCallsResponse) {
    for e in message.events {
        let log = logs.entry(e.leg).or_default();
        if log.ended.is_some() {
            log.after_end = true;
        }
        match e.kind.expect("kind set") {
            Kind::Opened(_) => {
                assert!(log.events.is_empty() && !log.opened, "opened comes first, once: leg {}", e.leg);
                log.opened = true;
            }
            Kind::Event(ev) => {
                assert!(log.opened, "events only after opened: leg {}", e.leg);
                log.events.push(ev.event.expect("event set"));
            }
            Kind::Ended(end) => {
                log.ended = Some(tonic::Status::with_details(Code::from_i32(end.code), end.message, end.details.into()))
            }
        }
    }
}

/// Reads the shared stream until it ends.
async fn drain_shared(
    mut events: Streaming<pb::StreamAudioCallsResponse>,
    mut logs: HashMap<u64, LegLog>,
) -> (HashMap<u64, LegLog>, Option<tonic::Status>) {
    loop {
        match within("next shared message", events.message()).await {
            Ok(Some(m)) => record(&mut logs, m),
            Ok(None) => return (logs, None),
            Err(status) => return (logs, Some(status)),
        }
    }
}

/// Reads until `done` says the logs are complete enough.
async fn read_until(
    events: &mut Streaming<pb::StreamAudioCallsResponse>,
    logs: &mut HashMap<u64, LegLog>,
    done: impl Fn(&HashMap<u64, LegLog>) -> bool,
) {
    while !done(logs) {
        let m = within("next shared message", events.message()).await.unwrap().expect("shared stream open");
        record(logs, m);
    }
}

/// Opens a shared stream with legs `a` and `b` and sends both the same two seconds of speech:
/// mid-sentence. Returns the stream and how many frames each leg got.
async fn two_legs_mid_sentence(
    client: &mut AudioProcessorClient<Channel>,
    a: u64,
    b: u64,
) -> (mpsc::Sender<pb::StreamAudioCallsRequest>, Streaming<pb::StreamAudioCallsResponse>, u64) {
    let speech = decode_wav(&fixture_bytes("dtmf.wav"), &Limits::default()).unwrap();
    let frames = mulaw_frames(&speech.channels[0][..16000]);
    let (tx, events) = open_shared(client).await;
    tx.send(pb::StreamAudioCallsRequest {
        calls: vec![leg(a, config(pb::AudioEncoding::Mulaw, 8000)), leg(b, config(pb::AudioEncoding::Mulaw, 8000))],
    })
    .await
    .unwrap();
    for (i, f) in frames.iter().enumerate() {
        let calls = vec![leg(a, frame(i as u64, f.clone(), 160, 8000)), leg(b, frame(i as u64, f.clone(), 160, 8000))];
        tx.send(pb::StreamAudioCallsRequest { calls }).await.unwrap();
    }
    (tx, events, frames.len() as u64)
}

#[tokio::test]
async fn legs_on_one_shared_stream_give_exactly_the_events_of_their_own_streams() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let call = decode_wav(&fixture_bytes("call-stereo.wav"), &Limits::default()).unwrap();
    let dtmf = decode_wav(&fixture_bytes("dtmf.wav"), &Limits::default()).unwrap();
    let frames_of = |x: &[i16]| -> Vec<pb::StreamAudioRequest> {
        mulaw_frames(x).into_iter().enumerate().map(|(i, f)| frame(i as u64, f, 160, 8000)).collect()
    };
    let (a, b) = (frames_of(&call.channels[1]), frames_of(&dtmf.channels[0]));
    let mut own = Vec::new();
    for frames in [&a, &b] {
        let (events, status) = run_stream(&mut client, frames.clone()).await;
        assert!(status.is_none(), "{status:?}");
        own.push(events);
    }
    assert!(own[0].iter().any(|e| matches!(e, Event::SpeechEnded(_))), "the call fixture has speech");
    assert!(own[1].iter().any(|e| matches!(e, Event::Dtmf(_))), "the dtmf fixture has digits");

    // Both legs on one stream, as a gathering client sends them: each message carries the next
    // frame of every leg still sending; leg 1 ends when its frames do, leg 2 later.
    let (tx, events) = open_shared(&mut client).await;
    tx.send(pb::StreamAudioCallsRequest {
        calls: vec![leg(1, config(pb::AudioEncoding::Mulaw, 8000)), leg(2, config(pb::AudioEncoding::Mulaw, 8000))],
    })
    .await
    .unwrap();
    let reader = tokio::spawn(drain_shared(events, HashMap::new()));
    for i in 0..a.len().max(b.len()) {
        let mut calls = Vec::new();
        for (id, frames) in [(1u64, &a), (2, &b)] {
            match frames.get(i) {
                Some(f) => calls.push(leg(id, f.clone())),
                None if i == frames.len() => calls.push(end(id)),
                None => {}
            }
        }
        tx.send(pb::StreamAudioCallsRequest { calls }).await.unwrap();
    }
    tx.send(pb::StreamAudioCallsRequest { calls: vec![end(1), end(2)] }).await.unwrap();
    drop(tx);
    let (logs, status) = reader.await.unwrap();
    assert!(status.is_none(), "the shared stream ends OK once its legs have: {status:?}");
    for (id, expected) in [(1u64, &own[0]), (2, &own[1])] {
        let log = &logs[&id];
        assert!(log.opened, "leg {id}");
        assert_eq!(&log.events, expected, "leg {id}: the same events as on its own stream");
        let ended = log.ended.as_ref().unwrap_or_else(|| panic!("leg {id} ended"));
        assert_eq!(ended.code(), Code::Ok, "leg {id}: {ended:?}");
        assert!(!log.after_end, "leg {id}");
    }
}

#[tokio::test]
async fn a_leg_over_the_cap_is_busy_a_bad_one_invalid_and_the_others_go_on() {
    let app = spawn_app(&[("AUDIO_MAX_STREAMS", "1")]).await;
    let mut client = app.client().await;
    let (tx, mut events) = open_shared(&mut client).await;
    let mut logs = HashMap::new();
    tx.send(pb::StreamAudioCallsRequest {
        calls: vec![
            leg(1, config(pb::AudioEncoding::Mulaw, 8000)),
            leg(2, config(pb::AudioEncoding::Mulaw, 8000)),
            leg(3, frame(0, vec![0xFF; 160], 160, 8000)),
            leg(4, pb::StreamAudioRequest { payload: Some(Payload::Config(pb::StreamConfig::default())) }),
        ],
    })
    .await
    .unwrap();
    read_until(&mut events, &mut logs, |l| {
        l.get(&1).is_some_and(|l| l.opened) && [2, 3].iter().all(|id| l.get(id).is_some_and(|l| l.ended.is_some()))
    })
    .await;
    let busy = logs[&2].ended.as_ref().unwrap();
    assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
    assert_eq!(errors::reason(busy), Some(Reason::Busy), "the leg carries the reason: {busy:?}");
    assert!(!logs[&2].opened);
    let frame_first = logs[&3].ended.as_ref().unwrap();
    assert_eq!(frame_first.code(), Code::InvalidArgument, "{frame_first:?}");
    // Leg 4 (a config without a format) met the cap before its check: busy too, not opened.
    read_until(&mut events, &mut logs, |l| l.get(&4).is_some_and(|l| l.ended.is_some())).await;
    assert!(!logs[&4].opened);

    // Leg 1 still works: frames in, statistics out at its end.
    let mut calls: Vec<pb::CallAudio> = (0..10).map(|s| leg(1, frame(s, vec![0xFF; 160], 160, 8000))).collect();
    calls.push(end(1));
    tx.send(pb::StreamAudioCallsRequest { calls }).await.unwrap();
    read_until(&mut events, &mut logs, |l| l[&1].ended.is_some()).await;
    assert_eq!(logs[&1].ended.as_ref().unwrap().code(), Code::Ok);
    let Some(Event::Stats(stats)) = logs[&1].events.last() else { panic!("{:?}", logs[&1].events) };
    assert_eq!(stats.frames_received, 10);

    // Its slot comes back: a new leg opens.
    let mut opened = false;
    for id in 10..200u64 {
        tx.send(pb::StreamAudioCallsRequest { calls: vec![leg(id, config(pb::AudioEncoding::Mulaw, 8000))] })
            .await
            .unwrap();
        read_until(&mut events, &mut logs, |l| l.get(&id).is_some_and(|l| l.opened || l.ended.is_some())).await;
        if logs[&id].opened {
            opened = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(opened, "a leg opens once the slot is free");
}

#[tokio::test]
async fn shutdown_flushes_every_leg_ends_it_unavailable_and_ends_the_shared_stream() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let (tx, mut events, _) = two_legs_mid_sentence(&mut client, 7, 8).await;
    let mut logs = HashMap::new();
    let started = |l: &LegLog| l.events.iter().any(|e| matches!(e, Event::SpeechStarted(_)));
    read_until(&mut events, &mut logs, |l| [7, 8].iter().all(|id| l.get(id).is_some_and(started))).await;
    app.shutdown.trigger();
    let (rest, status) = drain_shared(events, logs).await;
    assert!(status.is_none(), "{status:?}");
    for id in [7u64, 8] {
        let log = &rest[&id];
        let ended = log.ended.as_ref().expect("each leg ends");
        assert_eq!(ended.code(), Code::Unavailable, "leg {id}: {ended:?}");
        let flushed = log.events.iter().filter(|e| matches!(e, Event::SpeechEnded(s) if s.truncated)).count();
        assert_eq!(flushed, 1, "leg {id}: the open utterance is flushed: {:?}", log.events);
    }
    drop(tx);
    within("server stops", app.server).await.unwrap();
}

#[tokio::test]
async fn an_idle_leg_ends_flushed_and_frees_its_slot_while_the_others_go_on() {
    let app = spawn_app(&[("AUDIO_MAX_STREAMS", "2"), ("AUDIO_STREAM_IDLE_TIMEOUT_SECONDS", "0.5")]).await;
    let mut client = app.client().await;
    // Both legs mid-sentence; then leg 1 falls silent on the wire while leg 2 keeps sending.
    let (tx, mut events, sent) = two_legs_mid_sentence(&mut client, 1, 2).await;
    let mut logs = HashMap::new();
    let silent = std::time::Instant::now();
    let mut seq = sent;
    while logs.get(&1).is_none_or(|l: &LegLog| l.ended.is_none()) {
        assert!(silent.elapsed() < std::time::Duration::from_secs(10), "leg 1 outlives its idle bound");
        tx.send(pb::StreamAudioCallsRequest { calls: vec![leg(2, frame(seq, vec![0xFF; 160], 160, 8000))] })
            .await
            .unwrap();
        seq += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_millis(1), events.message()).await.map(|r| r.unwrap())
        {
            record(&mut logs, m);
        }
    }
    assert!(silent.elapsed() >= std::time::Duration::from_millis(500), "not before its bound: {:?}", silent.elapsed());
    let idle = logs[&1].ended.as_ref().unwrap();
    assert_eq!(idle.code(), Code::DeadlineExceeded, "{idle:?}");
    assert!(idle.message().contains("idle"), "{idle:?}");
    let flushed = logs[&1].events.iter().filter(|e| matches!(e, Event::SpeechEnded(s) if s.truncated)).count();
    assert_eq!(flushed, 1, "the open utterance is flushed: {:?}", logs[&1].events);
    let Some(Event::Stats(stats)) = logs[&1].events.last() else { panic!("final stats: {:?}", logs[&1].events) };
    assert_eq!(stats.frames_received, sent);
    assert!(logs[&2].ended.is_none(), "leg 2 goes on: {:?}", logs[&2].ended);

    // Its frames after its end are dropped quietly; its slot opens leg 3.
    tx.send(pb::StreamAudioCallsRequest {
        calls: vec![leg(1, frame(seq, vec![0xFF; 160], 160, 8000)), leg(3, config(pb::AudioEncoding::Mulaw, 8000))],
    })
    .await
    .unwrap();
    read_until(&mut events, &mut logs, |l| l.get(&3).is_some_and(|l| l.opened || l.ended.is_some())).await;
    assert!(logs[&3].opened, "{:?}", logs[&3].ended);
    assert!(!logs[&1].after_end, "nothing more for leg 1");

    tx.send(pb::StreamAudioCallsRequest { calls: vec![end(1), end(2), end(3)] }).await.unwrap();
    drop(tx);
    let (logs, status) = drain_shared(events, logs).await;
    assert!(status.is_none(), "{status:?}");
    for id in [2u64, 3] {
        assert_eq!(logs[&id].ended.as_ref().map(|s| s.code()), Some(Code::Ok), "leg {id}");
    }
    let Some(Event::Stats(stats)) = logs[&2].events.last() else { panic!("{:?}", logs[&2].events) };
    assert_eq!(stats.frames_received, seq, "leg 2 got every frame");
    assert!(!logs[&1].after_end);
}

#[tokio::test]
async fn at_the_shared_streams_deadline_its_legs_end_flushed_and_later_ones_at_once() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let (tx, rx) = mpsc::channel(64);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.set_timeout(std::time::Duration::from_millis(700));
    let started = std::time::Instant::now();
    let mut events = within("open shared stream", client.stream_audio_calls(request)).await.unwrap().into_inner();
    let mut logs = HashMap::new();
    let mut calls = vec![leg(1, config(pb::AudioEncoding::Mulaw, 8000))];
    calls.extend((0..5).map(|s| leg(1, frame(s, vec![0xFF; 160], 160, 8000))));
    tx.send(pb::StreamAudioCallsRequest { calls }).await.unwrap();
    read_until(&mut events, &mut logs, |l| l.get(&1).is_some_and(|l| l.ended.is_some())).await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(600), "{:?}", started.elapsed());
    let ended = logs[&1].ended.as_ref().unwrap();
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(ended.message().contains("deadline"), "{ended:?}");
    let Some(Event::Stats(stats)) = logs[&1].events.last() else { panic!("flushed: {:?}", logs[&1].events) };
    assert_eq!(stats.frames_received, 5);

    // A leg opened after the deadline opens and ends at once.
    tx.send(pb::StreamAudioCallsRequest { calls: vec![leg(2, config(pb::AudioEncoding::Mulaw, 8000))] }).await.unwrap();
    read_until(&mut events, &mut logs, |l| l.get(&2).is_some_and(|l| l.ended.is_some())).await;
    assert!(logs[&2].opened);
    assert_eq!(logs[&2].ended.as_ref().unwrap().code(), Code::DeadlineExceeded);
    drop(tx);
    let (logs, status) = drain_shared(events, logs).await;
    assert!(status.is_none(), "{status:?}");
    assert!(!logs[&1].after_end && !logs[&2].after_end);
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_the_stream_and_loses_no_event() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let call = decode_wav(&fixture_bytes("call-stereo.wav"), &Limits::default()).unwrap();
    let frames: Vec<pb::StreamAudioRequest> =
        mulaw_frames(&call.channels[1]).into_iter().enumerate().map(|(i, f)| frame(i as u64, f, 160, 8000)).collect();
    // Utterances in the smallest parts: many events per leg.
    let in_parts = || config_in_parts(1024);
    let (own, status) = run_stream_in_parts(&mut client, 1024, frames.clone()).await;
    assert!(status.is_none(), "{status:?}");
    const LEGS: u64 = 40;
    assert!(own.len() as u64 * LEGS > 4_000, "more events than every buffer holds: {} per leg", own.len());

    let (tx, events) = open_shared(&mut client).await;
    tx.send(pb::StreamAudioCallsRequest { calls: (1..=LEGS).map(|id| leg(id, in_parts())).collect() }).await.unwrap();
    let sender = tokio::spawn(async move {
        for f in frames {
            let calls = (1..=LEGS).map(|id| leg(id, f.clone())).collect();
            tx.send(pb::StreamAudioCallsRequest { calls }).await.unwrap();
        }
        tx.send(pb::StreamAudioCallsRequest { calls: (1..=LEGS).map(end).collect() }).await.unwrap();
    });
    // Nothing is read for a while: the stream stops reading frames (the sender is held).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!sender.is_finished(), "the shared stream stops reading while its events are not read");
    let (logs, status) = drain_shared(events, HashMap::new()).await;
    within("sender", sender).await.unwrap();
    assert!(status.is_none(), "{status:?}");
    for id in 1..=LEGS {
        let log = &logs[&id];
        assert_eq!(log.events, own, "leg {id}: every event of its own stream, in order");
        assert_eq!(log.ended.as_ref().map(|s| s.code()), Some(Code::Ok), "leg {id}");
    }
}
