//! Tenant isolation on every route: each operation of the served OpenAPI document is tried with
//! another tenant's key against a call it does not own, and must answer as if the call did not
//! exist and change nothing. A new route without a case here fails the test.

use crate::common;
use crate::common::{ACME_KEY, Backend, KEY, TestApp, new_call, spawn_app};
use serde_json::{Value, json};

/// What a foreign tenant tries on `method path` (with `{id}` replaced by the victim's call).
enum Try {
    /// The call must look absent: 404 `not_found`.
    Absent(fn(&TestApp, &str) -> reqwest::RequestBuilder),
    /// Not about one call: checked by its own assertions below.
    Collection,
    /// Not behind API keys (Twilio webhooks: signed by Twilio, tenant from TWILIO_TENANT).
    Unkeyed,
}

fn case(method: &str, path: &str) -> Option<Try> {
    Some(match (method, path) {
        ("get", "/v1/calls/{id}") => Try::Absent(|a, id| a.client.get(a.url(&format!("/v1/calls/{id}")))),
        ("post", "/v1/calls/{id}/end") => Try::Absent(|a, id| {
            a.client.post(a.url(&format!("/v1/calls/{id}/end"))).json(&json!({"outcome": "completed"}))
        }),
        ("get", "/v1/calls/{id}/turns") => Try::Absent(|a, id| a.client.get(a.url(&format!("/v1/calls/{id}/turns")))),
        ("get", "/v1/calls/{id}/quality") => {
            Try::Absent(|a, id| a.client.get(a.url(&format!("/v1/calls/{id}/quality"))))
        }
        ("get", "/v1/calls/{id}/analysis") => {
            Try::Absent(|a, id| a.client.get(a.url(&format!("/v1/calls/{id}/analysis"))))
        }
        ("post", "/v1/calls/{id}/recording") => Try::Absent(|a, id| {
            let body = std::fs::read(common::stack::fixture("call-stereo.wav")).unwrap();
            a.client.post(a.url(&format!("/v1/calls/{id}/recording"))).header("content-type", "audio/wav").body(body)
        }),
        ("get", "/v1/calls/{id}/events") => Try::Absent(|a, id| a.client.get(a.url(&format!("/v1/calls/{id}/events")))),
        ("get" | "post", "/v1/calls") | ("get", "/v1/providers") | ("get", "/v1/events") => Try::Collection,
        (_, p) if p.starts_with("/v1/twilio/") => Try::Unkeyed,
        _ => return None,
    })
}

async fn snapshot(app: &TestApp, id: &str) -> (Value, u16, Value) {
    let (_, call) = app.get(&format!("/v1/calls/{id}"), KEY).await;
    let (analysis_status, analysis) = app.get(&format!("/v1/calls/{id}/analysis"), KEY).await;
    let (_, turns) = app.get(&format!("/v1/calls/{id}/turns"), KEY).await;
    (call, analysis_status, json!({"analysis": analysis, "turns": turns}))
}

async fn isolation_holds_on_every_route(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let victim = app.create("twilio").await;
    let id = victim["id"].as_str().unwrap().to_string();
    let before = snapshot(&app, &id).await;

    let doc = serde_json::to_value(call_api::routes::openapi()).unwrap();
    let mut tried = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let Some(c) = case(method, path) else {
                panic!("{method} {path} has no tenant-isolation case: add one to tests/integration/tenancy.rs");
            };
            if let Try::Absent(request) = c {
                let r = request(&app, &id).bearer_auth(ACME_KEY).send().await.unwrap();
                let answer = common::decode(r).await;
                assert_eq!(answer.0, 404, "{method} {path} with another tenant's key: {}", answer.1);
                assert_eq!(answer.1["error"]["code"], "not_found", "{method} {path}");
                assert_eq!(snapshot(&app, &id).await, before, "{method} {path} changed another tenant's call");
                tried += 1;
            }
        }
    }
    assert!(tried >= 5, "{tried}");

    // Collections: each tenant sees only its own calls.
    let (_, acme_list) = app.get("/v1/calls", ACME_KEY).await;
    assert_eq!(acme_list["calls"].as_array().unwrap().len(), 0, "{acme_list}");
    let (status, mine) = app.post_json("/v1/calls", ACME_KEY, &new_call("twilio")).await;
    assert_eq!(status, 201);
    let (_, default_list) = app.get("/v1/calls", KEY).await;
    let ids: Vec<&str> = default_list["calls"].as_array().unwrap().iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, vec![id.as_str()]);
    assert_eq!(app.get(&format!("/v1/calls/{}", mine["id"].as_str().unwrap()), KEY).await.0, 404);
    // Events: each tenant lists only its own calls' events.
    let mine_id = mine["id"].as_str().unwrap().to_string();
    let event_calls = async |key: &str| -> Vec<String> {
        let (status, list) = app.get("/v1/events", key).await;
        assert_eq!(status, 200, "{list}");
        list["events"].as_array().unwrap().iter().map(|e| e["call_id"].as_str().unwrap().to_string()).collect()
    };
    common::carrier::wait_until(
        async || !event_calls(ACME_KEY).await.is_empty(),
        std::time::Duration::from_secs(10),
        "acme's event listed",
    )
    .await;
    assert_eq!(event_calls(ACME_KEY).await, vec![mine_id.clone()]);
    let default_events = event_calls(KEY).await;
    assert!(!default_events.is_empty() && default_events.iter().all(|c| *c == id), "{default_events:?}");

    // The media WebSocket: a call's token opens only that call.
    let token_of = |c: &Value| c["media_url"].as_str().unwrap().split("token=").nth(1).unwrap().to_string();
    let url = format!("ws://{}/v1/calls/{id}/media?token={}", app.addr, token_of(&mine));
    let refused = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    assert_eq!(snapshot(&app, &id).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn isolation_holds_on_every_route_sqlite() {
    isolation_holds_on_every_route(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn isolation_holds_on_every_route_postgres() {
    isolation_holds_on_every_route(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn media_tokens_expire() {
    let db = common::TestDb::new(Backend::Sqlite).await.unwrap();
    let url = db.url().to_string();
    let app = common::spawn_app_with(db, &url, &[("MEDIA_TOKEN_TTL_SECONDS", "1")]).await;
    let created = app.create("twilio").await;
    let media_url = created["media_url"].as_str().unwrap();
    let token = media_url.split("token=").nth(1).unwrap();
    // 256 random bits, URL-safe base64.
    assert_eq!(token.len(), 43, "{token}");
    let id = created["id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/v1/calls/{id}/media?token={token}", app.addr))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    assert_eq!(app.get(&format!("/v1/calls/{id}"), KEY).await.1["status"], "queued");
}
