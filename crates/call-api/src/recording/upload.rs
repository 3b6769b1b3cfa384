//! Receiving a recording: claim the call's analysis → spool the body → run the pipeline →
//! store the outcome.
//!
//! One analysis per call at a time: an upload claims the call's analysis, a second upload
//! meanwhile is 409. With an `Idempotency-Key`, a retried upload whose first attempt finished
//! is answered from storage without running again; a failed one runs again. An upload that is
//! itself at fault (too large, not audio, cut off) changes nothing. The pipeline runs in a task
//! of its own, so a client that disconnects after sending everything still gets its analysis
//! stored.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json,
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;
use uuid::Uuid;

use super::{
    document::AnalysisDocument,
    pipeline::{self, RecordingKind, Upload, UploadError},
};
use crate::{
    AppState,
    auth::Tenant,
    db::analysis::{AnalysisRow, Finished},
    error::ApiError,
    limits::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED},
    metrics,
    model::AnalysisStatus,
};

/// A pending analysis older than its timeout plus this is considered abandoned (its replica
/// stopped mid-way) and may be taken over.
const ABANDONED_AFTER: Duration = Duration::from_secs(30);
fn parse_labels(raw: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let labels: Vec<String> = raw.split(',').map(|l| l.trim().to_string()).collect();
    let valid = |l: &String| {
        (1..=32).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if labels.len() > 2 || !labels.iter().all(valid) {
        return Err(ApiError::Unprocessable(
            "channel_labels must be one or two comma-separated names of 1 to 32 letters, digits, _ or -".into(),
        ));
    }
    Ok(labels)
}

fn parse_language(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let ok = (2..=35).contains(&raw.len())
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && raw.split('-').all(|p| !p.is_empty() && p.len() <= 8);
    if !ok {
        return Err(ApiError::Unprocessable("language must be a BCP-47 tag such as en or en-US".into()));
    }
    Ok(Some(raw.to_string()))
}

/// The `Idempotency-Key`: 1–255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = value.to_str().ok().filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(|k| Some(k.to_string()))
        .ok_or_else(|| ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into()))
}

/// Whether a pending attempt has outlived its bound.
fn abandoned(row: &AnalysisRow, timeout: Duration) -> bool {
    let bound = chrono::Duration::from_std(timeout + ABANDONED_AFTER).unwrap_or(chrono::Duration::hours(24));
    row.status == Some(AnalysisStatus::Pending) && row.started_at.is_none_or(|s| Utc::now() - s > bound)
}

/// The document for a call's analysis columns.
pub(crate) fn document(call_id: Uuid, row: AnalysisRow, timeout: Duration) -> Option<AnalysisDocument> {
    let mut status = row.status?;
    let was_abandoned = abandoned(&row, timeout);
    let mut error = row.error;
    if was_abandoned {
        status = AnalysisStatus::Failed;
        error = Some("the analysis was interrupted; upload the recording again".into());
    }
    let pending = status == AnalysisStatus::Pending;
    Some(AnalysisDocument {
        call_id,
        status,
        error: if status == AnalysisStatus::Failed { error } else { None },
        started_at: row.started_at,
        completed_at: if pending { None } else { row.completed_at },
        results: if pending { None } else { row.results },
        transcript: if pending { None } else { row.transcript },
    })
}

/// Reads and discards a body, up to `limit` bytes and 10 seconds.
pub(crate) async fn drain(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > limit {
                break;
            }
        }
    })
    .await;
}

/// Recording uploads being received on this replica: at most `max` at once, and `per_tenant` of
/// one tenant, so that one tenant's slow uploads cannot take every place.
#[derive(Clone)]
pub struct Uploads {
    total: Arc<tokio::sync::Semaphore>,
    per_tenant: usize,
    max: usize,
    by_tenant: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    /// Spooled uploads being analysed: each holds its speech audio in memory until its
    /// transcription ends (`RECORDING_MAX_CONCURRENT_ANALYSES`); the others wait on disk.
    analyses: Arc<tokio::sync::Semaphore>,
}

/// One upload's place; given back when dropped.
pub struct UploadPlace {
    _total: tokio::sync::OwnedSemaphorePermit,
    tenant: String,
    by_tenant: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for UploadPlace {
    fn drop(&mut self) {
        let mut by = self.by_tenant.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                by.remove(&self.tenant);
            }
        }
    }
}

impl Uploads {
    pub fn new(max: usize, per_tenant: usize, max_analyses: usize) -> Self {
        Self {
            total: Arc::new(tokio::sync::Semaphore::new(max)),
            per_tenant,
            max,
            by_tenant: Arc::default(),
            analyses: Arc::new(tokio::sync::Semaphore::new(max_analyses)),
        }
    }

    /// Waits up to `wait` for one of the analysis places that bound this replica's memory;
    /// `None` when none came free in time.
    pub async fn analysis_place(&self, wait: Duration) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout(wait, self.analyses.clone().acquire_owned()).await.ok()?.ok()
    }

    /// A place for one more upload of `tenant`, or the refusal.
    pub fn admit(&self, tenant: &str) -> Result<UploadPlace, ApiError> {
        let mut by = self.by_tenant.lock().unwrap_or_else(|e| e.into_inner());
        let n = by.get(tenant).copied().unwrap_or(0);
        if n >= self.per_tenant {
            metrics::request_limited("uploads");
            return Err(ApiError::TooManyRequests { retry_after_seconds: 5 });
        }
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            metrics::request_limited("uploads");
            return Err(ApiError::Busy {
                message: format!("this replica receives its maximum of {} recordings at once; retry later", self.max),
                retry_after_seconds: 5,
            });
        };
        by.insert(tenant.to_string(), n + 1);
        Ok(UploadPlace { _total: total, tenant: tenant.to_string(), by_tenant: self.by_tenant.clone() })
    }
}

/// Receives the rest of an upload into an unnamed temporary file (gone when closed) and gives it
/// back as a body that reads at disk speed: a client that sends slowly holds a connection and a
/// file here, never one of audio-processor's analysis permits.
async fn spool(rest: Body, already: u64, limit: u64, dir: &std::path::Path) -> Result<Body, ApiError> {
    use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
    let file = tempfile::tempfile_in(dir).map_err(|e| ApiError::Internal(anyhow::anyhow!("open a spool file: {e}")))?;
    let mut file = tokio::io::BufWriter::with_capacity(256 << 10, tokio::fs::File::from_std(file));
    let mut size = already;
    let mut stream = rest.into_data_stream();
    let io = |e: std::io::Error| ApiError::Internal(anyhow::anyhow!("write the spool file: {e}"));
    while let Some(chunk) = stream.next().await {
        // A body that stopped in time answers 408 (the limits layer), else the client went away.
        let chunk = chunk.map_err(|_| ApiError::BadRequest("the upload was interrupted".into()))?;
        size += chunk.len() as u64;
        if size > limit {
            // Read a little more (bounded) so that a client still sending sees the answer rather
            // than a reset connection.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut extra = 0u64;
                while let Some(Ok(c)) = stream.next().await {
                    extra += c.len() as u64;
                    if extra > (limit / 2).min(4 << 20) {
                        break;
                    }
                }
            })
            .await;
            return Err(ApiError::PayloadTooLarge(format!("the recording is larger than {limit} bytes")));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    let mut file = file.into_inner();
    file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
    Ok(Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10)))
}

/// SHA-256 (hex) of a whole body, refused beyond `limit` bytes.
async fn body_digest(body: Body, limit: u64) -> Result<String, ApiError> {
    let mut stream = body.into_data_stream();
    let (mut hasher, mut size) = (Sha256::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadRequest("could not read the request body".into()))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::PayloadTooLarge(format!("the recording is larger than {limit} bytes")));
        }
        hasher.update(&chunk);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads until at least 12 bytes (a WAV header's `RIFF....WAVE`) or the end of the body.
async fn read_head(body: Body, limit: u64) -> Result<(Bytes, Body), ApiError> {
    let mut stream = body.into_data_stream();
    let mut head = Vec::new();
    while head.len() < 12 {
        match stream.next().await {
            None => break,
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(_)) => return Err(ApiError::BadRequest("could not read the request body".into())),
        }
        if head.len() as u64 > limit {
            return Err(ApiError::PayloadTooLarge(format!("the recording is larger than {limit} bytes")));
        }
    }
    Ok((Bytes::from(head), Body::from_stream(stream)))
}

/// Receives one upload of call `id` (a path segment): checks, claims the call's analysis, spools
/// the body, runs the pipeline in a task of its own and stores the outcome. `body` is taken
/// once it is read; left in place, the caller drains it so the client sees the answer.
pub(crate) async fn receive(
    state: AppState,
    tenant: Tenant,
    id: String,
    channel_labels: Option<&str>,
    language: Option<&str>,
    headers: HeaderMap,
    body: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::NotFound("call"))?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let kind = RecordingKind::from_content_type(content_type).ok_or_else(|| {
        ApiError::UnsupportedMediaType(
            "expected Content-Type audio/wav (PCM16, μ-law or A-law WAV) or audio/basic (raw 8 kHz μ-law)".into(),
        )
    })?;
    let limit = state.recording.max_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(format!("the recording is larger than {limit} bytes")));
    }
    let key = idempotency_key(&headers)?;
    let channel_labels = parse_labels(channel_labels)?;
    let language = parse_language(language)?;
    let timeout = state.recording.analysis_timeout;

    let before = state.db.get_analysis(&tenant.0, id).await?.ok_or(ApiError::NotFound("call"))?;
    if before.status == Some(AnalysisStatus::Pending) && !abandoned(&before, timeout) {
        return Err(ApiError::Conflict(if key.is_some() && before.idempotency_key == key {
            "the upload with this Idempotency-Key is still being analysed".into()
        } else {
            "a recording of this call is being analysed".into()
        }));
    }
    if key.is_some() && before.idempotency_key == key && before.status == Some(AnalysisStatus::Done) {
        // The key names one recording: the same key with another body is a client's mistake.
        if let Some(stored) = &before.body_sha256 {
            let presented = body_digest(body.take().unwrap_or_default(), limit).await?;
            if &presented != stored {
                return Err(ApiError::IdempotencyKeyReused);
            }
        }
        let doc = document(id, before, timeout).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no document")))?;
        metrics::analysis_result("replayed");
        let mut response = Json(doc).into_response();
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        return Ok(response);
    }

    // A place among the uploads this replica receives (and this tenant's share of them).
    let _place = state.uploads.admit(&tenant.0)?;
    // Tell audio from not-audio before anything changes.
    let (head, rest) = read_head(body.take().unwrap_or_default(), limit).await?;
    if head.is_empty() {
        return Err(ApiError::Unprocessable("the recording is empty".into()));
    }
    if kind == RecordingKind::Wav && !(head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE") {
        return Err(ApiError::UnsupportedMediaType("the body is not a WAV (RIFF/WAVE) file".into()));
    }

    let attempt = state
        .db
        .claim_analysis(&tenant.0, id, before.attempt.as_deref(), key.as_deref())
        .await?
        .ok_or_else(|| ApiError::Conflict("a recording of this call is being analysed".into()))?;
    // The body's digest, taken as it streams through, binds the Idempotency-Key to it.
    let hasher = Arc::new(Mutex::new(Sha256::new_with_prefix(&head)));
    let rest = {
        let hasher = hasher.clone();
        Body::from_stream(rest.into_data_stream().inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                hasher.lock().unwrap_or_else(|e| e.into_inner()).update(chunk);
            }
        }))
    };
    let rest = match spool(rest, head.len() as u64, limit, &state.recording.spool_dir).await {
        Ok(rest) => rest,
        Err(e) => {
            if let Err(db) = state.db.release_analysis(id, &attempt, &before).await {
                tracing::warn!(error = %db, "could not release the analysis claim");
            }
            return Err(e);
        }
    };
    let upload = Upload { call_id: id, kind, channel_labels, language, head, rest, max_bytes: limit };
    let span = telemetry::sentry_support::transaction_span(|sentry_trace| {
        tracing::info_span!(
            "call_analysis",
            otel.name = "call_analysis",
            otel.status_code = tracing::field::Empty,
            sentry.name = "call_analysis",
            sentry.op = "call_analysis",
            sentry.trace = sentry_trace,
            call_id = %id,
        )
    });
    // A task of its own: a client that goes away after the upload does not lose the analysis.
    let task = tokio::spawn(
        analyse_and_store(state.clone(), tenant.0.clone(), id, attempt.clone(), before, upload).instrument(span),
    );
    match task.await {
        Ok(Ok(doc)) => {
            if key.is_some() {
                let digest = hex::encode(hasher.lock().unwrap_or_else(|e| e.into_inner()).clone().finalize());
                if let Err(e) = state.db.set_analysis_body_digest(id, &attempt, &digest).await {
                    tracing::warn!(error = %e, "could not record the recording's digest for its Idempotency-Key");
                }
            }
            Ok(Json(doc).into_response())
        }
        Ok(Err(e)) => Err(e),
        Err(join) => {
            let finished = Finished {
                status: AnalysisStatus::Failed,
                error: Some("internal error during the analysis".into()),
                results: None,
                transcript: None,
            };
            let _ = state.db.finish_analysis(id, &attempt, &finished).await;
            metrics::analysis_result("failed");
            Err(ApiError::Internal(anyhow::anyhow!("analysis task failed: {join}")))
        }
    }
}

/// Runs the pipeline and stores its outcome; the answer for the client.
async fn analyse_and_store(
    state: AppState,
    tenant: String,
    id: Uuid,
    attempt: String,
    before: AnalysisRow,
    upload: Upload,
) -> Result<AnalysisDocument, ApiError> {
    let limits = pipeline::Limits {
        timeout: state.recording.analysis_timeout,
        transcribe_concurrency: state.recording.transcribe_concurrency,
    };
    let started = std::time::Instant::now();
    // The spooled upload waits here (on disk) for one of the places that bound memory; the
    // wait counts against the analysis timeout.
    let Some(_place) = state.uploads.analysis_place(limits.timeout).await else {
        if let Err(db) = state.db.release_analysis(id, &attempt, &before).await {
            tracing::warn!(error = %db, "could not release the analysis claim");
        }
        metrics::request_limited("analyses");
        return Err(ApiError::Busy {
            message: "no analysis place came free within the analysis timeout; retry later".into(),
            retry_after_seconds: 30,
        });
    };
    let limits = pipeline::Limits { timeout: limits.timeout.saturating_sub(started.elapsed()), ..limits };
    let cost = crate::pricing::CostMeter::new(state.prices.clone());
    let (finished, error) = match pipeline::run(&state.peers, upload, limits, &cost).await {
        Err(e) if e.is_client_error() => {
            tracing::info!(error = %e, "recording rejected");
            if let Err(db) = state.db.release_analysis(id, &attempt, &before).await {
                tracing::warn!(error = %db, "could not release the analysis claim");
            }
            return Err(match e {
                UploadError::TooLarge(limit) => {
                    ApiError::PayloadTooLarge(format!("the recording is larger than {limit} bytes"))
                }
                UploadError::InvalidAudio(m) => ApiError::Unprocessable(m),
                _ => ApiError::BadRequest("the upload was interrupted".into()),
            });
        }
        Err(e) => {
            tracing::Span::current().record("otel.status_code", "ERROR");
            let api = match &e {
                UploadError::AudioUnavailable | UploadError::TimedOut(_) => {
                    tracing::warn!(error = %e, "recording analysis failed");
                    ApiError::Unavailable("audio-processor")
                }
                other => {
                    telemetry::capture_exception(other, telemetry::ErrorContext::default().tag("stage", "audio"));
                    ApiError::Internal(anyhow::anyhow!("{other:#}"))
                }
            };
            let finished = Finished {
                status: AnalysisStatus::Failed,
                error: Some(e.to_string()),
                results: None,
                transcript: None,
            };
            (finished, Some(api))
        }
        Ok(produced) => {
            let failure = produced.failure();
            let api = failure.as_ref().map(|_| {
                tracing::Span::current().record("otel.status_code", "ERROR");
                if produced.transcript.status == super::document::StageStatus::Failed {
                    ApiError::Unavailable("the speech-to-text provider")
                } else {
                    ApiError::Unavailable("the sentiment provider")
                }
            });
            let finished = Finished {
                status: if failure.is_some() { AnalysisStatus::Failed } else { AnalysisStatus::Done },
                error: failure,
                results: Some(produced.results),
                transcript: Some(produced.transcript),
            };
            (finished, api)
        }
    };
    let store_started = std::time::Instant::now();
    let stored = store(&state, id, &attempt, &finished)
        .instrument(tracing::info_span!("store", otel.name = "call_analysis.store", sentry.op = "call_analysis.store"))
        .await;
    metrics::analysis_stage("store", store_started.elapsed().as_secs_f64());
    metrics::analysis_stage("total", started.elapsed().as_secs_f64());
    let owned = stored?;
    if owned {
        store_cost(&state, id, &attempt, cost).await;
    }
    metrics::analysis_result(if finished.status == AnalysisStatus::Done { "done" } else { "failed" });
    if !owned {
        return Err(ApiError::Conflict("another upload took over this call's analysis".into()));
    }
    if let Some(api) = error {
        return Err(api);
    }
    let row = state
        .db
        .get_analysis(&tenant, id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the call disappeared")))?;
    document(id, row, state.recording.analysis_timeout)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored analysis has no status")))
}

/// Prices the analysis's provider usage and adds it to the call's recording cost.
async fn store_cost(state: &AppState, id: Uuid, attempt: &str, cost: crate::pricing::CostMeter) {
    let Some(cost) = cost.settle(Duration::ZERO).await else { return };
    match state.db.add_recording_cost(id, attempt, &cost).await {
        Ok(true) => {}
        Ok(false) => tracing::info!("the analysis changed hands before its cost was stored"),
        Err(e) => tracing::warn!(error = %e, "could not store the analysis's cost"),
    }
}

/// Stores the outcome, retrying briefly when the database is unreachable (the work is done; it
/// should not be lost to a blip).
async fn store(state: &AppState, id: Uuid, attempt: &str, finished: &Finished) -> Result<bool, ApiError> {
    let mut delay = Duration::from_millis(250);
    for _ in 0..3 {
        match state.db.finish_analysis(id, attempt, finished).await {
            Ok(owned) => return Ok(owned),
            Err(crate::db::DbError::Unavailable(e)) => {
                tracing::warn!(error = %e, "storing the analysis failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(state.db.finish_analysis(id, attempt, finished).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_languages() {
        assert_eq!(parse_labels(Some("agent,caller")).unwrap(), ["agent", "caller"]);
        assert_eq!(parse_labels(None).unwrap(), Vec::<String>::new());
        for bad in ["", "a,b,c", "agent,", "bad label", &"x".repeat(33)] {
            assert!(parse_labels(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(parse_language(Some("en-US")).unwrap().as_deref(), Some("en-US"));
        for bad in ["e", "en_US", "en--US", "english language", "en-"] {
            assert!(parse_language(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("upload-1"));
        assert_eq!(idempotency_key(&h).unwrap().as_deref(), Some("upload-1"));
        h.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("has space"));
        assert!(idempotency_key(&h).is_err());
        h.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(&"k".repeat(256)).unwrap());
        assert!(idempotency_key(&h).is_err());
    }

    #[test]
    fn a_pending_attempt_is_abandoned_only_after_its_bound() {
        let timeout = Duration::from_secs(60);
        let row = |age: i64| AnalysisRow {
            status: Some(AnalysisStatus::Pending),
            started_at: Some(Utc::now() - chrono::Duration::seconds(age)),
            ..AnalysisRow::default()
        };
        assert!(!abandoned(&row(10), timeout));
        assert!(abandoned(&row(100), timeout));
        let doc = document(Uuid::nil(), row(100), timeout).unwrap();
        assert_eq!(doc.status, AnalysisStatus::Failed);
        assert!(doc.error.unwrap().contains("interrupted"));
        let doc = document(Uuid::nil(), row(10), timeout).unwrap();
        assert_eq!(doc.status, AnalysisStatus::Pending);
        assert!(doc.results.is_none() && doc.error.is_none());
        assert!(document(Uuid::nil(), AnalysisRow::default(), timeout).is_none());
    }
}
