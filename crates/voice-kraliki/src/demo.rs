//! `voice-kraliki demo`: against a running stack (`make run`), creates a call, uploads the
//! two-party recording shipped in the repository, and prints its analysis as a readable
//! summary with where to look next (`/metrics`, the trace id).
//!
//! Reads `VOICE_KRALIKI_URL` (default `http://127.0.0.1:8000`) and the API key from
//! `VOICE_KRALIKI_API_KEY`, else the first key of `API_KEYS`, else `.dev-api-key` (written by
//! `make run`).

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use serde_json::{Value, json};

// The shipped recording: 8 kHz stereo μ-law, channel 0 the agent, channel 1 the caller
// (`crates/audio-dsp/fixtures/call-stereo.wav`, made by `make-fixtures.sh` there).
use voice_kraliki::loadgen::RECORDING;

pub fn run() -> ExitCode {
    let base = std::env::var("VOICE_KRALIKI_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".to_string());
    let base = base.trim_end_matches('/').to_string();
    let Some(key) = voice_kraliki::api_key() else {
        eprintln!("voice-kraliki demo: no API key: set VOICE_KRALIKI_API_KEY, or start the stack with `make run` here");
        return ExitCode::from(2);
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(demo(&base, &key)) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("voice-kraliki demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(base: &str, key: &str) -> Result<String, String> {
    telemetry::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| format!("build the HTTP client: {e}"))?;
    let created = client
        .post(format!("{base}/v1/calls"))
        .bearer_auth(key)
        .json(&json!({
            "provider": "websocket", "from": "+14155550100", "to": "+14155550199", "direction": "inbound",
            "metadata": {"source": "voice-kraliki demo"}
        }))
        .send()
        .await
        .map_err(|e| format!("cannot reach call-api at {base} ({e}); is the stack running (`make run`)?"))?;
    let created = answer(created).await?;
    let id = created["id"].as_str().ok_or("call-api answered without a call id")?.to_string();
    let uploaded = client
        .post(format!("{base}/v1/calls/{id}/recording?channel_labels=agent,caller&language=en"))
        .bearer_auth(key)
        .header("content-type", "audio/wav")
        .header("idempotency-key", format!("demo-{id}"))
        .body(RECORDING)
        .send()
        .await
        .map_err(|e| format!("upload the recording: {e}"))?;
    let doc = answer(uploaded).await?;
    Ok(summary(base, &id, &doc))
}

async fn answer(response: reqwest::Response) -> Result<Value, String> {
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("unreadable answer ({status}): {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {}", body["error"]["message"].as_str().unwrap_or("no message")))
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The analysis as a person reads it.
pub fn summary(base: &str, id: &str, doc: &Value) -> String {
    let mut out = String::new();
    let rec = &doc["recording"];
    let _ = writeln!(out, "Call {id}: analysis {}", doc["status"].as_str().unwrap_or("?"));
    let _ = writeln!(
        out,
        "Recording: {:.1} s, {} channel(s), {} at {} Hz, {} bytes",
        f(&rec["duration_seconds"]),
        rec["channels"],
        rec["codec"].as_str().unwrap_or("?"),
        rec["sample_rate_hz"],
        rec["bytes"]
    );
    let _ = writeln!(out, "\nAudio ({} voice activity detector)", doc["audio"]["vad_model"].as_str().unwrap_or("?"));
    for c in doc["audio"]["channels"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<8} speech {:>5.1} s in {} segment(s), first words at {}, speech level {:.0} dBFS, SNR {:.0} dB",
            c["label"].as_str().unwrap_or("?"),
            f(&c["speech_seconds"]),
            c["speech_segments"].as_array().map_or(0, Vec::len),
            c["time_to_first_speech_seconds"].as_f64().map_or("-".to_string(), |t| format!("{t:.2} s")),
            f(&c["active_speech_level_dbfs"]),
            f(&c["snr_db"]),
        );
    }
    let conv = &doc["audio"]["conversation"];
    if conv.is_object() {
        let ratios: Vec<String> =
            conv["talk_ratio"].as_array().into_iter().flatten().map(|r| format!("{:.0} %", f(r) * 100.0)).collect();
        let _ = writeln!(
            out,
            "  talk ratio {}; {} turns; {} interruption(s); overlap {:.2} s; mean response gap {:.2} s; longest dead air {:.2} s",
            ratios.join(" / "),
            conv["turns"],
            conv["interruptions"],
            f(&conv["overlap_seconds"]),
            f(&conv["mean_response_gap_seconds"]),
            f(&conv["longest_dead_air_seconds"]),
        );
    }
    let digits: String =
        doc["audio"]["dtmf"].as_array().into_iter().flatten().filter_map(|d| d["digit"].as_str()).collect();
    if !digits.is_empty() {
        let _ = writeln!(out, "  touch tones: {digits}");
    }
    let t = &doc["transcript"];
    let _ = writeln!(out, "\nTranscript: {}", stage(t));
    if let Some(text) = t["text"].as_str() {
        for line in text.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let s = &doc["sentiment"];
    let _ = writeln!(out, "\nSentiment: {}", stage(s));
    if s["overall"].is_object() {
        let _ = writeln!(
            out,
            "  overall {} ({:+.2})",
            s["overall"]["label"].as_str().unwrap_or("?"),
            f(&s["overall"]["score"])
        );
        for c in s["channels"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {:<8} {} ({:+.2})",
                c["label"].as_str().unwrap_or("?"),
                c["sentiment"]["label"].as_str().unwrap_or("?"),
                f(&c["sentiment"]["score"])
            );
        }
    }
    let timings = &doc["timings"];
    let _ = writeln!(
        out,
        "\nTime: {:.3} s in all (audio {:.3} s, transcription {:.3} s, sentiment {:.3} s)",
        f(&timings["total_seconds"]),
        f(&timings["audio_seconds"]),
        f(&timings["transcription_seconds"]),
        f(&timings["sentiment_seconds"]),
    );
    let _ = writeln!(out, "\nFull analysis:  curl -H 'Authorization: Bearer <key>' {base}/v1/calls/{id}/analysis");
    let _ = writeln!(out, "Metrics:        {base}/metrics (call_analysis_stage_seconds, call_analyses_total)");
    match doc["trace_id"].as_str() {
        Some(trace) => {
            let _ = writeln!(
                out,
                "Trace:          {trace} (call_analysis: the trace_id of its log lines, and in the tracing backend when OTEL_EXPORTER_OTLP_ENDPOINT is set)"
            );
        }
        None => {
            let _ = writeln!(out, "Trace:          none recorded");
        }
    }
    out
}

fn stage(v: &Value) -> String {
    match (v["status"].as_str(), v["reason"].as_str()) {
        (Some("done"), _) => {
            let by: Vec<&str> = [v["provider"].as_str(), v["model"].as_str()].into_iter().flatten().collect();
            if by.is_empty() { "done".to_string() } else { format!("done ({})", by.join(", ")) }
        }
        (Some(status), Some(reason)) => format!("{status}: {reason}"),
        (Some(status), None) => status.to_string(),
        _ => "absent".to_string(),
    }
}
