//! Recording settings (`RECORDING_*`).

use std::time::Duration;

use telemetry::Reader;

/// Recording uploads and their analysis.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// `RECORDING_MAX_BYTES`: largest recording body accepted (413 beyond), default 64 MiB.
    pub max_bytes: u64,
    /// `RECORDING_ANALYSIS_TIMEOUT_SECONDS`: the whole pipeline's bound (upload, audio analysis,
    /// transcription, sentiment), default 600; an attempt older than this is abandoned.
    pub analysis_timeout: Duration,
    /// `RECORDING_TRANSCRIBE_CONCURRENCY`: transcription requests of one recording in flight at
    /// once, default 4.
    pub transcribe_concurrency: usize,
    /// `RECORDING_SPOOL_DIR`: where an upload is received whole before it is analysed (so that a
    /// slow client holds no analysis capacity), default the system's temporary directory. Needs
    /// `RECORDING_MAX_BYTES` × `RECORDING_MAX_UPLOADS` of space.
    pub spool_dir: std::path::PathBuf,
    /// `RECORDING_MAX_UPLOADS`: uploads this replica receives at once, default 16 (one more: 503
    /// with `Retry-After`).
    pub max_uploads: usize,
    /// `RECORDING_MAX_UPLOADS_PER_TENANT`: uploads one tenant may have in progress on this
    /// replica at once, default 4 (one more: 429 with `Retry-After`).
    pub max_uploads_per_tenant: usize,
    /// `RECORDING_MAX_CONCURRENT_ANALYSES`: spooled uploads this replica analyses at once,
    /// default 2. Each holds its speech audio (up to four times the recording) in memory until
    /// its transcription ends, so this and `RECORDING_MAX_BYTES` size the memory limit; the
    /// others wait on disk, within `RECORDING_ANALYSIS_TIMEOUT_SECONDS`.
    pub max_concurrent_analyses: usize,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            analysis_timeout: Duration::from_secs(600),
            transcribe_concurrency: 4,
            spool_dir: std::env::temp_dir(),
            max_uploads: 16,
            max_uploads_per_tenant: 4,
            max_concurrent_analyses: 2,
        }
    }
}

impl RecordingConfig {
    pub(crate) fn read(r: &mut Reader<'_>) -> Self {
        let d = Self::default();
        let max_bytes = r.positive_or("RECORDING_MAX_BYTES", d.max_bytes as usize, 1 << 30) as u64;
        let analysis_timeout = r.seconds_or("RECORDING_ANALYSIS_TIMEOUT_SECONDS", d.analysis_timeout, 86_400.0);
        if analysis_timeout < Duration::from_secs(1) {
            r.error("RECORDING_ANALYSIS_TIMEOUT_SECONDS", "must be at least 1 second");
        }
        let transcribe_concurrency = r.positive_or("RECORDING_TRANSCRIBE_CONCURRENCY", d.transcribe_concurrency, 64);
        let spool_dir = r.string("RECORDING_SPOOL_DIR").map(std::path::PathBuf::from).unwrap_or(d.spool_dir);
        if !spool_dir.is_dir() {
            r.error("RECORDING_SPOOL_DIR", "must be an existing directory");
        }
        let max_uploads = r.positive_or("RECORDING_MAX_UPLOADS", d.max_uploads, 10_000);
        let max_uploads_per_tenant =
            r.positive_or("RECORDING_MAX_UPLOADS_PER_TENANT", d.max_uploads_per_tenant, 10_000);
        let max_concurrent_analyses =
            r.positive_or("RECORDING_MAX_CONCURRENT_ANALYSES", d.max_concurrent_analyses, 1_000);
        Self {
            max_bytes,
            analysis_timeout,
            transcribe_concurrency,
            spool_dir,
            max_uploads,
            max_uploads_per_tenant,
            max_concurrent_analyses,
        }
    }
}
