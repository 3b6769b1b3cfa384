//! Graceful shutdown: SIGTERM/SIGINT → readiness fails (HTTP 503, gRPC NOT_SERVING) → after
//! `SHUTDOWN_DELAY_SECONDS` listeners close and in-flight work drains for at most
//! `SHUTDOWN_TIMEOUT_SECONDS` → the caller flushes telemetry (bounded as well). A second signal
//! while draining asks for the rest to end at once ([`Shutdown::forced`]): long-lived work such as
//! live calls, which may drain for much longer than requests, listens to it.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The shutdown sequence of one service. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    draining: CancellationToken,
    stopping: CancellationToken,
    forced: CancellationToken,
    delay: Duration,
    timeout: Duration,
}

impl Shutdown {
    pub fn new(delay: Duration, timeout: Duration) -> Self {
        Self {
            draining: CancellationToken::new(),
            stopping: CancellationToken::new(),
            forced: CancellationToken::new(),
            delay,
            timeout,
        }
    }

    /// Starts the sequence: readiness fails now; listeners stop after the delay.
    pub fn trigger(&self) {
        if self.draining.is_cancelled() {
            return;
        }
        self.draining.cancel();
        let stopping = self.stopping.clone();
        let delay = self.delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            stopping.cancel();
        });
    }

    /// Asks whatever still drains to end now (a second SIGTERM or SIGINT); starts the sequence
    /// too if it had not begun.
    pub fn force(&self) {
        self.trigger();
        self.forced.cancel();
    }

    /// Resolves when a second signal asked for the drain to end at once.
    pub async fn forced(&self) {
        self.forced.cancelled().await
    }

    pub fn is_forced(&self) -> bool {
        self.forced.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub async fn draining(&self) {
        self.draining.cancelled().await
    }

    /// Resolves when listeners should stop accepting and in-flight work should finish.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    /// The drain bound (`SHUTDOWN_TIMEOUT_SECONDS`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// A token cancelled when listeners stop (for long-lived work such as streams).
    pub fn stopping_token(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Marks `health` as draining as soon as shutdown begins: HTTP readiness at once, gRPC
    /// health statuses from a task a moment later.
    pub fn attach(&self, health: &Health) {
        health.link_shutdown(self.draining.clone());
        let this = self.clone();
        let health = health.clone();
        tokio::spawn(async move {
            this.draining().await;
            health.set_draining().await;
        });
    }

    /// Triggers the sequence on SIGTERM or SIGINT (Ctrl-C); a second one forces it.
    pub fn listen_for_signals(&self) {
        let this = self.clone();
        let mut signals = Signals::new();
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!("shutdown signal received, draining");
            this.trigger();
            signals.next().await;
            tracing::warn!("second shutdown signal received, ending what still drains now");
            this.force();
        });
    }

    /// Runs a server future that finishes gracefully after [`Shutdown::stopping`]; if it has not
    /// finished `timeout` after stopping began, gives up on it and returns `None`.
    pub async fn run_bounded<F: Future>(&self, server: F) -> Option<F::Output> {
        let deadline = async {
            self.stopping().await;
            tokio::time::sleep(self.timeout).await;
        };
        tokio::select! {
            out = server => Some(out),
            () = deadline => {
                tracing::warn!(timeout_seconds = self.timeout.as_secs_f64(), "drain timed out, closing remaining connections");
                None
            }
        }
    }
}

/// SIGTERM and SIGINT, listened to once for the life of the process (so that none is missed
/// between the first and the second).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self { term: signal(SignalKind::terminate()).ok() }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = term => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stopping_follows_draining_after_the_delay() {
        let s = Shutdown::new(Duration::from_secs(5), Duration::from_secs(1));
        assert!(!s.is_draining());
        s.trigger();
        assert!(s.is_draining());
        let start = tokio::time::Instant::now();
        s.stopping().await;
        assert_eq!(start.elapsed().as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn force_starts_the_sequence_and_resolves_forced() {
        let s = Shutdown::new(Duration::ZERO, Duration::from_secs(1));
        assert!(!s.is_forced());
        s.trigger();
        assert!(!s.is_forced());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.forced().await }
        });
        s.force();
        assert!(s.is_forced() && s.is_draining());
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        let fresh = Shutdown::new(Duration::ZERO, Duration::from_secs(1));
        fresh.force();
        assert!(fresh.is_draining(), "a forced shutdown has begun too");
    }

    #[tokio::test(start_paused = true)]
    async fn run_bounded_gives_up_on_a_server_that_never_drains() {
        let s = Shutdown::new(Duration::ZERO, Duration::from_secs(3));
        s.trigger();
        let out = s.run_bounded(std::future::pending::<()>()).await;
        assert!(out.is_none());
        let s = Shutdown::new(Duration::ZERO, Duration::from_secs(3));
        assert_eq!(s.run_bounded(async { 7 }).await, Some(7));
    }
}
