//! A circuit breaker per provider × capability.
//!
//! Closed: calls flow; it opens after `consecutive_failures` failures in a row, or when the
//! last `window` outcomes hold at least `failure_ratio` failures. Open: calls fail fast until
//! `open_for` has passed. Half-open: exactly one probe call goes through; its success closes
//! the circuit, its failure opens it again. A probe that ends without a verdict (cancelled,
//! the caller's deadline) frees the slot for the next probe.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::config::CircuitConfig;
use crate::metrics;
use crate::types::CircuitState;

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    window: VecDeque<bool>,
}

/// One breaker.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    provider: &'static str,
    operation: &'static str,
    config: CircuitConfig,
    inner: Mutex<Inner>,
}

/// Permission to make one call; report its outcome with [`Ticket::success`] or
/// [`Ticket::failure`]. Dropping it unreported is neutral.
#[derive(Debug)]
pub(crate) struct Ticket {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    pub(crate) fn new(provider: &'static str, operation: &'static str, config: CircuitConfig) -> Arc<Self> {
        metrics::circuit_state(provider, operation, CircuitState::Closed.gauge_value());
        Arc::new(Self {
            provider,
            operation,
            config,
            inner: Mutex::new(Inner { state: State::Closed, consecutive: 0, window: VecDeque::new() }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way that
        // matters more than losing the breaker, so recover the data.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, state: CircuitState) {
        metrics::circuit_state(self.provider, self.operation, state.gauge_value());
    }

    /// Current state (an open circuit whose time is up reads as half-open).
    pub(crate) fn state(&self) -> CircuitState {
        let inner = self.lock();
        match inner.state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if Instant::now() >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Ask to make a call. `None` means fail fast.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Ticket> {
        let mut inner = self.lock();
        let probe = match inner.state {
            State::Closed => false,
            State::Open { until } if Instant::now() >= until => {
                inner.state = State::HalfOpen { probe_in_flight: true };
                self.publish(CircuitState::HalfOpen);
                true
            }
            State::Open { .. } => return None,
            State::HalfOpen { probe_in_flight: true } => return None,
            State::HalfOpen { probe_in_flight: false } => {
                inner.state = State::HalfOpen { probe_in_flight: true };
                true
            }
        };
        Some(Ticket { breaker: Arc::clone(self), probe, reported: false })
    }

    fn open(&self, inner: &mut Inner) {
        inner.state = State::Open { until: Instant::now() + self.config.open_for };
        inner.consecutive = 0;
        inner.window.clear();
        self.publish(CircuitState::Open);
        tracing::warn!(
            provider = self.provider,
            operation = self.operation,
            open_for_ms = self.config.open_for.as_millis() as u64,
            "circuit opened"
        );
    }

    fn record(&self, probe: bool, failed: bool) {
        let mut inner = self.lock();
        if probe {
            if failed {
                self.open(&mut inner);
            } else {
                inner.state = State::Closed;
                inner.consecutive = 0;
                inner.window.clear();
                self.publish(CircuitState::Closed);
                tracing::info!(provider = self.provider, operation = self.operation, "circuit closed");
            }
            return;
        }
        // Outcomes of calls admitted before the circuit opened change nothing any more.
        if !matches!(inner.state, State::Closed) {
            return;
        }
        inner.consecutive = if failed { inner.consecutive + 1 } else { 0 };
        inner.window.push_back(failed);
        while inner.window.len() > self.config.window as usize {
            inner.window.pop_front();
        }
        let failures = inner.window.iter().filter(|f| **f).count();
        let ratio_trips = inner.window.len() >= self.config.window as usize
            && failures as f64 / inner.window.len() as f64 >= self.config.failure_ratio;
        if failed && (inner.consecutive >= self.config.consecutive_failures || ratio_trips) {
            self.open(&mut inner);
        }
    }

    fn release_probe(&self) {
        let mut inner = self.lock();
        if let State::HalfOpen { probe_in_flight: true } = inner.state {
            inner.state = State::HalfOpen { probe_in_flight: false };
        }
    }
}

impl Ticket {
    /// The call worked.
    pub(crate) fn success(&mut self) {
        if !self.reported {
            self.reported = true;
            self.breaker.record(self.probe, false);
        }
    }

    /// The call failed in a way that says the provider is unhealthy.
    pub(crate) fn failure(&mut self) {
        if !self.reported {
            self.reported = true;
            self.breaker.record(self.probe, true);
        }
    }

    /// After a success was reported for the start of a stream, a later failure of the same
    /// stream still counts (a provider that stalls every stream must open its circuit).
    pub(crate) fn late_failure(&mut self) {
        self.breaker.record(false, true);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> CircuitConfig {
        CircuitConfig { consecutive_failures: 3, failure_ratio: 0.5, window: 10, open_for: Duration::from_secs(30) }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_fails_fast_and_closes_after_probe() {
        let b = CircuitBreaker::new("p", "op", config());
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let mut probe = b.try_acquire().unwrap();
        // Only one probe at a time.
        assert!(b.try_acquire().is_none());
        probe.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_dropped_probe_frees_slot() {
        let b = CircuitBreaker::new("p", "op", config());
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        drop(b.try_acquire().unwrap());
        // The dropped probe did not decide anything: another probe may go.
        let mut probe = b.try_acquire().unwrap();
        probe.failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_over_window_opens() {
        let b = CircuitBreaker::new("p", "op", config());
        // Alternate failure/success: never three in a row, but half of the window fails.
        for i in 0..9 {
            let mut t = b.try_acquire().unwrap();
            if i % 2 == 0 { t.failure() } else { t.success() }
        }
        assert_eq!(b.state(), CircuitState::Closed);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_consecutive_count() {
        let b = CircuitBreaker::new("p", "op", CircuitConfig { failure_ratio: 1.0, ..config() });
        for _ in 0..10 {
            b.try_acquire().unwrap().failure();
            b.try_acquire().unwrap().failure();
            b.try_acquire().unwrap().success();
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
