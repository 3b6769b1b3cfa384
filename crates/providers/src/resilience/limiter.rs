//! Per-provider concurrency limit: a full provider answers at once with `Saturated`
//! (resource exhausted) instead of queueing, so callers and the failover order can react.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProviderError;
use crate::metrics;

/// The limit of one provider.
#[derive(Debug)]
pub(crate) struct Limiter {
    provider: &'static str,
    limit: usize,
    semaphore: Arc<Semaphore>,
}

/// A slot; the in-flight gauge counts it until it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    provider: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl Limiter {
    pub(crate) fn new(provider: &'static str, limit: usize) -> Self {
        metrics::inflight(provider, 0.0);
        Self { provider, limit, semaphore: Arc::new(Semaphore::new(limit)) }
    }

    pub(crate) fn try_acquire(&self) -> Result<Slot, ProviderError> {
        match Arc::clone(&self.semaphore).try_acquire_owned() {
            Ok(permit) => {
                metrics::inflight(self.provider, 1.0);
                Ok(Slot { provider: self.provider, _permit: permit })
            }
            Err(_) => Err(ProviderError::Saturated { provider: self.provider, limit: self.limit }),
        }
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::inflight(self.provider, -1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_limiter_says_saturated_and_frees_on_drop() {
        let l = Limiter::new("p", 2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        let err = l.try_acquire().unwrap_err();
        assert_eq!(err.code().as_str(), "resource_exhausted");
        drop(a);
        assert_eq!(l.available(), 1);
        assert!(l.try_acquire().is_ok());
    }
}
