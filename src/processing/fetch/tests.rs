//! The fetcher against real servers on loopback: bodies, limits, redirects, and the
//! SSRF guard on every address.

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
        ..FetchConfig::default()
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
