//! Admission control: while the outbox holds more than `--max-outbox-backlog` events
//! waiting for the broker, or (with `--max-outbox-age`) its oldest has waited longer
//! than that, catalog writes are refused with 503 and `Retry-After`. Reads are still
//! served, and `/readyz` says why writes are refused.
//!
//! A write commits its event to the outbox whether or not the broker takes it, so a
//! broker that is away, or slower than the writes, lets the outbox grow without end:
//! the database fills, and the events written last wait longest. Past the limit,
//! writes push back on their clients instead. Writes already accepted stay in the
//! outbox, and are all published once the broker takes them again.
//!
//! The backlog is read from the queue sampler's latest sample (`telemetry::queues`,
//! once a second), so admission costs a write no round trip; a burst may run past the
//! limit by what one second of writes adds.

use super::ApiContext;
use super::error::ApiError;
use crate::telemetry::queues::{OutboxSample, QueueWatch};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::time::Duration;

/// The default `--max-outbox-backlog`: about half a gigabyte of outbox rows.
pub const DEFAULT_MAX_BACKLOG: u64 = 1_000_000;

/// When a write may be tried again, when the drain rate says nothing (the broker is
/// away): long enough not to hammer, short enough to notice its return.
const RETRY_UNKNOWN: Duration = Duration::from_secs(10);
/// The longest `Retry-After` given.
const RETRY_AT_MOST: Duration = Duration::from_secs(60);

/// What the outbox may hold before writes are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Events waiting for the broker (`--max-outbox-backlog`).
    pub max_backlog: u64,
    /// The longest the oldest of them may have waited (`--max-outbox-age`); none: no
    /// limit.
    pub max_age: Option<Duration>,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_backlog: DEFAULT_MAX_BACKLOG,
            max_age: None,
        }
    }
}

/// Why writes are refused, and when to try again.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub reason: String,
    pub retry_after: Duration,
}

impl AdmissionLimits {
    /// Whether a write may go in with the outbox at `backlog`; a refusal says why and
    /// when to try again: when the excess would be drained at the current rate.
    pub fn refusal(&self, backlog: OutboxSample) -> Option<Refusal> {
        let age = backlog.oldest_age.unwrap_or_default();
        let (reason, excess) = if backlog.pending > self.max_backlog {
            let reason = format!(
                "{} events wait in the outbox for the broker, past --max-outbox-backlog {}",
                backlog.pending, self.max_backlog
            );
            (reason, backlog.pending - self.max_backlog)
        } else if let Some(max_age) = self.max_age.filter(|max_age| age > *max_age) {
            let reason = format!(
                "the oldest event in the outbox has waited {:.0} s for the broker, past \
                 --max-outbox-age {}",
                age.as_secs_f64(),
                humantime::format_duration(max_age)
            );
            (reason, backlog.pending)
        } else {
            return None;
        };
        let retry_after = match backlog.drain_rate {
            Some(rate) if rate >= 1.0 => Duration::from_secs_f64(excess as f64 / rate),
            _ => RETRY_UNKNOWN,
        };
        Some(Refusal {
            reason: format!("{reason}: catalog writes are refused until it drains"),
            retry_after: retry_after.clamp(Duration::from_secs(1), RETRY_AT_MOST),
        })
    }
}

impl AdmissionLimits {
    /// The refusal a catalog write gets now, from the queue sampler's latest sample of
    /// the outbox; `None` while there is room, or before the first sample.
    pub fn refusal_now(&self, queues: &QueueWatch) -> Option<Refusal> {
        queues.outbox().and_then(|outbox| self.refusal(outbox))
    }
}

/// A catalog write the outbox has room for; refused with 503 and `Retry-After`
/// otherwise.
pub struct Admitted;

impl FromRequestParts<ApiContext> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        match ctx.admission.refusal_now(&ctx.queues) {
            None => Ok(Self),
            Some(refusal) => Err(ApiError::AtCapacity {
                detail: refusal.reason,
                retry_after: refusal.retry_after,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: AdmissionLimits = AdmissionLimits {
        max_backlog: 1_000,
        max_age: Some(Duration::from_secs(60)),
    };

    fn backlog(pending: u64, age_seconds: u64, drain_rate: Option<f64>) -> OutboxSample {
        OutboxSample {
            pending,
            oldest_age: Some(Duration::from_secs(age_seconds)),
            drain_rate,
        }
    }

    #[test]
    fn writes_are_admitted_up_to_each_limit() {
        assert_eq!(LIMITS.refusal(backlog(1_000, 60, None)), None);
        assert_eq!(LIMITS.refusal(backlog(0, 0, None)), None);
        let unlimited_age = AdmissionLimits {
            max_age: None,
            ..LIMITS
        };
        assert_eq!(unlimited_age.refusal(backlog(10, 86_400, None)), None);
    }

    #[test]
    fn past_a_limit_writes_are_refused_saying_which_and_when_to_retry() {
        let refused = LIMITS.refusal(backlog(3_000, 5, Some(500.0))).unwrap();
        assert!(
            refused.reason.contains("--max-outbox-backlog 1000"),
            "{refused:?}"
        );
        // 2,000 events past the limit, drained at 500 a second.
        assert_eq!(refused.retry_after, Duration::from_secs(4));

        let refused = LIMITS.refusal(backlog(10, 61, Some(0.0))).unwrap();
        assert!(
            refused.reason.contains("--max-outbox-age 1m"),
            "{refused:?}"
        );
        assert_eq!(refused.retry_after, RETRY_UNKNOWN, "nothing drains");

        let slow = LIMITS.refusal(backlog(1_000_000, 0, Some(2.0))).unwrap();
        assert_eq!(slow.retry_after, RETRY_AT_MOST);
        let fast = LIMITS.refusal(backlog(1_001, 0, Some(50_000.0))).unwrap();
        assert_eq!(fast.retry_after, Duration::from_secs(1));
    }
}
