//! The service's metrics on its admin port, with the real Prometheus recorder installed (its
//! own process under `cargo nextest`: the recorder is global to the process).
use std::time::Duration;

use crate::common::*;
use audio_dsp::codec::encode;
use audio_dsp::{Encoding, Limits, decode_wav};
use kraliki_proto::audio::v1::{self as pb, stream_audio_request::Payload};
use telemetry::{Env, TelemetryConfig};

/// The value of the first sample line that starts with `prefix` (name and labels).
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(admin: &str) -> String {
    reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn audio_metrics_are_exported() {
    let env = Env::from_pairs([("LOG_LEVEL", "warn"), ("LOG_FORMAT", "text")]);
    let telemetry =
        telemetry::init(&audio_processor::service_info(), &TelemetryConfig::from_env(&env).unwrap()).unwrap();
    let app = spawn_app_with(&[], telemetry.metrics()).await;
    let mut client = app.client().await;

    // A recording: 8 kHz μ-law stereo, about 14 s.
    let bytes = fixture_bytes("call-stereo.wav");
    let call = decode_wav(&bytes, &Limits::default()).unwrap();
    client.analyze_recording(wav_request(bytes)).await.unwrap();

    // A live stream with speech.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(pb::StreamAudioRequest {
        payload: Some(Payload::Config(pb::StreamConfig {
            format: format(pb::AudioEncoding::Mulaw, 8000, 1),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut events = client.stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let text = scrape(&app.admin_url).await;
    assert_eq!(sample(&text, "audio_active_streams", &[]), Some(1.0), "{text}");
    let sender = tokio::spawn(async move {
        for (i, chunk) in call.channels[1].chunks_exact(160).enumerate() {
            let f = pb::AudioFrame {
                sequence_number: i as u64,
                payload: encode(Encoding::Mulaw, chunk),
                ..Default::default()
            };
            tx.send(pb::StreamAudioRequest { payload: Some(Payload::Frame(f)) }).await.unwrap();
        }
    });
    while within("events", events.message()).await.unwrap().is_some() {}
    sender.await.unwrap();

    // A bad request.
    let bad = pb::AnalyzeRecordingRequest { audio: vec![1, 2, 3], ..Default::default() };
    assert_eq!(client.analyze_recording(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // The gauge returns to zero once the stream task has ended.
    let mut text = String::new();
    for _ in 0..200 {
        text = scrape(&app.admin_url).await;
        if sample(&text, "audio_active_streams", &[]) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sample(&text, "audio_active_streams", &[]), Some(0.0), "{text}");
    // ~14 s recorded (both channels' wall clock counts once) + ~14 s streamed, whole seconds.
    let secs = sample(&text, "audio_processed_seconds_total", &["codec=\"mulaw\""]).expect("audio seconds");
    assert!((26.0..=29.0).contains(&secs), "{secs}");
    assert_eq!(sample(&text, "audio_vad_events_total", &["event=\"speech_started\""]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "audio_vad_events_total", &["event=\"speech_ended\""]), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "grpc_server_handled_total",
            &["grpc_method=\"AnalyzeRecording\"", "grpc_code=\"InvalidArgument\""]
        ),
        Some(1.0),
        "{text}"
    );
    // Histograms with the declared buckets.
    assert_eq!(sample(&text, "audio_analysis_duration_seconds_count", &["vad=\"fast\""]), Some(1.0), "{text}");
    assert!(text.contains("audio_realtime_factor_bucket{vad=\"fast\",le=\"5000\"}"), "{text}");
    assert!(text.contains("audio_analysis_duration_seconds_bucket{vad=\"fast\",le=\"0.25\"}"), "{text}");
    assert!(text.contains("# HELP audio_processed_seconds_total"));
}
