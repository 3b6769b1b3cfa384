//! 200 concurrent creates, then every call ended twice at the same moment: 200 rows, each call
//! ended exactly once, counters and histogram consistent with the rows.

use std::sync::Arc;

use crate::common::{KEY, TestApp, new_call};
use serde_json::json;
use tokio::task::JoinSet;

const N: usize = 200;

on_both_databases!(concurrent_creates_and_double_ends);

async fn concurrent_creates_and_double_ends(app: TestApp) {
    let app = Arc::new(app);
    let before = app.metrics().await;

    let mut creates = JoinSet::new();
    for i in 0..N {
        let app = app.clone();
        creates.spawn(async move {
            let provider = ["twilio", "telnyx"][i % 2];
            app.post_json("/v1/calls", KEY, &new_call(provider)).await
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = creates.join_next().await {
        let (status, body) = r.expect("task");
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "distinct ids");
    assert_eq!(app.db.count_calls("1 = 1").await, N as i64);

    // Each call ended twice concurrently, with different outcomes.
    let mut ends = JoinSet::new();
    for id in &ids {
        for outcome in ["completed", "failed"] {
            let (app, id) = (app.clone(), id.clone());
            ends.spawn(async move {
                app.post_json(&format!("/v1/calls/{id}/end"), KEY, &json!({"outcome": outcome})).await
            });
        }
    }
    let (mut ok, mut conflict, mut by_outcome) = (0, 0, std::collections::HashMap::new());
    while let Some(r) = ends.join_next().await {
        let (status, body) = r.expect("task");
        match status {
            200 => {
                ok += 1;
                *by_outcome.entry(body["outcome"].as_str().unwrap().to_string()).or_insert(0) += 1;
            }
            409 => conflict += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, conflict), (N, N), "each call ended exactly once");
    assert_eq!(app.db.count_calls("status = 'ended'").await, N as i64);
    assert_eq!(
        app.db.count_calls("status = 'ended' AND ended_at IS NOT NULL AND duration_seconds >= 0").await,
        N as i64
    );

    let after = app.metrics().await;
    let ended_delta = after.sum("voice_calls_total", &[]) - before.sum("voice_calls_total", &[]);
    assert_eq!(ended_delta, N as f64);
    for (outcome, n) in &by_outcome {
        let d = after.sum("voice_calls_total", &[("status", outcome)])
            - before.sum("voice_calls_total", &[("status", outcome)]);
        assert_eq!(d, f64::from(*n), "outcome {outcome}");
    }
    let durations = after.sum("call_duration_seconds_count", &[]) - before.sum("call_duration_seconds_count", &[]);
    assert_eq!(durations, N as f64);
    assert_eq!(after.sum("active_calls", &[]), 0.0);

    // The API agrees with the table: 200 ended calls over pages of 200.
    let (status, page) = app.get("/v1/calls?status=ended&limit=200", KEY).await;
    assert_eq!(status, 200);
    assert_eq!(page["calls"].as_array().unwrap().len(), N);
    assert_eq!(page["next_cursor"], serde_json::Value::Null);
}
