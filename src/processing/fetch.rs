//! Fetching a game's cover from its `image_url`, with an SSRF guard.
//!
//! `image_url` is user input, and the worker that fetches it sits inside the network:
//! without a guard, anyone who can create a game could make the worker request the
//! cloud metadata service (169.254.169.254), an admin page on localhost or a database
//! port. Unless [`FetchConfig::allow_private`] is set, [`CoverFetcher`] only talks to
//! globally routable addresses:
//!
//! 1. Only `http` and `https`, without credentials (`user:password@`, which the API
//!    refuses at write and which no error may repeat); a host written as an IP address
//!    is vetted before any request is made.
//! 2. A host name is resolved by our own resolver, plugged into reqwest: it resolves with
//!    [`tokio::net::lookup_host`], refuses the host if *any* address is not public, and
//!    hands reqwest only the addresses it vetted. reqwest connects to exactly those, so
//!    DNS rebinding cannot swap the address between the check and the connection. This
//!    is what pinning each request with `ClientBuilder::resolve` would achieve, without
//!    building a client (and reloading the system's root certificates) per fetch, and
//!    the connection pool only ever holds connections to vetted addresses.
//! 3. No proxy: a proxy would resolve the host itself, out of reach of step 2.
//! 4. Redirects are followed by hand, up to [`FetchConfig::max_redirects`], and every
//!    hop goes through steps 1 and 2 again.
//! 5. One timeout covers the whole fetch (lookups, redirects, body), and the body is
//!    streamed and abandoned as soon as it exceeds [`FetchConfig::max_bytes`].

pub mod breaker;

use super::retry::Failure;
use crate::rate::{KeyedLimiter, RateLimit};
use crate::shutdown::Shutdown;
use crate::storage::Circuits;
use breaker::{BreakerConfig, Breakers};
use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, LOCATION};
use reqwest::{Response, Url, redirect};
use url::Host;

use crate::domain::{has_credentials, redacted_url};

/// Hosts whose fetch rate is remembered before the idle ones are forgotten.
const HOSTS_KEPT: usize = 10_000;

/// Limits for one fetch.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// For the whole fetch: every lookup and redirect, and the body to its last byte.
    pub timeout: Duration,
    /// Largest body accepted, in bytes.
    pub max_bytes: usize,
    /// Lets loopback and private addresses through: for tests, and for deployments that
    /// serve covers from an internal host on purpose.
    pub allow_private: bool,
    /// Redirects followed before giving up.
    pub max_redirects: u8,
    /// When a host's circuit breaker opens ([`breaker`]).
    pub breaker: BreakerConfig,
    /// Fetches from one host at most this often; more wait their turn.
    pub rate_per_host: Option<RateLimit>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_bytes: 10 * 1024 * 1024,
            allow_private: false,
            max_redirects: 3,
            breaker: BreakerConfig::default(),
            rate_per_host: None,
        }
    }
}

/// Why a cover could not be fetched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("refused: {0}")]
    Refused(String),
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("timed out")]
    Timeout,
    #[error("invalid URL {0}")]
    InvalidUrl(String),
    #[error("network error: {0}")]
    Network(String),
    /// The host's circuit breaker is open: no request was made ([`breaker`]).
    #[error("{host} failed repeatedly: its circuit breaker is open for {}", humantime::format_duration(*.wait))]
    CircuitOpen { host: String, wait: Duration },
}

impl FetchError {
    /// How this failure of a fetch of `url` counts for the game: an open breaker defers
    /// it, a refusal fails it, anything else may pass on a retry.
    pub fn failure(self, url: &str) -> Failure {
        let message = format!("fetching {}: {self}", redacted_url(url));
        match self {
            Self::CircuitOpen { wait, .. } => Failure::Deferred {
                reason: message,
                wait,
            },
            error if error.is_permanent() => Failure::Permanent(message),
            _ => Failure::Transient(message),
        }
    }

    /// True when retrying cannot help: a refused target, a 4xx answer, a body over the
    /// limit, an invalid URL. 408 and 429 are the exceptions among 4xx: they ask the client
    /// to come back later.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Refused(_) | Self::TooLarge { .. } | Self::InvalidUrl(_) => true,
            Self::Status(status) => (400..500).contains(status) && !matches!(status, 408 | 429),
            Self::Timeout | Self::Network(_) | Self::CircuitOpen { .. } => false,
        }
    }

    /// Our resolver's refusal reaches us wrapped in reqwest's and hyper's errors: bring it
    /// back out typed, so a refused host name is [`FetchError::Refused`] like a refused IP.
    fn from_reqwest(err: reqwest::Error) -> Self {
        let chain = || error_chain(&err);
        if let Some(ours) = chain().find_map(|e| e.downcast_ref::<FetchError>()) {
            return ours.clone();
        }
        if err.is_timeout() {
            return Self::Timeout;
        }
        let message: Vec<String> = chain().map(ToString::to_string).collect();
        Self::Network(message.join(": "))
    }
}

/// An error followed by its sources, outermost first.
fn error_chain<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

/// A fetch [`CoverFetcher::admit`] let out: its URL, and its host (`HOST:PORT`), if it
/// has one.
#[derive(Debug)]
pub struct Admitted {
    url: Url,
    host: Option<String>,
}

/// Fetches covers over HTTP(S). Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct CoverFetcher {
    client: reqwest::Client,
    config: FetchConfig,
    breakers: Arc<Breakers>,
    /// `--fetch-rate-per-host`, keyed by `HOST:PORT`.
    host_rates: Option<Arc<KeyedLimiter<String>>>,
}

impl CoverFetcher {
    pub fn new(config: FetchConfig) -> Self {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .dns_resolver(VettingResolver {
                allow_private: config.allow_private,
            })
            .user_agent(concat!("retrocat/", env!("CARGO_PKG_VERSION")))
            .build()
            // Building fails only when TLS cannot be set up, and the provider installed
            // above is compiled in: that would be a broken build, not a runtime condition.
            .expect("the HTTP client for cover fetches can be built");
        let breakers = Arc::new(Breakers::new(config.breaker));
        let host_rates = config
            .rate_per_host
            .map(|rate| Arc::new(KeyedLimiter::new(rate, HOSTS_KEPT)));
        Self {
            client,
            config,
            breakers,
            host_rates,
        }
    }

    /// Reports the hosts whose breaker is open to `store`, as `worker`'s, until
    /// shutdown ([`Breakers::report`]).
    pub async fn report_circuits(&self, store: &dyn Circuits, worker: &str, shutdown: Shutdown) {
        self.breakers.report(store, worker, shutdown).await;
    }

    /// Fetches `url` and returns its body: [`Self::admit`], then [`Self::fetch_admitted`].
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        let admitted = self.admit(url).await?;
        self.fetch_admitted(admitted).await
    }

    /// Waits until a fetch of `url` may go out: its host's breaker lets it through
    /// (if not, [`FetchError::CircuitOpen`] at once), and its host's turn has come
    /// under `--fetch-rate-per-host`.
    pub async fn admit(&self, url: &str) -> Result<Admitted, FetchError> {
        let url = Url::parse(url)
            .map_err(|err| FetchError::InvalidUrl(format!("{}: {err}", redacted_url(url))))?;
        // A URL without a host (or of a scheme we do not fetch) is refused by `follow`.
        let host = url
            .host_str()
            .zip(url.port_or_known_default())
            .map(|(host, port)| format!("{host}:{port}"));
        if let Some(host) = &host {
            self.breakers
                .admit(host)
                .map_err(|wait| FetchError::CircuitOpen {
                    host: host.clone(),
                    wait,
                })?;
            if let Some(rates) = &self.host_rates {
                rates.until_ready(host).await;
            }
        }
        Ok(Admitted { url, host })
    }

    /// Fetches what [`Self::admit`] let through and returns its body, following
    /// redirects, within the configured time and size limits and refusing non-public
    /// targets unless allowed; its host's breaker hears how it went.
    pub async fn fetch_admitted(&self, admitted: Admitted) -> Result<Bytes, FetchError> {
        let Admitted { url, host } = admitted;
        let fetched = tokio::time::timeout(self.config.timeout, self.follow(url))
            .await
            .unwrap_or(Err(FetchError::Timeout));
        if let Some(host) = &host {
            let answered = fetched
                .as_ref()
                .map_or_else(FetchError::is_permanent, |_| true);
            self.breakers.record(host, answered);
        }
        fetched
    }

    /// Requests `url`, then each redirect target, each one vetted before it is requested.
    async fn follow(&self, mut url: Url) -> Result<Bytes, FetchError> {
        for _ in 0..=self.config.max_redirects {
            vet_url(&url, self.config.allow_private)?;
            let response = self
                .client
                .get(url.clone())
                .header(ACCEPT, "image/*")
                .send()
                .await
                .map_err(FetchError::from_reqwest)?;
            let status = response.status();
            if status.is_success() {
                return read_body(response, self.config.max_bytes).await;
            }
            match redirect_target(&url, &response)? {
                Some(next) => url = next,
                None => return Err(FetchError::Status(status.as_u16())),
            }
        }
        Err(FetchError::Refused(format!(
            "more than {} redirects",
            self.config.max_redirects
        )))
    }
}

/// Where a redirect response points, resolved against the URL that answered it; `None`
/// for any other response (including a 3xx without `Location`, such as 304).
fn redirect_target(current: &Url, response: &Response) -> Result<Option<Url>, FetchError> {
    if !response.status().is_redirection() {
        return Ok(None);
    }
    let Some(location) = response.headers().get(LOCATION) else {
        return Ok(None);
    };
    let location = location
        .to_str()
        .map_err(|_| FetchError::InvalidUrl(format!("redirect from {current}: not ASCII")))?;
    current.join(location).map(Some).map_err(|err| {
        FetchError::InvalidUrl(format!("redirect to {}: {err}", redacted_url(location)))
    })
}

/// Reads the body, refusing it as soon as it is known to exceed `limit`: from
/// `Content-Length` before reading anything, or from the bytes received so far.
async fn read_body(mut response: Response, limit: usize) -> Result<Bytes, FetchError> {
    let too_large = || FetchError::TooLarge { limit };
    let declared = response.content_length();
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    // The declared length is only a hint (it may lie low); the check below is what holds.
    let mut body = BytesMut::with_capacity(declared.map_or(0, |length| length as usize));
    while let Some(chunk) = response.chunk().await.map_err(FetchError::from_reqwest)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The check every hop passes before it is requested: the scheme, no credentials (a
/// cover is fetched anonymously, and a password must not reach an error message), and
/// the host when it is an IP address. A host name is vetted by [`VettingResolver`] when reqwest connects,
/// so that the addresses checked are the addresses used.
fn vet_url(url: &Url, allow_private: bool) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::Refused(format!(
            "scheme {} is not allowed, only http and https",
            url.scheme()
        )));
    }
    if has_credentials(url) {
        return Err(FetchError::Refused(format!(
            "{}: a URL with credentials is not fetched",
            redacted_url(url.as_str())
        )));
    }
    let ip = match url.host() {
        None => return Err(FetchError::InvalidUrl(format!("{url}: no host"))),
        Some(Host::Domain(_)) => return Ok(()),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
    };
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(FetchError::Refused(format!("{ip} is not a public address")))
    }
}

/// reqwest's resolver for host names: see step 2 of the module documentation.
struct VettingResolver {
    allow_private: bool,
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve_vetted(name.as_str(), allow_private).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Resolves `host` and refuses it if any of its addresses is not public: a name that
/// resolves to both a public and a private address could be connected to either.
/// Port 0 lets reqwest fill in the URL's port.
async fn resolve_vetted(host: &str, allow_private: bool) -> Result<Vec<SocketAddr>, FetchError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|err| FetchError::Network(format!("cannot resolve {host}: {err}")))?
        .collect();
    if addrs.is_empty() {
        return Err(FetchError::Network(format!("{host} has no address")));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|addr| !is_public(addr.ip())) {
        return Err(FetchError::Refused(format!(
            "{host} resolves to {}, which is not a public address",
            bad.ip()
        )));
    }
    Ok(addrs)
}

/// Whether `ip` is a globally routable unicast address, the only kind a cover may come
/// from. Follows the IANA special-purpose address registries.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

/// IPv4 blocks that are not globally reachable, as (network, prefix length).
const NON_PUBLIC_V4: [(Ipv4Addr, u8); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8), // "this network", with the unspecified address
    (Ipv4Addr::new(10, 0, 0, 0), 8), // private
    (Ipv4Addr::new(100, 64, 0, 0), 10), // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8), // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16), // link-local, with cloud metadata 169.254.169.254
    (Ipv4Addr::new(172, 16, 0, 0), 12), // private
    (Ipv4Addr::new(192, 0, 0, 0), 24), // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24), // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 88, 99, 0), 24), // former 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16), // private
    (Ipv4Addr::new(198, 18, 0, 0), 15), // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24), // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4), // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4), // reserved, with broadcast 255.255.255.255
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let ip = u32::from(ip);
    !NON_PUBLIC_V4.iter().any(|&(network, prefix)| {
        let mask = u32::MAX << (32 - prefix);
        ip & mask == u32::from(network)
    })
}

/// IPv6 blocks inside global unicast (2000::/3) that are not globally reachable.
const NON_PUBLIC_V6_IN_GLOBAL: [(Ipv6Addr, u8); 3] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments, with Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
];

/// An allow-list: only global unicast (2000::/3) is public, which leaves out loopback,
/// unspecified, unique-local (fc00::/7), link-local (fe80::/10), multicast and the rest.
/// Addresses that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) lead to that IPv4
/// host, so they are judged by it.
fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let in_block = |network: Ipv6Addr, prefix: u8| {
        let mask = u128::MAX << (128 - prefix);
        u128::from(ip) & mask == u128::from(network)
    };
    in_block(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3)
        && !NON_PUBLIC_V6_IN_GLOBAL
            .iter()
            .any(|&(network, prefix)| in_block(network, prefix))
}

/// The IPv4 address an IPv4-mapped (::ffff:0:0/96), NAT64 (64:ff9b::/96) or 6to4
/// (2002::/16) address leads to.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if bits >> 32 == 0x0064_ff9b << 64 {
        Some(Ipv4Addr::from(bits as u32))
    } else if bits >> 112 == 0x2002 {
        Some(Ipv4Addr::from((bits >> 80) as u32))
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
