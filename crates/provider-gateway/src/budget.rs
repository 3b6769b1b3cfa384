//! A memory budget for `Transcribe`: a request holds its audio several times over while it is
//! decoded, checked and sent on (about 3.3 × its size at peak), so concurrent large requests,
//! each within `TRANSCRIBE_MAX_BYTES`, could still exhaust memory. Before tonic buffers a
//! `Transcribe` message, this reads its 5-byte gRPC length prefix and takes that many bytes of
//! `TRANSCRIBE_BUDGET_BYTES` (a request larger than the whole budget needs all of it); when they
//! are not free the call is answered `ResourceExhausted` at once, its body unread. It does not
//! wait: a waiting stream's unread data would hold the HTTP/2 connection's flow-control window,
//! which the admitted streams on the same connection need. The bytes come back when the call's
//! handler has answered. Other methods pass straight on.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http_body::Frame;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use tokio::sync::Semaphore;
use tonic::{body::Body, server::NamedService};
use tower::Service;

const TRANSCRIBE_PATH: &str = "/kraliki.provider.v1.ProviderGateway/Transcribe";
/// Budget accounting unit.
const UNIT: usize = 1024;

/// Wraps the generated server with the `Transcribe` memory budget.
#[derive(Clone)]
pub struct TranscribeBudget<S> {
    inner: S,
    budget: Arc<Semaphore>,
    units: u32,
}

impl<S> TranscribeBudget<S> {
    /// `budget_bytes` of `Transcribe` messages in flight at once.
    pub fn new(inner: S, budget_bytes: usize) -> Self {
        let units = u32::try_from(budget_bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self { inner, budget: Arc::new(Semaphore::new(units as usize)), units }
    }
}

impl<S: NamedService> NamedService for TranscribeBudget<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for TranscribeBudget<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != TRANSCRIBE_PATH {
            return Box::pin(self.inner.call(request));
        }
        // The ready service goes with this call; the clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let budget = Arc::clone(&self.budget);
        let total = self.units;
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            // Read up to the length prefix; keep what was read to hand it on unchanged.
            let mut head = BytesMut::new();
            let mut read: Vec<Result<Frame<Bytes>, tonic::Status>> = Vec::new();
            while head.len() < 5 {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            head.extend_from_slice(data);
                        }
                        read.push(Ok(frame));
                    }
                    Some(Err(e)) => {
                        read.push(Err(e));
                        break;
                    }
                    None => break,
                }
            }
            let length = if head.len() >= 5 { u32::from_be_bytes([head[1], head[2], head[3], head[4]]) } else { 0 };
            let units = u32::try_from((length as usize).div_ceil(UNIT).max(1)).unwrap_or(u32::MAX).min(total);
            let Ok(permit) = budget.try_acquire_many_owned(units) else {
                return Ok(tonic::Status::resource_exhausted(
                    "the transcription memory budget is full (TRANSCRIBE_BUDGET_BYTES); retry later",
                )
                .into_http());
            };
            let rest = futures_util::stream::iter(read).chain(BodyStream::new(body));
            let request = http::Request::from_parts(parts, Body::new(StreamBody::new(rest)));
            let response = inner.call(request).await;
            drop(permit);
            response
        })
    }
}
