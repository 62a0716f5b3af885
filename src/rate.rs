//! A rate as the command line gives it (`50/s`, `600/m`), for the limits that keep a
//! client, a host or a worker from getting more than its share: `--rate-limit` of the
//! API's clients, `--fetch-rate-per-host` of the cover fetches, and `--max-rate` of a
//! queue's processing, split among the workers. All are governor's GCRA limiters, with
//! bursts of up to one second's (or minute's) worth; those of clients and hosts are
//! [`KeyedLimiter`]s.

use crate::sweep::Sweeps;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

/// A limit per key (a client, a cover host): one small state each, checked without a
/// lock of its own. Keys idle long enough to be full again are forgotten once there
/// are more than `kept`, each time the table has doubled since ([`Sweeps`]).
#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    sweeps: Sweeps,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(limit: RateLimit, kept: usize) -> Self {
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(limit.quota()),
            sweeps: Sweeps::past(kept),
        }
    }

    /// `Ok` if `key` may go now (and it is counted); otherwise how long until it may.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.sweep();
        let refused = self.limiter.check_key(key).err();
        refused.map_or(Ok(()), |refused| {
            Err(refused.wait_time_from(DefaultClock::default().now()))
        })
    }

    /// Waits until `key` may go, and counts it.
    pub async fn until_ready(&self, key: &K) {
        self.sweep();
        self.limiter.until_key_ready(key).await;
    }

    fn sweep(&self) {
        if self.sweeps.due(self.limiter.len()) {
            self.limiter.retain_recent();
            self.sweeps.swept(self.limiter.len());
        }
    }
}

/// Requests per second or per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests that may be made at once, and per `per`.
    pub requests: NonZeroU32,
    pub per: Duration,
}

impl RateLimit {
    /// The quota of a limiter: `requests` spread over `per`, in bursts of as many.
    pub fn quota(self) -> Quota {
        self.share(1)
    }

    /// One of `shares` equal parts of this rate: a request every
    /// `per × shares / requests` (a nanosecond at least), in bursts of that part of
    /// `requests` (one at least).
    pub fn share(self, shares: u64) -> Quota {
        let shares = u32::try_from(shares).unwrap_or(u32::MAX).max(1);
        let period = self.per.saturating_mul(shares) / self.requests.get();
        let burst = NonZeroU32::new(self.requests.get() / shares).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period.max(Duration::from_nanos(1)))
            .expect("a period of at least a nanosecond")
            .allow_burst(burst)
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `N/s` or `N/m`: N requests a second or a minute.
    fn from_str(text: &str) -> Result<Self, String> {
        let wrong = || format!("{text:?}: a rate such as 50/s or 600/m (per second or per minute)");
        let (count, unit) = text.split_once('/').ok_or_else(wrong)?;
        let requests = count.trim().parse::<NonZeroU32>().map_err(|_| wrong())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return Err(wrong()),
        };
        Ok(Self { requests, per })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_keys_are_swept_once_per_doubling_not_on_every_check() {
        let limiter = KeyedLimiter::new("1/m".parse().unwrap(), 100);
        for key in 0..=100 {
            assert_eq!(limiter.check(&key), Ok(()));
        }
        // The next check sweeps: every key is active, so all are kept, and the next
        // sweep waits until there are twice as many.
        assert_eq!(limiter.check(&1_000), Ok(()));
        assert_eq!(limiter.limiter.len(), 102);
        assert!(!limiter.sweeps.due(202));
        assert!(limiter.sweeps.due(203));
        assert!(limiter.check(&0).is_err(), "a key past its limit waits");
    }

    #[test]
    fn a_rate_reads_as_requests_per_second_or_minute() {
        let limit: RateLimit = "50/s".parse().unwrap();
        assert_eq!(
            (limit.requests.get(), limit.per),
            (50, Duration::from_secs(1))
        );
        let limit: RateLimit = " 600 / m ".parse().unwrap();
        assert_eq!(
            (limit.requests.get(), limit.per),
            (600, Duration::from_secs(60))
        );
        for wrong in ["", "50", "0/s", "-1/s", "50/h", "fifty/s", "50/s/s"] {
            assert!(wrong.parse::<RateLimit>().is_err(), "{wrong:?}");
        }
        // Faster than a request a nanosecond: as fast as a limiter goes, no panic.
        let fastest: RateLimit = "4294967295/s".parse().unwrap();
        assert_eq!(
            fastest.quota().replenish_interval(),
            Duration::from_nanos(1)
        );
    }

    #[test]
    fn each_of_the_consumers_gets_its_share_of_the_rate() {
        let rate: RateLimit = "200/s".parse().unwrap();
        let whole = rate.share(1);
        assert_eq!(whole.replenish_interval(), Duration::from_millis(5));
        assert_eq!(whole.burst_size().get(), 200);
        let quarter = rate.share(4);
        assert_eq!(quarter.replenish_interval(), Duration::from_millis(20));
        assert_eq!(quarter.burst_size().get(), 50);
        // More consumers than deliveries a period: each still takes one at a time.
        let thin = "2/s".parse::<RateLimit>().unwrap().share(4);
        assert_eq!(thin.replenish_interval(), Duration::from_secs(2));
        assert_eq!(thin.burst_size().get(), 1);
    }
}
