//! The call lifecycle API over HTTP, every endpoint and error path, on SQLite and PostgreSQL.

use crate::common;
use crate::common::{ACME_KEY, KEY, TestApp, assert_error, new_call};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

on_both_databases!(
    create_returns_a_queued_call_with_a_media_url,
    create_rejects_bad_input_and_stores_nothing,
    get_is_scoped_to_the_tenant,
    list_pages_newest_first_with_filters,
    list_rejects_bad_parameters,
    end_records_outcome_and_duration_once,
    media_start_moves_to_in_progress_and_times_the_call_from_it,
    auth_is_required_and_tenants_are_isolated,
    openapi_lists_every_route,
);

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc)).expect("RFC 3339 time")
}

fn id(call: &Value) -> String {
    call["id"].as_str().expect("id").to_string()
}

async fn create_returns_a_queued_call_with_a_media_url(app: TestApp) {
    let before = Utc::now();
    let body = json!({"provider": "twilio", "from": "+14155550100", "to": "+420123456789",
                      "direction": "inbound", "metadata": {"crm": {"lead": 42}, "campaign": "spring"}});
    let (status, call) = app.post_json("/v1/calls", KEY, &body).await;
    assert_eq!(status, 201, "{call}");
    let call_id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).expect("id is a UUID");
    assert_eq!(call["status"], "queued");
    assert_eq!(call["provider"], "twilio");
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["from"], "+14155550100");
    assert_eq!(call["to"], "+420123456789");
    assert_eq!(call["metadata"], json!({"crm": {"lead": 42}, "campaign": "spring"}));
    assert_eq!(call["outcome"], Value::Null);
    assert_eq!(call["duration_seconds"], Value::Null);
    assert_eq!(call["analysis_status"], Value::Null);
    let created = time(&call["created_at"]);
    assert!(created >= before - chrono::Duration::seconds(1) && created <= Utc::now());
    assert!(call["created_at"].as_str().unwrap().ends_with('Z'), "UTC: {}", call["created_at"]);

    // media_url: PUBLIC_BASE_URL as wss, this call's id, an unguessable token.
    let media_url = call["media_url"].as_str().expect("media_url");
    let prefix = format!("wss://calls.example.test/v1/calls/{call_id}/media?token=");
    let token = media_url.strip_prefix(&prefix).unwrap_or_else(|| panic!("{media_url}"));
    assert_eq!(token.len(), 43);
    let other = app.create("twilio").await;
    assert_ne!(other["media_url"].as_str().unwrap().rsplit_once('=').unwrap().1, token);

    // The token is stored hashed, never in the clear, and resolves to this call only.
    assert_eq!(app.db.count_calls(&format!("media_token_hash = '{token}'")).await, 0);
    let hash = call_api::db::calls::media_token_hash(token);
    assert_eq!(app.db.count_calls(&format!("media_token_hash = '{hash}'")).await, 1);
    let repo = app.repository().await;
    let found = repo.call_for_media_token(call_id, token).await.unwrap().expect("token resolves");
    assert_eq!(found.id, call_id);
    assert!(repo.call_for_media_token(call_id, "wrong").await.unwrap().is_none());
    let other_id = uuid::Uuid::parse_str(other["id"].as_str().unwrap()).unwrap();
    assert!(repo.call_for_media_token(other_id, token).await.unwrap().is_none());

    // GET returns the same record, without the token.
    let (status, got) = app.get(&format!("/v1/calls/{call_id}"), KEY).await;
    assert_eq!(status, 200);
    let mut expected = call.clone();
    expected.as_object_mut().unwrap().remove("media_url");
    assert_eq!(got, expected);

    // metadata is optional and defaults to an empty object.
    assert_eq!(app.create("websocket").await["metadata"], json!({}));
}

async fn create_rejects_bad_input_and_stores_nothing(app: TestApp) {
    let with = |field: &str, value: Value| {
        let mut body = new_call("twilio");
        body[field] = value;
        body
    };
    let unprocessable = [
        with("provider", json!("skype")),
        with("provider", json!("Twilio")),
        with("provider", json!(7)),
        with("from", json!("14155550100")),
        with("from", json!("+0155")),
        with("to", json!("+1 415 555 0100")),
        with("to", json!("+1234567890123456")),
        with("direction", json!("sideways")),
        with("metadata", json!([1, 2])),
        with("metadata", json!("note")),
        with("metadata", json!({"a": {"b": {"c": {"d": {"e": 1}}}}})),
        with("metadata", json!({"big": "x".repeat(17 * 1024)})),
        with("surprise", json!(true)),
        json!({"provider": "twilio", "from": "+14155550100", "to": "+420123456789"}),
        json!({}),
        json!([]),
    ];
    for body in &unprocessable {
        let r = app.post_json("/v1/calls", KEY, body).await;
        // A rejected number is never echoed back (personal data).
        assert!(!r.1.to_string().contains("14155550100"), "{}", r.1);
        assert_eq!(r.0, 422, "{body} → {}", r.1);
        assert_error(r, 422, "validation_failed");
    }

    let send = |content_type: Option<&'static str>, body: Vec<u8>| {
        let mut req = app.client.post(app.url("/v1/calls")).bearer_auth(KEY).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move { common::decode(req.send().await.unwrap()).await }
    };
    assert_error(send(Some("application/json"), b"{\"provider\": ".to_vec()).await, 400, "bad_request");
    assert_error(send(Some("application/json"), b"not json".to_vec()).await, 400, "bad_request");
    assert_error(
        send(Some("text/plain"), new_call("twilio").to_string().into_bytes()).await,
        415,
        "unsupported_media_type",
    );
    assert_error(send(None, new_call("twilio").to_string().into_bytes()).await, 415, "unsupported_media_type");
    let huge = with("metadata", json!({"pad": "x".repeat(70 * 1024)}));
    assert_error(send(Some("application/json"), huge.to_string().into_bytes()).await, 413, "payload_too_large");

    assert_eq!(app.db.count_calls("1 = 1").await, 0, "rejected requests store nothing");
    // Every carrier of the SPEC is accepted.
    for provider in ["twilio", "telnyx", "vonage", "plivo", "sip", "websocket"] {
        assert_eq!(app.create(provider).await["provider"], provider);
    }
    assert_eq!(app.db.count_calls("1 = 1").await, 6);
}

async fn get_is_scoped_to_the_tenant(app: TestApp) {
    let call = app.create("sip").await;
    let path = format!("/v1/calls/{}", id(&call));
    assert_eq!(app.get(&path, KEY).await.0, 200);
    let theirs = app.get(&path, ACME_KEY).await;
    let unknown = app.get(&format!("/v1/calls/{}", uuid::Uuid::new_v4()), ACME_KEY).await;
    // Another tenant's call looks exactly like one that does not exist.
    assert_eq!(theirs, unknown);
    assert_error(theirs, 404, "not_found");
    assert_error(app.get("/v1/calls/not-a-uuid", KEY).await, 404, "not_found");
    assert_error(app.get("/v1/nothing-here", KEY).await, 404, "not_found");
}

async fn list_pages_newest_first_with_filters(app: TestApp) {
    let mut created = Vec::new();
    for (provider, direction) in
        [("twilio", "inbound"), ("telnyx", "outbound"), ("sip", "outbound"), ("sip", "inbound"), ("twilio", "inbound")]
    {
        let mut body = new_call(provider);
        body["direction"] = json!(direction);
        let (status, call) = app.post_json("/v1/calls", KEY, &body).await;
        assert_eq!(status, 201);
        created.push(call);
    }
    // Another tenant's calls never show up.
    let (status, _) = app.post_json("/v1/calls", ACME_KEY, &new_call("twilio")).await;
    assert_eq!(status, 201);
    let newest_first: Vec<String> = created.iter().rev().map(id).collect();

    let (status, page) = app.get("/v1/calls", KEY).await;
    assert_eq!(status, 200);
    let ids: Vec<String> = page["calls"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(ids, newest_first);
    assert_eq!(page["next_cursor"], Value::Null);
    assert!(page["calls"][0].get("media_url").is_none());

    // Pages of 2: 2 + 2 + 1, no duplicates, same order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/calls?limit=2".to_string(),
            Some(c) => format!("/v1/calls?limit=2&cursor={c}"),
        };
        let (status, page) = app.get(&path, KEY).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        paged.extend(page["calls"].as_array().unwrap().iter().map(id));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, newest_first);

    let count = |path: String| {
        let app = &app;
        async move {
            let (status, page) = app.get(&path, KEY).await;
            assert_eq!(status, 200, "{path}: {page}");
            page["calls"].as_array().unwrap().iter().map(id).collect::<Vec<_>>()
        }
    };
    assert_eq!(count("/v1/calls?provider=twilio".into()).await.len(), 2);
    assert_eq!(count("/v1/calls?direction=inbound".into()).await.len(), 3);
    assert_eq!(count("/v1/calls?provider=sip&direction=outbound".into()).await, vec![id(&created[2])]);
    assert_eq!(count("/v1/calls?provider=plivo".into()).await.len(), 0);

    assert_eq!(app.end(&id(&created[1]), "completed").await.0, 200);
    assert_eq!(count("/v1/calls?status=ended".into()).await, vec![id(&created[1])]);
    assert_eq!(count("/v1/calls?status=queued".into()).await.len(), 4);
    assert_eq!(count("/v1/calls?status=in_progress".into()).await.len(), 0);

    let enc = |v: &Value| v.as_str().unwrap().replace('+', "%2B");
    let after_second = count(format!("/v1/calls?created_after={}", enc(&created[1]["created_at"]))).await;
    assert_eq!(after_second, newest_first[..3].to_vec());
    let before_fourth = count(format!("/v1/calls?created_before={}", enc(&created[3]["created_at"]))).await;
    assert_eq!(before_fourth, newest_first[2..].to_vec());
    let between = count(format!(
        "/v1/calls?created_after={}&created_before={}",
        enc(&created[0]["created_at"]),
        enc(&created[4]["created_at"])
    ))
    .await;
    assert_eq!(between, newest_first[1..4].to_vec());
    assert_eq!(count("/v1/calls?limit=200".into()).await.len(), 5);

    let (_, acme) = app.get("/v1/calls", ACME_KEY).await;
    assert_eq!(acme["calls"].as_array().unwrap().len(), 1);
    assert!(!acme["calls"].as_array().unwrap().iter().any(|c| newest_first.contains(&id(c))));
}

async fn list_rejects_bad_parameters(app: TestApp) {
    app.create("twilio").await;
    assert_error(app.get("/v1/calls?limit=0", KEY).await, 422, "validation_failed");
    assert_error(app.get("/v1/calls?limit=201", KEY).await, 422, "validation_failed");
    assert_error(app.get("/v1/calls?limit=-1", KEY).await, 400, "bad_request");
    assert_error(app.get("/v1/calls?cursor=garbage", KEY).await, 400, "bad_request");
    assert_error(app.get("/v1/calls?cursor=djE6MTp4", KEY).await, 400, "bad_request");
    assert_error(app.get("/v1/calls?status=lost", KEY).await, 400, "bad_request");
    assert_error(app.get("/v1/calls?provider=skype", KEY).await, 400, "bad_request");
    assert_error(app.get("/v1/calls?created_after=yesterday", KEY).await, 400, "bad_request");
    assert_error(app.get("/v1/calls?colour=blue", KEY).await, 400, "bad_request");
}

async fn end_records_outcome_and_duration_once(app: TestApp) {
    let call = app.create("plivo").await;
    let path = format!("/v1/calls/{}/end", id(&call));

    assert_error(app.post_json(&path, KEY, &json!({"outcome": "hung_up"})).await, 422, "validation_failed");
    assert_error(app.post_json(&path, KEY, &json!({})).await, 422, "validation_failed");
    assert_error(app.post_json(&path, KEY, &json!({"outcome": "completed", "x": 1})).await, 422, "validation_failed");
    let r = app
        .client
        .post(app.url(&path))
        .bearer_auth(KEY)
        .body("{\"outcome\":")
        .header("content-type", "application/json");
    assert_error(common::decode(r.send().await.unwrap()).await, 400, "bad_request");
    let r = app.client.post(app.url(&path)).bearer_auth(KEY).body("outcome=completed");
    assert_error(common::decode(r.send().await.unwrap()).await, 415, "unsupported_media_type");
    // Another tenant cannot end it, and learns nothing.
    assert_error(app.post_json(&path, ACME_KEY, &json!({"outcome": "failed"})).await, 404, "not_found");
    assert_error(app.end(&uuid::Uuid::new_v4().to_string(), "completed").await, 404, "not_found");
    assert_error(app.end("nope", "completed").await, 404, "not_found");
    assert_eq!(app.get(&format!("/v1/calls/{}", id(&call)), KEY).await.1["status"], "queued");

    let (status, ended) = app.end(&id(&call), "callback_requested").await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["outcome"], "callback_requested");
    assert_eq!(ended["started_at"], Value::Null);
    let (created, ended_at) = (time(&ended["created_at"]), time(&ended["ended_at"]));
    assert!(ended_at >= created);
    // No media: the duration runs from creation.
    let expected = (ended_at - created).num_microseconds().unwrap() as f64 / 1e6;
    let duration = ended["duration_seconds"].as_f64().expect("duration");
    assert!((duration - expected).abs() < 1e-6, "{duration} vs {expected}");

    // Ending an ended call is a conflict and changes nothing.
    assert_error(app.end(&id(&call), "completed").await, 409, "conflict");
    let (_, after) = app.get(&format!("/v1/calls/{}", id(&call)), KEY).await;
    assert_eq!(after["outcome"], "callback_requested");
    assert_eq!(after["ended_at"], ended["ended_at"]);

    for outcome in ["completed", "voicemail", "failed"] {
        let c = app.create("plivo").await;
        assert_eq!(app.end(&id(&c), outcome).await.1["outcome"], outcome);
    }
}

async fn media_start_moves_to_in_progress_and_times_the_call_from_it(app: TestApp) {
    let call = app.create("twilio").await;
    let call_id = uuid::Uuid::parse_str(&id(&call)).unwrap();
    let repo = app.repository().await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let started = repo
        .mark_in_progress(call_id, "test-replica#1", chrono::Utc::now() + chrono::Duration::seconds(15))
        .await
        .unwrap()
        .expect("queued call starts");
    assert_eq!(started.status, call_api::model::Status::InProgress);
    assert!(
        repo.mark_in_progress(call_id, "test-replica#1", chrono::Utc::now() + chrono::Duration::seconds(15))
            .await
            .unwrap()
            .is_none(),
        "a call starts once"
    );
    assert!(repo.mark_in_progress(uuid::Uuid::new_v4(), "test-replica#1", chrono::Utc::now()).await.unwrap().is_none());

    let (_, got) = app.get(&format!("/v1/calls/{call_id}"), KEY).await;
    assert_eq!(got["status"], "in_progress");
    let started_at = time(&got["started_at"]);
    assert!(started_at > time(&got["created_at"]));
    let (_, listed) = app.get("/v1/calls?status=in_progress", KEY).await;
    assert_eq!(listed["calls"].as_array().unwrap().len(), 1);

    let (status, ended) = app.end(&call_id.to_string(), "completed").await;
    assert_eq!(status, 200);
    let expected = (time(&ended["ended_at"]) - started_at).num_microseconds().unwrap() as f64 / 1e6;
    let duration = ended["duration_seconds"].as_f64().unwrap();
    assert!((duration - expected).abs() < 1e-6, "from media start: {duration} vs {expected}");
    assert!(
        repo.mark_in_progress(call_id, "test-replica#1", chrono::Utc::now() + chrono::Duration::seconds(15))
            .await
            .unwrap()
            .is_none(),
        "an ended call does not restart"
    );
}

async fn auth_is_required_and_tenants_are_isolated(app: TestApp) {
    let call = app.create("telnyx").await;
    let existing = format!("/v1/calls/{}", id(&call));
    let missing = format!("/v1/calls/{}", uuid::Uuid::new_v4());
    let routes: Vec<(&str, String)> = vec![
        ("POST", "/v1/calls".into()),
        ("GET", "/v1/calls".into()),
        ("GET", existing.clone()),
        ("GET", missing.clone()),
        ("POST", format!("{existing}/end")),
        ("POST", format!("{missing}/end")),
        ("GET", "/v1/providers".into()),
    ];
    let mut bodies = Vec::new();
    for (method, path) in &routes {
        for auth in [None, Some("Bearer wrong-key-1234567890abcdef"), Some("Basic Zm9vOmJhcg=="), Some("Bearer ")] {
            let mut req = app.client.request(method.parse().unwrap(), app.url(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            if *method == "POST" {
                req = req.json(&json!({"outcome": "completed"}));
            }
            let r = common::decode(req.send().await.unwrap()).await;
            bodies.push(r.1.clone());
            assert_error(r, 401, "unauthorized");
        }
    }
    // 401 says nothing about whether a call exists.
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(app.get(&existing, KEY).await.1["status"], "queued", "refused requests changed nothing");

    // Open endpoints.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(app.client.get(app.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    // The right key of another tenant: not found, not in its list, cannot end it.
    assert_error(app.get(&existing, ACME_KEY).await, 404, "not_found");
    assert_eq!(app.get("/v1/calls", ACME_KEY).await.1["calls"], json!([]));
    let (status, acme_call) = app.post_json("/v1/calls", ACME_KEY, &new_call("vonage")).await;
    assert_eq!(status, 201);
    assert_error(app.get(&format!("/v1/calls/{}", id(&acme_call)), KEY).await, 404, "not_found");
    assert_error(app.end(&id(&acme_call), "completed").await, 404, "not_found");
    assert_eq!(app.get(&format!("/v1/calls/{}", id(&acme_call)), ACME_KEY).await.1["status"], "queued");
}

async fn openapi_lists_every_route(app: TestApp) {
    let r = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let doc: Value = r.json().await.expect("JSON");
    // The contract does not move by accident: the served document is the committed one.
    // After a deliberate change: `UPDATE_OPENAPI_SNAPSHOT=1 cargo nextest run -p call-api openapi_lists`.
    let snapshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI_SNAPSHOT").is_some() {
        std::fs::write(&snapshot, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&snapshot).unwrap()).unwrap();
    assert!(doc == committed, "the served OpenAPI document differs from tests/openapi.json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let expected = [
        ("/v1/calls", "post"),
        ("/v1/calls", "get"),
        ("/v1/calls/{id}", "get"),
        ("/v1/calls/{id}/end", "post"),
        ("/v1/calls/{id}/recording", "post"),
        ("/v1/calls/{id}/analysis", "get"),
        ("/v1/calls/{id}/turns", "get"),
        ("/v1/calls/{id}/quality", "get"),
        ("/v1/calls/{id}/events", "get"),
        ("/v1/events", "get"),
        ("/v1/providers", "get"),
        ("/v1/twilio/voice", "post"),
        ("/v1/twilio/status", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    let listed: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(listed, expected.len(), "exactly the served operations: {:?}", paths.keys().collect::<Vec<_>>());
    for (path, method) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
        let secured = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        // Carrier webhooks are signed by the carrier instead (the twilio tests check that scheme).
        let carrier_webhook = path.starts_with("/v1/twilio/");
        assert_eq!(secured, path.starts_with("/v1/") && !carrier_webhook, "{method} {path} security");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for schema in [
        "Call",
        "CreateCall",
        "CreatedCall",
        "EndCall",
        "CallList",
        "ErrorBody",
        "Provider",
        "Outcome",
        "AnalysisDocument",
        "Transcript",
        "AudioAnalysis",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema}");
    }
    assert_eq!(
        doc["paths"]["/v1/calls"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateCall"
    );
    let limit = doc["paths"]["/v1/calls"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit parameter");
    assert_eq!((limit["schema"]["minimum"].as_f64(), limit["schema"]["maximum"].as_f64()), (Some(1.0), Some(200.0)));
    let upload = &doc["paths"]["/v1/calls/{id}/recording"]["post"];
    for content_type in ["audio/wav", "audio/basic"] {
        assert!(upload["requestBody"]["content"][content_type].is_object(), "{content_type} upload documented");
    }
    assert_eq!(
        doc["paths"]["/v1/calls/{id}/analysis"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/AnalysisDocument"
    );
    let error_ref = &doc["paths"]["/v1/calls/{id}/end"]["post"]["responses"]["409"]["content"]["application/json"]["schema"]
        ["$ref"];
    assert_eq!(error_ref, "#/components/schemas/ErrorBody");
    let params: Vec<&str> = doc["paths"]["/v1/calls"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["status", "direction", "provider", "created_after", "created_before", "cursor", "limit"] {
        assert!(params.contains(&p), "list parameter {p}");
    }
}
