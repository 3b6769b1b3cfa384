//! The API's limits on what one client may send and how fast: header size, body deadlines,
//! per-API-key rate limiting and CORS. Body sizes are enforced where bodies are read
//! (`HTTP_JSON_MAX_BYTES` by the JSON extractor, `RECORDING_MAX_BYTES` by the upload), the live
//! call cap by the media WebSocket. Every rejection is counted in
//! `api_requests_limited_total{limit}`.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use telemetry::Reader;

use crate::{error::ApiError, metrics};

/// A token bucket per API key: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Vec<Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Option<Instant>,
}

impl RateLimiter {
    /// `None` when `rate` is 0 (rate limiting off). `keys` is the number of configured keys.
    pub fn new(rate: f64, burst: u32, keys: usize) -> Option<Self> {
        (rate > 0.0).then(|| {
            let burst = f64::from(burst.max(1));
            Self { rate, burst, buckets: Mutex::new(vec![Bucket { tokens: burst, updated: None }; keys]) }
        })
    }

    /// Takes one token from key `key`'s bucket at `now`; when there is none, the whole seconds
    /// until there will be one.
    pub fn check(&self, key: usize, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(bucket) = buckets.get_mut(key) else { return Ok(()) };
        if let Some(updated) = bucket.updated {
            let refill = now.saturating_duration_since(updated).as_secs_f64() * self.rate;
            bucket.tokens = (bucket.tokens + refill).min(self.burst);
        }
        bucket.updated = Some(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// What the outer middleware needs.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_max_bytes: usize,
    pub body_timeout: Duration,
}

impl From<&LimitsConfig> for Limits {
    fn from(c: &LimitsConfig) -> Self {
        Self { header_max_bytes: c.header_max_bytes, body_timeout: c.body_timeout }
    }
}

/// Request line plus headers, counted as on the wire (`name: value\r\n`).
fn header_bytes(req: &Request) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + line
}

/// Outermost API middleware: refuses oversized headers (431), puts a deadline on the request
/// body (408 when it is missed, whatever the handler made of the cut-off body), and counts every
/// limit rejection by its status.
pub async fn enforce(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    if header_bytes(&req) > limits.header_max_bytes {
        metrics::request_limited("header_size");
        return ApiError::HeadersTooLarge(limits.header_max_bytes).into_response();
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    // A recording streams for as long as it is long: it may not pause, rather than having to end
    // by a deadline (its whole upload and analysis is bound by RECORDING_ANALYSIS_TIMEOUT_SECONDS).
    let streaming = req.method() == Method::POST && req.uri().path().ends_with("/recording");
    let mode = if streaming { Mode::Idle(limits.body_timeout) } else { Mode::Total };
    let (parts, body) = req.into_parts();
    let body = Body::new(TimedBody::new(body, limits.body_timeout, mode, timed_out.clone()));
    let response = next.run(Request::from_parts(parts, body)).await;
    if timed_out.load(Ordering::Relaxed) {
        metrics::request_limited("body_timeout");
        let mut timeout = ApiError::RequestTimeout.into_response();
        timeout.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return timeout;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => metrics::request_limited("body_size"),
        StatusCode::TOO_MANY_REQUESTS => metrics::request_limited("rate"),
        _ => {}
    }
    response
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// The whole body must arrive before the deadline.
    Total,
    /// Each frame must follow the previous one within the duration.
    Idle(Duration),
}

pin_project_lite::pin_project! {
    /// A request body with a deadline; missing it ends the body with an error and sets the flag.
    struct TimedBody {
        #[pin]
        inner: Body,
        #[pin]
        deadline: Sleep,
        mode: Mode,
        timed_out: Arc<AtomicBool>,
        done: bool,
    }
}

impl TimedBody {
    fn new(inner: Body, timeout: Duration, mode: Mode, timed_out: Arc<AtomicBool>) -> Self {
        Self { inner, deadline: tokio::time::sleep(timeout), mode, timed_out, done: false }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            if let (Some(Ok(_)), Mode::Idle(idle)) = (&frame, *this.mode) {
                this.deadline.as_mut().reset(Instant::now() + idle);
            }
            return Poll::Ready(frame);
        }
        ready!(this.deadline.poll(cx));
        *this.done = true;
        this.timed_out.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(axum::Error::new("the request body did not arrive in time"))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The CORS layer for `origins`; `None` (no CORS headers at all) when there are none.
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static(IDEMPOTENCY_KEY),
            ])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// Header a client sets to make a retried recording upload safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer replayed from storage.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

// ---- configuration ---------------------------------------------------------------------------

/// What one client may send and how fast: the API's limits (each rejection is counted in
/// `api_requests_limited_total{limit}`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `HTTP_JSON_MAX_BYTES`: largest JSON request body (413 beyond), default 64 KiB. Recordings
    /// have their own `RECORDING_MAX_BYTES`.
    pub json_max_bytes: usize,
    /// `HTTP_HEADER_MAX_BYTES`: request line plus headers (431 beyond), default 16 KiB.
    pub header_max_bytes: usize,
    /// `HTTP_HEADER_TIMEOUT_SECONDS`: time to send a request's headers, and the longest an idle
    /// keep-alive connection stays open, default 10.
    pub header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_SECONDS`: a JSON body must arrive whole within this, and a recording
    /// upload may not pause longer than this between bytes (408 otherwise), default 30.
    pub body_timeout: Duration,
    /// `API_RATE_LIMIT_PER_SECOND`: sustained requests per second per API key on this replica
    /// (429 with `Retry-After` beyond), default 50; `0` turns rate limiting off.
    pub rate_per_second: f64,
    /// `API_RATE_LIMIT_BURST`: requests a key may make at once above the sustained rate,
    /// default 100.
    pub rate_burst: u32,
    /// `LIVE_MAX_CALLS`: live calls this replica carries at once; one more is refused (503 on
    /// the media WebSocket, a busy signal for Twilio) instead of slowing every call, default 100.
    pub live_max_calls: usize,
    /// `MEDIA_WS_MAX_MESSAGE_BYTES`: largest media WebSocket message (the call ends, close 1008,
    /// beyond),
    /// default 64 KiB; a carrier's `media` message is about 300 bytes.
    pub ws_max_message_bytes: usize,
    /// `MEDIA_IDLE_TIMEOUT_SECONDS`: a live call whose carrier sends nothing for this long ends
    /// (`failed`, reason `media idle`), freeing its slot, default 30 (carriers send a frame
    /// every 20 ms).
    pub media_idle_timeout: Duration,
    /// `MEDIA_UNAUTHENTICATED_PER_IP`: media WebSockets without a URL token that one client
    /// address may hold while they prove their token in `start` (5 s at most each), default 32;
    /// a carrier's media servers connect many calls from one address, each proving at once.
    pub media_unauthenticated_per_ip: usize,
    /// `HTTP_MAX_CONNECTIONS`: connections this replica serves at once; one more is closed at
    /// accept (counted as `connections`), default 10000. Upgraded media WebSockets are not
    /// counted (`LIVE_MAX_CALLS` bounds them).
    pub max_connections: usize,
    /// `CORS_ALLOWED_ORIGINS`: comma-separated origins browsers may call the API from (exact
    /// `scheme://host[:port]`); unset, no CORS headers are sent and browsers refuse cross-origin
    /// calls.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            json_max_bytes: 64 * 1024,
            header_max_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            rate_per_second: 50.0,
            rate_burst: 100,
            live_max_calls: 100,
            ws_max_message_bytes: 64 * 1024,
            media_idle_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            media_unauthenticated_per_ip: 32,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl LimitsConfig {
    pub(crate) fn read(r: &mut Reader<'_>) -> Self {
        let d = Self::default();
        let json_max_bytes = r.positive_or("HTTP_JSON_MAX_BYTES", d.json_max_bytes, 16 << 20);
        let header_max_bytes = r.positive_or("HTTP_HEADER_MAX_BYTES", d.header_max_bytes, 1 << 20);
        if header_max_bytes < 1024 {
            r.error("HTTP_HEADER_MAX_BYTES", "must be at least 1024");
        }
        let header_timeout = r.seconds_or("HTTP_HEADER_TIMEOUT_SECONDS", d.header_timeout, 3600.0);
        let body_timeout = r.seconds_or("HTTP_BODY_TIMEOUT_SECONDS", d.body_timeout, 3600.0);
        for (name, value) in
            [("HTTP_HEADER_TIMEOUT_SECONDS", header_timeout), ("HTTP_BODY_TIMEOUT_SECONDS", body_timeout)]
        {
            if value < Duration::from_millis(100) {
                r.error(name, "must be at least 0.1 seconds");
            }
        }
        let rate_per_second = r.f64_in("API_RATE_LIMIT_PER_SECOND", d.rate_per_second, 0.0, 1_000_000.0);
        let rate_burst = r.positive_or("API_RATE_LIMIT_BURST", d.rate_burst as usize, 1_000_000) as u32;
        let live_max_calls = r.positive_or("LIVE_MAX_CALLS", d.live_max_calls, 100_000);
        let ws_max_message_bytes = r.positive_or("MEDIA_WS_MAX_MESSAGE_BYTES", d.ws_max_message_bytes, 16 << 20);
        if ws_max_message_bytes < 1024 {
            r.error("MEDIA_WS_MAX_MESSAGE_BYTES", "must be at least 1024");
        }
        let media_idle_timeout = r.seconds_or("MEDIA_IDLE_TIMEOUT_SECONDS", d.media_idle_timeout, 3600.0);
        if media_idle_timeout < Duration::from_secs(1) {
            r.error("MEDIA_IDLE_TIMEOUT_SECONDS", "must be at least 1 second");
        }
        let max_connections = r.positive_or("HTTP_MAX_CONNECTIONS", d.max_connections, 1_000_000);
        let media_unauthenticated_per_ip =
            r.positive_or("MEDIA_UNAUTHENTICATED_PER_IP", d.media_unauthenticated_per_ip, 100_000);
        let mut cors_allowed_origins = Vec::new();
        for origin in r.string("CORS_ALLOWED_ORIGINS").unwrap_or_default().split(',').map(str::trim) {
            if origin.is_empty() {
                continue;
            }
            let valid = telemetry::config::check_url(origin, &["http", "https"]).is_ok()
                && !origin.trim_start_matches("https://").trim_start_matches("http://").contains('/')
                && axum::http::HeaderValue::from_str(origin).is_ok();
            if valid {
                cors_allowed_origins.push(origin.to_string());
            } else {
                r.error("CORS_ALLOWED_ORIGINS", format!("{origin:?} is not an origin such as https://app.example.com"));
            }
        }
        Self {
            json_max_bytes,
            header_max_bytes,
            header_timeout,
            body_timeout,
            rate_per_second,
            rate_burst,
            live_max_calls,
            ws_max_message_bytes,
            media_idle_timeout,
            max_connections,
            media_unauthenticated_per_ip,
            cors_allowed_origins,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate_up_to_the_burst_per_key() {
        let limiter = RateLimiter::new(2.0, 3, 2).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(0, t0), Ok(()));
        }
        // Empty: one token comes back in half a second, reported as a whole second.
        assert_eq!(limiter.check(0, t0), Err(1));
        // The other key has its own bucket.
        assert_eq!(limiter.check(1, t0), Ok(()));
        assert_eq!(limiter.check(0, t0 + Duration::from_millis(500)), Ok(()));
        assert_eq!(limiter.check(0, t0 + Duration::from_millis(500)), Err(1));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.check(0, later), Ok(()));
        }
        assert!(limiter.check(0, later).is_err());
        // A slow rate asks for a longer wait.
        let slow = RateLimiter::new(0.1, 1, 1).unwrap();
        assert_eq!(slow.check(0, t0), Ok(()));
        assert_eq!(slow.check(0, t0), Err(10));
        assert!(RateLimiter::new(0.0, 10, 1).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out() {
        use http_body_util::BodyExt as _;
        let (mut tx, rx) = futures_channel();
        let flag = Arc::new(AtomicBool::new(false));
        let body = TimedBody::new(rx, Duration::from_secs(5), Mode::Idle(Duration::from_secs(5)), flag.clone());
        let mut body = std::pin::pin!(body);
        tx(Bytes::from_static(b"a"));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
        // Idle mode: the deadline moved with the frame.
        tokio::time::advance(Duration::from_secs(4)).await;
        tx(Bytes::from_static(b"b"));
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "b");
        assert!(!flag.load(Ordering::Relaxed));
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("in time"));
        assert!(flag.load(Ordering::Relaxed));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_total_deadline_does_not_move() {
        use http_body_util::BodyExt as _;
        let (mut tx, rx) = futures_channel();
        let flag = Arc::new(AtomicBool::new(false));
        let body = TimedBody::new(rx, Duration::from_secs(5), Mode::Total, flag.clone());
        let mut body = std::pin::pin!(body);
        tokio::time::advance(Duration::from_secs(3)).await;
        tx(Bytes::from_static(b"a"));
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(body.frame().await.unwrap().is_err());
        assert!(flag.load(Ordering::Relaxed));
    }

    /// A body fed by hand, frame by frame.
    fn futures_channel() -> (impl FnMut(Bytes), Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let send = move |b: Bytes| {
            let _ = tx.send(Ok(b));
        };
        // Leak-free: the sender lives in the closure; the body never ends while it exists.
        (send, Body::from_stream(stream))
    }
}
