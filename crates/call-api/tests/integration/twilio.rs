//! The Twilio carrier integration through the real call-api: signed webhooks (inbound voice and
//! status callbacks) on SQLite and PostgreSQL, and outbound dialling against a fake Twilio REST
//! API. Signatures are computed here independently of the service's verifier.

use crate::common;
use std::sync::{Arc, Mutex};

use crate::common::{ACME_KEY, Backend, KEY, TestApp, TestDb, assert_error, spawn_app_with};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::{Value, json};
use telemetry::testing::{FakeHttp, FakeReply};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// `PUBLIC_BASE_URL` of the test apps.
const PUBLIC: &str = "https://calls.example.test";

// ---- helpers -----------------------------------------------------------------------------

/// Twilio's algorithm, written out here: HMAC-SHA1(token, url + sorted name/value pairs), base64.
fn sign_with(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = <Hmac<sha1::Sha1>>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

fn sign(path: &str, params: &[(&str, &str)]) -> String {
    sign_with(TOKEN, &format!("{PUBLIC}{path}"), params)
}

fn encode(params: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.finish()
}

fn call_sid(n: u32) -> String {
    format!("CA{n:032x}")
}

fn voice_params(sid: &str) -> Vec<(&str, &str)> {
    vec![
        ("AccountSid", SID),
        ("CallSid", sid),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("To", "+420123456789"),
        ("Caller", "+14155550100"),
        ("CallerName", "Ann & <Bob>"),
    ]
}

/// A call-api with Twilio configured (REST API at `api_base`, or an unused address).
async fn spawn_twilio(backend: Backend, api_base: Option<&str>, extra: &[(&str, &str)]) -> Option<TestApp> {
    let db = TestDb::new(backend).await?;
    let url = db.url().to_string();
    let mut env = vec![("TWILIO_ACCOUNT_SID", SID), ("TWILIO_AUTH_TOKEN", TOKEN)];
    if let Some(base) = api_base {
        env.push(("TWILIO_API_BASE_URL", base));
    }
    env.extend_from_slice(extra);
    Some(spawn_app_with(db, &url, &env).await)
}

struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> (u16, Value) {
        (self.status, serde_json::from_str(&self.text).unwrap_or(Value::String(self.text.clone())))
    }
}

/// POSTs a form to `path` with `signature` (none when `None`).
async fn post_form(app: &TestApp, path: &str, params: &[(&str, &str)], signature: Option<&str>) -> Answer {
    let mut req =
        app.client.post(app.url(path)).header("content-type", "application/x-www-form-urlencoded").body(encode(params));
    if let Some(s) = signature {
        req = req.header("x-twilio-signature", s);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    Answer { status, content_type, text: r.text().await.expect("body") }
}

/// POSTs a correctly signed form.
async fn post_signed(app: &TestApp, path: &str, params: &[(&str, &str)]) -> Answer {
    post_form(app, path, params, Some(&sign(path, params))).await
}

/// The stream URL and custom parameters of `<Response><Connect><Stream>` TwiML, checking that
/// the document is exactly that shape.
fn parse_connect_stream(xml: &str) -> (String, Vec<(String, String)>) {
    let head = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url=""#;
    let rest = xml.strip_prefix(head).unwrap_or_else(|| panic!("not Connect/Stream TwiML: {xml}"));
    let (url, mut rest) = rest.split_once("\">").expect("Stream url attribute");
    let mut params = Vec::new();
    while let Some(p) = rest.strip_prefix("<Parameter name=\"") {
        let (name, r) = p.split_once("\" value=\"").expect("Parameter value");
        let (value, r) = r.split_once("\"/>").expect("Parameter end");
        params.push((unescape(name), unescape(value)));
        rest = r;
    }
    assert_eq!(rest, "</Stream></Connect></Response>", "{xml}");
    (unescape(url), params)
}

fn unescape(s: &str) -> String {
    assert!(!s.contains(['<', '>', '"']), "unescaped markup in {s:?}");
    s.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The call id and media token a Connect/Stream answer points at.
fn stream_target(answer: &Answer) -> (String, String) {
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.content_type, "text/xml");
    let (url, params) = parse_connect_stream(&answer.text);
    let id = url
        .strip_prefix("wss://calls.example.test/v1/calls/")
        .and_then(|r| r.strip_suffix("/media"))
        .unwrap_or_else(|| panic!("stream URL {url}"));
    uuid::Uuid::parse_str(id).expect("call id in the stream URL");
    assert_eq!(params.len(), 1, "{params:?}");
    assert_eq!(params[0].0, "token");
    assert_eq!(params[0].1.len(), 43, "a fresh media token");
    (id.to_string(), params[0].1.clone())
}

async fn media_token_works(app: &TestApp, id: &str, token: &str) -> bool {
    let repo = app.repository().await;
    repo.call_for_media_token(uuid::Uuid::parse_str(id).unwrap(), token).await.expect("lookup").is_some()
}

fn calls_total(m: &common::Metrics, outcome: &str) -> f64 {
    m.value("voice_calls_total", &[("provider", "twilio"), ("status", outcome)])
}

/// A fake Twilio REST API whose answer the test can change.
struct FakeTwilio {
    http: FakeHttp,
    reply: Arc<Mutex<FakeReply>>,
}

impl FakeTwilio {
    async fn start() -> Self {
        let reply = Arc::new(Mutex::new(created_reply("CA00000000000000000000000000000001")));
        let r = reply.clone();
        let http = FakeHttp::start(move |_| r.lock().unwrap().clone()).await;
        Self { http, reply }
    }

    fn base(&self) -> String {
        format!("http://{}", self.http.addr)
    }

    fn answer(&self, reply: FakeReply) {
        *self.reply.lock().unwrap() = reply;
    }
}

fn created_reply(sid: &str) -> FakeReply {
    FakeReply::json(
        201,
        json!({"sid": sid, "account_sid": SID, "status": "queued", "to": "+420123456789", "from": "+14155550100"}),
    )
}

// ---- the signature ------------------------------------------------------------------------

#[test]
fn signature_matches_twilios_documented_example() {
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ];
    // Twilio's published signature of this request (its example URL is on mycompany.com).
    let expected = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
    // This file's signer and the service's verifier both agree with Twilio's published vector.
    assert_eq!(sign_with("12345", url, &params), expected);
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(call_api::twilio::signature("12345", url, &owned), expected);
    assert!(call_api::twilio::verify_signature("12345", url, &owned, expected));
    assert!(!call_api::twilio::verify_signature("54321", url, &owned, expected));
    assert!(!call_api::twilio::verify_signature("12345", "https://mycompany.com/myapp.php?foo=1", &owned, expected));
}

// ---- webhooks on both databases ---------------------------------------------------------

macro_rules! on_both_databases_with_twilio {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(app) = super::spawn_twilio(super::Backend::Sqlite, None, &[]).await {
                    super::$name(app).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = super::spawn_twilio(super::Backend::Postgres, None, &[]).await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

on_both_databases_with_twilio!(
    inbound_call_is_answered_with_twiml_connecting_its_media_stream,
    retried_voice_webhook_answers_for_the_same_call,
    unsigned_forged_and_malformed_webhooks_change_nothing,
    status_callbacks_end_calls_once_with_the_right_outcome,
);

async fn inbound_call_is_answered_with_twiml_connecting_its_media_stream(app: TestApp) {
    let sid = call_sid(1);
    let answer = post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await;
    let (id, token) = stream_target(&answer);
    assert!(media_token_works(&app, &id, &token).await, "the token in the TwiML opens this call's media");

    // The call belongs to the webhook tenant (`default`) and looks like any other call.
    let (status, call) = app.get(&format!("/v1/calls/{id}"), KEY).await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["provider"], "twilio");
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["status"], "queued");
    assert_eq!(call["from"], "+14155550100");
    assert_eq!(call["to"], "+420123456789");
    assert_eq!(call["metadata"], json!({"twilio": {"call_sid": sid}}));
    assert_eq!(app.get(&format!("/v1/calls/{id}"), ACME_KEY).await.0, 404);
    assert_eq!(app.db.count_calls(&format!("carrier_call_id = '{sid}'")).await, 1);

    // Numbers that are not E.164 are not stored; the query string is part of what is signed.
    let sid2 = call_sid(2);
    let path = "/v1/twilio/voice?campaign=spring&x=%2B1";
    let params = [("CallSid", sid2.as_str()), ("From", "anonymous"), ("To", "sip:agent@example.com")];
    let answer = post_signed(&app, path, &params).await;
    let (id2, _) = stream_target(&answer);
    assert_ne!(id2, id);
    let (_, call) = app.get(&format!("/v1/calls/{id2}"), KEY).await;
    assert_eq!((call["from"].as_str(), call["to"].as_str()), (Some(""), Some("")), "{call}");
    // The same signature presented for the URL without its query is refused.
    let sig = sign(path, &params);
    assert_error(post_form(&app, "/v1/twilio/voice", &params, Some(&sig)).await.json(), 403, "forbidden");
}

async fn retried_voice_webhook_answers_for_the_same_call(app: TestApp) {
    let sid = call_sid(7);
    let (first_id, first_token) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await);
    let (again_id, again_token) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await);
    assert_eq!(again_id, first_id, "a retry answers for the call already created");
    assert_ne!(again_token, first_token, "with a fresh media token");
    assert!(media_token_works(&app, &again_id, &again_token).await);
    assert!(!media_token_works(&app, &first_id, &first_token).await, "the earlier token is replaced");
    assert_eq!(app.db.count_calls("1 = 1").await, 1);

    // Retries racing each other still make one call.
    let other = call_sid(8);
    let params = voice_params(&other);
    let answers = futures_util::future::join_all((0..6).map(|_| post_signed(&app, "/v1/twilio/voice", &params))).await;
    let ids: std::collections::BTreeSet<String> = answers.iter().map(|a| stream_target(a).0).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.db.count_calls("1 = 1").await, 2);

    // A retry for a call that has ended hangs up instead of reconnecting.
    assert_eq!(app.end(&first_id, "completed").await.0, 200);
    let answer = post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text, r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"#);
    assert_eq!(app.db.count_calls("1 = 1").await, 2);
}

async fn unsigned_forged_and_malformed_webhooks_change_nothing(app: TestApp) {
    let sid = call_sid(3);
    let params = voice_params(&sid);
    let voice = "/v1/twilio/voice";
    // No signature; a signature with another token; for another URL; over other parameters;
    // not base64 at all.
    assert_error(post_form(&app, voice, &params, None).await.json(), 403, "forbidden");
    let forged = [
        sign_with("another-token", &format!("{PUBLIC}{voice}"), &params),
        sign_with(TOKEN, &format!("https://attacker.example{voice}"), &params),
        sign("/v1/twilio/status", &params),
        sign(voice, &params[..3]),
        "!!not base64!!".to_string(),
        String::new(),
    ];
    for signature in &forged {
        let answer = post_form(&app, voice, &params, Some(signature)).await;
        assert_error(answer.json(), 403, "forbidden");
    }
    // A parameter changed after signing.
    let signature = sign(voice, &params);
    let mut tampered = params.clone();
    tampered[4] = ("From", "+19995550100");
    assert_error(post_form(&app, voice, &tampered, Some(&signature)).await.json(), 403, "forbidden");
    assert_eq!(app.db.count_calls("1 = 1").await, 0, "nothing was created");

    // Not a form: 415; too large: 413; signed but without a CallSid: 400.
    let r = app
        .client
        .post(app.url(voice))
        .header("x-twilio-signature", &signature)
        .json(&json!({"CallSid": sid}))
        .send()
        .await
        .unwrap();
    assert_error(common::decode(r).await, 415, "unsupported_media_type");
    let pad = "x".repeat(70 * 1024);
    let big = [("CallSid", sid.as_str()), ("Pad", pad.as_str())];
    assert_error(post_signed(&app, voice, &big).await.json(), 413, "payload_too_large");
    assert_error(post_signed(&app, voice, &[("From", "+14155550100")]).await.json(), 400, "bad_request");
    assert_error(
        post_signed(&app, voice, &[("CallSid", "CA'; DROP TABLE calls; --")]).await.json(),
        400,
        "bad_request",
    );
    assert_eq!(app.db.count_calls("1 = 1").await, 0, "nothing was created");

    // A forged status callback does not end a real call.
    let (id, _) = stream_target(&post_signed(&app, voice, &params).await);
    let status = [("CallSid", sid.as_str()), ("CallStatus", "completed")];
    let forged = sign_with("another-token", &format!("{PUBLIC}/v1/twilio/status"), &status);
    assert_error(post_form(&app, "/v1/twilio/status", &status, Some(&forged)).await.json(), 403, "forbidden");
    assert_error(post_form(&app, "/v1/twilio/status", &status, None).await.json(), 403, "forbidden");
    assert_eq!(app.get(&format!("/v1/calls/{id}"), KEY).await.1["status"], "queued");
}

async fn status_callbacks_end_calls_once_with_the_right_outcome(app: TestApp) {
    let before = app.metrics().await;
    let status_of = |id: String| {
        let app = &app;
        async move { app.get(&format!("/v1/calls/{id}"), KEY).await.1 }
    };
    let callback = |sid: String, call_status: &'static str| {
        let app = &app;
        async move {
            let params = [("AccountSid", SID), ("CallSid", sid.as_str()), ("CallStatus", call_status)];
            post_signed(app, "/v1/twilio/status", &params).await
        }
    };

    // In-flight statuses change nothing; `completed` ends the call, once.
    let sid = call_sid(10);
    let (id, _) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await);
    for s in ["queued", "initiated", "ringing", "in-progress"] {
        let answer = callback(sid.clone(), s).await;
        assert_eq!(answer.status, 204, "{s}: {}", answer.text);
        assert_eq!(status_of(id.clone()).await["status"], "queued", "{s}");
    }
    for _ in 0..3 {
        assert_eq!(callback(sid.clone(), "completed").await.status, 204);
    }
    let call = status_of(id.clone()).await;
    assert_eq!(call["status"], "ended");
    assert_eq!(call["outcome"], "completed");
    assert!(call["duration_seconds"].as_f64().is_some_and(|d| d >= 0.0), "{call}");
    // A late failure report does not overwrite the outcome.
    assert_eq!(callback(sid.clone(), "failed").await.status, 204);
    assert_eq!(status_of(id).await["outcome"], "completed");

    // Every unsuccessful end is `failed`.
    let mut failed = Vec::new();
    for (n, s) in [(11, "busy"), (12, "no-answer"), (13, "canceled"), (14, "failed")] {
        let sid = call_sid(n);
        let (id, _) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await);
        assert_eq!(callback(sid.clone(), s).await.status, 204);
        assert_eq!(callback(sid, s).await.status, 204, "repeated");
        failed.push(id);
    }
    for id in failed {
        let call = status_of(id).await;
        assert_eq!((call["status"].as_str(), call["outcome"].as_str()), (Some("ended"), Some("failed")), "{call}");
    }

    // Counted exactly once per call.
    let after = app.metrics().await;
    assert_eq!(calls_total(&after, "completed") - calls_total(&before, "completed"), 1.0);
    assert_eq!(calls_total(&after, "failed") - calls_total(&before, "failed"), 4.0);

    // An unknown call is 404; a status Twilio does not have, or none, is 400.
    assert_error(callback(call_sid(99), "completed").await.json(), 404, "not_found");
    assert_error(callback(call_sid(10), "exploded").await.json(), 400, "bad_request");
    let params = [("CallSid", sid.as_str())];
    assert_error(post_signed(&app, "/v1/twilio/status", &params).await.json(), 400, "bad_request");
}

// ---- configuration ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_webhooks_are_503_and_outbound_twilio_calls_are_refused() {
    let Some(app) = common::spawn_app(Backend::Sqlite).await else { return };
    let sid = call_sid(1);
    let params = voice_params(&sid);
    for path in ["/v1/twilio/voice", "/v1/twilio/status"] {
        let answer = post_signed(&app, path, &params).await;
        let (status, body) = answer.json();
        assert_error((status, body.clone()), 503, "unavailable");
        assert!(body["error"]["message"].as_str().unwrap().contains("TWILIO_AUTH_TOKEN"), "{body}");
    }
    let outbound =
        json!({"provider": "twilio", "from": "+14155550100", "to": "+420123456789", "direction": "outbound"});
    let (status, body) = app.post_json("/v1/calls", KEY, &outbound).await;
    assert_error((status, body.clone()), 422, "validation_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains("not configured"), "{body}");
    assert_eq!(app.db.count_calls("1 = 1").await, 0, "nothing stored");
    // Inbound Twilio calls and other carriers are created as before.
    let mut inbound = outbound.clone();
    inbound["direction"] = json!("inbound");
    assert_eq!(app.post_json("/v1/calls", KEY, &inbound).await.0, 201);
    let mut telnyx = outbound;
    telnyx["provider"] = json!("telnyx");
    assert_eq!(app.post_json("/v1/calls", KEY, &telnyx).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_calls_belong_to_the_configured_tenant() {
    let Some(app) = spawn_twilio(Backend::Sqlite, None, &[("TWILIO_TENANT", "acme")]).await else { return };
    let (id, _) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&call_sid(5))).await);
    assert_eq!(app.get(&format!("/v1/calls/{id}"), ACME_KEY).await.0, 200);
    assert_eq!(app.get(&format!("/v1/calls/{id}"), KEY).await.0, 404);
}

#[test]
fn openapi_documents_the_webhooks_as_signed_not_bearer() {
    let doc = serde_json::to_value(call_api::routes::openapi()).unwrap();
    for path in ["/v1/twilio/voice", "/v1/twilio/status"] {
        let op = &doc["paths"][path]["post"];
        assert_eq!(op["security"], json!([{"twilio_signature": []}]), "{path}");
        assert!(op["requestBody"]["content"]["application/x-www-form-urlencoded"].is_object(), "{path}");
        assert!(op["responses"]["403"].is_object(), "{path}");
    }
    assert!(doc["paths"]["/v1/twilio/voice"]["post"]["responses"]["200"]["content"]["text/xml"].is_object());
    assert_eq!(doc["components"]["securitySchemes"]["twilio_signature"]["name"], "X-Twilio-Signature");
}

// ---- outbound dialling ----------------------------------------------------------------------

fn outbound_body() -> Value {
    json!({"provider": "twilio", "from": "+14155550100", "to": "+420123456789", "direction": "outbound",
           "metadata": {"lead": 7}})
}

/// The fields of a form body, in order.
fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

async fn outbound_call_is_dialled_through_the_rest_api(backend: Backend) {
    let fake = FakeTwilio::start().await;
    let Some(app) = spawn_twilio(backend, Some(&fake.base()), &[]).await else { return };
    let sid = "CA00000000000000000000000000000001";
    let (status, call) = app.post_json("/v1/calls", KEY, &outbound_body()).await;
    assert_eq!(status, 201, "{call}");
    assert_eq!(call["status"], "queued");
    assert_eq!(call["metadata"], json!({"lead": 7}), "the client's metadata is kept as sent");
    let id = call["id"].as_str().unwrap().to_string();
    let media_url = call["media_url"].as_str().unwrap();
    let (stream_url, token) = media_url.split_once("?token=").expect("token in media_url");

    let requests = fake.http.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/2010-04-01/Accounts/{SID}/Calls.json"));
    let basic = format!("Basic {}", STANDARD.encode(format!("{SID}:{TOKEN}")));
    assert_eq!(r.header("authorization"), Some(basic.as_str()));
    assert_eq!(r.header("content-type"), Some("application/x-www-form-urlencoded"));
    let fields = form_fields(&r.body);
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "To",
            "From",
            "Twiml",
            "StatusCallback",
            "StatusCallbackMethod",
            "StatusCallbackEvent",
            "StatusCallbackEvent",
            "StatusCallbackEvent",
            "StatusCallbackEvent"
        ]
    );
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap();
    assert_eq!(field("To"), "+420123456789");
    assert_eq!(field("From"), "+14155550100");
    assert_eq!(field("StatusCallback"), "https://calls.example.test/v1/twilio/status");
    assert_eq!(field("StatusCallbackMethod"), "POST");
    let events: Vec<&str> =
        fields.iter().filter(|(k, _)| k == "StatusCallbackEvent").map(|(_, v)| v.as_str()).collect();
    assert_eq!(events, ["initiated", "ringing", "answered", "completed"]);
    // The TwiML streams to this call's media URL, with the same token as `media_url`.
    let (url, params) = parse_connect_stream(field("Twiml"));
    assert_eq!(url, stream_url);
    assert_eq!(url, format!("wss://calls.example.test/v1/calls/{id}/media"));
    assert_eq!(params, [("token".to_string(), token.to_string())]);
    assert!(media_token_works(&app, &id, token).await);

    // Twilio's sid is the call's carrier id: its status callbacks find the call.
    assert_eq!(app.db.count_calls(&format!("carrier_call_id = '{sid}'")).await, 1);
    let before = app.metrics().await;
    let params = [("CallSid", sid), ("CallStatus", "ringing")];
    assert_eq!(post_signed(&app, "/v1/twilio/status", &params).await.status, 204);
    let params = [("CallSid", sid), ("CallStatus", "completed")];
    assert_eq!(post_signed(&app, "/v1/twilio/status", &params).await.status, 204);
    let ended = app.get(&format!("/v1/calls/{id}"), KEY).await.1;
    assert_eq!((ended["status"].as_str(), ended["outcome"].as_str()), (Some("ended"), Some("completed")));
    let after = app.metrics().await;
    assert_eq!(calls_total(&after, "completed") - calls_total(&before, "completed"), 1.0);

    // Inbound Twilio calls and other carriers' calls are not dialled.
    let mut inbound = outbound_body();
    inbound["direction"] = json!("inbound");
    assert_eq!(app.post_json("/v1/calls", KEY, &inbound).await.0, 201);
    let mut sip = outbound_body();
    sip["provider"] = json!("sip");
    assert_eq!(app.post_json("/v1/calls", KEY, &sip).await.0, 201);
    assert_eq!(fake.http.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_is_dialled_through_the_rest_api_sqlite() {
    outbound_call_is_dialled_through_the_rest_api(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_is_dialled_through_the_rest_api_postgres() {
    outbound_call_is_dialled_through_the_rest_api(Backend::Postgres).await;
}

async fn twilio_failures_end_the_call_as_failed_with_a_clear_error(backend: Backend) {
    let fake = FakeTwilio::start().await;
    let Some(app) = spawn_twilio(backend, Some(&fake.base()), &[]).await else { return };
    let before = app.metrics().await;
    let twilio_text = "The 'To' number +420123456789 is not a valid phone number.";
    let cases = [
        (FakeReply::json(400, json!({"code": 21211, "message": twilio_text, "status": 400})), 422, "validation_failed"),
        (FakeReply::json(401, json!({"code": 20003, "message": "Authenticate", "status": 401})), 503, "unavailable"),
        (FakeReply::json(429, json!({"code": 20429, "message": "Too Many Requests"})), 503, "unavailable"),
        (FakeReply::json(500, json!({"message": "internal stack trace here"})), 503, "unavailable"),
        (FakeReply::json(201, json!({"unexpected": true})), 503, "unavailable"),
    ];
    let mut ids = Vec::new();
    for (reply, status, code) in cases {
        fake.answer(reply);
        let (s, body) = app.post_json("/v1/calls", KEY, &outbound_body()).await;
        assert_error((s, body.clone()), status, code);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("+420") && !message.contains("stack") && !message.contains("Authenticate"),
            "{message}"
        );
        assert!(message.contains("ended with outcome failed"), "{message}");
        if status == 422 {
            assert!(message.contains("21211"), "Twilio's error code is kept: {message}");
        }
        // The message names the call, which is there, ended as failed.
        let id = message.rsplit_once("call ").and_then(|(_, r)| r.split(' ').next()).expect("call id in message");
        let (_, call) = app.get(&format!("/v1/calls/{id}"), KEY).await;
        assert_eq!((call["status"].as_str(), call["outcome"].as_str()), (Some("ended"), Some("failed")), "{call}");
        ids.push(id.to_string());
    }
    assert_eq!(fake.http.requests().len(), 5);
    assert_eq!(app.db.count_calls("status <> 'ended'").await, 0, "nothing is left dangling");
    assert_eq!(app.db.count_calls("carrier_call_id IS NOT NULL").await, 0);
    let after = app.metrics().await;
    assert_eq!(calls_total(&after, "failed") - calls_total(&before, "failed"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_failures_end_the_call_as_failed_sqlite() {
    twilio_failures_end_the_call_as_failed_with_a_clear_error(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_failures_end_the_call_as_failed_postgres() {
    twilio_failures_end_the_call_as_failed_with_a_clear_error(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_twilio_is_503_and_the_call_ends_as_failed() {
    // An address nothing listens on: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let Some(app) = spawn_twilio(Backend::Sqlite, Some(&base), &[]).await else { return };
    let (status, body) = app.post_json("/v1/calls", KEY, &outbound_body()).await;
    assert_error((status, body.clone()), 503, "unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("could not be reached"), "{body}");
    assert_eq!(app.db.count_calls("status = 'ended' AND outcome = 'failed'").await, 1);
    assert_eq!(app.db.count_calls("1 = 1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_live_max_calls_an_inbound_call_gets_a_busy_signal_and_nothing_is_stored() {
    let Some(app) = spawn_twilio(Backend::Sqlite, None, &[("LIVE_MAX_CALLS", "1")]).await else { return };
    // One live call holds the only slot.
    let (id, token) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&call_sid(7))).await);
    let url = format!("ws://{}/v1/calls/{id}/media?token={token}", app.addr);
    let (_held, _) = tokio_tungstenite::connect_async(url).await.expect("first call admitted");
    let sid = call_sid(8);
    let answer = post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "text/xml");
    assert_eq!(answer.text, r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>"#);
    assert_eq!(app.db.count_calls(&format!("carrier_call_id = '{sid}'")).await, 0);
    assert_eq!(app.metrics().await.value("api_requests_limited_total", &[("limit", "live_calls")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ended_through_the_api_is_hung_up_through_twilio() {
    let fake = FakeTwilio::start().await;
    let Some(app) = spawn_twilio(Backend::Sqlite, Some(&fake.base()), &[]).await else { return };
    let basic = format!("Basic {}", STANDARD.encode(format!("{SID}:{TOKEN}")));
    // Outbound: dialled through Twilio, which answered with its call sid.
    let (status, call) = app.post_json("/v1/calls", KEY, &outbound_body()).await;
    assert_eq!(status, 201, "{call}");
    let id = call["id"].as_str().unwrap();
    assert_eq!(app.end(id, "completed").await.0, 200);
    let requests = fake.http.requests();
    assert_eq!(requests.len(), 2, "dial, then hang up: {requests:?}");
    let hang_up = &requests[1];
    assert_eq!(hang_up.method, "POST");
    assert_eq!(hang_up.path, format!("/2010-04-01/Accounts/{SID}/Calls/CA00000000000000000000000000000001.json"));
    assert_eq!(hang_up.header("authorization"), Some(basic.as_str()));
    assert_eq!(hang_up.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(form_fields(&hang_up.body), [("Status".to_string(), "completed".to_string())]);

    // Inbound: the call Twilio reported with its CallSid.
    let sid = call_sid(21);
    let (inbound, _) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await);
    // Twilio says the call already ended (error 21220): not an error for us.
    fake.answer(FakeReply::json(400, json!({"code": 21220, "message": "Call is not in-progress", "status": 400})));
    let (status, ended) =
        app.post_json(&format!("/v1/calls/{inbound}/end"), KEY, &json!({"outcome": "completed"})).await;
    assert_eq!(status, 200, "{ended}");
    let requests = fake.http.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].path, format!("/2010-04-01/Accounts/{SID}/Calls/{sid}.json"));

    // A call Twilio itself reported over is not hung up again, nor is another carrier's call.
    let sid = call_sid(22);
    let (_, _) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await);
    let params = [("CallSid", sid.as_str()), ("CallStatus", "completed")];
    assert_eq!(post_signed(&app, "/v1/twilio/status", &params).await.status, 204);
    let mut sip = outbound_body();
    sip["provider"] = json!("sip");
    let (_, sip) = app.post_json("/v1/calls", KEY, &sip).await;
    assert_eq!(app.end(sip["id"].as_str().unwrap(), "completed").await.0, 200);
    assert_eq!(fake.http.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shutting_down_answers_inbound_calls_busy() {
    let Some(app) = spawn_twilio(Backend::Sqlite, None, &[("SHUTDOWN_DELAY_SECONDS", "5")]).await else { return };
    app.trigger_shutdown();
    let sid = call_sid(31);
    let answer = post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text, r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>"#);
    assert_eq!(app.db.count_calls("1 = 1").await, 0, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_status_callback_stops_the_live_media_session() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let audio = common::stack::start_audio(None).await;
    let audio_url = audio.url();
    let Some(app) = spawn_twilio(Backend::Sqlite, None, &[("AUDIO_PROCESSOR_URL", &audio_url)]).await else { return };
    let sid = call_sid(41);
    let (id, token) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await);
    let url = format!("ws://{}/v1/calls/{id}/media", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("media stream");
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {"streamSid": "MZ1",
        "callSid": sid, "tracks": ["inbound"], "customParameters": {"token": token},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}});
    ws.send(Message::text(start.to_string())).await.unwrap();
    for _ in 0..100 {
        if app.get(&format!("/v1/calls/{id}"), KEY).await.1["status"] == "in_progress" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let params = [("CallSid", sid.as_str()), ("CallStatus", "completed")];
    assert_eq!(post_signed(&app, "/v1/twilio/status", &params).await.status, 204);
    let close = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(frame)) = m {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the session stops when Twilio says the call is over");
    assert_eq!(close, Some(1000));
    let call = app.get(&format!("/v1/calls/{id}"), KEY).await.1;
    assert_eq!((call["status"].as_str(), call["outcome"].as_str()), (Some("ended"), Some("completed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_webhook_replayed_after_media_connected_mints_no_token() {
    let audio = common::stack::start_audio(None).await;
    let audio_url = audio.url();
    let Some(app) = spawn_twilio(Backend::Sqlite, None, &[("AUDIO_PROCESSOR_URL", &audio_url)]).await else { return };
    let sid = call_sid(51);
    let (id, token) = stream_target(&post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await);
    let url = format!("ws://{}/v1/calls/{id}/media?token={token}", app.addr);
    let (mut live, _) = tokio_tungstenite::connect_async(url).await.expect("media stream");
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {"streamSid": "MZ1",
        "callSid": sid, "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}});
    futures_util::SinkExt::send(&mut live, tokio_tungstenite::tungstenite::Message::text(start.to_string()))
        .await
        .unwrap();
    let mut started = false;
    for _ in 0..250 {
        if app.get(&format!("/v1/calls/{id}"), KEY).await.1["status"] == "in_progress" {
            started = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(started, "media connected");
    let replay = post_signed(&app, "/v1/twilio/voice", &voice_params(&sid)).await;
    assert_eq!(replay.status, 200);
    assert!(replay.text.contains(&format!("/v1/calls/{id}/media")), "the same call: {}", replay.text);
    assert!(!replay.text.contains("Parameter"), "no token handed out: {}", replay.text);
    // The token the carrier holds was not replaced.
    assert_eq!(
        app.db.count_calls(&format!("media_token_hash = '{}'", call_api::db::calls::media_token_hash(&token))).await,
        1
    );
    assert_eq!(app.db.count_calls("1 = 1").await, 1);
}
