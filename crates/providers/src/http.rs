//! The HTTP plumbing every remote provider shares: the client, sending with a first-byte
//! bound, turning error statuses into [`ProviderError`]s (logging a scrubbed, truncated body)
//! and reading bodies with an idle bound.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::time::Instant;

use crate::config::Timeouts;
use crate::error::{ProviderError, error_summary, scrub_body};
use crate::providers::CallCtx;
use crate::resilience::retry::parse_retry_after;

/// Largest error body we read for the log.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// Longest part of an error body that reaches the log.
const ERROR_LOG_CHARS: usize = 512;

/// Build the HTTP client of one provider. Installs the ring TLS provider first (reqwest
/// panics without one); doing it twice is harmless.
pub(crate) fn client(timeouts: &Timeouts) -> Result<reqwest::Client, ProviderError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("voice-kraliki-providers/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Internal(format!("build http client: {e}")))
}

/// Record the request's method and server on the span.
pub(crate) fn record_target(ctx: &CallCtx, method: &str, url: &reqwest::Url) {
    ctx.span.record("http.request.method", method);
    if let Some(host) = url.host_str() {
        ctx.span.record("server.address", host);
    }
    if let Some(port) = url.port_or_known_default() {
        ctx.span.record("server.port", port);
    }
}

/// Send a request and wait for the response head, within `first_byte` and the deadline.
/// A non-success status becomes an error (its body logged, scrubbed of `secrets`).
pub(crate) async fn send(
    ctx: &CallCtx,
    request: RequestBuilder,
    first_byte: Duration,
    secrets: &[&str],
) -> Result<Response, ProviderError> {
    let provider = ctx.provider;
    let limit = (Instant::now() + first_byte).min(ctx.deadline);
    let response = match tokio::time::timeout_at(limit, request.send()).await {
        Err(_) if Instant::now() >= ctx.deadline => return Err(ProviderError::DeadlineExceeded),
        Err(_) => return Err(ProviderError::FirstByteTimeout { provider, timeout: first_byte }),
        Ok(Err(e)) => return Err(transport_error(provider, &e, false)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    ctx.span.record("http.response.status_code", status.as_u16());
    if status.is_success() {
        return Ok(response);
    }
    Err(status_error(ctx, response, secrets).await)
}

async fn status_error(ctx: &CallCtx, response: Response, secrets: &[&str]) -> ProviderError {
    let provider = ctx.provider;
    let status = response.status();
    let retry_after =
        response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
    // The body only goes to the log; a slow or huge one is cut short.
    let body = read_limited(ctx, response, ERROR_BODY_LIMIT, ctx.idle_timeout())
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    tracing::warn!(
        provider,
        operation = ctx.operation,
        status = status.as_u16(),
        body = %if ctx.capture_content { scrub_body(&body, secrets, ERROR_LOG_CHARS) } else { error_summary(&body) },
        "provider returned an error status"
    );
    let code = status.as_u16();
    match status {
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited { provider, retry_after },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Unauthorized { provider, status: code },
        s if s.is_client_error() && s != StatusCode::REQUEST_TIMEOUT => {
            ProviderError::Rejected { provider, status: code }
        }
        _ => ProviderError::Upstream { provider, status: code, retry_after },
    }
}

/// Map a reqwest error; `mid_body` tells whether the response head had already arrived.
pub(crate) fn transport_error(provider: &'static str, e: &reqwest::Error, mid_body: bool) -> ProviderError {
    // The innermost cause is the useful part ("Connection refused"); reqwest's own text
    // would add the URL.
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let mut detail = cause.to_string();
    if e.is_timeout() {
        detail = format!("timed out: {detail}");
    }
    detail.truncate(200);
    if mid_body || e.is_body() || e.is_decode() {
        ProviderError::Interrupted { provider, detail }
    } else {
        ProviderError::Connect { provider, detail }
    }
}

/// Read a whole body (at most `limit` bytes), each chunk within `idle` and all before the deadline.
pub(crate) async fn read_limited(
    ctx: &CallCtx,
    mut response: Response,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ProviderError> {
    let provider = ctx.provider;
    let mut body = BytesMut::new();
    loop {
        let bound = (Instant::now() + idle).min(ctx.deadline);
        match tokio::time::timeout_at(bound, response.chunk()).await {
            Err(_) if Instant::now() >= ctx.deadline => return Err(ProviderError::DeadlineExceeded),
            Err(_) => return Err(ProviderError::Stalled { provider, timeout: idle }),
            Ok(Err(e)) => return Err(transport_error(provider, &e, true)),
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(ProviderError::Malformed {
                        provider,
                        detail: format!("response body exceeds {limit} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// `multipart/form-data` body builder (RFC 7578), enough for the transcription upload.
pub(crate) struct Multipart {
    boundary: String,
    body: BytesMut,
}

impl Multipart {
    pub(crate) fn new() -> Self {
        let boundary = format!("----voicekraliki{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        Self { boundary, body: BytesMut::new() }
    }

    pub(crate) fn text(mut self, name: &str, value: &str) -> Self {
        self.head(name, None, None);
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        self
    }

    pub(crate) fn file(mut self, name: &str, filename: &str, content_type: &str, data: &[u8]) -> Self {
        self.head(name, Some(filename), Some(content_type));
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    fn head(&mut self, name: &str, filename: Option<&str>, content_type: Option<&str>) {
        let mut head = format!("--{}\r\nContent-Disposition: form-data; name=\"{}\"", self.boundary, quote(name));
        if let Some(f) = filename {
            head.push_str(&format!("; filename=\"{}\"", quote(f)));
        }
        head.push_str("\r\n");
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        self.body.extend_from_slice(head.as_bytes());
    }

    /// The `Content-Type` header value and the body.
    pub(crate) fn finish(mut self) -> (String, Bytes) {
        self.body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (format!("multipart/form-data; boundary={}", self.boundary), self.body.freeze())
    }
}

fn quote(s: &str) -> String {
    s.replace('"', "%22").replace(['\r', '\n'], " ")
}
