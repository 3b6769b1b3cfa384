//! `GET /v1/providers`: the AI providers provider-gateway has configured, per capability.

use std::time::Duration;

use axum::{Json, Router, extract::State, routing::get};
use kraliki_proto::provider::v1::{Capability, CircuitState, ListProvidersRequest};
use serde::Serialize;

use crate::{AppState, error::ApiError, peers::PROVIDER_GATEWAY};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/providers", get(list))
}

#[derive(Serialize)]
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

#[derive(Serialize)]
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
