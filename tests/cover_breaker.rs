//! The cover fetch's circuit breaker: a cover host that fails every request is asked
//! far less than once per attempt of every game while its breaker is open, the games
//! wait without using up their attempts, and once the host recovers the breaker
//! closes and every game completes. On both brokers, since a deferred game waits in
//! the broker's delayed retry.

mod common;

use common::brokers::{TestBroker, on_every_broker};
use common::{Backend, Roles, TestApp, counting_cover_server, eventually, game_body, with};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const GAMES: usize = 20;
const ATTEMPTS: usize = 10;

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
    let host = counting_cover_server(healthy.clone(), asked.clone())
        .await
        .to_string();
    let cover = format!("http://{host}/cover.png");
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
