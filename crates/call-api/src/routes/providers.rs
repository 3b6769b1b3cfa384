//! `GET /v1/providers`: the AI providers provider-gateway has configured, per capability.

use std::time::Duration;

use axum::{Json, extract::State};
use kraliki_proto::provider::v1::{Capability, CircuitState, ListProvidersRequest};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    peers::PROVIDER_GATEWAY,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// One AI provider for one capability.
#[derive(Serialize, ToSchema)]
#[schema(as = AiProvider)]
pub struct Provider {
    pub name: String,
    pub capability: &'static str,
    pub configured: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub priority: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    pub circuit_state: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Providers {
    pub providers: Vec<Provider>,
}

fn capability_name(c: i32) -> &'static str {
    match Capability::try_from(c) {
        Ok(Capability::SpeechToText) => "speech_to_text",
        Ok(Capability::Chat) => "chat",
        Ok(Capability::TextToSpeech) => "text_to_speech",
        Ok(Capability::Sentiment) => "sentiment",
        _ => "unknown",
    }
}

fn circuit_name(c: i32) -> &'static str {
    match CircuitState::try_from(c) {
        Ok(CircuitState::Closed) => "closed",
        Ok(CircuitState::HalfOpen) => "half_open",
        Ok(CircuitState::Open) => "open",
        _ => "unknown",
    }
}

/// The AI providers provider-gateway has configured, per capability.
#[utoipa::path(
    get, path = "/v1/providers", tag = "providers", security(("bearer" = [])),
    responses(
        (status = 200, body = Providers),
        (status = 401, body = ErrorBody),
        (status = 503, description = "provider-gateway unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
async fn list(State(state): State<AppState>) -> Result<Json<Providers>, ApiError> {
    let mut request = tonic::Request::new(ListProvidersRequest { capability: Capability::Unspecified as i32 });
    request.set_timeout(Duration::from_secs(5));
    let response = state
        .peers
        .gateway
        .clone()
        .list_providers(request)
        .await
        .map_err(|s| ApiError::from_peer(PROVIDER_GATEWAY, &s))?;
    let providers = response
        .into_inner()
        .providers
        .into_iter()
        .map(|p| Provider {
            capability: capability_name(p.capability),
            circuit_state: circuit_name(p.circuit_state),
            name: p.name,
            configured: p.configured,
            reason: p.reason,
            priority: p.priority,
            model: p.model,
        })
        .collect();
    Ok(Json(Providers { providers }))
}
