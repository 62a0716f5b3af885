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

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, LOCATION};
use reqwest::{Response, Url, redirect};
use url::Host;

use crate::domain::{has_credentials, redacted_url};

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
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_bytes: 10 * 1024 * 1024,
            allow_private: false,
            max_redirects: 3,
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
}

impl FetchError {
    /// True when retrying cannot help: a refused target, a 4xx answer, a body over the
    /// limit, an invalid URL. 408 and 429 are the exceptions among 4xx: they ask the client
    /// to come back later.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Refused(_) | Self::TooLarge { .. } | Self::InvalidUrl(_) => true,
            Self::Status(status) => (400..500).contains(status) && !matches!(status, 408 | 429),
            Self::Timeout | Self::Network(_) => false,
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

/// Fetches covers over HTTP(S). Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct CoverFetcher {
    client: reqwest::Client,
    config: FetchConfig,
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
        Self { client, config }
    }

    /// Fetches `url` and returns its body, following redirects, within the configured
    /// time and size limits and refusing non-public targets unless allowed.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        let url = Url::parse(url)
            .map_err(|err| FetchError::InvalidUrl(format!("{}: {err}", redacted_url(url))))?;
        tokio::time::timeout(self.config.timeout, self.follow(url))
            .await
            .map_err(|_| FetchError::Timeout)?
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
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    const COVER: &[u8] = b"\x89PNG pretend cover";

    /// A local server with one route per behaviour under test. Returns its address.
    async fn test_server() -> SocketAddr {
        let app = Router::new()
            .route("/cover", get(|| async { COVER }))
            .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    COVER
                }),
            )
            .route("/big", get(|| async { vec![0u8; 4096] }))
            .route("/big-streamed", get(big_streamed))
            .route("/redirect/{hops}", get(redirect_chain))
            .route(
                "/to-file",
                get(|| async { Redirect::to("file:///etc/passwd") }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// A body without `Content-Length`, so only the streaming check can stop it.
    async fn big_streamed() -> impl IntoResponse {
        let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1024]));
        Body::from_stream(futures::stream::iter(chunks))
    }

    /// `/redirect/3` → `/redirect/2` → `/redirect/1` → `/redirect/0` → `/cover`.
    async fn redirect_chain(Path(hops): Path<u32>) -> Redirect {
        match hops {
            0 => Redirect::to("/cover"),
            n => Redirect::to(&format!("/redirect/{}", n - 1)),
        }
    }

    fn local_fetcher() -> CoverFetcher {
        CoverFetcher::new(FetchConfig {
            timeout: Duration::from_secs(5),
            max_bytes: 2048,
            allow_private: true,
            max_redirects: 3,
        })
    }

    #[tokio::test]
    async fn fetches_the_body() {
        let addr = test_server().await;

        let body = local_fetcher()
            .fetch(&format!("http://{addr}/cover"))
            .await
            .unwrap();

        assert_eq!(&body[..], COVER);
    }

    #[tokio::test]
    async fn not_found_is_a_permanent_status_error() {
        let addr = test_server().await;

        let err = local_fetcher()
            .fetch(&format!("http://{addr}/missing"))
            .await
            .unwrap_err();

        assert_eq!(err, FetchError::Status(404));
        assert!(err.is_permanent());
    }

    #[tokio::test]
    async fn slow_server_times_out() {
        let addr = test_server().await;
        let fetcher = CoverFetcher::new(FetchConfig {
            timeout: Duration::from_millis(200),
            ..local_fetcher().config
        });

        let err = fetcher
            .fetch(&format!("http://{addr}/slow"))
            .await
            .unwrap_err();

        assert_eq!(err, FetchError::Timeout);
        assert!(!err.is_permanent());
    }

    #[tokio::test]
    async fn body_over_the_limit_is_refused() {
        let addr = test_server().await;

        for path in ["big", "big-streamed"] {
            let err = local_fetcher()
                .fetch(&format!("http://{addr}/{path}"))
                .await
                .unwrap_err();

            assert_eq!(err, FetchError::TooLarge { limit: 2048 }, "/{path}");
            assert!(err.is_permanent());
        }
    }

    #[tokio::test]
    async fn redirects_are_followed_up_to_the_limit() {
        let addr = test_server().await;

        let body = local_fetcher()
            .fetch(&format!("http://{addr}/redirect/2"))
            .await
            .unwrap();
        assert_eq!(&body[..], COVER, "three redirects are allowed");

        let err = local_fetcher()
            .fetch(&format!("http://{addr}/redirect/3"))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Refused(_)), "four are not: {err}");
    }

    /// Every hop is vetted, not only the first: a redirect cannot lead out of http(s).
    #[tokio::test]
    async fn redirect_hops_are_vetted() {
        let addr = test_server().await;

        let err = local_fetcher()
            .fetch(&format!("http://{addr}/to-file"))
            .await
            .unwrap_err();

        assert!(matches!(err, FetchError::Refused(_)), "{err}");
    }

    /// The guard refuses before connecting: a listener on the loopback port sees no
    /// connection at all. The non-loopback targets are never contacted either (they are
    /// refused as IP literals, before any request).
    #[tokio::test]
    async fn private_targets_are_refused_without_connecting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let fetcher = CoverFetcher::new(FetchConfig::default());

        for url in [
            format!("http://127.0.0.1:{port}/x"),
            format!("http://localhost:{port}/x"),
            format!("http://[::1]:{port}/x"),
            "http://10.0.0.1/x".to_owned(),
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "http://[::ffff:127.0.0.1]/".to_owned(),
            "http://[::ffff:a9fe:a9fe]/latest/meta-data".to_owned(),
            "http://2130706433/x".to_owned(), // 127.0.0.1 written as one number
        ] {
            let err = fetcher.fetch(&url).await.unwrap_err();

            assert!(matches!(err, FetchError::Refused(_)), "{url}: {err}");
            assert!(err.is_permanent(), "{url}");
        }
        tokio::task::yield_now().await;
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn host_names_are_vetted_on_every_resolved_address() {
        let err = resolve_vetted("localhost", false).await.unwrap_err();
        assert!(matches!(err, FetchError::Refused(_)), "{err}");

        let addrs = resolve_vetted("localhost", true).await.unwrap();
        assert!(
            addrs.iter().all(|addr| addr.ip().is_loopback()),
            "{addrs:?}"
        );
    }

    #[tokio::test]
    async fn malformed_and_non_http_urls_are_refused() {
        let fetcher = CoverFetcher::new(FetchConfig::default());
        let cases = [
            ("not a url", "InvalidUrl"),
            ("http://", "InvalidUrl"),
            ("ftp://example.com/cover.png", "Refused"),
            ("file:///etc/passwd", "Refused"),
            ("data:image/png;base64,AAAA", "Refused"),
            ("http://user:secret@example.com/cover.png", "Refused"),
        ];

        for (url, expected) in cases {
            let err = fetcher.fetch(url).await.unwrap_err();

            let kind = match err {
                FetchError::InvalidUrl(_) => "InvalidUrl",
                FetchError::Refused(_) => "Refused",
                _ => "other",
            };
            assert_eq!(kind, expected, "{url}: {err}");
            assert!(err.is_permanent(), "{url}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    /// `vet_url` is what each hop of a redirect chain passes, so a redirect to any of
    /// these is refused exactly as the first URL would be.
    #[test]
    fn every_hop_passes_the_same_check() {
        let refused = [
            "http://127.0.0.1/",
            "https://10.1.2.3/cover.png",
            "http://[fe80::1]/",
            "http://[::ffff:192.168.0.1]/",
            "http://0x7f.1/",
            "gopher://example.com/",
        ];
        for url in refused {
            let url = Url::parse(url).unwrap();
            assert!(
                matches!(vet_url(&url, false), Err(FetchError::Refused(_))),
                "{url}"
            );
        }

        let passed_on = [
            ("http://93.184.215.14/cover.png", false),
            ("https://[2606:4700:4700::1111]/", false),
            // Host names go on to the vetting resolver.
            ("https://covers.example.com/mario.png", false),
            ("http://127.0.0.1:8080/", true),
        ];
        for (url, allow_private) in passed_on {
            let url = Url::parse(url).unwrap();
            assert_eq!(vet_url(&url, allow_private), Ok(()), "{url}");
        }
    }

    #[test]
    fn classifies_addresses() {
        let cases: &[(&str, bool)] = &[
            // Public.
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("93.184.215.14", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("2606:4700:4700::1111", true),
            ("2001:4860:4860::8888", true),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::808:808", true),
            // IPv4 that is not.
            ("0.0.0.0", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("10.0.0.1", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("192.0.2.1", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("198.18.0.1", false),
            ("240.0.0.1", false),
            // IPv6 that is not.
            ("::", false),
            ("::1", false),
            ("fc00::1", false),
            ("fd12:3456:789a::1", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("2001:db8::1", false),
            ("3fff::1", false),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false), // Teredo
            ("::127.0.0.1", false),                          // IPv4-compatible, deprecated
            // IPv6 leading to an IPv4 host that is not.
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("64:ff9b::a00:1", false),   // NAT64 of 10.0.0.1
            ("2002:7f00:1::1", false),   // 6to4 of 127.0.0.1
            ("2002:a9fe:a9fe::", false), // 6to4 of 169.254.169.254
        ];
        for &(ip, public) in cases {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(is_public(parsed), public, "{ip}");
        }
    }

    #[test]
    fn permanence() {
        let cases = [
            (FetchError::Refused("x".into()), true),
            (FetchError::InvalidUrl("x".into()), true),
            (FetchError::TooLarge { limit: 1 }, true),
            (FetchError::Status(400), true),
            (FetchError::Status(404), true),
            (FetchError::Status(410), true),
            (FetchError::Status(408), false),
            (FetchError::Status(429), false),
            (FetchError::Status(500), false),
            (FetchError::Status(503), false),
            (FetchError::Timeout, false),
            (FetchError::Network("reset".into()), false),
        ];
        for (err, permanent) in cases {
            assert_eq!(err.is_permanent(), permanent, "{err:?}");
        }
    }
}
