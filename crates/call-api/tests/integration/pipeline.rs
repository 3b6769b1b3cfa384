//! The recording pipeline end to end, in one process: call-api, audio-processor and
//! provider-gateway on port 0, a fake OpenAI-compatible transcription server on loopback, on
//! SQLite and on the real PostgreSQL.

use crate::common;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::common::{
    Backend, KEY, TestApp, TestDb, new_call,
    stack::{self, Peer},
};
use serde_json::{Value, json};
use telemetry::testing::{FakeHttp, FakeReply, FakeRequest};

const AGENT_FIRST: &str = "Hello and thank you for calling Voice Kraliki.";
const AGENT_LAST: &str = "Your order shipped yesterday and arrives on Friday.";
const CALLER: &str = "I would like to check the status of my order from last week.";

/// Seconds of 16 kHz PCM16 mono audio in a WAV file.
fn wav_seconds(wav: &[u8]) -> f64 {
    stack::wav_data(wav).len() as f64 / 32_000.0
}

/// What an OpenAI-compatible server answers to `POST /audio/transcriptions` with
/// `response_format=verbose_json`: the agent's channel (about 8.6 s of speech) gets two
/// segments, one at each end of its audio, the caller's (about 3.8 s) one.
fn whisper_reply(request: &FakeRequest) -> FakeReply {
    let parts = request.multipart();
    let Some(file) = parts.iter().find(|p| p.name == "file") else {
        return FakeReply::json(400, json!({"error": {"message": "no file"}}));
    };
    let seconds = wav_seconds(&file.data);
    let (text, segments) = if seconds > 6.0 {
        (
            format!("{AGENT_FIRST} {AGENT_LAST}"),
            json!([
                {"id": 0, "start": 0.0, "end": 1.0, "text": format!(" {AGENT_FIRST}")},
                {"id": 1, "start": seconds - 1.0, "end": seconds, "text": format!(" {AGENT_LAST}")},
            ]),
        )
    } else {
        (CALLER.to_string(), json!([{"id": 0, "start": 0.0, "end": seconds, "text": format!(" {CALLER}")}]))
    };
    FakeReply::json(
        200,
        json!({"task": "transcribe", "language": "english", "duration": seconds, "text": text, "segments": segments}),
    )
}

struct Stack {
    app: TestApp,
    _audio: Peer,
    _gateway: Peer,
}

async fn stack(backend: Backend, openai: Option<&FakeHttp>, api_env: &[(&str, &str)]) -> Option<Stack> {
    let db = TestDb::new(backend).await?;
    let audio = stack::start_audio(None).await;
    let gateway = stack::start_gateway(openai, &[]).await;
    let app = stack::start_api(db, &audio.url(), &gateway.url(), api_env).await;
    Some(Stack { app, _audio: audio, _gateway: gateway })
}

async fn create_call(app: &TestApp) -> String {
    let r = app.client.post(format!("{}/v1/calls", app.base)).bearer_auth(KEY).json(&new_call("twilio")).send().await;
    let body: Value = r.unwrap().json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

async fn upload(app: &TestApp, id: &str, query: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    let body_len = body.len();
    app.client
        .post(format!("{}/v1/calls/{id}/recording{query}", app.base))
        .bearer_auth(KEY)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{content_type} {query} {} bytes: {e}", body_len))
}

async fn analysis(app: &TestApp, id: &str) -> (u16, Value) {
    let r = app.client.get(format!("{}/v1/calls/{id}/analysis", app.base)).bearer_auth(KEY).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

async fn full_pipeline(backend: Backend) {
    let fake = FakeHttp::start(whisper_reply).await;
    let Some(s) = stack(backend, Some(&fake), &[]).await else { return };
    let app = &s.app;
    let id = create_call(app).await;
    let r = upload(app, &id, "?channel_labels=agent,caller&language=en-US", "audio/x-wav", stack::call_stereo()).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["status"], "done", "{doc:#}");
    assert_eq!(doc["call_id"], id.as_str());

    // The audio analysis.
    let [a_at, b_at, _c_at] = stack::call_stereo_timings();
    assert_eq!(doc["recording"]["codec"], "mulaw");
    assert_eq!(doc["recording"]["channels"], 2);
    assert_eq!(doc["recording"]["content_type"], "audio/wav");
    assert_eq!(doc["recording"]["bytes"], stack::call_stereo().len());
    let channels = doc["audio"]["channels"].as_array().unwrap();
    assert_eq!(channels[0]["label"], "agent");
    assert_eq!(channels[1]["label"], "caller");
    assert_eq!(channels[0]["speech_segments"].as_array().unwrap().len(), 2, "{:#}", channels[0]);
    let first_speech = channels[0]["speech_segments"][0]["start_seconds"].as_f64().unwrap();
    // flite's speech starts with up to 0.2 s of its own silence.
    assert!((a_at..a_at + 0.25).contains(&first_speech), "agent speech starts at {first_speech}, placed at {a_at}");
    // The caller starts before the agent has finished: one overlap, one interruption by the caller.
    let conversation = &doc["audio"]["conversation"];
    assert_eq!(conversation["overlap_count"], 1, "{conversation:#}");
    assert!(conversation["overlap_seconds"].as_f64().unwrap() > 0.1, "{conversation:#}");
    assert_eq!(conversation["interruptions_by_channel"], json!([0, 1]));

    // What the transcription provider was sent: one request per channel, each the channel's
    // speech as 16 kHz mono PCM16 WAV, in OpenAI's multipart form.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "one transcription per channel");
    let mut sent_seconds = Vec::new();
    for req in &requests {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/v1/audio/transcriptions"));
        assert_eq!(req.header("authorization"), Some("Bearer sk-test-0123456789abcdef"));
        let parts = req.multipart();
        let field = |name: &str| parts.iter().find(|p| p.name == name).map(|p| p.data.clone());
        assert_eq!(field("model").as_deref(), Some(&b"whisper-1"[..]));
        assert_eq!(field("response_format").as_deref(), Some(&b"verbose_json"[..]));
        assert_eq!(field("language").as_deref(), Some(&b"en"[..]));
        let file = parts.iter().find(|p| p.name == "file").expect("file part");
        assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
        let wav = &file.data;
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "mono");
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 16_000);
        sent_seconds.push(wav_seconds(wav));
    }
    sent_seconds.sort_by(f64::total_cmp);
    let speech: Vec<f64> = {
        let mut v: Vec<f64> = channels.iter().map(|c| c["speech_seconds"].as_f64().unwrap()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    for (sent, speech) in sent_seconds.iter().zip(&speech) {
        assert!(close(*sent, *speech, 0.05), "sent {sent} s of audio for {speech} s of speech");
    }

    // The transcript, on the recording's timeline and diarised by channel.
    let t = &doc["transcript"];
    assert_eq!(t["status"], "done", "{t:#}");
    assert_eq!(t["provider"], "openai");
    assert_eq!(t["model"], "whisper-1");
    let segments = t["segments"].as_array().unwrap();
    let labels: Vec<&str> = segments.iter().map(|s| s["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["agent", "caller", "agent"]);
    assert_eq!(segments[0]["text"], AGENT_FIRST);
    assert!(close(segments[0]["start_seconds"].as_f64().unwrap(), first_speech, 0.001), "mapped to the first speech");
    let caller_speech = channels[1]["speech_segments"][0]["start_seconds"].as_f64().unwrap();
    assert!(close(segments[1]["start_seconds"].as_f64().unwrap(), caller_speech, 0.001));
    assert!((b_at..b_at + 0.25).contains(&caller_speech), "caller speech at {caller_speech}, placed at {b_at}");
    let agent_segments = channels[0]["speech_segments"].as_array().unwrap();
    let agent_end = agent_segments.last().unwrap()["end_seconds"].as_f64().unwrap();
    assert!(
        close(segments[2]["end_seconds"].as_f64().unwrap(), agent_end, 0.01),
        "the agent's last words end where its speech ends: {:#} vs {agent_end}",
        segments[2]
    );
    assert_eq!(t["text"], format!("agent: {AGENT_FIRST}\ncaller: {CALLER}\nagent: {AGENT_LAST}"));
    assert_eq!(t["channels"][1]["text"], CALLER);

    // Sentiment over the transcript: overall and per party.
    let sentiment = &doc["sentiment"];
    assert_eq!(sentiment["status"], "done", "{sentiment:#}");
    assert_eq!(sentiment["provider"], "local");
    assert!(sentiment["overall"]["score"].as_f64().is_some_and(|s| (-1.0..=1.0).contains(&s)));
    assert_eq!(sentiment["channels"].as_array().unwrap().len(), 2);

    // Stored: GET answers the same document, and the call says done.
    let (status, stored) = analysis(app, &id).await;
    assert_eq!(status, 200);
    assert_eq!(stored, doc);
    let call: Value = app
        .client
        .get(format!("{}/v1/calls/{id}", app.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(call["analysis_status"], "done");
    assert_eq!(
        app.db.count_calls("analysis_status = 'done' AND analysis IS NOT NULL AND transcript IS NOT NULL").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn full_pipeline_on_sqlite() {
    full_pipeline(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_pipeline_on_postgres() {
    full_pipeline(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_mulaw_upload_is_analysed_with_its_touch_tones() {
    let fake = FakeHttp::start(whisper_reply).await;
    let Some(s) = stack(Backend::Sqlite, Some(&fake), &[]).await else { return };
    let id = create_call(&s.app).await;
    let raw = stack::wav_data(&std::fs::read(stack::fixture("dtmf.wav")).unwrap()).to_vec();
    let r = upload(&s.app, &id, "", "audio/basic", raw.clone()).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["recording"]["content_type"], "audio/basic");
    assert_eq!(doc["recording"]["sample_rate_hz"], 8000);
    assert_eq!(doc["recording"]["channels"], 1);
    assert_eq!(doc["audio"]["channels"][0]["label"], "channel_0");
    let digits: String =
        doc["audio"]["dtmf"].as_array().unwrap().iter().map(|d| d["digit"].as_str().unwrap()).collect();
    assert_eq!(digits, "159#0*D");
    assert!(doc["audio"]["conversation"].is_null(), "one channel has no conversation analytics");
    assert_eq!(doc["transcript"]["status"], "done");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_transcription_provider_the_audio_analysis_is_stored_and_the_rest_is_unavailable() {
    // The embedded default: no OpenAI or Deepgram key.
    let Some(s) = stack(Backend::Sqlite, None, &[]).await else { return };
    let id = create_call(&s.app).await;
    let r = upload(&s.app, &id, "", "audio/wav", stack::call_stereo()).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["status"], "done");
    assert_eq!(doc["audio"]["channels"].as_array().unwrap().len(), 2);
    let t = &doc["transcript"];
    assert_eq!(t["status"], "unavailable");
    let reason = t["reason"].as_str().unwrap();
    assert!(reason.contains("no speech-to-text provider is configured"), "{reason}");
    assert!(reason.contains("OPENAI_API_KEY") && reason.contains("DEEPGRAM_API_KEY"), "{reason}");
    assert!(t.get("text").is_none(), "no text pretending to be a transcript: {t:#}");
    assert!(t["segments"].as_array().unwrap().is_empty());
    assert_eq!(doc["sentiment"]["status"], "unavailable");
    assert_eq!(doc["sentiment"]["reason"], "no transcript");
    assert_eq!(analysis(&s.app, &id).await.1, doc);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_transcription_provider_keeps_the_audio_analysis_and_a_retry_succeeds() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let fake = FakeHttp::start(move |req| {
        if h.load(Ordering::SeqCst) {
            whisper_reply(req)
        } else {
            FakeReply::json(500, json!({"error": {"message": "internal secret detail sk-upstream"}}))
        }
    })
    .await;
    let Some(s) = stack(Backend::Sqlite, Some(&fake), &[]).await else { return };
    let id = create_call(&s.app).await;
    let r = upload(&s.app, &id, "", "audio/wav", stack::call_stereo()).await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("speech-to-text provider") && !body.contains("secret"), "{body}");

    let (status, doc) = analysis(&s.app, &id).await;
    assert_eq!(status, 200);
    assert_eq!(doc["status"], "failed");
    let error = doc["error"].as_str().unwrap();
    assert!(error.starts_with("transcription failed:"), "{error}");
    assert!(!error.contains("secret"), "the provider's body never reaches the client: {error}");
    assert_eq!(doc["audio"]["channels"].as_array().unwrap().len(), 2, "the audio analysis is kept");
    assert_eq!(doc["transcript"]["status"], "failed");
    assert!(doc["transcript"]["reason"].as_str().unwrap().contains("openai"), "{doc:#}");

    // Retryable: the same upload again, the provider healthy now.
    healthy.store(true, Ordering::SeqCst);
    let r = upload(&s.app, &id, "", "audio/wav", stack::call_stereo()).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["status"], "done");
    assert!(doc.get("error").is_none());
    assert_eq!(doc["transcript"]["status"], "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_processor_down_is_503_and_a_retryable_failed_state() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else { return };
    // A port nobody listens on (yet).
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let audio_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let gateway = stack::start_gateway(None, &[]).await;
    let app = stack::start_api(db, &format!("http://{audio_addr}"), &gateway.url(), &[]).await;
    let id = create_call(&app).await;
    let r = upload(&app, &id, "", "audio/wav", stack::call_stereo()).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(body["error"]["message"], "audio-processor is unavailable, retry later");
    let (_, doc) = analysis(&app, &id).await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"], "audio-processor is unavailable");
    assert!(doc.get("audio").is_none());

    // audio-processor comes up on that port: the same upload now succeeds.
    let listener = tokio::net::TcpListener::bind(audio_addr).await.unwrap();
    let _audio = stack::start_audio(Some(listener)).await;
    let mut last = 0;
    for _ in 0..50 {
        let r = upload(&app, &id, "", "audio/wav", stack::call_stereo()).await;
        last = r.status().as_u16();
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200);
    assert_eq!(analysis(&app, &id).await.1["status"], "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_and_change_nothing() {
    let Some(s) = stack(Backend::Sqlite, None, &[("RECORDING_MAX_BYTES", "100000")]).await else { return };
    let app = &s.app;
    let id = create_call(app).await;
    let wav = stack::call_stereo(); // 224 kB, over the 100 kB limit
    let small = {
        // The first 2 s of the recording as a WAV of its own (stereo μ-law: 16 kB/s).
        let data = &stack::wav_data(&wav)[..32_000];
        let mut w = wav[..wav.len() - stack::wav_data(&wav).len()].to_vec();
        let data_len_at = w.len() - 4;
        w[data_len_at..].copy_from_slice(&(data.len() as u32).to_le_bytes());
        let riff = (w.len() + data.len() - 8) as u32;
        w[4..8].copy_from_slice(&riff.to_le_bytes());
        w.extend_from_slice(data);
        w
    };

    let code = |r: &Value| r["error"]["code"].as_str().unwrap_or("").to_string();
    // Declared too large.
    let r = upload(app, &id, "", "audio/wav", wav.clone()).await;
    assert_eq!(r.status(), 413);
    assert_eq!(code(&r.json().await.unwrap()), "payload_too_large");
    // Too large without a length up front (chunked): refused mid-stream.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = wav.chunks(16_384).map(|c| Ok(c.to_vec())).collect();
    let r = app
        .client
        .post(format!("{}/v1/calls/{id}/recording", app.base))
        .bearer_auth(KEY)
        .header("content-type", "audio/wav")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Not audio.
    let r = upload(app, &id, "", "application/json", b"{}".to_vec()).await;
    assert_eq!(r.status(), 415);
    let r = upload(app, &id, "", "audio/mpeg", vec![0xff; 100]).await;
    assert_eq!(r.status(), 415);
    let r = upload(app, &id, "", "audio/wav", b"this is not a wav file at all".to_vec()).await;
    assert_eq!(r.status(), 415);
    // Audio of a shape we cannot decode, and nothing at all.
    let mut broken = small.clone();
    broken[20] = 0x55; // format tag 0x55 (MP3) inside a WAV
    let r = upload(app, &id, "", "audio/wav", broken).await;
    assert_eq!(r.status(), 422, "{}", r.text().await.unwrap());
    let r = upload(app, &id, "", "audio/basic", Vec::new()).await;
    assert_eq!(r.status(), 422);
    // Bad parameters.
    let r = upload(app, &id, "?channel_labels=a,b,c", "audio/wav", small.clone()).await;
    assert_eq!(r.status(), 422);
    let r = upload(app, &id, "?speed=fast", "audio/wav", small.clone()).await;
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(format!("{}/v1/calls/{id}/recording", app.base))
        .bearer_auth(KEY)
        .header("content-type", "audio/wav")
        .header("idempotency-key", "has spaces in it")
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Another tenant's call, an unknown call, no key.
    let r = app
        .client
        .post(format!("{}/v1/calls/{id}/recording", app.base))
        .bearer_auth(common::ACME_KEY)
        .header("content-type", "audio/wav")
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = upload(app, "00000000-0000-0000-0000-000000000000", "", "audio/wav", small.clone()).await;
    assert_eq!(r.status(), 404);
    let r = app.client.post(format!("{}/v1/calls/{id}/recording", app.base)).body(small.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Nothing changed: no analysis at all.
    let (status, body) = analysis(app, &id).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(app.db.count_calls("analysis_status IS NOT NULL OR analysis_attempt IS NOT NULL").await, 0);

    // A good upload, then bad ones: the stored analysis stays as it was.
    let r = upload(app, &id, "", "audio/wav", small.clone()).await;
    assert_eq!(r.status(), 200);
    let done = analysis(app, &id).await.1;
    assert_eq!(done["status"], "done");
    let r = upload(app, &id, "", "audio/wav", b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk".to_vec()).await;
    assert_eq!(r.status(), 422);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = wav.chunks(16_384).map(|c| Ok(c.to_vec())).collect();
    let r = app
        .client
        .post(format!("{}/v1/calls/{id}/recording", app.base))
        .bearer_auth(KEY)
        .header("content-type", "audio/wav")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(analysis(app, &id).await.1, done, "rejected uploads left the analysis as it was");
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_retry_answers_from_storage_and_concurrent_uploads_conflict() {
    let slow = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s2, c2) = (slow.clone(), calls.clone());
    let fake = FakeHttp::start(move |req| {
        c2.fetch_add(1, Ordering::SeqCst);
        let reply = whisper_reply(req);
        if s2.load(Ordering::SeqCst) { reply.after(Duration::from_millis(1500)) } else { reply }
    })
    .await;
    let Some(s) = stack(Backend::Sqlite, Some(&fake), &[]).await else { return };
    let app = &s.app;
    let id = create_call(app).await;
    let send = |key: &'static str| {
        let (client, url) = (app.client.clone(), format!("{}/v1/calls/{id}/recording", app.base));
        async move {
            client
                .post(url)
                .bearer_auth(KEY)
                .header("content-type", "audio/wav")
                .header("idempotency-key", key)
                .body(stack::call_stereo())
                .send()
                .await
                .unwrap()
        }
    };
    let first = tokio::spawn(send("upload-1"));
    // While it runs (the provider is slow), it is visible as pending, and other uploads conflict.
    let mut seen_pending = false;
    for _ in 0..100 {
        if analysis(app, &id).await.1["status"] == "pending" {
            seen_pending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_pending, "the analysis is pending while the provider works");
    let same = send("upload-1").await;
    assert_eq!(same.status(), 409);
    assert!(same.text().await.unwrap().contains("still being analysed"));
    let other = send("upload-2").await;
    assert_eq!(other.status(), 409);
    let first = first.await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // The retry of a finished upload does not run again and answers the stored result.
    slow.store(false, Ordering::SeqCst);
    let again = send("upload-1").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the retry did not transcribe again");

    // A new key is a new upload: it runs.
    let new = send("upload-3").await;
    assert_eq!(new.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_provider_holds_no_database_connection() {
    // One connection in the pool, acquired for at most 2 s: if the upload held it while the
    // provider takes 4 s, the requests below would answer 503.
    let fake = FakeHttp::start(|req| whisper_reply(req).after(Duration::from_secs(4))).await;
    let env = [("DATABASE_MAX_CONNECTIONS", "1"), ("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "2")];
    let Some(s) = stack(Backend::Postgres, Some(&fake), &env).await else { return };
    let app = &s.app;
    let id = create_call(app).await;
    let (client, url) = (app.client.clone(), format!("{}/v1/calls/{id}/recording", app.base));
    let upload = tokio::spawn(async move {
        client.post(url).bearer_auth(KEY).header("content-type", "audio/wav").body(stack::call_stereo()).send().await
    });
    while fake.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The provider is now working; the database serves others meanwhile.
    for _ in 0..3 {
        let r = app.client.post(format!("{}/v1/calls", app.base)).bearer_auth(KEY).json(&new_call("sip")).send().await;
        assert_eq!(r.unwrap().status(), 201);
        let (status, doc) = analysis(app, &id).await;
        assert_eq!((status, doc["status"].as_str()), (200, Some("pending")));
    }
    assert!(!upload.is_finished(), "the checks ran while the provider was still working");
    assert_eq!(upload.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn analysis_of_a_call_without_a_recording_is_not_found() {
    let Some(s) = stack(Backend::Sqlite, None, &[]).await else { return };
    let id = create_call(&s.app).await;
    let (status, body) = analysis(&s.app, &id).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "analysis not found");
    let (status, _) = analysis(&s.app, "not-a-uuid").await;
    assert_eq!(status, 404);
}

/// A transcript far over the gateway's 10,000-character cap on one sentiment text: the agent
/// thanks at length (about 2.4 h of talk in the finding; 24,000 characters here), the caller
/// complains briefly.
fn long_whisper_reply(request: &FakeRequest) -> FakeReply {
    let parts = request.multipart();
    let Some(file) = parts.iter().find(|p| p.name == "file") else {
        return FakeReply::json(400, json!({"error": {"message": "no file"}}));
    };
    let seconds = wav_seconds(&file.data);
    let text = if seconds > 6.0 {
        "Thank you so much, that was really helpful and I am glad we sorted it out. ".repeat(320)
    } else {
        "This is terrible, I was charged twice and nobody called me back.".to_string()
    };
    FakeReply::json(
        200,
        json!({"task": "transcribe", "language": "english", "duration": seconds, "text": text,
               "segments": [{"id": 0, "start": 0.0, "end": seconds, "text": text}]}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transcript_longer_than_the_sentiment_cap_is_scored_in_pieces() {
    let fake = FakeHttp::start(long_whisper_reply).await;
    let Some(s) = stack(Backend::Sqlite, Some(&fake), &[]).await else { return };
    let id = create_call(&s.app).await;
    let r = upload(&s.app, &id, "?channel_labels=agent,caller", "audio/wav", stack::call_stereo()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["status"], "done");
    assert!(doc["transcript"]["text"].as_str().unwrap().chars().count() > 20_000);
    let sentiment = &doc["sentiment"];
    assert_eq!(sentiment["status"], "done", "{sentiment:#}");
    // The long, positive agent outweighs the short, negative caller overall.
    let overall = sentiment["overall"]["score"].as_f64().unwrap();
    assert!(overall > 0.2, "{sentiment:#}");
    assert_eq!(sentiment["overall"]["label"], "positive");
    let party = |label: &str| {
        sentiment["channels"].as_array().unwrap().iter().find(|c| c["label"] == label).unwrap()["sentiment"].clone()
    };
    assert_eq!(party("agent")["label"], "positive", "{sentiment:#}");
    assert_eq!(party("caller")["label"], "negative", "{sentiment:#}");
    assert_eq!(analysis(&s.app, &id).await.1, doc);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_refusing_the_input_is_stored_as_done_with_the_reason_not_503() {
    // A 400 from the provider is the same on every retry: "retry later" would be a lie.
    let fake = FakeHttp::start(|_| FakeReply::json(400, json!({"error": {"message": "audio too long"}}))).await;
    let Some(s) = stack(Backend::Sqlite, Some(&fake), &[]).await else { return };
    let id = create_call(&s.app).await;
    let r = upload(&s.app, &id, "", "audio/wav", stack::call_stereo()).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["status"], "done", "{doc:#}");
    assert_eq!(doc["transcript"]["status"], "failed");
    assert!(doc["transcript"]["reason"].as_str().unwrap().contains("InvalidArgument"), "{doc:#}");
    assert_eq!(doc["audio"]["channels"].as_array().unwrap().len(), 2, "the audio analysis is kept");
    assert_eq!(analysis(&s.app, &id).await.1, doc);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_internal_auth_token_call_api_reaches_peers_that_require_it() {
    const TOKEN: &str = "internal-token-0123456789abcdef-0123456789";
    let fake = FakeHttp::start(whisper_reply).await;
    let auth = [("INTERNAL_AUTH_TOKEN", TOKEN)];
    let audio = stack::start_audio_with(None, &auth).await;
    let gateway = stack::start_gateway(Some(&fake), &auth).await;

    // Without the token, the peers refuse call-api.
    let Some(db) = TestDb::new(Backend::Sqlite).await else { return };
    let without = stack::start_api(db, &audio.url(), &gateway.url(), &[]).await;
    let id = create_call(&without).await;
    let r = upload(&without, &id, "", "audio/wav", stack::call_stereo()).await;
    assert_ne!(r.status(), 200);
    let r = without.client.get(format!("{}/v1/providers", without.base)).bearer_auth(KEY).send().await.unwrap();
    assert_ne!(r.status(), 200);

    // With it, the whole pipeline runs.
    let Some(db) = TestDb::new(Backend::Sqlite).await else { return };
    let app = stack::start_api(db, &audio.url(), &gateway.url(), &auth).await;
    let r = app.client.get(format!("{}/v1/providers", app.base)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = create_call(&app).await;
    let r = upload(&app, &id, "", "audio/wav", stack::call_stereo()).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["status"], "done");
    assert_eq!(doc["transcript"]["status"], "done");
    assert_eq!(doc["sentiment"]["status"], "done");
}
