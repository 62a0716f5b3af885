//! Resource limits: what one client may hold of a server at once, and the answer past
//! the limit.

mod common;

use common::processes::{Deployment, free_port};
use common::{Backend, Roles, TestApp, eventually};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Opens `GET /api/stream` and returns the response, its body left unread: the stream
/// stays open, holding its place, until the response is dropped.
async fn open_stream(app: &TestApp) -> reqwest::Response {
    app.get("/api/stream").await
}

#[tokio::test]
async fn past_the_stream_cap_a_new_stream_gets_a_503_until_one_closes() {
    let app = TestApp::spawn_with(Roles::ApiOnly, &["--max-stream-subscribers", "3"]).await;
    let mut open = Vec::new();
    for n in 1..=3 {
        let stream = open_stream(&app).await;
        assert_eq!(stream.status(), 200, "stream {n} of 3");
        assert_eq!(
            stream.headers()["content-type"],
            "text/event-stream",
            "stream {n} of 3"
        );
        open.push(stream);
    }

    let refused = open_stream(&app).await;
    assert_eq!(refused.status(), 503, "a 4th stream past a cap of 3");
    let retry_after = refused.headers()["retry-after"].to_str().unwrap();
    let seconds: u64 = retry_after.parse().expect("Retry-After in seconds");
    assert!(seconds >= 1, "Retry-After: {retry_after}");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.expect("a problem+json body");
    assert_eq!(problem["status"], 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("stream")),
        "{problem}"
    );

    // The client leaves: its connection closes, and its place is free again.
    drop(open.pop());
    let accepted = eventually(
        "a place freed by a closed stream",
        Duration::from_secs(10),
        || async {
            let stream = open_stream(&app).await;
            (stream.status() == 200).then_some(stream)
        },
    )
    .await;
    open.push(accepted);

    // Full again: the freed place was taken, not added.
    assert_eq!(open_stream(&app).await.status(), 503, "past the cap again");
    drop(open);
    app.stop().await;
}

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// A raw connection to `base` (`http://HOST:PORT`) that has sent `bytes`.
async fn connect(base: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// What the server sent on `stream` until it closed it, if it did within `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&received).into()),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

/// Whether the server answers on `stream` within `limit`.
async fn answered(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0; 4096];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buffer)).await,
        Ok(Ok(read)) if read > 0
    )
}

/// Half a request never finished (slowloris) and a kept-alive connection left idle are
/// both closed once the header-read timeout runs out; the idle one was answered first.
#[tokio::test]
async fn slow_and_idle_connections_are_closed_after_the_header_timeout() {
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_env("RETROCAT_HEADER_READ_TIMEOUT", "1s");
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let mut slow = connect(serve.base(), b"GET /healthz HTTP/1.1\r\nHost: 127.").await;
    let mut idle = connect(serve.base(), HEALTH).await;

    let limit = Duration::from_secs(10);
    let slow = read_until_closed(&mut slow, limit).await;
    assert_eq!(
        slow.as_deref(),
        Some(""),
        "the slow client is closed, unanswered"
    );
    let idle = read_until_closed(&mut idle, limit).await;
    let idle = idle.expect("the idle connection is closed");
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle}");
    serve.stop().await;
}

/// SIGTERM with an idle connection, a half-open one and a live stream in progress: the
/// process still exits, once the shutdown deadline has passed at the latest.
#[tokio::test]
async fn sigterm_with_idle_and_half_open_connections_exits_by_the_deadline() {
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_env("RETROCAT_HEADER_READ_TIMEOUT", "60s")
        .with_env("RETROCAT_SHUTDOWN_DEADLINE", "1s");
    let mut serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let mut idle = connect(serve.base(), HEALTH).await;
    assert!(answered(&mut idle, Duration::from_secs(10)).await);
    let _half_open = connect(serve.base(), b"GET /api/games HTTP/1.1\r\nHost: 127.").await;
    let stream = b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut live = connect(serve.base(), stream).await;
    assert!(answered(&mut live, Duration::from_secs(10)).await);

    let asked = Instant::now();
    let status = serve.terminate().await;
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    // The deadline, plus the worker's own stop with nothing in flight.
    assert!(took < Duration::from_secs(8), "exited after {took:?}");
}

/// Past `--max-connections`, a new connection waits unanswered until one closes.
#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_env("RETROCAT_MAX_CONNECTIONS", "2")
        .with_env("RETROCAT_HEADER_READ_TIMEOUT", "60s");
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    // The readiness check's own connection closes with its client.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let limit = Duration::from_secs(10);
    let mut first = connect(serve.base(), HEALTH).await;
    assert!(answered(&mut first, limit).await, "the first is served");
    let mut second = connect(serve.base(), HEALTH).await;
    assert!(answered(&mut second, limit).await, "the second is served");
    let mut third = connect(serve.base(), HEALTH).await;
    assert!(
        !answered(&mut third, Duration::from_secs(1)).await,
        "the third waits"
    );
    drop(first);
    assert!(answered(&mut third, limit).await, "then it is served");
    serve.stop().await;
}

#[tokio::test]
async fn past_its_rate_limit_a_client_gets_429_and_its_requests_do_nothing() {
    let app = TestApp::spawn_with(Roles::ApiOnly, &["--rate-limit", "5/s"]).await;
    // A burst of 5 is served; the requests that follow at once are refused.
    let mut served = 0;
    let refused = loop {
        let response = app.get("/api/games?limit=1").await;
        if response.status() != 200 {
            break response;
        }
        served += 1;
        assert!(served < 20, "20 requests at once, none refused");
    };
    assert!(served >= 5, "the burst of 5 was cut at {served}");
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("--rate-limit"),
        "{problem}"
    );
    // A refused write writes nothing.
    let write = app
        .post_json("/api/games", &common::game_body("Rate Limited"))
        .await;
    assert_eq!(write.status(), 429);
    // Probes and metrics are never limited.
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.get(probe).await.status(), 200, "{probe}");
    }
    // A second later the client is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let games = app.get_json("/api/games?search=Rate%20Limited").await;
    assert_eq!(games, serde_json::json!([]));
    app.stop().await;
}
