//! The HTTP API, one module per resource.

pub mod providers;

use axum::{Router, middleware};

use crate::{AppState, auth, error::ApiError};

/// The authenticated `/v1` API with its request layers.
pub fn api(state: AppState) -> Router {
    let v1 = Router::new()
        .merge(providers::router())
        .route_layer(middleware::from_fn_with_state(state.api_keys.clone(), auth::require_api_key))
        .with_state(state);
    let router = Router::new().merge(v1).fallback(not_found);
    telemetry::http_layers(router)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}
