//! A tiny API wrapped in the shared layers, for the Sentry and OTLP tests.
#![allow(dead_code)]

use std::time::Duration;

use axum::{Json, Router, http::StatusCode, routing::get, routing::post};
use telemetry::{Env, ErrorContext, Telemetry, TelemetryConfig};

#[derive(Debug, thiserror::Error)]
#[error("carrier rejected the call to {number}")]
pub struct CarrierError {
    pub number: String,
}

pub const PHONE: &str = "+14155550123";

async fn fail() -> (StatusCode, Json<serde_json::Value>) {
    let err = CarrierError { number: PHONE.to_string() };
    telemetry::capture_exception(
        &err,
        ErrorContext::default().tag("operation", "dial").extra("to", PHONE).user("tenant-a"),
    );
    tracing::error!(to = PHONE, "dialling failed");
    (StatusCode::BAD_GATEWAY, Json(serde_json::json!({"error": {"code": "unavailable", "message": "x"}})))
}

async fn boom() -> &'static str {
    panic!("handler exploded while calling {PHONE}");
}

async fn hello() -> &'static str {
    tracing::info!("hello handled");
    "hello"
}

pub fn app() -> Router {
    telemetry::http_layers(
        Router::new().route("/v1/fail", post(fail)).route("/v1/boom", get(boom)).route("/v1/hello", get(hello)),
    )
}

pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

pub fn start(pairs: &[(&str, String)]) -> Telemetry {
    let env = Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let config = TelemetryConfig::from_env(&env).unwrap();
    telemetry::init(&telemetry::ServiceInfo::new("test-service", "9.9.9"), &config).unwrap()
}

pub fn client() -> reqwest::Client {
    telemetry::install_crypto_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}
