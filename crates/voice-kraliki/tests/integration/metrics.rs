//! Each service exposes its own Prometheus registry with the SPEC §6 names, labelled by route
//! template and gRPC method, never by raw path.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn each_service_exports_its_own_red_metrics() {
    let ports = Ports::new();
    let env = ports.env();
    let _gateway = Service::start("provider-gateway", &env);
    let _audio = Service::start("audio-processor", &env);
    let _api = Service::start("call-api", &env);
    let api = format!("http://127.0.0.1:{}", ports.api);
    let gateway_admin = format!("http://127.0.0.1:{}", ports.gateway_admin);
    let audio_admin = format!("http://127.0.0.1:{}", ports.audio_admin);
    for url in [&api, &gateway_admin, &audio_admin] {
        wait_ready(&format!("{url}/ready"), Duration::from_secs(20)).await;
    }

    let c = client();
    for _ in 0..3 {
        let r = c.get(format!("{api}/v1/providers")).bearer_auth(API_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(c.get(format!("{api}/v1/providers")).send().await.unwrap().status(), 401);
    let r = c.get(format!("{api}/v1/nope/123")).bearer_auth(API_KEY).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    c.get(format!("{api}/health")).send().await.unwrap();

    let (text, m) = scrape(&format!("{api}/metrics")).await;
    let ok = [("method", "GET"), ("endpoint", "/v1/providers"), ("status", "200")];
    assert_eq!(value(&m, "http_requests_total", &ok), Some(3.0), "{text}");
    let denied = [("method", "GET"), ("endpoint", "/v1/providers"), ("status", "401")];
    assert_eq!(value(&m, "http_requests_total", &denied), Some(1.0));
    let unmatched = [("method", "GET"), ("endpoint", "unmatched"), ("status", "404")];
    assert_eq!(value(&m, "http_requests_total", &unmatched), Some(1.0));
    assert!(!text.contains("/v1/nope") && !text.contains("123\""), "raw path leaked into labels");
    for e in ["/health", "/ready", "/metrics"] {
        assert!(!m.iter().any(|s| s.labels.get("endpoint").map(String::as_str) == Some(e)), "{e} counted");
    }
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
    let le_ok = [("endpoint", "/v1/providers"), ("status", "200"), ("le", "+Inf")];
    assert_eq!(value(&m, "http_request_duration_seconds_bucket", &le_ok), Some(3.0));
    assert_eq!(value(&m, "http_request_duration_seconds_count", &ok), Some(3.0));
    assert_eq!(value(&m, "http_requests_inprogress", &[("endpoint", "/v1/providers")]), Some(0.0));

    let list = [
        ("grpc_type", "unary"),
        ("grpc_service", "kraliki.provider.v1.ProviderGateway"),
        ("grpc_method", "ListProviders"),
    ];
    assert_eq!(value(&m, "grpc_client_started_total", &list), Some(3.0));
    let handled: Vec<_> = list.iter().copied().chain([("grpc_code", "OK")]).collect();
    assert_eq!(value(&m, "grpc_client_handled_total", &handled), Some(3.0));
    assert_eq!(value(&m, "grpc_client_handling_seconds_bucket", &[("le", "+Inf"), list[2]]), Some(3.0));
    assert!(value(&m, "grpc_server_started_total", &[]).is_none(), "call-api serves no gRPC");
    assert_eq!(value(&m, "build_info", &[("service", "call-api"), ("version", "0.1.0")]), Some(1.0));
    assert!(m.iter().any(|s| s.name == "build_info" && s.labels.contains_key("git_sha")));
    assert!(value(&m, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&m, "process_open_fds", &[]).unwrap() > 0.0);
    assert!(value(&m, "process_cpu_seconds_total", &[]).is_some());
    assert!(value(&m, "process_start_time_seconds", &[]).unwrap() > 1.7e9);

    // The gateway's own registry: server side of the same three calls, no HTTP API series.
    let (text, g) = scrape(&format!("{gateway_admin}/metrics")).await;
    assert_eq!(value(&g, "grpc_server_started_total", &list), Some(3.0), "{text}");
    assert_eq!(value(&g, "grpc_server_handled_total", &handled), Some(3.0));
    assert_eq!(value(&g, "grpc_server_handling_seconds_bucket", &[("le", "+Inf"), list[2]]), Some(3.0));
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
    assert!(value(&g, "http_requests_total", &[]).is_none(), "admin endpoints are not counted");
    assert!(value(&g, "grpc_client_started_total", &[]).is_none());
    assert_eq!(value(&g, "build_info", &[("service", "provider-gateway")]), Some(1.0));

    let (_, a) = scrape(&format!("{audio_admin}/metrics")).await;
    assert_eq!(value(&a, "build_info", &[("service", "audio-processor")]), Some(1.0));
    assert!(value(&a, "grpc_server_started_total", &list).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn enable_metrics_false_removes_the_endpoints() {
    let ports = Ports::new();
    let mut env = ports.env();
    env.push(("ENABLE_METRICS".into(), "false".into()));
    let _gateway = Service::start("provider-gateway", &env);
    let _api = Service::start("call-api", &env);
    let api = format!("http://127.0.0.1:{}", ports.api);
    let gateway_admin = format!("http://127.0.0.1:{}", ports.gateway_admin);
    wait_ready(&format!("{api}/ready"), Duration::from_secs(20)).await;
    wait_ready(&format!("{gateway_admin}/ready"), Duration::from_secs(20)).await;
    let c = client();
    assert_eq!(c.get(format!("{api}/v1/providers")).bearer_auth(API_KEY).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{api}/metrics")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(format!("{gateway_admin}/metrics")).send().await.unwrap().status(), 404);
}
