//! The optional per-client rate limit (`--rate-limit 50/s`): each client address may
//! make that many API requests a second on average, in bursts of up to as many; past
//! it, a request gets 429 with `Retry-After` and does nothing.
//!
//! Clients are told apart by their address, not by the token they send: a token is
//! checked only after the limit, and keying by it would let a client that sends a new
//! made-up token with each request escape the limit. An IPv6 client is known by its
//! /64 network, the least a site is given, since any host in it may take a new address
//! for each request. Behind a proxy every client has the proxy's address, so limit
//! there. The probes and `/metrics` are never limited:
//! an orchestrator or Prometheus must always get through.
//!
//! Built on a [`KeyedLimiter`]: one small state per client, the idle ones forgotten
//! once there are many.

use super::error::ApiError;
use crate::rate::{KeyedLimiter, RateLimit};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Clients kept before the idle ones are forgotten.
const CLIENTS_KEPT: usize = 10_000;

/// The limiter the API's requests pass: one per API instance.
#[derive(Clone)]
pub struct ClientLimiter {
    limiter: Arc<KeyedLimiter<IpAddr>>,
}

impl ClientLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limiter: Arc::new(KeyedLimiter::new(limit, CLIENTS_KEPT)),
        }
    }

    /// `None` if the client at `address` may make a request now; otherwise how long
    /// until it may.
    fn wait(&self, address: IpAddr) -> Option<Duration> {
        self.limiter.check(&client(address)).err()
    }
}

/// What the limit knows a client by: its IPv4 address (also when mapped into IPv6), or
/// the /64 network of its IPv6 address.
fn client(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        },
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

    #[test]
    fn an_ipv6_client_is_its_64_network_and_a_mapped_ipv4_one_its_address() {
        let limiter = ClientLimiter::new("2/s".parse().unwrap());
        let address = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(limiter.wait(address("2001:db8:1:2::1")), None);
        assert_eq!(limiter.wait(address("2001:db8:1:2:ffff::9")), None);
        assert!(
            limiter.wait(address("2001:db8:1:2::3")).is_some(),
            "a third address of the same /64 shares its limit"
        );
        assert_eq!(
            limiter.wait(address("2001:db8:1:3::1")),
            None,
            "another /64"
        );
        assert_eq!(limiter.wait(address("192.0.2.7")), None);
        assert_eq!(limiter.wait(address("::ffff:192.0.2.7")), None);
        assert!(
            limiter.wait(address("192.0.2.7")).is_some(),
            "the same client"
        );
    }
}
