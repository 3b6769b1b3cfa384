//! After the traffic: is every call the API accepted stored, whole and consistent?

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt as _;
use serde_json::Value;

use super::traffic::{Expect, Ledger};

/// What the stored calls look like.
#[derive(Debug, Default)]
pub struct Verdict {
    pub accepted: usize,
    /// Accepted (201) but `GET` answers 404.
    pub missing: Vec<String>,
    /// `GET` failed otherwise.
    pub unreadable: Vec<String>,
    /// Records breaking the call's own rules (half-written): id and what is wrong.
    pub inconsistent: Vec<(String, String)>,
    /// Records whose state is not what the traffic's outcome implies.
    pub unexpected: Vec<(String, String)>,
    /// `status/outcome[: end_reason]` → count, over the accepted calls.
    pub states: BTreeMap<String, usize>,
    /// Calls listed by `GET /v1/calls`.
    pub listed: usize,
    /// Listed calls the API never answered 201 for (a create whose answer was lost or an error).
    pub unaccounted: Vec<String>,
}

fn is_set(v: &Value) -> bool {
    !v.is_null()
}

/// The call record's own rules: what a half-written record breaks. `settled` = no work on the
/// call can still be running (traffic stopped, live sessions over).
pub fn record_problems(call: &Value, settled: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let status = call["status"].as_str().unwrap_or("");
    let ended = status == "ended";
    if !matches!(status, "queued" | "in_progress" | "ended") {
        problems.push(format!("status {status:?}"));
    }
    if ended != is_set(&call["outcome"]) {
        problems.push(format!("status {status} with outcome {}", call["outcome"]));
    }
    if ended && (!is_set(&call["ended_at"]) || !is_set(&call["duration_seconds"])) {
        problems.push("ended without ended_at or duration_seconds".into());
    }
    if !ended && is_set(&call["ended_at"]) {
        problems.push(format!("{status} with ended_at"));
    }
    if status == "in_progress" && !is_set(&call["started_at"]) {
        problems.push("in_progress without started_at".into());
    }
    if settled && status == "in_progress" {
        problems.push("still in_progress after its media connection is gone".into());
    }
    if settled && call["analysis_status"].as_str() == Some("pending") {
        problems.push("analysis left pending after its upload finished".into());
    }
    if call["outcome"].as_str() == Some("failed")
        && call["metadata"]["source"].as_str() == Some("voice-kraliki loadgen")
        && !is_set(&call["end_reason"])
    {
        problems.push("live call failed without end_reason".into());
    }
    problems
}

/// What the traffic's outcome implies about the stored call.
pub fn expectation_problem(call: &Value, expect: &Expect) -> Option<String> {
    let status = call["status"].as_str().unwrap_or("");
    let outcome = call["outcome"].as_str().unwrap_or("");
    let analysis = call["analysis_status"].as_str().unwrap_or("none");
    match expect {
        Expect::Created => None,
        Expect::Live { completed: true } if status != "ended" || outcome != "completed" => Some(format!(
            "the carrier ended the call with stop, stored {status}/{outcome} {}",
            call["end_reason"].as_str().unwrap_or("")
        )),
        Expect::Live { .. } => None,
        Expect::Uploaded { status: Some(200) } if analysis != "done" => {
            Some(format!("upload answered 200, analysis {analysis}"))
        }
        Expect::Uploaded { status: Some(503) } if analysis != "failed" => {
            Some(format!("upload answered 503, analysis {analysis} (expected failed, retryable)"))
        }
        Expect::Uploaded { .. } => None,
    }
}

fn state_key(call: &Value) -> String {
    let mut k = call["status"].as_str().unwrap_or("?").to_string();
    if let Some(o) = call["outcome"].as_str() {
        k = format!("{k}/{o}");
    }
    if let Some(r) = call["end_reason"].as_str() {
        k = format!("{k}: {r}");
    }
    if let Some(a) = call["analysis_status"].as_str() {
        k = format!("{k} (analysis {a})");
    }
    k
}

/// A GET that, like a well-behaved client, waits out `429 Retry-After` (the API's per-key rate
/// limit) up to 20 times.
async fn get_patiently(http: &reqwest::Client, url: &str, key: &str) -> reqwest::Result<reqwest::Response> {
    let mut tries = 0;
    loop {
        let r = http.get(url).bearer_auth(key).send().await?;
        if r.status() != 429 || tries == 20 {
            return Ok(r);
        }
        tries += 1;
        let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(1);
        tokio::time::sleep(std::time::Duration::from_secs(wait.min(10))).await;
    }
}

/// Reads every accepted call back through the API and lists every stored call.
pub async fn verify(http: &reqwest::Client, url: &str, key: &str, ledger: &Ledger, settled: bool) -> Verdict {
    let accepted = ledger.accepted();
    let mut v = Verdict { accepted: accepted.len(), ..Verdict::default() };
    let results: Vec<(String, Expect, Result<Option<Value>, String>)> =
        futures_util::stream::iter(accepted.iter().cloned())
            .map(|(id, expect)| async move {
                let r = async {
                    let r =
                        get_patiently(http, &format!("{url}/v1/calls/{id}"), key).await.map_err(|e| e.to_string())?;
                    match r.status().as_u16() {
                        200 => r.json::<Value>().await.map(Some).map_err(|e| e.to_string()),
                        404 => Ok(None),
                        s => Err(format!("GET answered {s}")),
                    }
                }
                .await;
                (id, expect, r)
            })
            .buffer_unordered(16)
            .collect()
            .await;
    for (id, expect, r) in results {
        match r {
            Ok(None) => v.missing.push(id),
            Err(e) => v.unreadable.push(format!("{id}: {e}")),
            Ok(Some(call)) => {
                *v.states.entry(state_key(&call)).or_insert(0) += 1;
                for p in record_problems(&call, settled) {
                    v.inconsistent.push((id.clone(), p));
                }
                if let Some(p) = expectation_problem(&call, &expect) {
                    v.unexpected.push((id.clone(), p));
                }
            }
        }
    }
    // Every stored call of the drill's tenant.
    let known: BTreeSet<&str> = accepted.iter().map(|(id, _)| id.as_str()).collect();
    let mut cursor: Option<String> = None;
    loop {
        let page_url = match &cursor {
            // Cursors are URL-safe tokens.
            Some(c) => format!("{url}/v1/calls?limit=200&cursor={c}"),
            None => format!("{url}/v1/calls?limit=200"),
        };
        let page = match get_patiently(http, &page_url, key).await {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                v.unreadable.push(format!("GET /v1/calls answered {}", r.status()));
                break;
            }
            Err(e) => {
                v.unreadable.push(format!("GET /v1/calls: {e}"));
                break;
            }
        };
        let Ok(page) = page.json::<Value>().await else {
            v.unreadable.push("GET /v1/calls: not JSON".into());
            break;
        };
        for call in page["calls"].as_array().into_iter().flatten() {
            v.listed += 1;
            if let Some(id) = call["id"].as_str()
                && !known.contains(id)
            {
                v.unaccounted.push(format!("{id} ({})", state_key(call)));
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_half_written_record_is_caught() {
        let ended = json!({"status": "ended", "outcome": "completed", "ended_at": "t", "duration_seconds": 3.0});
        assert!(record_problems(&ended, true).is_empty());
        let no_outcome = json!({"status": "ended", "outcome": null, "ended_at": "t", "duration_seconds": 3.0});
        assert_eq!(record_problems(&no_outcome, false).len(), 1);
        let no_end = json!({"status": "ended", "outcome": "failed", "ended_at": null, "duration_seconds": null,
                            "metadata": {"source": "voice-kraliki loadgen"}, "end_reason": "service shutting down"});
        assert_eq!(record_problems(&no_end, false), vec!["ended without ended_at or duration_seconds".to_string()]);
        let live = json!({"status": "in_progress", "outcome": null, "started_at": "t"});
        assert!(record_problems(&live, false).is_empty(), "in progress is fine while traffic runs");
        assert_eq!(record_problems(&live, true).len(), 1);
        let pending = json!({"status": "queued", "outcome": null, "analysis_status": "pending"});
        assert_eq!(record_problems(&pending, true).len(), 1);
    }

    #[test]
    fn expectations_follow_the_traffic_outcome() {
        let completed = json!({"status": "ended", "outcome": "completed", "analysis_status": null});
        let failed = json!({"status": "ended", "outcome": "failed", "end_reason": "service shutting down"});
        assert!(expectation_problem(&completed, &Expect::Live { completed: true }).is_none());
        assert!(expectation_problem(&failed, &Expect::Live { completed: true }).is_some());
        assert!(expectation_problem(&failed, &Expect::Live { completed: false }).is_none());
        let done = json!({"status": "queued", "analysis_status": "done"});
        let analysis_failed = json!({"status": "queued", "analysis_status": "failed"});
        assert!(expectation_problem(&done, &Expect::Uploaded { status: Some(200) }).is_none());
        assert!(expectation_problem(&analysis_failed, &Expect::Uploaded { status: Some(200) }).is_some());
        assert!(expectation_problem(&analysis_failed, &Expect::Uploaded { status: Some(503) }).is_none());
        assert!(expectation_problem(&done, &Expect::Uploaded { status: None }).is_none());
    }
}
