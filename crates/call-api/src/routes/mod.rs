//! The HTTP API, one module per resource, assembled with its OpenAPI document.

pub mod calls;
pub mod providers;
pub mod recording;
pub mod twilio;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::header,
    middleware,
    response::IntoResponse,
    routing::get,
};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::{AppState, auth, error::ApiError, openapi::ApiDoc};

/// The authenticated `/v1` API and the open `/openapi.json`, with their request layers.
pub fn api(state: AppState) -> Router {
    let media_state = state.clone();
    let (v1, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(calls::router())
        .merge(recording::router())
        .merge(providers::router())
        .route_layer(middleware::from_fn_with_state(state.api_keys.clone(), auth::require_api_key))
        // Carrier webhooks carry their own proof (a signature), not an API key.
        .merge(twilio::router())
        .layer(DefaultBodyLimit::max(calls::BODY_LIMIT))
        .split_for_parts();
    let doc = Arc::new(openapi_json(&doc));
    let router = Router::new()
        .merge(v1.with_state(state))
        .route("/openapi.json", get(serve_openapi).with_state(doc))
        .route("/v1/calls/{id}/media", get(crate::media::media).with_state(media_state))
        .fallback(not_found);
    telemetry::http_layers(router)
}

/// The whole OpenAPI document, as served.
pub fn openapi() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(calls::router())
        .merge(recording::router())
        .merge(providers::router())
        .merge(twilio::router())
        .into_openapi()
}

fn openapi_json(doc: &utoipa::openapi::OpenApi) -> String {
    doc.to_pretty_json().unwrap_or_else(|_| "{}".to_string())
}

async fn serve_openapi(State(doc): State<Arc<String>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str().to_string())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}
