//! The shared secret of the internal gRPC ports (`INTERNAL_AUTH_TOKEN`).
//!
//! Unset, the gRPC ports trust whoever can reach them (the network: NetworkPolicy, a mesh,
//! loopback). Set, every call except `grpc.health.v1.Health` and server reflection must carry
//! `authorization: Bearer <token>`; anything else is answered `Unauthenticated` before the
//! request reaches a service (its body is never read). The comparison is between SHA-256
//! digests, in constant time, so neither the token nor its length leaks through timing.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tower::{Layer, Service};

use crate::Secret;

/// Paths that stay open with a token configured: probes and tooling.
fn open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// The `authorization` value a client sends for `token`.
pub fn bearer_header(token: &Secret) -> HeaderValue {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose()))
        .expect("INTERNAL_AUTH_TOKEN is checked to be printable ASCII");
    value.set_sensitive(true);
    value
}

/// Checks the token of every gRPC call (a no-op without a token).
#[derive(Clone, Default)]
pub struct InternalAuthLayer {
    digest: Option<Arc<[u8; 32]>>,
}

impl InternalAuthLayer {
    /// Requires `token` when set.
    pub fn new(token: Option<&Secret>) -> Self {
        Self { digest: token.map(|t| Arc::new(Sha256::digest(t.expose().as_bytes()).into())) }
    }
}

impl<S> Layer<S> for InternalAuthLayer {
    type Service = InternalAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InternalAuth { inner, digest: self.digest.clone() }
    }
}

/// See [`InternalAuthLayer`].
#[derive(Clone)]
pub struct InternalAuth<S> {
    inner: S,
    digest: Option<Arc<[u8; 32]>>,
}

fn authorised(expected: &[u8; 32], header: Option<&HeaderValue>) -> bool {
    let Some(value) = header.map(HeaderValue::as_bytes) else { return false };
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => return false,
    };
    let digest: [u8; 32] = Sha256::digest(token).into();
    bool::from(digest.ct_eq(expected))
}

impl<S, B, RB> Service<Request<B>> for InternalAuth<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(expected) = &self.digest
            && !open_path(request.uri().path())
            && !authorised(expected, request.headers().get(http::header::AUTHORIZATION))
        {
            let status = tonic::Status::unauthenticated("missing or wrong internal auth token");
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = Secret::new("0123456789abcdef0123456789abcdef");
        let digest: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(authorised(&digest, Some(&bearer_header(&token))));
        assert!(authorised(&digest, Some(&header("bearer 0123456789abcdef0123456789abcdef"))));
        assert!(!authorised(&digest, None));
        assert!(!authorised(&digest, Some(&header("Bearer 0123456789abcdef0123456789abcde"))));
        assert!(!authorised(&digest, Some(&header("Basic 0123456789abcdef0123456789abcdef"))));
        assert!(!authorised(&digest, Some(&header("Bearer"))));
        assert!(open_path("/grpc.health.v1.Health/Check"));
        assert!(open_path("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(!open_path("/kraliki.provider.v1.ProviderGateway/Transcribe"));
    }
}
