//! Circuit breakers, retry backoff and concurrency limits: the policies the gateway applies
//! around every provider call.

pub(crate) mod breaker;
pub(crate) mod limiter;
pub(crate) mod retry;
