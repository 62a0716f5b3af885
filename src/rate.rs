//! A rate as the command line gives it (`50/s`, `600/m`), for the limits that keep a
//! client or a host from getting more than its share: `--rate-limit` of the API's
//! clients, and `--fetch-rate-per-host` of the cover fetches. Both are governor's GCRA
//! limiters, keyed by client or by host, with bursts of up to one second's (or
//! minute's) worth.

use governor::Quota;
use std::num::NonZeroU32;
use std::time::Duration;

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
        Quota::with_period(self.per / self.requests.get())
            .expect("a period of at least a nanosecond per request")
            .allow_burst(self.requests)
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
    }
}
