//! `ENABLE_METRICS=false` installs no recorder at all: nothing is recorded in the process.

use std::time::Duration;

use crate::common::*;
use telemetry::{Env, ServiceContext, Shutdown, TelemetryConfig};

#[tokio::test(flavor = "multi_thread")]
async fn no_recorder_is_installed() {
    let env = Env::from_pairs([("ENABLE_METRICS", "false"), ("API_KEYS", API_KEY)]);
    let tc = TelemetryConfig::from_env(&env).unwrap();
    let telemetry = telemetry::init(&call_api::service_info(), &tc).unwrap();
    assert!(telemetry.metrics().is_none());
    let ctx = ServiceContext::new(
        call_api::service_info(),
        "test",
        None,
        Shutdown::new(Duration::ZERO, Duration::from_secs(5)),
    );
    let config = call_api::Config::from_env(&env).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(call_api::run(config, listener, ctx.clone()));
    wait_ready(&format!("{url}/ready"), Duration::from_secs(20)).await;
    let c = client();
    for path in ["/v1/providers", "/v1/nope"] {
        c.get(format!("{url}{path}")).bearer_auth(API_KEY).send().await.unwrap();
    }
    assert_eq!(c.get(format!("{url}/metrics")).send().await.unwrap().status(), 404);
    // Had any recorder been installed, this would fail.
    assert!(metrics::set_global_recorder(metrics::NoopRecorder).is_ok());
}
