//! Recording analysis over gRPC against the real service: the committed fixtures and their
//! ground truth, every codec and container, unary and client-streamed, and bad input.
use crate::common::*;
use audio_dsp::codec::encode;
use audio_dsp::{Encoding, Limits, decode_wav};
use kraliki_proto::audio::v1::{self as pb, analyze_recording_stream_request::Payload};
use kraliki_proto::errors::{self, Reason};
use tonic::Code;

fn chunked(req: pb::AnalyzeRecordingRequest, chunk: usize) -> Vec<pb::AnalyzeRecordingStreamRequest> {
    let audio = req.audio.clone();
    let header = pb::AnalyzeRecordingRequest { audio: Vec::new(), ..req };
    std::iter::once(pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Header(header)) })
        .chain(
            audio
                .chunks(chunk)
                .map(|c| pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Chunk(c.to_vec())) }),
        )
        .collect()
}

fn segments(c: &pb::ChannelAnalysis) -> Vec<(f64, f64)> {
    c.speech_segments.iter().map(|s| (s.start_seconds, s.end_seconds)).collect()
}

fn assert_within(got: &[(f64, f64)], truth: &[(f64, f64)], tol: f64) {
    assert_eq!(got.len(), truth.len(), "got {got:?} truth {truth:?}");
    for (g, t) in got.iter().zip(truth) {
        assert!((g.0 - t.0).abs() <= tol && (g.1 - t.1).abs() <= tol, "got {got:?} truth {truth:?}");
    }
}

fn overlap(a: &[(f64, f64)], b: &[(f64, f64)]) -> f64 {
    a.iter().flat_map(|x| b.iter().map(move |y| (x.1.min(y.1) - x.0.max(y.0)).max(0.0))).sum()
}

#[tokio::test]
async fn stereo_call_fixture_unary_and_streamed_match_truth() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let bytes = fixture_bytes("call-stereo.wav");
    let mut req = wav_request(bytes.clone());
    req.channel_labels = vec!["agent".into(), "caller".into()];
    req.include_speech_audio = true;

    let unary = within("unary", client.analyze_recording(req.clone())).await.unwrap().into_inner();
    let streamed = within("streamed", client.analyze_recording_stream(tokio_stream::iter(chunked(req, 7919))))
        .await
        .unwrap()
        .into_inner();

    let a = unary.analysis.as_ref().unwrap();
    let b = streamed.analysis.as_ref().unwrap();
    // Same bytes, same answer (apart from the wall time spent).
    let strip = |mut x: pb::RecordingAnalysis| {
        x.processing_time = None;
        x
    };
    assert_eq!(strip(a.clone()), strip(b.clone()));
    assert_eq!(unary.speech, streamed.speech);

    assert_eq!((a.sample_rate_hz, a.codec.as_str(), a.channels.len()), (8000, "mulaw", 2));
    assert_eq!(a.source_encoding, pb::AudioEncoding::Wav as i32);
    assert_eq!(a.vad_model, pb::VadModel::Fast as i32);
    assert_eq!((a.channels[0].label.as_str(), a.channels[1].label.as_str()), ("agent", "caller"));
    assert!(a.processing_time.is_some());

    // Ground truth: where the script placed each sentence.
    let p = placements("call-stereo.txt");
    let total = a.duration_seconds;
    let agent = placed_truth(&[("speech-a.wav", p["a_at"]), ("speech-c.wav", p["c_at"])], total);
    let caller = placed_truth(&[("speech-b.wav", p["b_at"])], total);
    assert_within(&segments(&a.channels[0]), &agent, 0.06);
    assert_within(&segments(&a.channels[1]), &caller, 0.06);

    let conv = a.conversation.as_ref().expect("two parties give a conversation");
    let truth_overlap = overlap(&agent, &caller);
    assert!(truth_overlap > 0.1, "the fixture overlaps on purpose: {truth_overlap}");
    assert!((conv.overlap_seconds - truth_overlap).abs() <= 0.1, "overlap {} vs {truth_overlap}", conv.overlap_seconds);
    assert_eq!(conv.overlap_count, 1);
    assert_eq!(conv.interruptions, 1);
    assert_eq!(conv.interruptions_by_channel, vec![0, 1]);
    assert_eq!(conv.turns, 3);
    assert!((conv.time_to_first_speech_seconds.unwrap() - agent[0].0).abs() <= 0.06);
    // The agent answers the caller after a 0.8 s pause.
    assert_eq!(conv.response_gaps_seconds.len(), 1);
    assert!((conv.response_gaps_seconds[0] - (agent[1].0 - caller[0].1)).abs() <= 0.1, "{conv:?}");
    let talk: f64 = conv.talk_ratio.iter().sum();
    assert!((talk - 1.0).abs() < 1e-9);
    for c in &a.channels {
        assert!(c.speech_seconds > 2.0 && c.silence_ratio > 0.2 && c.silence_ratio < 0.9, "{c:?}");
        assert!(c.active_speech_level_dbfs > c.noise_floor_dbfs + 20.0, "{c:?}");
        assert!(c.peak_dbfs <= 0.0 && c.rms_dbfs < c.peak_dbfs);
        assert!(c.time_to_first_speech_seconds.is_some());
    }
    assert!(a.dtmf.is_empty());

    // Speech audio: 16 kHz PCM16 per segment, offsets where each starts.
    assert_eq!(unary.speech.len(), 2);
    for (speech, c) in unary.speech.iter().zip(&a.channels) {
        assert_eq!(speech.label, c.label);
        assert_eq!(speech.segments.len(), c.speech_segments.len());
        assert_eq!(speech.segment_sample_offsets.len(), c.speech_segments.len());
        let samples = speech.pcm16_16khz.len() as f64 / 2.0;
        assert!((samples - c.speech_seconds * 16000.0).abs() <= 16.0 * c.speech_segments.len() as f64, "{samples}");
        assert_eq!(speech.segment_sample_offsets[0], 0);
        let pcm: Vec<i16> = speech.pcm16_16khz.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        assert!(pcm.iter().map(|s| i32::from(*s).abs()).max().unwrap() > 3000, "speech audio is not silent");
    }
    let agent_speech = &unary.speech[0];
    let second = agent_speech.segment_sample_offsets[1] as f64;
    let first_len =
        (a.channels[0].speech_segments[0].end_seconds - a.channels[0].speech_segments[0].start_seconds) * 16000.0;
    assert!((second - first_len).abs() <= 16.0);
}

#[tokio::test]
async fn every_codec_in_wav_and_raw_gives_the_same_speech() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    // The agent channel of the call fixture, at 8 kHz.
    let call = decode_wav(&fixture_bytes("call-stereo.wav"), &Limits::default()).unwrap();
    let x = &call.channels[0];
    let reference = {
        let bytes = encode(Encoding::Mulaw, x);
        let r = pb::AnalyzeRecordingRequest {
            format: format(pb::AudioEncoding::Mulaw, 8000, 1),
            audio: bytes,
            ..Default::default()
        };
        client.analyze_recording(r).await.unwrap().into_inner().analysis.unwrap()
    };
    let ref_segments = segments(&reference.channels[0]);
    assert_eq!(ref_segments.len(), 2);
    assert_eq!(reference.source_encoding, pb::AudioEncoding::Mulaw as i32);

    let cases: Vec<(&str, pb::AnalyzeRecordingRequest)> = vec![
        (
            "raw alaw",
            pb::AnalyzeRecordingRequest {
                format: format(pb::AudioEncoding::Alaw, 0, 0),
                audio: encode(Encoding::Alaw, x),
                ..Default::default()
            },
        ),
        (
            "raw pcm16",
            pb::AnalyzeRecordingRequest {
                format: format(pb::AudioEncoding::Pcm16, 8000, 1),
                audio: encode(Encoding::Pcm16, x),
                ..Default::default()
            },
        ),
        ("wav mulaw", wav_request(wav(7, 1, 8000, 8, &encode(Encoding::Mulaw, x)))),
        ("wav alaw", wav_request(wav(6, 1, 8000, 8, &encode(Encoding::Alaw, x)))),
        ("wav pcm16", wav_request(wav(1, 1, 8000, 16, &encode(Encoding::Pcm16, x)))),
    ];
    for (name, req) in cases {
        let a = client.analyze_recording(req).await.unwrap_or_else(|e| panic!("{name}: {e}")).into_inner();
        let a = a.analysis.unwrap();
        let codec = name.split(' ').nth(1).unwrap();
        assert_eq!(a.codec, codec, "{name}");
        assert!((a.duration_seconds - reference.duration_seconds).abs() < 1e-9, "{name}");
        assert_within(&segments(&a.channels[0]), &ref_segments, 0.06);
        assert!(a.conversation.is_none(), "mono has no conversation");
    }
}

#[tokio::test]
async fn dtmf_fixture_digits_and_neural_vad() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let a = client.analyze_recording(wav_request(fixture_bytes("dtmf.wav"))).await.unwrap().into_inner();
    let a = a.analysis.unwrap();
    let truth = dtmf_truth();
    assert_eq!(a.dtmf.len(), truth.len(), "{:?}", a.dtmf);
    for (g, t) in a.dtmf.iter().zip(&truth) {
        assert_eq!(g.digit, t.0);
        assert!((g.start_seconds - t.1).abs() < 0.02 && (g.end_seconds - t.2).abs() < 0.02, "{g:?} vs {t:?}");
        assert_eq!(g.channel, 0);
    }

    // skip_dtmf turns digit detection off; the neural tier is selectable per request.
    let mut req = wav_request(fixture_bytes("dtmf.wav"));
    req.skip_dtmf = true;
    req.vad = Some(pb::VadOptions { model: pb::VadModel::Neural as i32, ..Default::default() });
    let b = client.analyze_recording(req).await.unwrap().into_inner().analysis.unwrap();
    assert!(b.dtmf.is_empty());
    assert_eq!(b.vad_model, pb::VadModel::Neural as i32);
    assert!(b.channels[0].speech_segments.first().is_some_and(|s| s.start_seconds < 0.6));
}

async fn expect_code(
    client: &mut pb::audio_processor_client::AudioProcessorClient<tonic::transport::Channel>,
    req: pb::AnalyzeRecordingRequest,
    code: Code,
    what: &str,
) -> String {
    let err = within(what, client.analyze_recording(req)).await.expect_err(what);
    assert_eq!(err.code(), code, "{what}: {err:?}");
    assert!(!err.message().is_empty());
    // `ResourceExhausted` is the input's fault or a busy service: the structured reason says
    // which (the caller never reads the text).
    if code == Code::ResourceExhausted {
        assert_eq!(errors::reason(&err), Some(Reason::InputTooLarge), "{what}: {err:?}");
    }
    err.message().to_string()
}

#[tokio::test]
async fn bad_recordings_are_invalid_argument_and_the_service_keeps_answering() {
    let app = spawn_app(&[]).await;
    let mut client = app.client().await;
    let good = fixture_bytes("call-stereo.wav");
    let pcm = encode(Encoding::Pcm16, &audio_dsp::synth::tone(8000, 440.0, -20.0, 0.5));

    let mut lying_fmt = wav(1, 1, 8000, 16, &pcm);
    lying_fmt[16..20].copy_from_slice(&100_000u32.to_le_bytes()); // fmt chunk claims 100 kB
    let cases: Vec<(&str, pb::AnalyzeRecordingRequest)> = vec![
        ("truncated header", wav_request(good[..30].to_vec())),
        ("header only", wav_request(wav(1, 1, 8000, 16, &[]))),
        ("lying fmt size", wav_request(lying_fmt)),
        ("not a wav", wav_request(b"ID3\x03 this is an mp3 honestly".to_vec())),
        ("float wav", wav_request(wav(3, 1, 8000, 32, &[0; 64]))),
        ("mp3 in wav", wav_request(wav(0x55, 1, 8000, 16, &[0; 64]))),
        ("absurd wav rate", wav_request(wav(1, 1, 7_000_000, 16, &pcm))),
        ("absurd wav channels", wav_request(wav(1, 40, 8000, 16, &[0; 800]))),
        ("zero channels", wav_request(wav(1, 0, 8000, 16, &pcm))),
        (
            "raw rate 11025",
            pb::AnalyzeRecordingRequest {
                format: format(pb::AudioEncoding::Pcm16, 11025, 1),
                audio: pcm.clone(),
                ..Default::default()
            },
        ),
        (
            "raw pcm16 without rate",
            pb::AnalyzeRecordingRequest {
                format: format(pb::AudioEncoding::Pcm16, 0, 1),
                audio: pcm.clone(),
                ..Default::default()
            },
        ),
        (
            "raw 3 channels",
            pb::AnalyzeRecordingRequest {
                format: format(pb::AudioEncoding::Mulaw, 8000, 3),
                audio: vec![0xFF; 300],
                ..Default::default()
            },
        ),
        (
            "raw partial sample",
            pb::AnalyzeRecordingRequest {
                format: format(pb::AudioEncoding::Pcm16, 8000, 1),
                audio: pcm[..pcm.len() - 1].to_vec(),
                ..Default::default()
            },
        ),
        (
            "empty audio",
            pb::AnalyzeRecordingRequest { format: format(pb::AudioEncoding::Mulaw, 8000, 1), ..Default::default() },
        ),
        ("no format", pb::AnalyzeRecordingRequest { audio: pcm.clone(), ..Default::default() }),
        (
            "unknown encoding",
            pb::AnalyzeRecordingRequest {
                format: Some(pb::AudioFormat { encoding: 99, sample_rate_hz: 8000, channels: 1 }),
                audio: pcm.clone(),
                ..Default::default()
            },
        ),
        (
            "three labels",
            pb::AnalyzeRecordingRequest {
                channel_labels: vec!["a".into(), "b".into(), "c".into()],
                ..wav_request(good.clone())
            },
        ),
        (
            "negative silence",
            pb::AnalyzeRecordingRequest {
                vad: Some(pb::VadOptions {
                    end_of_turn_silence: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
                    ..Default::default()
                }),
                ..wav_request(good.clone())
            },
        ),
    ];
    let mut messages = Vec::new();
    for (what, req) in cases {
        let m = expect_code(&mut client, req, Code::InvalidArgument, what).await;
        messages.push(format!("{what}: {m}"));
    }
    println!("{}", messages.join("\n"));
    assert!(messages.iter().any(|m| m.contains("11025")));
    assert!(messages.iter().any(|m| m.starts_with("raw pcm16 without rate") && m.contains("sample_rate_hz")));

    // A data chunk claiming 4 GiB is decoded up to the bytes present: no huge allocation.
    let mut lying_data = wav(1, 1, 8000, 16, &pcm);
    lying_data[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    let a = client.analyze_recording(wav_request(lying_data)).await.unwrap().into_inner().analysis.unwrap();
    assert!((a.duration_seconds - 0.5).abs() < 1e-9);
    // Client-streamed protocol errors.
    let header = pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Header(wav_request(Vec::new()))) };
    let chunk = pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Chunk(good.clone())) };
    for (what, messages) in [
        ("chunk first", vec![chunk.clone(), header.clone()]),
        ("header twice", vec![header.clone(), chunk.clone(), header.clone()]),
        ("no messages", vec![]),
        ("empty message", vec![header.clone(), pb::AnalyzeRecordingStreamRequest { payload: None }]),
        (
            "bad format in header",
            vec![
                pb::AnalyzeRecordingStreamRequest {
                    payload: Some(Payload::Header(pb::AnalyzeRecordingRequest::default())),
                },
                chunk.clone(),
            ],
        ),
    ] {
        let err = within(what, client.analyze_recording_stream(tokio_stream::iter(messages))).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }

    // Still serving.
    let ok = client.analyze_recording(wav_request(good)).await.unwrap().into_inner();
    assert_eq!(ok.analysis.unwrap().channels.len(), 2);
}

#[tokio::test]
async fn byte_limit_is_resource_exhausted_unary_and_streamed() {
    let app = spawn_app(&[("AUDIO_MAX_RECORDING_BYTES", "100000")]).await;
    let mut client = app.client().await;
    let raw = |n: usize| pb::AnalyzeRecordingRequest {
        format: format(pb::AudioEncoding::Mulaw, 8000, 1),
        audio: vec![0xFF; n],
        ..Default::default()
    };
    // Just at the limit: fine.
    client.analyze_recording(raw(100_000)).await.unwrap();
    // Over the limit but under the transport's message limit: refused by the service.
    let m = expect_code(&mut client, raw(120_000), Code::ResourceExhausted, "unary just over").await;
    assert!(m.contains("100000"), "{m}");
    // Far over: refused by the transport before it is buffered, still ResourceExhausted.
    let m = expect_code(&mut client, raw(1_000_000), Code::ResourceExhausted, "unary far over").await;
    assert!(m.contains("limit"), "{m}");

    // Streamed: chunks add up past the limit.
    let err =
        within("streamed over", client.analyze_recording_stream(tokio_stream::iter(chunked(raw(250_000), 30_000))))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(errors::reason(&err), Some(Reason::InputTooLarge));
    // One chunk larger than the whole message limit.
    let err = within(
        "streamed huge chunk",
        client.analyze_recording_stream(tokio_stream::iter(chunked(raw(400_000), 400_000))),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Streamed within the limit works.
    let ok = client.analyze_recording_stream(tokio_stream::iter(chunked(raw(96_000), 10_000))).await.unwrap();
    assert!((ok.into_inner().analysis.unwrap().duration_seconds - 12.0).abs() < 1e-9);
}

#[tokio::test]
async fn saturated_analyses_are_resource_exhausted_and_deadlines_are_honoured() {
    let app = spawn_app(&[("AUDIO_MAX_CONCURRENT_ANALYSES", "1")]).await;
    let mut client = app.client().await;
    // An upload that sends its header and then stalls holds the only slot.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Header(wav_request(Vec::new()))) })
        .await
        .unwrap();
    let mut stalled_client = app.client().await;
    let stalled = tokio::spawn(async move {
        stalled_client.analyze_recording_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await
    });
    let good = wav_request(fixture_bytes("call-stereo.wav"));
    let mut saw_exhausted = false;
    for _ in 0..200 {
        match client.analyze_recording(good.clone()).await {
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("busy"), "{e:?}");
                assert_eq!(errors::reason(&e), Some(Reason::Busy), "busy is not the input's fault");
                saw_exhausted = true;
                break;
            }
            // The stalled upload may not have reached the server yet.
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(saw_exhausted, "a second analysis must not queue behind the first");
    // Ending the upload frees the slot (its audio is empty: InvalidArgument).
    drop(tx);
    let stalled = within("stalled upload", stalled).await.unwrap();
    assert_eq!(stalled.unwrap_err().code(), Code::InvalidArgument);
    within("after release", client.analyze_recording(good.clone())).await.unwrap();

    // A caller's deadline bounds an upload that never finishes.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Header(wav_request(Vec::new()))) })
        .await
        .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(std::time::Duration::from_millis(300));
    let err = within("deadline", client.analyze_recording_stream(req)).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    drop(tx);
    // And the slot comes back.
    for _ in 0..200 {
        match client.analyze_recording(good.clone()).await {
            Ok(_) => return,
            Err(e) if e.code() == Code::ResourceExhausted => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    panic!("the slot held by the timed-out upload was never released");
}

#[tokio::test]
async fn a_header_only_upload_without_a_deadline_frees_its_permit_within_the_bound() {
    let app = spawn_app(&[("AUDIO_MAX_CONCURRENT_ANALYSES", "1"), ("AUDIO_ANALYSIS_TIMEOUT_SECONDS", "1")]).await;
    let mut client = app.client().await;
    // The header, then nothing, and no `grpc-timeout`: the sender stays open all along.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AnalyzeRecordingStreamRequest { payload: Some(Payload::Header(wav_request(Vec::new()))) })
        .await
        .unwrap();
    let mut stalled_client = app.client().await;
    let started = std::time::Instant::now();
    let stalled = tokio::spawn(async move {
        stalled_client.analyze_recording_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await
    });
    // It holds the only permit meanwhile.
    let good = wav_request(fixture_bytes("call-stereo.wav"));
    let mut saw_exhausted = false;
    for _ in 0..40 {
        match client.analyze_recording(good.clone()).await {
            Err(e) if e.code() == Code::ResourceExhausted => {
                saw_exhausted = true;
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(saw_exhausted, "the stalled upload holds the permit");
    let err = within("stalled upload", stalled).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let held = started.elapsed();
    assert!(held < std::time::Duration::from_secs(5), "held for {held:?}");
    // The permit is back although the client never closed its stream.
    within("after the bound", client.analyze_recording(good)).await.unwrap();
    drop(tx);
}
