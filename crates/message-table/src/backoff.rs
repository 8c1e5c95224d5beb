//! Retry timing shared by the outbox (publish retries) and the inbox (handler retries).
//!
//! Exponential backoff with "equal jitter": the delay doubles per attempt up to a cap, and
//! half of it is random. The random half spreads retries of many rows that failed together
//! (a broker restart fails a whole batch) so they do not all come back in the same instant;
//! the fixed half keeps a floor so a failing dependency is not hammered.

use std::time::Duration;

use chrono::{DateTime, Utc};

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Delay after the first failure (before jitter).
    pub base: Duration,
    /// Upper bound of the delay (before jitter).
    pub max: Duration,
    /// After this many failed attempts the message is `dead`.
    pub max_attempts: i32,
}

impl RetryPolicy {
    /// Delay before the next try, given how many attempts have failed so far (>= 1).
    pub fn delay(&self, failed_attempts: i32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).clamp(0, 30) as u32;
        let full = self
            .base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.max);
        let half = full / 2;
        let jitter = if half.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(rand::rng().random_range(0..=half.as_nanos() as u64))
        };
        half + jitter
    }

    /// True when a message that has now failed `failed_attempts` times must not be retried.
    pub fn exhausted(&self, failed_attempts: i32) -> bool {
        failed_attempts >= self.max_attempts
    }
}

/// How long a periodic worker sleeps: until `next` (its next due event), but at least a few
/// milliseconds (no busy loop) and at most `max` (so work from other instances is seen).
pub fn sleep_until(next: Option<DateTime<Utc>>, max: Duration) -> Duration {
    match next {
        Some(at) => (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_millis(5), max),
        None => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_attempts: 5,
        }
    }

    #[test]
    fn delay_doubles_within_jitter_bounds_and_is_capped() {
        let p = policy();
        for attempt in 1..=12 {
            let full = (100u64 << (attempt - 1).min(20)).min(10_000);
            for _ in 0..50 {
                let d = p.delay(attempt).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d}ms not in [{}, {full}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let p = policy();
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| p.delay(4)).collect();
        assert!(distinct.len() > 1, "20 delays were all equal: no jitter");
    }

    #[test]
    fn exhausted_at_max_attempts() {
        let p = policy();
        assert!(!p.exhausted(4));
        assert!(p.exhausted(5));
        assert!(p.exhausted(6));
    }
}
