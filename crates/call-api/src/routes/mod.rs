//! The HTTP API, one module per resource, assembled with its OpenAPI document.

pub mod calls;
pub mod console;
pub mod events;
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
    let console = console::router(state.console.clone());
    let (v1, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(calls::router())
        .merge(events::router())
        .merge(recording::router())
        .merge(providers::router())
        .route_layer(middleware::from_fn_with_state(state.gate.clone(), auth::require_api_key))
        // Carrier webhooks carry their own proof (a signature), not an API key.
        .merge(twilio::router())
        .layer(DefaultBodyLimit::max(state.limits.json_max_bytes))
        .split_for_parts();
    let limits = crate::limits::Limits::from(&state.limits);
    let cors = crate::limits::cors(&state.limits.cors_allowed_origins);
    let mut doc = doc;
    add_limit_responses(&mut doc);
    events::document_stream(&mut doc);
    let doc = Arc::new(openapi_json(&doc));
    let router = Router::new()
        .merge(v1.with_state(state))
        .route("/openapi.json", get(serve_openapi).with_state(doc))
        .route("/v1/calls/{id}/media", get(crate::media::media).with_state(media_state))
        .merge(console)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(limits, crate::limits::enforce));
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    telemetry::http_layers(router)
}

/// The whole OpenAPI document, as served.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(calls::router())
        .merge(events::router())
        .merge(recording::router())
        .merge(providers::router())
        .merge(twilio::router())
        .into_openapi();
    add_limit_responses(&mut doc);
    events::document_stream(&mut doc);
    doc
}

/// Documents the answers every API operation may give because of the limits (`limits.rs`):
/// 408 and 431 everywhere, 429 where the API key's rate applies.
fn add_limit_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let keyed = !path.starts_with("/v1/twilio/");
        for op in
            [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten()
        {
            let responses = &mut op.responses.responses;
            responses
                .entry("408".into())
                .or_insert_with(|| error("The request body did not arrive within HTTP_BODY_TIMEOUT_SECONDS").into());
            responses
                .entry("431".into())
                .or_insert_with(|| error("Request line and headers larger than HTTP_HEADER_MAX_BYTES").into());
            if keyed {
                responses.entry("429".into()).or_insert_with(|| {
                    error(
                        "This API key's rate limit (API_RATE_LIMIT_PER_SECOND, API_RATE_LIMIT_BURST) is used up; \
                           retry after Retry-After seconds",
                    )
                    .into()
                });
            }
        }
    }
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
