//! `voice-kraliki sentry-alerts apply`: the Sentry alert rules of `monitoring/sentry/alerts.json`
//! created or updated in a Sentry organisation, idempotently, by name.
//!
//! ```text
//! voice-kraliki sentry-alerts apply --org ORG --project PROJECT [--file PATH] [--dry-run]
//! ```
//!
//! The file is `{"metric_alerts": [...], "issue_alerts": [...]}`, each entry the body of Sentry's
//! alert-rule API (metric alerts: `/api/0/organizations/{org}/alert-rules/`; issue alerts:
//! `/api/0/projects/{org}/{project}/rules/`) without `projects`, which comes from `--project`.
//! `{project}` in a string is replaced by the project; an entry with `onlyProjects` applies to
//! those projects only (the key itself is not sent). Existing rules are matched by `name`; only
//! the fields the file sets are compared (Sentry answers with more, and numbers may come back
//! as strings). `SENTRY_AUTH_TOKEN` authenticates; `SENTRY_URL` (default `https://sentry.io`)
//! points at a self-hosted Sentry. `--dry-run` prints the same lines and sends only `GET`s.

use std::process::ExitCode;

use serde_json::{Map, Value};

/// Where the rules live, relative to the repository root.
pub const DEFAULT_FILE: &str = "monitoring/sentry/alerts.json";

const USAGE: &str = "usage: voice-kraliki sentry-alerts apply --org ORG --project PROJECT [--file PATH] [--dry-run]";

/// The two kinds of Sentry alert rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Metric alerts (organisation-wide, `projects` in the body).
    Metric,
    /// Issue alerts (per project).
    Issue,
}

impl Kind {
    /// The key of this kind in the file.
    pub fn key(self) -> &'static str {
        match self {
            Self::Metric => "metric_alerts",
            Self::Issue => "issue_alerts",
        }
    }

    /// The collection path (list and create).
    pub fn list_path(self, org: &str, project: &str) -> String {
        match self {
            Self::Metric => format!("/api/0/organizations/{org}/alert-rules/"),
            Self::Issue => format!("/api/0/projects/{org}/{project}/rules/"),
        }
    }

    /// The path of one rule (update).
    pub fn rule_path(self, org: &str, project: &str, id: &str) -> String {
        format!("{}{id}/", self.list_path(org, project))
    }
}

/// One rule as the file wants it, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub kind: Kind,
    pub name: String,
    pub body: Value,
}

/// The rules of `file` for `project`, in file order (metric alerts first).
///
/// # Errors
/// When the file is not of the expected shape (a missing or duplicate name, a non-object entry).
pub fn desired_rules(file: &Value, project: &str) -> Result<Vec<Desired>, String> {
    let mut out: Vec<Desired> = Vec::new();
    for kind in [Kind::Metric, Kind::Issue] {
        let Some(entries) = file.get(kind.key()) else { continue };
        let entries = entries.as_array().ok_or_else(|| format!("`{}` is not a list", kind.key()))?;
        for (i, entry) in entries.iter().enumerate() {
            let Value::Object(map) = substitute(entry, project) else {
                return Err(format!("`{}[{i}]` is not an object", kind.key()));
            };
            let mut map: Map<String, Value> = map;
            if let Some(only) = map.remove("onlyProjects") {
                let only =
                    only.as_array().ok_or_else(|| format!("`{}[{i}].onlyProjects` is not a list", kind.key()))?;
                if !only.iter().any(|p| p.as_str() == Some(project)) {
                    continue;
                }
            }
            let name = map
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| format!("`{}[{i}]` has no name", kind.key()))?
                .to_string();
            if out.iter().any(|d| d.kind == kind && d.name == name) {
                return Err(format!("two {} named {name:?}", kind.key()));
            }
            if kind == Kind::Metric {
                map.insert("projects".into(), Value::Array(vec![Value::String(project.into())]));
            }
            out.push(Desired { kind, name, body: Value::Object(map) });
        }
    }
    Ok(out)
}

/// `value` with `{project}` replaced in every string.
fn substitute(value: &Value, project: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("{project}", project)),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, project)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), substitute(v, project))).collect()),
        other => other.clone(),
    }
}

/// One managed field that differs: where, what Sentry has, what the file wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub field: String,
    pub old: String,
    pub new: String,
}

/// What to do with one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Create,
    Update { id: String, changes: Vec<Change> },
    Unchanged { id: String },
}

/// The plan for `desired` given the existing rules of its kind (matched by name).
pub fn plan(desired: &Desired, existing: &[Value]) -> Plan {
    let Some(current) = existing.iter().find(|r| r.get("name").and_then(Value::as_str) == Some(&desired.name)) else {
        return Plan::Create;
    };
    let id = match current.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let changes = diff(&desired.body, current);
    if changes.is_empty() { Plan::Unchanged { id } } else { Plan::Update { id, changes } }
}

/// The fields `desired` sets whose values differ in `existing`: objects are compared on the
/// keys `desired` has, lists element by element, numbers as numbers (a number given as a
/// string counts as that number), and a missing field as `null` (equal to `""`).
pub fn diff(desired: &Value, existing: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    differences("", desired, existing, &mut out);
    out
}

fn differences(path: &str, desired: &Value, existing: &Value, out: &mut Vec<Change>) {
    match (desired, existing) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, want) in want {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                differences(&at, want, have.get(key).unwrap_or(&Value::Null), out);
            }
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                differences(&format!("{path}[{i}]"), w, h, out);
            }
        }
        _ if scalar_eq(desired, existing) => {}
        _ => out.push(Change { field: path.to_string(), old: show(existing), new: show(desired) }),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    let empty = |v: &Value| v.is_null() || v.as_str() == Some("");
    if empty(a) && empty(b) {
        return true;
    }
    match (number(a), number(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The one line printed for a rule.
pub fn describe(name: &str, plan: &Plan) -> String {
    match plan {
        Plan::Create => format!("create {name}"),
        Plan::Unchanged { .. } => format!("unchanged {name}"),
        Plan::Update { changes, .. } => {
            let what: Vec<String> = changes.iter().map(|c| format!("{} {} → {}", c.field, c.old, c.new)).collect();
            format!("update {name}: {}", what.join(", "))
        }
    }
}

/// The cursor of the next page from a Sentry `Link` header, when there are more results.
pub fn next_cursor(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let attrs: Vec<&str> = part.split(';').map(str::trim).collect();
        let has = |want: &str| attrs.iter().any(|a| a.replace(' ', "") == want);
        if !has("rel=\"next\"") || !has("results=\"true\"") {
            return None;
        }
        attrs.iter().find_map(|a| a.strip_prefix("cursor=").map(|c| c.trim_matches('"').to_string()))
    })
}

/// A non-2xx answer (or no answer) from Sentry, as the one line printed.
#[derive(Debug)]
pub struct ApiError(pub String);

struct Sentry {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Sentry {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, Option<String>), ApiError> {
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response =
            request.send().await.map_err(|e| ApiError(format!("sentry-alerts: {method} {path} failed: {e}")))?;
        let status = response.status();
        let link = response.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("detail").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string)))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(ApiError(format!("sentry-alerts: {method} {path} answered {status}: {detail}")));
        }
        let value =
            if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) };
        Ok((value, link))
    }

    /// Every rule of a collection, following the pagination cursor.
    async fn list(&self, path: &str) -> Result<Vec<Value>, ApiError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(c) => format!("{path}?cursor={c}"),
                None => path.to_string(),
            };
            let (value, link) = self.send(reqwest::Method::GET, &page, None).await?;
            let Value::Array(items) = value else {
                return Err(ApiError(format!("sentry-alerts: GET {page} did not answer a list")));
            };
            let empty = items.is_empty();
            all.extend(items);
            match link.as_deref().and_then(next_cursor) {
                Some(next) if !empty && cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
                _ => return Ok(all),
            }
        }
    }
}

struct Options {
    org: String,
    project: String,
    file: String,
    dry_run: bool,
}

fn parse(args: &[&str]) -> Result<Options, String> {
    let ["apply", rest @ ..] = args else { return Err(USAGE.into()) };
    let (mut org, mut project, mut file, mut dry_run) = (None, None, DEFAULT_FILE.to_string(), false);
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().map(|v| (*v).to_string()).ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match *arg {
            "--org" => org = Some(value()?),
            "--project" => project = Some(value()?),
            "--file" => file = value()?,
            "--dry-run" => dry_run = true,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    match (org, project) {
        (Some(org), Some(project)) if !org.is_empty() && !project.is_empty() => {
            Ok(Options { org, project, file, dry_run })
        }
        _ => Err(format!("--org and --project are required\n{USAGE}")),
    }
}

/// `voice-kraliki sentry-alerts …`: 0 when every rule is in place (or, with `--dry-run`, the
/// diff was printed), 1 when Sentry refused or could not be reached, 2 on bad usage.
pub fn run(args: &[&str]) -> ExitCode {
    if matches!(args, ["help" | "--help" | "-h"] | ["apply", "--help" | "-h"]) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sentry-alerts: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(token) = std::env::var("SENTRY_AUTH_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
    else {
        eprintln!("sentry-alerts: SENTRY_AUTH_TOKEN is not set (a Sentry auth token with alerts:write)");
        return ExitCode::from(2);
    };
    let base = std::env::var("SENTRY_URL")
        .ok()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "https://sentry.io".into());
    let desired = match std::fs::read_to_string(&options.file)
        .map_err(|e| format!("cannot read {}: {e}", options.file))
        .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| format!("{} is not JSON: {e}", options.file)))
        .and_then(|file| desired_rules(&file, &options.project).map_err(|e| format!("{}: {e}", options.file)))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("sentry-alerts: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::install_crypto_provider();
    let client = match reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sentry-alerts: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    let sentry = Sentry { client, base, token };
    match runtime.block_on(apply(&sentry, &options, &desired)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ApiError(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn apply(sentry: &Sentry, options: &Options, desired: &[Desired]) -> Result<(), ApiError> {
    let (org, project) = (options.org.as_str(), options.project.as_str());
    let (mut created, mut updated, mut unchanged) = (0, 0, 0);
    for kind in [Kind::Metric, Kind::Issue] {
        let wanted: Vec<&Desired> = desired.iter().filter(|d| d.kind == kind).collect();
        if wanted.is_empty() {
            continue;
        }
        let existing = sentry.list(&kind.list_path(org, project)).await?;
        for rule in wanted {
            let plan = plan(rule, &existing);
            if !options.dry_run {
                match &plan {
                    Plan::Create => {
                        sentry.send(reqwest::Method::POST, &kind.list_path(org, project), Some(&rule.body)).await?;
                    }
                    Plan::Update { id, .. } => {
                        sentry.send(reqwest::Method::PUT, &kind.rule_path(org, project, id), Some(&rule.body)).await?;
                    }
                    Plan::Unchanged { .. } => {}
                }
            }
            match plan {
                Plan::Create => created += 1,
                Plan::Update { .. } => updated += 1,
                Plan::Unchanged { .. } => unchanged += 1,
            }
            println!("{}", describe(&rule.name, &plan));
        }
    }
    let tail = if options.dry_run { " (dry run: nothing was sent)" } else { "" };
    println!("{created} to create, {updated} to update, {unchanged} unchanged{tail}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metric(threshold: Value) -> Value {
        json!({"name": "[x] p95", "aggregate": "p95(transaction.duration)", "timeWindow": 10,
               "triggers": [{"label": "critical", "alertThreshold": threshold, "actions": []}]})
    }

    #[test]
    fn sentry_alerts_the_shipped_file_has_the_guides_rules_and_ours() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../monitoring/sentry/alerts.json"))
            .expect("alerts.json");
        let file: Value = serde_json::from_str(&text).expect("json");
        let rules = desired_rules(&file, "call-api").expect("rules");
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(rules.len(), 5, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("[call-api] ")), "{names:?}");
        let metric = |aggregate: &str, query: &str| {
            rules
                .iter()
                .find(|r| r.kind == Kind::Metric && r.body["aggregate"] == aggregate && r.body["query"] == query)
        };
        let failure = metric("failure_rate()", "").expect("failure rate rule");
        assert_eq!(
            (failure.body["timeWindow"].as_f64(), failure.body["environment"].as_str()),
            (Some(5.0), Some("production"))
        );
        assert_eq!(failure.body["triggers"][0]["alertThreshold"], 0.05);
        assert_eq!(failure.body["projects"], json!(["call-api"]));
        let p95 = rules.iter().find(|r| r.body["aggregate"] == "p95(transaction.duration)").expect("p95 rule");
        assert_eq!(p95.body["triggers"][0]["alertThreshold"], 2000);
        assert!(metric("failure_rate()", "transaction:call_analysis").is_some());
        let issue: Vec<&Desired> = rules.iter().filter(|r| r.kind == Kind::Issue).collect();
        assert_eq!(issue.len(), 2);
        assert!(issue.iter().all(|r| r.body["environment"] == "production" && r.body.get("projects").is_none()));
        assert!(text.contains("FirstSeenEventCondition") && text.contains("\"key\": \"provider\""));
        // The call-analysis rule is call-api's only.
        let other = desired_rules(&file, "provider-gateway").expect("rules");
        assert_eq!(other.len(), 4);
        assert!(other.iter().all(|r| r.body.get("onlyProjects").is_none()));
    }

    #[test]
    fn sentry_alerts_diff_compares_only_the_files_fields_and_numbers_as_numbers() {
        let want = metric(json!(2000));
        let mut have = metric(json!("2000.0"));
        have["id"] = json!("7");
        have["dateCreated"] = json!("2026-01-01");
        have["timeWindow"] = json!(10.0);
        have["triggers"][0]["id"] = json!("70");
        assert!(diff(&want, &have).is_empty());
        have["triggers"][0]["alertThreshold"] = json!(1500);
        let changes = diff(&want, &have);
        assert_eq!(
            changes,
            vec![Change { field: "triggers[0].alertThreshold".into(), old: "1500".into(), new: "2000".into() }]
        );
        assert_eq!(
            describe("[x] p95", &Plan::Update { id: "7".into(), changes }),
            "update [x] p95: triggers[0].alertThreshold 1500 → 2000"
        );
        // A missing field and an extra trigger are changes; an empty query equals none.
        let mut short = want.clone();
        short.as_object_mut().unwrap().remove("timeWindow");
        short["triggers"] = json!([]);
        let fields: Vec<String> = diff(&want, &short).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["timeWindow", "triggers"]);
        assert!(diff(&json!({"query": ""}), &json!({"query": null})).is_empty());
    }

    #[test]
    fn sentry_alerts_plan_matches_by_name() {
        let rule = Desired { kind: Kind::Metric, name: "[x] p95".into(), body: metric(json!(2000)) };
        assert_eq!(plan(&rule, &[]), Plan::Create);
        let mut other = metric(json!(1));
        other["name"] = json!("[y] p95");
        assert_eq!(plan(&rule, &[other.clone()]), Plan::Create);
        let mut same = metric(json!(2000));
        same["id"] = json!(12);
        assert_eq!(plan(&rule, &[other, same]), Plan::Unchanged { id: "12".into() });
    }

    #[test]
    fn sentry_alerts_next_cursor_follows_only_pages_with_results() {
        let link = "<https://sentry.io/api/0/x/?&cursor=0:0:1>; rel=\"previous\"; results=\"false\"; cursor=\"0:0:1\", \
                    <https://sentry.io/api/0/x/?&cursor=0:100:0>; rel=\"next\"; results=\"true\"; cursor=\"0:100:0\"";
        assert_eq!(next_cursor(link).as_deref(), Some("0:100:0"));
        assert_eq!(next_cursor(&link.replace("results=\"true\"", "results=\"false\"")), None);
        assert_eq!(next_cursor(""), None);
    }

    #[test]
    fn sentry_alerts_file_errors_and_arguments() {
        assert!(desired_rules(&json!({"metric_alerts": [{"query": ""}]}), "p").unwrap_err().contains("no name"));
        assert!(
            desired_rules(&json!({"issue_alerts": [{"name": "a"}, {"name": "a"}]}), "p").unwrap_err().contains("two")
        );
        assert!(parse(&["apply", "--org", "o"]).is_err());
        assert!(parse(&["apply", "--org", "o", "--project", "p", "--bogus"]).is_err());
        let o = parse(&["apply", "--org", "o", "--project", "p", "--dry-run"]).expect("options");
        assert!(o.dry_run && o.file == DEFAULT_FILE && o.org == "o" && o.project == "p");
    }
}
