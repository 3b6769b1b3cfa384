//! A loopback Sentry endpoint (`POST /api/<project>/envelope/`) that counts the envelope items it
//! gets (transactions, events) and when, so a drill can tell what a service flushed to Sentry
//! after its SIGTERM.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{Router, body::Bytes, extract::State, routing::post};

/// Received items: when, and their type.
type Items = Arc<Mutex<Vec<(Instant, String)>>>;

pub struct Receiver {
    pub addr: SocketAddr,
    items: Items,
    _task: tokio::task::JoinHandle<()>,
}

async fn envelope(State(items): State<Items>, body: Bytes) -> &'static str {
    let now = Instant::now();
    let kinds = item_types(&body);
    items.lock().expect("items").extend(kinds.into_iter().map(|k| (now, k)));
    "{}"
}

/// The `type` of each item of an envelope: a header line, then per item a header line and its
/// payload (one line, or `length` bytes when the item header gives one).
pub fn item_types(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(first) = body.iter().position(|b| *b == b'\n') else { return out };
    let mut rest = &body[first + 1..];
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let Ok(header) = serde_json::from_slice::<serde_json::Value>(&rest[..end]) else { break };
        out.push(header["type"].as_str().unwrap_or("unknown").to_string());
        rest = rest.get(end + 1..).unwrap_or_default();
        let skip = match header["length"].as_u64() {
            Some(n) => (n as usize).min(rest.len()),
            None => rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len()),
        };
        rest = rest.get(skip..).unwrap_or_default();
        if rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
    }
    out
}

impl Receiver {
    pub async fn start() -> std::io::Result<Self> {
        let items: Items = Arc::default();
        let app = Router::new().route("/api/{project}/envelope/", post(envelope)).with_state(items.clone());
        let (addr, task) = super::serve_loopback(app).await?;
        Ok(Self { addr, items, _task: task })
    }

    /// For `SENTRY_DSN`.
    pub fn dsn(&self) -> String {
        format!("http://drill@{}/1", self.addr)
    }

    pub fn total(&self) -> usize {
        self.items.lock().expect("items").len()
    }

    /// Items received at or after `t`.
    pub fn since(&self, t: Instant) -> usize {
        self.items.lock().expect("items").iter().filter(|(at, _)| *at >= t).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_items_are_counted_with_and_without_lengths() {
        let body = b"{\"event_id\":\"x\"}\n{\"type\":\"transaction\",\"length\":9}\n{\"a\":\"\n\"}\n{\"type\":\"event\"}\n{\"message\":\"m\"}\n";
        assert_eq!(item_types(body), ["transaction", "event"]);
        assert!(item_types(b"{}").is_empty());
        assert!(item_types(b"{}\nnot json\n").is_empty());
    }
}
