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
use crate::rate::RateLimit;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::DefaultKeyedRateLimiter;
use governor::clock::{Clock, DefaultClock};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Addresses kept before the idle ones are forgotten.
const ADDRESSES_KEPT: usize = 10_000;

/// The limiter the API's requests pass: one per API instance.
#[derive(Clone)]
pub struct ClientLimiter {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl ClientLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(limit.quota())),
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
