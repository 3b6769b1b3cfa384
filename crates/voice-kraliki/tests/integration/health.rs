//! Each service, started in-process on port 0: `/health` per SPEC, `/ready` 200 then 503 once
//! shutdown begins, `grpc.health.v1` SERVING then NOT_SERVING, reflection lists the service,
//! and listeners close when the drain starts.

use std::time::Duration;

use crate::common::*;
use kraliki_proto::{audio::v1::SERVICE_NAME as AUDIO, provider::v1::SERVICE_NAME as GATEWAY};
use telemetry::{Env, ServiceContext, Shutdown};
use tokio::net::TcpListener;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const DELAY: Duration = Duration::from_secs(2);

fn context(info: telemetry::ServiceInfo) -> ServiceContext {
    ServiceContext::new(info, "test", None, Shutdown::new(DELAY, Duration::from_secs(5)))
}

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

async fn check_health_json(url: &str, service: &str) {
    let body: serde_json::Value = client().get(format!("{url}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], service);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["environment"], "test");
}

async fn ready_status(url: &str) -> (u16, serde_json::Value) {
    let r = client().get(format!("{url}/ready")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn channel(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await
}

async fn grpc_status(url: &str, service: &str) -> i32 {
    let mut c = HealthClient::new(channel(url).await.unwrap());
    c.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status
}

async fn reflected_services(url: &str) -> Vec<String> {
    let mut c = ServerReflectionClient::new(channel(url).await.unwrap());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = c.server_reflection_info(tokio_stream::once(req)).await.unwrap().into_inner();
    match stream.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn grpc_service_lifecycle(
    name: &str,
    service: &str,
    start: impl FnOnce(TcpListener, TcpListener, ServiceContext) -> tokio::task::JoinHandle<()>,
    info: telemetry::ServiceInfo,
) {
    let (grpc, grpc_url) = bind().await;
    let (admin, admin_url) = bind().await;
    let ctx = context(info);
    let server = start(grpc, admin, ctx.clone());
    wait_ready(&format!("{admin_url}/ready"), Duration::from_secs(20)).await;

    check_health_json(&admin_url, name).await;
    assert_eq!(ready_status(&admin_url).await, (200, serde_json::json!({"status": "ready"})));
    assert_eq!(grpc_status(&grpc_url, service).await, ServingStatus::Serving as i32);
    assert_eq!(grpc_status(&grpc_url, "").await, ServingStatus::Serving as i32);
    // Its own service, health and reflection: not the other services of the workspace.
    let mut services = reflected_services(&grpc_url).await;
    services.sort();
    let mut expected = vec![
        service.to_string(),
        "grpc.health.v1.Health".to_string(),
        "grpc.reflection.v1.ServerReflection".to_string(),
        "grpc.reflection.v1alpha.ServerReflection".to_string(),
    ];
    expected.sort();
    assert_eq!(services, expected);

    ctx.shutdown.trigger();
    // During the delay the service still answers, but says it is not ready.
    let (status, body) = ready_status(&admin_url).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    assert!(body["reasons"].as_array().unwrap().iter().any(|r| r == "shutting down"), "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while grpc_status(&grpc_url, service).await != ServingStatus::NotServing as i32 {
        assert!(std::time::Instant::now() < deadline, "gRPC health never went NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(grpc_status(&grpc_url, "").await, ServingStatus::Serving as i32, "liveness holds while draining");

    tokio::time::timeout(Duration::from_secs(15), server).await.expect("service stops after the drain").unwrap();
    assert!(client().get(format!("{admin_url}/health")).send().await.is_err(), "admin listener still open");
    assert!(channel(&grpc_url).await.is_err(), "grpc listener still open");
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_processor_health_reflection_and_drain() {
    let env = Env::default();
    let config = audio_processor::Config::from_env(&env).unwrap();
    grpc_service_lifecycle(
        "audio-processor",
        AUDIO,
        move |g, a, ctx| {
            tokio::spawn(async move {
                audio_processor::run(config, g, a, ctx).await.unwrap();
            })
        },
        audio_processor::service_info(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_gateway_health_reflection_and_drain() {
    let env = Env::default();
    let config = provider_gateway::Config::from_env(&env).unwrap();
    grpc_service_lifecycle(
        "provider-gateway",
        GATEWAY,
        move |g, a, ctx| {
            tokio::spawn(async move {
                provider_gateway::run(config, g, a, ctx).await.unwrap();
            })
        },
        provider_gateway::service_info(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn call_api_health_ready_and_drain() {
    let (listener, url) = bind().await;
    let db = temp_path("db.sqlite");
    let env =
        Env::from_pairs([("API_KEYS", API_KEY.to_string()), ("DATABASE_URL", format!("sqlite://{}", db.display()))]);
    let config = call_api::Config::from_env(&env).unwrap();
    let ctx = context(call_api::service_info());
    let server = tokio::spawn(call_api::run(config, listener, ctx.clone()));
    wait_ready(&format!("{url}/ready"), Duration::from_secs(20)).await;
    check_health_json(&url, "call-api").await;
    assert_eq!(ready_status(&url).await, (200, serde_json::json!({"status": "ready"})));

    ctx.shutdown.trigger();
    let (status, body) = ready_status(&url).await;
    assert_eq!(status, 503);
    assert!(body["reasons"].as_array().unwrap().iter().any(|r| r == "shutting down"), "{body}");
    // Liveness still holds while draining: the process is fine, it is just leaving.
    assert_eq!(client().get(format!("{url}/health")).send().await.unwrap().status(), 200);

    tokio::time::timeout(Duration::from_secs(15), server).await.expect("stops after the drain").unwrap().unwrap();
    assert!(client().get(format!("{url}/health")).send().await.is_err(), "listener still open");
}
