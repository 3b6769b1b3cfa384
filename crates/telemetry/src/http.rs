//! The HTTP server layer: a server span per request (continuing an incoming W3C trace) and the
//! RED metrics `http_requests_total`, `http_request_duration_seconds` and
//! `http_requests_inprogress`, labelled by route template (`unmatched` for anything unrouted).
//! Health, readiness and metrics endpoints are neither counted nor traced. A request that
//! matches no route names its Sentry transaction [`UNMATCHED_TRANSACTION`], never its raw path
//! (which may carry ids and would make one transaction name per URL).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::extract::MatchedPath;
use http::{Method, Request, Response};
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};

use crate::metrics::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_INPROGRESS, HTTP_REQUESTS_TOTAL};

/// The Sentry transaction name of every request that matches no route.
pub const UNMATCHED_TRANSACTION: &str = "<unmatched>";

/// Paths that are never counted or traced.
const NOT_COUNTED: [&str; 3] = ["/health", "/ready", "/metrics"];

/// Bounded label value for a method.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Wraps an axum router (apply with `Router::layer`, so the route template is known).
#[derive(Clone, Copy, Default)]
pub struct HttpLayer;

impl<S> Layer<S> for HttpLayer {
    type Service = HttpService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpService { inner }
    }
}

#[derive(Clone)]
pub struct HttpService<S> {
    inner: S,
}

/// Decrements the in-progress gauge even when the request future is dropped.
struct InProgress {
    method: &'static str,
    endpoint: String,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_REQUESTS_INPROGRESS, "method" => self.method, "endpoint" => self.endpoint.clone())
            .decrement(1.0);
    }
}

impl<S, B, RB> Service<Request<B>> for HttpService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let endpoint = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
        if endpoint.as_deref().is_some_and(|e| NOT_COUNTED.contains(&e)) {
            return Box::pin(self.inner.call(req));
        }
        let matched = endpoint.is_some();
        let endpoint = endpoint.unwrap_or_else(|| "unmatched".to_string());
        let method = method_label(req.method());
        let span = tracing::info_span!(
            "HTTP request",
            otel.name = %format!("{method} {endpoint}"),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = %endpoint,
            http.response.status_code = Empty,
            // Lets Sentry's tracing layer name the span like the transaction.
            sentry.op = "http.server",
        );
        crate::otel::set_parent_from_headers(&span, req.headers());
        metrics::gauge!(HTTP_REQUESTS_INPROGRESS, "method" => method, "endpoint" => endpoint.clone()).increment(1.0);
        let guard = InProgress { method, endpoint };
        let start = Instant::now();
        let fut = self.inner.call(req);
        let served = async move {
                let result = fut.await;
                let status = match &result {
                    Ok(res) => res.status().as_u16(),
                    Err(_) => 500,
                };
                let span = tracing::Span::current();
                span.record("http.response.status_code", status);
                if status >= 500 {
                    span.record("otel.status_code", "ERROR");
                }
                let elapsed = start.elapsed().as_secs_f64();
                tracing::info!(
                    method,
                    endpoint = %guard.endpoint,
                    status,
                    duration_ms = (elapsed * 1000.0).round() as u64,
                    "request completed"
                );
                let status = status.to_string();
                let (method, endpoint) = (guard.method, guard.endpoint.clone());
                metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => method, "endpoint" => endpoint.clone(), "status" => status.clone())
                    .increment(1);
                metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method, "endpoint" => endpoint, "status" => status)
                    .record(elapsed);
                drop(guard);
                result
            }
            .instrument(span);
        Box::pin(async move {
            // The Sentry transaction (started by `SentryHttpLayer`, outside this layer, on the
            // first poll) is named by the raw path when no route matched: rename it, before the
            // request span becomes the scope's current span.
            if !matched {
                name_unmatched_transaction();
            }
            served.await
        })
    }
}

/// Renames the current Sentry transaction, if any, to [`UNMATCHED_TRANSACTION`].
fn name_unmatched_transaction() {
    if let Some(sentry::TransactionOrSpan::Transaction(tx)) = sentry::configure_scope(|scope| scope.get_span()) {
        tx.set_name(UNMATCHED_TRANSACTION);
    }
}
