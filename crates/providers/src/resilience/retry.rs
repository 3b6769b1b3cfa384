//! Backoff between attempts on the same provider: exponential with full jitter, or the
//! provider's `Retry-After` when it gave one.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::RetryConfig;

/// How long to wait before attempt number `attempt + 1` (attempt counts from 0), or `None`
/// when the provider asked for a longer pause than we accept (fail over instead).
pub(crate) fn backoff(config: &RetryConfig, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
    let ceiling = config.base.saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX)).min(config.max_backoff);
    let jitter = if ceiling.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_micros(rand::rng().random_range(0..=ceiling.as_micros() as u64))
    };
    match retry_after {
        Some(wait) if wait > config.max_retry_after => None,
        // Honour the provider's pause, plus a little jitter so callers do not stampede.
        Some(wait) => Some(wait + jitter / 4),
        None => Some(jitter),
    }
}

/// Parse a `Retry-After` header: delta-seconds (fractions accepted, as some servers send them)
/// or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let when = parse_http_date(value)?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate only (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 requires senders to use.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || day == 0 || day > 31 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days.checked_mul(86_400)? + (h * 3600 + m * 60 + s) as i64;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RetryConfig {
        RetryConfig {
            max_retries: 3,
            base: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        for attempt in 0..10 {
            let ceiling = Duration::from_millis(100 * (1 << attempt.min(4))).min(Duration::from_secs(1));
            let wait = backoff(&cfg(), attempt, None).unwrap();
            assert!(wait <= ceiling, "attempt {attempt}: {wait:?} > {ceiling:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| backoff(&cfg(), 3, None).unwrap()).collect();
        assert!(distinct.len() > 1, "no jitter");
    }

    #[test]
    fn retry_after_is_honoured_or_refused() {
        let wait = backoff(&cfg(), 0, Some(Duration::from_secs(2))).unwrap();
        assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_millis(2100));
        assert_eq!(backoff(&cfg(), 0, Some(Duration::from_secs(6))), None);
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }
}
