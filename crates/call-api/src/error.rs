//! The API's one error type: every failure maps to a status and the SPEC error body
//! `{"error": {"code": "...", "message": "..."}}`; internal details never reach the client.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `validation_failed`, `request_timeout`,
    /// `headers_too_large`, `rate_limited`, `unavailable`, `internal`.
    #[schema(example = "not_found")]
    pub code: &'static str,
    /// What went wrong, for a person; never internal or provider detail.
    #[schema(example = "call not found")]
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    /// The request carries its own proof (a carrier's signature) and the proof is missing or wrong.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    /// An `Idempotency-Key` sent again with a different body.
    #[error("this Idempotency-Key was used with a different body; use a new key for a new recording")]
    IdempotencyKeyReused,
    /// The client did not send its request body in time (`HTTP_BODY_TIMEOUT_SECONDS`).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The request line and headers are larger than `HTTP_HEADER_MAX_BYTES`.
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("too many requests for this API key; retry after {retry_after_seconds} s")]
    TooManyRequests { retry_after_seconds: u64 },
    /// This replica is at a capacity limit; another replica, or this one later, can serve.
    #[error("{message}")]
    Busy { message: String, retry_after_seconds: u64 },
    /// A dependency (database, peer service) is unavailable; the message names it, not why.
    #[error("{0} is unavailable, retry later")]
    Unavailable(&'static str),
    /// Unavailable, with a message of its own (a feature not configured, a carrier that failed).
    #[error("{0}")]
    UnavailableWith(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::UnavailableWith(_) | Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unprocessable(_) => "validation_failed",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RequestTimeout => "request_timeout",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Unavailable(_) | Self::UnavailableWith(_) | Self::Busy { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// Maps a failed gRPC call to a peer.
    pub fn from_peer(peer: &'static str, status: &tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted => {
                Self::Unavailable(peer)
            }
            Code::InvalidArgument => Self::Unprocessable(status.message().to_string()),
            Code::NotFound => Self::NotFound("resource"),
            _ => Self::Internal(anyhow::anyhow!("{peer} answered {:?}: {}", status.code(), status.message())),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let body = Json(ErrorBody { error: ErrorDetail { code: self.code(), message: self.to_string() } });
        let mut response = (self.status(), body).into_response();
        if let Self::TooManyRequests { retry_after_seconds } | Self::Busy { retry_after_seconds, .. } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        match e {
            crate::db::DbError::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::Unavailable("database")
            }
            other => ApiError::Internal(other.into()),
        }
    }
}
