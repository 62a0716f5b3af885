//! The cover fetch's circuit breaker: a cover host that fails every request is asked
//! far less than once per attempt of every game while its breaker is open, the games
//! wait without using up their attempts, and once the host recovers the breaker
//! closes and every game completes. On both brokers, since a deferred game waits in
//! the broker's delayed retry.

mod common;

use common::brokers::{TestBroker, on_every_broker};
use common::{Backend, Roles, TestApp, eventually, game_body, png, with};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const GAMES: usize = 20;
const ATTEMPTS: usize = 10;

/// A cover host that counts the requests it gets and answers 503 until `healthy`.
/// Returns the cover's URL and the host's `HOST:PORT`.
async fn counting_cover_host(
    healthy: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
) -> (String, String) {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
    let cover = png(32, 32);
    let app = Router::new().route(
        "/cover.png",
        get(move || {
            let (cover, healthy, asked) = (cover.clone(), healthy.clone(), asked.clone());
            async move {
                asked.fetch_add(1, Ordering::SeqCst);
                if healthy.load(Ordering::SeqCst) {
                    ([("content-type", "image/png")], cover).into_response()
                } else {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/cover.png"), addr.to_string())
}

/// Waits until `/metrics` shows the breaker of `host` in `state` (0 closed, 2 open).
async fn wait_for_breaker(app: &TestApp, host: &str, state: u8) {
    let line = format!("retrocat_circuit_state{{target=\"{host}\"}} {state}");
    eventually(&line, Duration::from_secs(30), || async {
        let metrics = app.get("/metrics").await.text().await.ok()?;
        metrics.lines().any(|l| l == line).then_some(())
    })
    .await;
}

on_every_broker!(a_failing_cover_host_is_left_alone_until_it_recovers);

async fn a_failing_cover_host_is_left_alone_until_it_recovers(broker: TestBroker) {
    let rabbitmq_url = match &broker {
        TestBroker::RabbitMq(vhost) => Some(vhost.url.as_str()),
        TestBroker::Embedded => None,
    };
    let attempts = ATTEMPTS.to_string();
    let app = TestApp::spawn_on_broker(
        Backend::Sqlite,
        rabbitmq_url,
        Roles::Serve,
        &[
            "--max-attempts",
            &attempts,
            "--concurrency",
            "2",
            "--breaker-failures",
            "3",
            "--breaker-cool-down",
            "1s",
        ],
    )
    .await;
    let (healthy, asked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (cover, host) = counting_cover_host(healthy.clone(), asked.clone()).await;
    let mut ids = Vec::new();
    for n in 0..GAMES {
        let body = with(
            game_body(&format!("Breaker {n:02}")),
            "imageUrl",
            json!(cover),
        );
        ids.push(app.create_game(&body).await["id"].as_i64().unwrap());
    }

    // Three failures open the breaker; then one probe a second gets through.
    wait_for_breaker(&app, &host, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let while_down = asked.load(Ordering::SeqCst);
    eprintln!("the host was asked {while_down} times while down, for {GAMES} games");
    assert!(
        while_down <= 12,
        "{while_down} requests: the breaker held back too little (every attempt of every \
         game would be {})",
        GAMES * ATTEMPTS
    );
    for &id in &ids {
        let game = app.get_json(&format!("/api/games/{id}")).await;
        assert_ne!(game["processingStatus"], "failed", "{game}");
    }

    // The host recovers: a probe succeeds, the breaker closes, every game completes.
    healthy.store(true, Ordering::SeqCst);
    for &id in &ids {
        app.wait_for_status(id, "completed", 1).await;
    }
    wait_for_breaker(&app, &host, 0).await;
    app.stop().await;
}
