//! Call events for integrators: signed webhooks delivered from the outbox.
//!
//! ```text
//! mod.rs      WebhookConfig (WEBHOOK_*), the worker: fan out, claim, send, record, gauges
//! sign.rs     the Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature)
//! ssrf.rs     which addresses an endpoint may reach, and the resolver that enforces it
//! stream.rs   the live event stream: one outbox tail per replica feeding its SSE streams
//! ```
//!
//! The events themselves are written by the repositories (`db::events`) in the same transaction
//! as the change they describe. The worker runs on every replica: it fans each new event out
//! to one delivery row per endpoint of its tenant, claims due rows (a lease, `SKIP LOCKED` on
//! PostgreSQL), POSTs them, and records the outcome: delivered, or retried with exponential
//! backoff and jitter (or the receiver's `Retry-After`) until the event is 24 hours old. A call's
//! later event is not sent to an endpoint before its earlier one was delivered (or given up).

pub mod sign;
pub mod ssrf;
pub mod stream;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use telemetry::Reader;
use tokio_util::sync::CancellationToken;

use crate::{
    db::{
        Database,
        events::{Attempt, Claimed},
    },
    metrics,
};

/// How long events are retried for.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two attempts (before jitter).
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// One POST's deadline.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claim holds a delivery: a replica that dies mid-delivery leaves it to be taken
/// again after this.
const CLAIM_LEASE: Duration = Duration::from_secs(20);
/// Deliveries claimed (and sent at once) per round.
const BATCH: i64 = 32;
/// After a round that found nothing to do, the least wait before the next when events are
/// written meanwhile: a burst of commits costs one round.
const IDLE: Duration = Duration::from_millis(250);
/// After a round that found nothing to do, the longest wait when no event is written and none of
/// this worker's retries comes due: what only the clock brings (another replica's retry coming
/// due, a dead replica's claim running out) is noticed within this.
const QUIET: Duration = Duration::from_secs(2);
/// How often the backlog gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(2);
/// How often old events are deleted, and how many per statement.
const CLEANUP_EVERY: Duration = Duration::from_secs(600);
const CLEANUP_BATCH: i64 = 1000;

/// `WEBHOOK_*`: where each tenant's events go, signed with which secret.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `WEBHOOK_ENDPOINTS`: tenant → its endpoint URLs.
    pub endpoints: BTreeMap<String, Vec<String>>,
    /// `WEBHOOK_SECRETS`: tenant → the decoded secret.
    secrets: BTreeMap<String, Arc<[u8]>>,
    /// `WEBHOOK_ALLOW_PRIVATE`: allow endpoints on loopback, link-local and private addresses.
    pub allow_private: bool,
    /// `WEBHOOK_RETRY_BASE_SECONDS`: the first retry's wait (doubling after), default 5.
    pub retry_base: Duration,
    /// `EVENTS_RETENTION_DAYS`: events older than this (1–3650, default 30), with every delivery
    /// done, are deleted from the outbox.
    pub retention: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            endpoints: BTreeMap::new(),
            secrets: BTreeMap::new(),
            allow_private: false,
            retry_base: Duration::from_secs(5),
            retention: Duration::from_secs(30 * 86400),
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("endpoints", &self.endpoints)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("allow_private", &self.allow_private)
            .field("retry_base", &self.retry_base)
            .field("retention", &self.retention)
            .finish()
    }
}

impl WebhookConfig {
    pub fn read(r: &mut Reader<'_>) -> Self {
        let allow_private = r.bool_or("WEBHOOK_ALLOW_PRIVATE", false);
        let retry_base = Duration::from_secs_f64(r.f64_in("WEBHOOK_RETRY_BASE_SECONDS", 5.0, 0.01, 3600.0).max(0.01));
        let retention =
            Duration::from_secs_f64(r.f64_in("EVENTS_RETENTION_DAYS", 30.0, 1.0, 3650.0).max(1.0) * 86400.0);
        let mut endpoints: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let raw = r.string("WEBHOOK_ENDPOINTS").unwrap_or_default();
        for (n, entry) in raw.split(',').map(str::trim).enumerate().filter(|(_, e)| !e.is_empty()) {
            match parse_endpoint(entry, allow_private) {
                Ok((tenant, url)) => endpoints.entry(tenant).or_default().push(url),
                Err(message) => r.error("WEBHOOK_ENDPOINTS", format!("entry {} ({entry:?}): {message}", n + 1)),
            }
        }
        let mut secrets = BTreeMap::new();
        if let Some(raw) = r.secret("WEBHOOK_SECRETS") {
            for (n, entry) in raw.expose().split(',').map(str::trim).enumerate().filter(|(_, e)| !e.is_empty()) {
                // The value is a secret: errors name the entry by position and tenant only.
                match parse_secret(entry) {
                    Ok((tenant, key)) => {
                        if secrets.insert(tenant.clone(), key).is_some() {
                            r.error(
                                "WEBHOOK_SECRETS",
                                format!("entry {}: tenant {tenant:?} has a secret already", n + 1),
                            );
                        }
                    }
                    Err(message) => {
                        r.error("WEBHOOK_SECRETS", format!("entry {}: {message}", n + 1));
                        // Named once: its tenant's endpoints are not reported as lacking a secret.
                        if let Some((tenant, _)) = entry.split_once('=') {
                            secrets.insert(tenant.trim().to_string(), Arc::from(Vec::new()));
                        }
                    }
                }
            }
        }
        for tenant in endpoints.keys() {
            if !secrets.contains_key(tenant) {
                r.error(
                    "WEBHOOK_SECRETS",
                    format!("tenant {tenant:?} has endpoints in WEBHOOK_ENDPOINTS but no secret"),
                );
            }
        }
        Self { endpoints, secrets, allow_private, retry_base, retention }
    }

    /// The endpoint URLs of `tenant`.
    pub fn endpoints_of(&self, tenant: &str) -> Vec<String> {
        self.endpoints.get(tenant).cloned().unwrap_or_default()
    }
}

/// `tenant=url` with an http(s) URL (and, unless private addresses are allowed, not a literal
/// loopback, link-local or private address).
fn parse_endpoint(entry: &str, allow_private: bool) -> Result<(String, String), String> {
    let (tenant, url) = entry.split_once('=').ok_or("expected tenant=url")?;
    let (tenant, url) = (tenant.trim(), url.trim());
    if tenant.is_empty() {
        return Err("the tenant is empty".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("only http and https URLs are allowed".into());
    }
    let Some(host) = parsed.host_str() else { return Err("the URL has no host".into()) };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    if !allow_private && !ssrf::host_allowed(host) {
        return Err("a loopback, link-local or private address (set WEBHOOK_ALLOW_PRIVATE=true to allow)".into());
    }
    Ok((tenant.to_string(), url.to_string()))
}

/// `tenant=whsec_<base64>`.
fn parse_secret(entry: &str) -> Result<(String, Arc<[u8]>), String> {
    let (tenant, secret) = entry.split_once('=').ok_or("expected tenant=whsec_<base64>")?;
    let tenant = tenant.trim();
    if tenant.is_empty() {
        return Err("the tenant is empty".into());
    }
    let key = sign::decode_secret(secret.trim()).ok_or_else(|| {
        format!("the secret of tenant {tenant:?} is not whsec_ followed by base64 of at least 16 bytes")
    })?;
    Ok((tenant.to_string(), key.into()))
}

/// The delivery worker.
#[derive(Clone)]
pub struct Worker {
    config: Arc<WebhookConfig>,
    db: Database,
    owner: Arc<str>,
    http: reqwest::Client,
    /// The longest wait between rounds while nothing happens ([`QUIET`]).
    quiet: Duration,
}

/// What one round of the worker did.
struct Round {
    /// It fanned events out or sent deliveries (another round follows at once).
    busy: bool,
    /// Every outcome it had was stored (otherwise the next round reads the claims held).
    stored: bool,
    /// When the earliest delivery it failed is to be tried again.
    retry_at: Option<tokio::time::Instant>,
}

impl Worker {
    pub fn new(config: WebhookConfig, db: Database, owner: Arc<str>) -> anyhow::Result<Self> {
        telemetry::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(SEND_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("voice-kraliki-webhooks/", env!("CARGO_PKG_VERSION")));
        if !config.allow_private {
            builder = builder.dns_resolver(Arc::new(ssrf::PublicOnly));
        }
        let http = builder.build().map_err(|e| anyhow::anyhow!("build the webhook HTTP client: {e}"))?;
        Ok(Self { config: Arc::new(config), db, owner, http, quiet: QUIET })
    }

    /// Sets the longest wait between rounds while nothing happens (default 2 s). Tests set it
    /// long, to show that written events and the worker's own retries wake it.
    #[doc(hidden)]
    #[must_use]
    pub fn with_quiet(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// Runs until `stop` is cancelled. Deliveries in flight then are abandoned; their claims
    /// run out and they are sent again (at least once).
    pub fn spawn(self, stop: CancellationToken) {
        metrics::webhooks_init();
        tokio::spawn(async move {
            let mut last_gauges: Option<tokio::time::Instant> = None;
            let mut last_cleanup: Option<tokio::time::Instant> = None;
            // Commits of events on this replica, and on PostgreSQL `NOTIFY`s from any replica.
            let mut written = self.db.events_written();
            // The earliest retry this worker scheduled, and whether it may hold claims from
            // before (at start: a restart with the same owner finds them).
            let mut retry_due: Option<tokio::time::Instant> = None;
            let mut held = true;
            loop {
                let began = tokio::time::Instant::now();
                let round = tokio::select! {
                    () = stop.cancelled() => return,
                    round = self.round(held) => round,
                };
                held = !round.stored;
                if let Some(at) = round.retry_at {
                    retry_due = Some(retry_due.map_or(at, |due| due.min(at)));
                }
                if last_gauges.is_none_or(|t| t.elapsed() >= GAUGE_EVERY) {
                    last_gauges = Some(tokio::time::Instant::now());
                    match self.db.webhook_backlog().await {
                        Ok(b) => metrics::webhook_backlog(
                            b.pending,
                            b.oldest.map_or(0.0, |t| crate::model::seconds_between(t, crate::model::now())),
                        ),
                        Err(e) => tracing::warn!(error = %e, "could not read the webhook backlog"),
                    }
                }
                if last_cleanup.is_none_or(|t| t.elapsed() >= CLEANUP_EVERY) {
                    last_cleanup = Some(tokio::time::Instant::now());
                    self.delete_old_events().await;
                }
                if !round.busy {
                    // Sleep until events are written (then no sooner than IDLE after this round
                    // began), a retry of ours is due, or QUIET has passed.
                    let quiet = began + self.quiet;
                    let due = retry_due.map_or(quiet, |d| d.min(quiet));
                    let until = tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep_until(due) => None,
                        // (An error — never: the database handle outlives the worker — polls.)
                        changed = written.changed() => Some(if changed.is_ok() { (began + IDLE).min(due) } else { began + IDLE }),
                    };
                    if let Some(until) = until {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep_until(until) => {}
                        }
                    }
                    if retry_due.is_some_and(|d| d <= tokio::time::Instant::now()) {
                        retry_due = None;
                    }
                }
            }
        });
    }

    /// Deletes the events older than `EVENTS_RETENTION_DAYS` whose deliveries are all done,
    /// a batch at a time (every replica does; a row is deleted once).
    pub async fn delete_old_events(&self) -> u64 {
        let before = crate::model::now() - chrono::Duration::from_std(self.config.retention).unwrap_or_default();
        let mut total = 0;
        loop {
            match self.db.delete_old_events(before, CLEANUP_BATCH).await {
                Ok(n) => {
                    total += n;
                    metrics::events_deleted(n);
                    if n < CLEANUP_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete old events");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, "deleted events past EVENTS_RETENTION_DAYS");
        }
        total
    }

    /// One round: fan out new events, claim and send due deliveries. `held`: whether this
    /// worker may hold claims from before (see [`Database::claim_deliveries`]).
    async fn round(&self, held: bool) -> Round {
        let config = self.config.clone();
        let endpoints = move |tenant: &str| config.endpoints_of(tenant);
        let idle = Round { busy: false, stored: !held, retry_at: None };
        let dispatched = match self.db.dispatch_events(256, &endpoints).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not fan webhook events out");
                return idle;
            }
        };
        let until = crate::model::now() + CLAIM_LEASE;
        let claimed = match self.db.claim_deliveries(&self.owner, until, BATCH, held).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim webhook deliveries");
                return idle;
            }
        };
        let sent = claimed.len();
        let outcomes = futures_util::future::join_all(claimed.into_iter().map(|c| self.deliver(c))).await;
        let now = crate::model::now();
        let retry_at = outcomes.iter().filter_map(|(_, next)| *next).min().map(|next| {
            // A little after the stored time, so the round it wakes finds the delivery due.
            tokio::time::Instant::now() + (next - now).to_std().unwrap_or_default() + Duration::from_millis(5)
        });
        Round { busy: dispatched > 0 || sent > 0, stored: outcomes.iter().all(|(stored, _)| *stored), retry_at }
    }

    /// Sends one claimed delivery and stores the outcome: whether it was stored, and when it is
    /// to be tried again.
    async fn deliver(&self, claimed: Claimed) -> (bool, Option<chrono::DateTime<chrono::Utc>>) {
        let attempt = self.send(&claimed).await;
        let result = match &attempt {
            Attempt::Delivered => {
                metrics::webhook_delivered(crate::model::seconds_between(claimed.event.timestamp, crate::model::now()));
                "delivered"
            }
            Attempt::Retry { status, error, .. } => {
                tracing::info!(endpoint = %claimed.endpoint, event = %claimed.event.id, status, error = %error, "webhook delivery failed; will retry");
                "error"
            }
            Attempt::Failed { status, error } => {
                tracing::warn!(endpoint = %claimed.endpoint, event = %claimed.event.id, status, error = %error, "webhook delivery given up after 24 hours");
                "gave_up"
            }
        };
        metrics::webhook_attempt(result);
        let next = match &attempt {
            Attempt::Retry { next, .. } => Some(*next),
            Attempt::Delivered | Attempt::Failed { .. } => None,
        };
        match self.db.finish_delivery(claimed.delivery, &self.owner, &attempt).await {
            Ok(true) => (true, next),
            Ok(false) => {
                tracing::warn!(event = %claimed.event.id, "webhook delivery claim ran out before its outcome was stored");
                (true, None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not store a webhook delivery's outcome");
                (false, None)
            }
        }
    }

    async fn send(&self, claimed: &Claimed) -> Attempt {
        let event = &claimed.event;
        let fail = |status: Option<u16>, error: String, retry_after: Option<Duration>| {
            let wait = retry_after.unwrap_or_else(|| backoff(self.config.retry_base, claimed.attempts));
            let next = crate::model::now() + wait;
            if next - event.timestamp > chrono::Duration::from_std(MAX_AGE).unwrap_or(chrono::Duration::MAX) {
                Attempt::Failed { status, error }
            } else {
                Attempt::Retry { next, status, error }
            }
        };
        if !self.config.endpoints.get(&event.tenant).is_some_and(|e| e.contains(&claimed.endpoint)) {
            // Not (or no longer) in this replica's WEBHOOK_ENDPOINTS: nothing goes there from here.
            // During a rolling change another replica may still send it; else it is given up at
            // 24 hours like any other.
            return fail(None, "the endpoint is not configured on this replica".into(), Some(Duration::from_secs(60)));
        }
        let Some(secret) = self.config.secrets.get(&event.tenant) else {
            return fail(None, "the tenant has no secret".into(), None);
        };
        if !self.config.allow_private
            && let Ok(url) = reqwest::Url::parse(&claimed.endpoint)
            && let Some(host) = url.host_str()
            && !ssrf::host_allowed(host)
        {
            return fail(None, "refused: a private address".into(), None);
        }
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => return fail(None, format!("encode the event: {e}"), None),
        };
        let timestamp = crate::model::now().timestamp();
        let signature = sign::signature(secret, &event.id, timestamp, &body);
        let response = self
            .http
            .post(&claimed.endpoint)
            .header("content-type", "application/json")
            .header("webhook-id", event.id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            Ok(r) => {
                let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(retry_after);
                let status = r.status().as_u16();
                fail(Some(status), format!("HTTP {status}"), retry_after)
            }
            Err(e) => fail(None, error_chain(&e), None),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The wait before retry `attempts + 1`: `base · 2^attempts`, at most an hour, times a random
/// factor in [0.5, 1) (jitter, so retries from many deliveries spread out).
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    let exp = 2f64.powi(attempts.clamp(0, 30));
    let full = (base.as_secs_f64() * exp).min(MAX_BACKOFF.as_secs_f64());
    Duration::from_secs_f64(full * (0.5 + rand::random::<f64>() / 2.0))
}

/// `Retry-After`: seconds, or an HTTP date; at most [`MAX_AGE`].
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at: DateTime<Utc> = DateTime::parse_from_rfc2822(value).ok()?.into();
        (at - Utc::now()).to_std().unwrap_or_default()
    };
    Some(wait.min(MAX_AGE))
}

#[cfg(test)]
mod tests {
    use telemetry::Env;

    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<WebhookConfig, Vec<String>> {
        let env = Env::from_pairs(pairs.iter().copied());
        let mut r = Reader::new(&env);
        let c = WebhookConfig::read(&mut r);
        r.errors.into_result(c).map_err(|e| e.to_string().lines().map(str::to_string).collect())
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn endpoints_and_secrets_parse() {
        let c = read(&[
            (
                "WEBHOOK_ENDPOINTS",
                "acme=https://a.example.com/hook, acme=https://b.example.com/x,beta=http://c.example.org",
            ),
            ("WEBHOOK_SECRETS", &format!("acme={SECRET},beta={SECRET}")),
        ])
        .unwrap();
        assert_eq!(c.endpoints_of("acme"), ["https://a.example.com/hook", "https://b.example.com/x"]);
        assert_eq!(c.endpoints_of("beta").len(), 1);
        assert!(c.endpoints_of("other").is_empty());
        assert!(!c.allow_private);
        assert_eq!(c.retry_base, Duration::from_secs(5));
    }

    #[test]
    fn bad_entries_are_named() {
        let secrets = format!("acme={SECRET}");
        for (endpoints, needle) in [
            ("acme", "entry 1 (\"acme\")"),
            ("acme=ftp://a.example.com", "only http and https"),
            ("acme=https://ok.example.com,=https://b.example.com", "entry 2"),
            ("acme=http://127.0.0.1:9/x", "loopback"),
            ("acme=http://10.1.2.3/x", "private"),
            ("acme=http://[::1]/x", "loopback"),
            ("acme=http://169.254.169.254/latest", "link-local"),
            ("acme=not a url", "not a URL"),
        ] {
            let errors = read(&[("WEBHOOK_ENDPOINTS", endpoints), ("WEBHOOK_SECRETS", &secrets)]).unwrap_err();
            assert!(
                errors.iter().any(|e| e.contains("WEBHOOK_ENDPOINTS") && e.contains(needle)),
                "{endpoints}: {errors:?}"
            );
        }
        let ok = read(&[
            ("WEBHOOK_ENDPOINTS", "acme=http://127.0.0.1:9/x"),
            ("WEBHOOK_SECRETS", &secrets),
            ("WEBHOOK_ALLOW_PRIVATE", "true"),
        ]);
        assert!(ok.is_ok());
        let errors = read(&[("WEBHOOK_ENDPOINTS", "acme=https://a.example.com")]).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("no secret")), "{errors:?}");
        for bad in ["acme=secret", "acme=whsec_!!", "acme=whsec_c2hvcnQ=", "=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
            let errors = read(&[("WEBHOOK_SECRETS", bad)]).unwrap_err();
            assert!(errors.iter().any(|e| e.contains("WEBHOOK_SECRETS") && e.contains("entry 1")), "{bad}: {errors:?}");
            assert!(!errors.iter().any(|e| e.contains("MfKQ9r8")), "the secret leaked: {errors:?}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_bounded() {
        let base = Duration::from_secs(5);
        for attempts in 0..40 {
            let full = (5.0 * 2f64.powi(attempts.min(30))).min(3600.0);
            let d = backoff(base, attempts).as_secs_f64();
            assert!(d >= full * 0.5 - 1e-9 && d < full, "{attempts}: {d}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("999999999"), Some(MAX_AGE));
        assert_eq!(retry_after("soon"), None);
        let in_a_minute = (Utc::now() + chrono::Duration::seconds(60)).to_rfc2822();
        let d = retry_after(&in_a_minute).unwrap();
        assert!(d > Duration::from_secs(50) && d <= Duration::from_secs(60), "{d:?}");
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    }
}
