//! The optional per-client rate limit (`--rate-limit 50/s`): each client address may
//! make that many API requests a second on average, in bursts of up to as many; past
//! it, a request gets 429 with `Retry-After` and does nothing.
//!
//! Clients are told apart by their address, not by the token they send: a token is
//! checked only after the limit, and keying by it would let a client that sends a new
//! made-up token with each request escape the limit. Behind a proxy every client has
//! the proxy's address, so limit there. The probes and `/metrics` are never limited:
//! an orchestrator or Prometheus must always get through.
//!
//! Built on governor's keyed GCRA limiter: one small state per address, checked
//! without a lock of its own. Addresses idle long enough to be full again are
//! forgotten once there are many, so the table stays bounded.

use super::error::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Addresses kept before the idle ones are forgotten.
const ADDRESSES_KEPT: usize = 10_000;

/// `--rate-limit`: requests per second (or minute) per client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests a client may make at once, and per `per`.
    pub requests: NonZeroU32,
    pub per: Duration,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `N/s` or `N/m`: N requests a second or a minute.
    fn from_str(text: &str) -> Result<Self, String> {
        let wrong =
            || format!("{text:?}: a rate such as 50/s or 600/m (requests per second or minute)");
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

/// The limiter the API's requests pass: one per API instance.
#[derive(Clone)]
pub struct ClientLimiter {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl ClientLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::with_period(limit.per / limit.requests.get())
            .expect("a period of at least a nanosecond per request")
            .allow_burst(limit.requests);
        Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
        }
    }

    /// `None` if the client at `address` may make a request now; otherwise how long
    /// until it may.
    fn wait(&self, address: IpAddr) -> Option<Duration> {
        if self.limiter.len() > ADDRESSES_KEPT {
            self.limiter.retain_recent();
        }
        let refused = self.limiter.check_key(&address).err()?;
        Some(refused.wait_time_from(DefaultClock::default().now()))
    }
}

/// The middleware: requests under `/api/` past their client's limit get 429.
pub async fn limit(State(limiter): State<ClientLimiter>, request: Request, next: Next) -> Response {
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    if let Some(address) = address.filter(|_| request.uri().path().starts_with("/api/"))
        && let Some(wait) = limiter.wait(address)
    {
        return ApiError::TooManyRequests {
            detail: format!(
                "{address} made more requests than --rate-limit allows: try again after \
                 Retry-After"
            ),
            retry_after: wait,
        }
        .into_response();
    }
    next.run(request).await
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

    #[test]
    fn each_address_has_its_own_burst_then_waits() {
        let limiter = ClientLimiter::new("3/s".parse().unwrap());
        let (one, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(limiter.wait(one), None);
        }
        let wait = limiter.wait(one).expect("past its burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
        assert_eq!(
            limiter.wait(other),
            None,
            "another address is not held back"
        );
    }
}
