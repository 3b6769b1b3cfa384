//! `voice-kraliki sentry-alerts apply` against a fake Sentry API: a stateful server keeping
//! metric and issue alert rules (ids on create, replaced on update, listed in pages of two with
//! Sentry's `Link` cursor, thresholds answered as strings the way Sentry may normalise them) and
//! checking the bearer token. The first apply creates every rule of the shipped file, a second
//! changes nothing, an edited threshold updates that one rule, `--dry-run` only reads, and a
//! wrong token is a clear error and exit 1.

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use telemetry::testing::{FakeHttp, FakeReply, FakeRequest};

const TOKEN: &str = "sntrys-test-token-0123456789";
const ORG: &str = "acme";
const PROJECT: &str = "call-api";
const METRIC_PATH: &str = "/api/0/organizations/acme/alert-rules/";
const ISSUE_PATH: &str = "/api/0/projects/acme/call-api/rules/";
const PAGE: usize = 2;

fn shipped_file() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../monitoring/sentry/alerts.json").to_string()
}

#[derive(Default)]
struct Rules {
    metric: Vec<Value>,
    issue: Vec<Value>,
    next_id: u64,
}

/// What Sentry answers for a stored rule: the body plus fields of its own, thresholds as strings.
fn stored(mut body: Value, id: &str) -> Value {
    body["id"] = json!(id);
    body["dateCreated"] = json!("2026-12-04T12:00:00Z");
    if let Some(triggers) = body.get_mut("triggers").and_then(Value::as_array_mut) {
        for (i, t) in triggers.iter_mut().enumerate() {
            t["id"] = json!(format!("{id}{i}"));
            if let Some(n) = t.get("alertThreshold").and_then(Value::as_f64) {
                t["alertThreshold"] = json!(n.to_string());
            }
        }
    }
    body
}

fn fake_sentry(rules: Arc<Mutex<Rules>>, base: Arc<Mutex<String>>) -> impl Fn(&FakeRequest) -> FakeReply {
    move |req: &FakeRequest| {
        if req.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return FakeReply::json(401, json!({"detail": "Invalid token"}));
        }
        let mut rules = rules.lock().unwrap();
        let (collection, list): (&str, fn(&mut Rules) -> &mut Vec<Value>) = if req.path.starts_with(METRIC_PATH) {
            (METRIC_PATH, |r| &mut r.metric)
        } else if req.path.starts_with(ISSUE_PATH) {
            (ISSUE_PATH, |r| &mut r.issue)
        } else {
            return FakeReply::json(404, json!({"detail": "The requested resource does not exist"}));
        };
        match (req.method.as_str(), req.path == collection) {
            ("GET", true) => {
                let offset: usize =
                    req.query.get("cursor").and_then(|c| c.split(':').nth(1)?.parse().ok()).unwrap_or(0);
                let all = list(&mut rules);
                let page: Vec<Value> = all.iter().skip(offset).take(PAGE).cloned().collect();
                let more = offset + PAGE < all.len();
                let url = format!("{}{collection}", base.lock().unwrap());
                let link = format!(
                    "<{url}?&cursor=0:0:1>; rel=\"previous\"; results=\"false\"; cursor=\"0:0:1\", \
                     <{url}?&cursor=0:{next}:0>; rel=\"next\"; results=\"{more}\"; cursor=\"0:{next}:0\"",
                    next = offset + PAGE
                );
                FakeReply::json(200, Value::Array(page)).with_header("link", &link)
            }
            ("POST", true) => {
                rules.next_id += 1;
                let id = rules.next_id.to_string();
                let rule = stored(req.json(), &id);
                list(&mut rules).push(rule.clone());
                FakeReply::json(201, rule)
            }
            ("PUT", false) => {
                let id = req.path[collection.len()..].trim_end_matches('/').to_string();
                let all = list(&mut rules);
                match all.iter().position(|r| r["id"] == id.as_str()) {
                    Some(i) => {
                        all[i] = stored(req.json(), &id);
                        FakeReply::json(200, all[i].clone())
                    }
                    None => FakeReply::json(404, json!({"detail": "not found"})),
                }
            }
            _ => FakeReply::json(405, json!({"detail": "Method not allowed"})),
        }
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn apply(sentry: &FakeHttp, token: &str, file: &str, extra: &[&str]) -> Outcome {
    let mut args = vec!["sentry-alerts", "apply", "--org", ORG, "--project", PROJECT, "--file", file];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let (url, token) = (sentry.url(""), token.to_string());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_voice-kraliki"))
            .args(&args)
            .env("SENTRY_URL", url)
            .env("SENTRY_AUTH_TOKEN", token)
            .env_remove("SENTRY_DSN")
            .stdin(Stdio::null())
            .output()
            .expect("run voice-kraliki")
    })
    .await
    .expect("join");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn writes(sentry: &FakeHttp) -> Vec<(String, String)> {
    sentry.requests().into_iter().filter(|r| r.method != "GET").map(|r| (r.method, r.path)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sentry_alerts_apply_creates_then_is_idempotent_then_updates_one_rule() {
    let rules = Arc::new(Mutex::new(Rules::default()));
    let base = Arc::new(Mutex::new(String::new()));
    let sentry = FakeHttp::start(fake_sentry(rules.clone(), base.clone())).await;
    *base.lock().unwrap() = sentry.url("");
    let file = shipped_file();
    let shipped: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let (n_metric, n_issue) =
        (shipped["metric_alerts"].as_array().unwrap().len(), shipped["issue_alerts"].as_array().unwrap().len());
    let total = n_metric + n_issue;

    // 1. The first apply creates every rule.
    let first = apply(&sentry, TOKEN, &file, &[]).await;
    assert_eq!(first.code, Some(0), "{}\n{}", first.stdout, first.stderr);
    let posts = writes(&sentry);
    assert_eq!(posts.len(), total, "{posts:?}");
    assert!(posts.iter().all(|(m, _)| m == "POST"), "{posts:?}");
    assert_eq!(posts.iter().filter(|(_, p)| p == METRIC_PATH).count(), n_metric);
    assert_eq!(posts.iter().filter(|(_, p)| p == ISSUE_PATH).count(), n_issue);
    assert_eq!(first.stdout.lines().filter(|l| l.starts_with("create [call-api] ")).count(), total, "{}", first.stdout);
    {
        let rules = rules.lock().unwrap();
        assert!(rules.metric.iter().all(|r| r["projects"] == json!([PROJECT])));
        assert!(rules.issue.iter().all(|r| r.get("projects").is_none()));
        // Every request carried the token, and the token is printed nowhere.
        assert!(sentry.requests().iter().all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))));
    }
    assert!(!first.stdout.contains(TOKEN) && !first.stderr.contains(TOKEN));

    // 2. A second apply changes nothing (pages of two are followed: every rule is found).
    let before = sentry.requests().len();
    let second = apply(&sentry, TOKEN, &file, &[]).await;
    assert_eq!(second.code, Some(0), "{}\n{}", second.stdout, second.stderr);
    let since: Vec<FakeRequest> = sentry.requests().into_iter().skip(before).collect();
    assert!(since.iter().all(|r| r.method == "GET"), "{}", second.stdout);
    assert!(since.iter().any(|r| r.query.contains_key("cursor")), "pagination was not followed");
    assert_eq!(
        second.stdout.lines().filter(|l| l.starts_with("unchanged [call-api] ")).count(),
        total,
        "{}",
        second.stdout
    );

    // 3. An edited threshold updates exactly that rule.
    let mut edited = shipped.clone();
    edited["metric_alerts"][1]["triggers"][0]["alertThreshold"] = json!(2500);
    let edited_name = edited["metric_alerts"][1]["name"].as_str().unwrap().replace("{project}", PROJECT);
    let dir = tempfile::tempdir().unwrap();
    let edited_file = dir.path().join("alerts.json");
    std::fs::write(&edited_file, edited.to_string()).unwrap();
    let edited_file = edited_file.to_str().unwrap().to_string();

    // 4. … but with --dry-run only the diff is printed and nothing is sent except GETs.
    let before = sentry.requests().len();
    let dry = apply(&sentry, TOKEN, &edited_file, &["--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}\n{}", dry.stdout, dry.stderr);
    assert!(sentry.requests().iter().skip(before).all(|r| r.method == "GET"));
    let expected = format!("update {edited_name}: triggers[0].alertThreshold \"2000\" → 2500");
    assert!(dry.stdout.lines().any(|l| l == expected), "wanted {expected:?} in\n{}", dry.stdout);
    assert_eq!(dry.stdout.lines().filter(|l| l.starts_with("unchanged ")).count(), total - 1, "{}", dry.stdout);

    let before = sentry.requests().len();
    let update = apply(&sentry, TOKEN, &edited_file, &[]).await;
    assert_eq!(update.code, Some(0), "{}\n{}", update.stdout, update.stderr);
    let puts: Vec<FakeRequest> = sentry.requests().into_iter().skip(before).filter(|r| r.method != "GET").collect();
    assert_eq!(puts.len(), 1, "{:?}", puts.iter().map(|r| (&r.method, &r.path)).collect::<Vec<_>>());
    assert_eq!(puts[0].method, "PUT");
    let body = puts[0].json();
    assert_eq!((body["name"].as_str(), &body["projects"]), (Some(edited_name.as_str()), &json!([PROJECT])));
    assert_eq!(body["triggers"][0]["alertThreshold"], 2500);
    let id = rules.lock().unwrap().metric.iter().find(|r| r["name"] == edited_name.as_str()).unwrap()["id"].clone();
    assert_eq!(puts[0].path, format!("{METRIC_PATH}{}/", id.as_str().unwrap()));
    assert!(update.stdout.lines().any(|l| l == expected), "{}", update.stdout);

    // And then the edited file is in place.
    let again = apply(&sentry, TOKEN, &edited_file, &[]).await;
    assert_eq!(again.stdout.lines().filter(|l| l.starts_with("unchanged ")).count(), total, "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn sentry_alerts_wrong_token_is_a_clear_error_and_exit_1() {
    let sentry = FakeHttp::start(fake_sentry(Arc::default(), Arc::default())).await;
    let wrong = "sntrys-wrong-token-9876543210";
    let out = apply(&sentry, wrong, &shipped_file(), &[]).await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("sentry-alerts: GET {METRIC_PATH} answered 401 Unauthorized: Invalid token")),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains(wrong) && !out.stderr.contains(wrong));
    assert!(writes(&sentry).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sentry_alerts_without_a_token_says_so() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_voice-kraliki"))
            .args(["sentry-alerts", "apply", "--org", ORG, "--project", PROJECT, "--file", &shipped_file()])
            .env_remove("SENTRY_AUTH_TOKEN")
            .env("SENTRY_URL", "http://127.0.0.1:9")
            .output()
            .expect("run voice-kraliki")
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SENTRY_AUTH_TOKEN is not set"));
}
