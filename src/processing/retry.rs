//! What happens after a failed attempt: retry later, or give up.
//!
//! Failures say which kind they are, as apalis does with its error types: a
//! [`Failure::Permanent`] cannot succeed by trying again (a refused URL, a corrupt image)
//! and is dead-lettered at once; a [`Failure::Transient`] one (a timeout, a 503) is retried
//! with exponential backoff and jitter until [`RetryPolicy::max_attempts`].

use rand::Rng;
use std::time::Duration;

/// Why an attempt failed, and whether trying again could help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Transient(String),
    /// Not tried: a dependency is known to be failing (a cover host's open circuit
    /// breaker). Retried after `wait`, and not counted as an attempt.
    #[error("{reason}")]
    Deferred { reason: String, wait: Duration },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each one after.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt after failed attempt `attempt` (1-based), or
    /// `None` when it was the last one allowed (a deferral, not an attempt, waits its
    /// own time). Jitter keeps the delay within
    /// [½·d, d] of the exponential schedule d, so retries of a burst spread out without
    /// ever shrinking the backoff by more than half. It moves in 16 steps: enough to
    /// spread a burst, and few enough that a burst's retries share a handful of
    /// RabbitMQ delay queues rather than declaring one each.
    pub fn delay_after(&self, attempt: u32, failure: &Failure) -> Option<Duration> {
        if matches!(failure, Failure::Permanent(_)) || attempt >= self.max_attempts {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(31);
        let full = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let step = rand::rng().random_range(0..=16u32);
        Some(full.mul_f64(0.5 + f64::from(step) / 32.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> Failure {
        Failure::Transient("timeout".into())
    }

    #[test]
    fn delays_grow_until_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let delays: Vec<_> = (1..10)
            .map(|n| policy.delay_after(n, &transient()).unwrap())
            .collect();
        for (n, delay) in delays.iter().enumerate() {
            let full = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(1));
            assert!(
                *delay <= full && *delay >= full / 2,
                "attempt {}: {delay:?}",
                n + 1
            );
        }
    }

    #[test]
    fn the_last_attempt_is_not_retried() {
        let policy = RetryPolicy::default();
        assert!(policy.delay_after(4, &transient()).is_some());
        assert_eq!(policy.delay_after(5, &transient()), None);
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let failure = Failure::Permanent("corrupt image".into());
        assert_eq!(RetryPolicy::default().delay_after(1, &failure), None);
    }
}
