//! Live calls across replicas, on the database the replicas already share.
//!
//! - **Ownership and leases.** A live call records the replica process that carries it
//!   (`lease_owner`: `REPLICA_ID#<nonce>`, the nonce new at every start, so a restarted replica
//!   never renews what its previous life left) and a lease that the owner renews every third of
//!   `LIVE_LEASE_SECONDS`, in one statement for all its calls.
//! - **The reaper.** Every replica ends live calls whose lease expired (`failed`, "replica lost")
//!   and queued calls whose media token expired unused (`failed`, "media never connected").
//!   Each end is a conditional update, so a call is ended once however many replicas reap. A
//!   replica reaps only after a whole lease of unbroken database contact, so that after an
//!   outage the owners renew before anyone reaps.
//! - **Commands to a call wherever it runs.** [`Replica::hang_up`] stops a call's media session:
//!   on this replica at once, on the others through PostgreSQL `NOTIFY` on [`CHANNEL`] (SQLite
//!   runs one replica: the in-process path is all there is). A notice missed while the listening
//!   connection was down is caught by the next lease renewal, which returns the calls the replica
//!   still owns: a session whose call is no longer among them is stopped.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::LiveCalls;
use crate::{
    db::{Database, notices::Notice},
    metrics, model,
};

/// The PostgreSQL notification channel of call commands.
pub const CHANNEL: &str = "voice_call_commands";

/// This replica's identity, leases and drain.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// `REPLICA_ID`: names this replica on the calls it carries (logs, the database); default
    /// the host name and process id. Kubernetes sets the pod name.
    pub id: String,
    /// `LIVE_LEASE_SECONDS`: a live call whose owner has not renewed it for this long is ended
    /// by another replica ("replica lost"), default 15.
    pub lease: Duration,
    /// `LIVE_DRAIN_TIMEOUT_SECONDS`: at shutdown, how long live calls may go on before they are
    /// ended, default 300.
    pub drain_timeout: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self { id: default_replica_id(), lease: Duration::from_secs(15), drain_timeout: Duration::from_secs(300) }
    }
}

/// The host name and process id.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "call-api".into());
    format!("{host}-{}", std::process::id())
}

impl ReplicaConfig {
    pub fn read(r: &mut telemetry::Reader<'_>) -> Self {
        let d = Self::default();
        let id = r.string("REPLICA_ID").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).unwrap_or(d.id);
        if id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic() && c != '#') {
            r.error("REPLICA_ID", "must be at most 128 printable characters without spaces or #");
        }
        let lease = r.seconds_or("LIVE_LEASE_SECONDS", d.lease, 3600.0);
        if lease < Duration::from_millis(500) {
            r.error("LIVE_LEASE_SECONDS", "must be at least 0.5 seconds");
        }
        let drain_timeout = r.seconds_or("LIVE_DRAIN_TIMEOUT_SECONDS", d.drain_timeout, 86_400.0);
        Self { id, lease, drain_timeout }
    }
}

/// This replica among the others. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    /// `REPLICA_ID`.
    pub id: Arc<str>,
    /// What this process writes as the owner of its live calls: `REPLICA_ID#<nonce>`.
    pub lease_owner: Arc<str>,
    pub lease: Duration,
    db: Database,
    live: LiveCalls,
    /// Asks the lease task for a check now (after the notice connection came back).
    recheck: Arc<Notify>,
}

impl Replica {
    pub fn new(config: &ReplicaConfig, db: Database, live: LiveCalls) -> Self {
        let nonce = hex::encode(rand::random::<[u8; 4]>());
        Self {
            id: config.id.as_str().into(),
            lease_owner: format!("{}#{nonce}", config.id).into(),
            lease: config.lease,
            db,
            live,
            recheck: Arc::new(Notify::new()),
        }
    }

    /// When a lease taken now expires.
    pub fn lease_expiry(&self) -> chrono::DateTime<chrono::Utc> {
        model::now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(15))
    }

    /// Stops call `id`'s media session wherever it runs: here at once, on other replicas through
    /// the database. The call must already be ended in the database (the session then finds it
    /// ended and does not end it again).
    pub async fn hang_up(&self, id: Uuid) {
        self.live.hang_up(id, "ended through the API or by the carrier");
        if let Err(e) = self.db.notify(CHANNEL, &format!("hangup {id}")).await {
            // The owner's next lease renewal finds the call ended and stops it.
            tracing::warn!(call_id = %id, error = %e, "could not notify the other replicas of a hang-up");
        }
    }

    /// Starts the lease task (renewal and reaper) and, on PostgreSQL, the notice listener; both
    /// stop with `stop`.
    pub fn spawn(&self, stop: CancellationToken) {
        tokio::spawn(self.clone().leases(stop.clone()));
        // On PostgreSQL, commands from other replicas; after each (re)connection the lease task
        // checks at once for the notices missed meanwhile.
        let replica = self.clone();
        self.db.spawn_follower(CHANNEL, "call-api-listener", stop, move |notice| match notice {
            Notice::Connected => replica.recheck.notify_one(),
            Notice::Payload(payload) => replica.command(payload),
        });
    }

    async fn leases(self, stop: CancellationToken) {
        let tick = self.lease / 3;
        // Since when the database has answered every statement (None: not now).
        let mut connected_since: Option<Instant> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
                () = self.recheck.notified() => {}
            }
            let checked_at = Instant::now();
            let now = model::now();
            match self.db.renew_leases(&self.lease_owner, self.lease_expiry()).await {
                Ok(owned) => {
                    connected_since.get_or_insert(checked_at);
                    if std::mem::take(&mut failing) {
                        tracing::info!("live-call leases renewed again");
                    }
                    self.live.keep_only(&owned, checked_at);
                }
                Err(e) => {
                    connected_since = None;
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "could not renew the leases of this replica's live calls");
                    }
                    continue;
                }
            }
            if connected_since.is_none_or(|since| since.elapsed() < self.lease) {
                continue;
            }
            match self.db.reap(now).await {
                Ok(ended) => {
                    for (call, reason) in ended {
                        metrics::call_reaped(reason.label());
                        metrics::call_ended(
                            call.provider,
                            model::Outcome::Failed,
                            call.duration_seconds.unwrap_or_default(),
                        );
                        tracing::warn!(call_id = %call.id, reason = reason.end_reason(), "call ended by the reaper");
                        // Should its owner be alive after all (cut off from the database for a
                        // lease), it stops the session too.
                        if let Err(e) = self.db.notify(CHANNEL, &format!("hangup {}", call.id)).await {
                            tracing::debug!(error = %e, "could not notify a reaped call");
                        }
                    }
                }
                Err(e) => {
                    connected_since = None;
                    tracing::warn!(error = %e, "the reaper could not check for lost calls");
                }
            }
        }
    }

    fn command(&self, payload: &str) {
        match payload.split_once(' ') {
            Some(("hangup", id)) => match Uuid::try_parse(id) {
                Ok(id) => {
                    self.live.hang_up(id, "ended on another replica");
                }
                Err(_) => tracing::warn!("ignored a malformed call command"),
            },
            _ => tracing::warn!("ignored an unknown call command"),
        }
    }
}
