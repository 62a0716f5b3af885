//! Cover hosts: one that fails every request is asked far less than once per attempt
//! of every game while its circuit breaker is open, the games wait without using up
//! their attempts, and once it recovers the breaker closes and every game completes
//! (on both brokers, since a deferred game waits in the broker's delayed retry); and
//! the fetches from one host keep to `--fetch-rate-per-host`, while the games of
//! other hosts are not held back behind them. `GET /api/queues` shows the open circuit
//! while it lasts.

mod common;

use chrono::{SubsecRound, Utc};
use common::brokers::{TestBroker, on_every_broker};
use common::{
    Backend, Roles, TestApp, counting_cover_server, eventually, game_body, on_every_backend, with,
};
use retrocat::storage::{self, Circuit, CircuitState, OpenCircuit, PoolConfig};
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

/// Waits until `GET /api/queues` shows `host` among `game_events`' open circuits
/// (`held`), or no circuit at all (`!held`); returns what it showed.
async fn wait_for_circuits(app: &TestApp, host: &str, held: bool) -> serde_json::Value {
    let what = format!("{host} held back: {held}, in /api/queues");
    eventually(&what, Duration::from_secs(30), || async {
        let queues = app.get_json("/api/queues").await;
        let game_events = queues
            .as_array()?
            .iter()
            .find(|queue| queue["name"] == "game_events")?;
        let circuits = game_events.get("circuits").cloned().unwrap_or(json!([]));
        let shown = circuits.as_array()?.iter().any(|c| c["target"] == host);
        let none = circuits.as_array()?.is_empty();
        (if held { shown } else { none }).then_some(circuits)
    })
    .await
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
    let circuits = wait_for_circuits(&app, &host, true).await;
    let circuit = &circuits[0];
    assert!(
        ["open", "half-open"].contains(&circuit["state"].as_str().unwrap_or_default())
            && circuit["worker"].as_str().is_some_and(|w| !w.is_empty())
            && circuit["until"].as_str().is_some(),
        "{circuits}"
    );
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
    wait_for_circuits(&app, &host, false).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetches_from_one_host_keep_to_its_rate() {
    let app = TestApp::spawn_with(Roles::Serve, &["--fetch-rate-per-host", "5/s"]).await;
    let asked = Arc::new(AtomicUsize::new(0));
    let host = counting_cover_server(Arc::new(AtomicBool::new(true)), asked.clone()).await;
    let cover = format!("http://{host}/cover.png");
    let mut ids = Vec::new();
    for n in 0..GAMES {
        let body = with(
            game_body(&format!("Rated {n:02}")),
            "imageUrl",
            json!(cover),
        );
        ids.push(app.create_game(&body).await["id"].as_i64().unwrap());
    }
    eventually("a first fetch", Duration::from_secs(30), || async {
        (asked.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    // A burst of 5, then one every 200 ms: at most 10 in the first second (and two
    // for the time the first one took to be seen), where 16 would be fetched at once
    // without the limit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_a_second = asked.load(Ordering::SeqCst);
    eprintln!("{in_a_second} fetches in the first second, for {GAMES} games");
    assert!(
        in_a_second <= 11,
        "{in_a_second} fetches in the first second"
    );
    for &id in &ids {
        app.wait_for_status(id, "completed", 1).await;
    }
    assert_eq!(asked.load(Ordering::SeqCst), GAMES, "one fetch a game");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_held_back_by_its_rate_holds_no_other_host_back() {
    let app = TestApp::spawn_with(
        Roles::Serve,
        &["--fetch-rate-per-host", "1/m", "--shutdown-grace", "1s"],
    )
    .await;
    let (slow_asked, other_asked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let healthy = Arc::new(AtomicBool::new(true));
    let slow = counting_cover_server(healthy.clone(), slow_asked.clone()).await;
    let other = counting_cover_server(healthy, other_asked.clone()).await;
    // More games of the slow host than covers are worked on at once (16).
    for n in 0..GAMES {
        let body = with(
            game_body(&format!("Slow {n:02}")),
            "imageUrl",
            json!(format!("http://{slow}/cover.png")),
        );
        app.create_game(&body).await;
    }
    eventually(
        "the slow host's one fetch",
        Duration::from_secs(30),
        || async { (slow_asked.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    let body = with(
        game_body("Other Host"),
        "imageUrl",
        json!(format!("http://{other}/cover.png")),
    );
    let id = app.create_game(&body).await["id"].as_i64().unwrap();
    app.wait_for_status(id, "completed", 1).await;
    assert_eq!(other_asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        slow_asked.load(Ordering::SeqCst),
        1,
        "the slow host was asked once this minute"
    );
    app.stop().await;
}

on_every_backend!(open_circuits_are_kept_in_the_catalog_database);

/// What the API reads of the workers' breakers: each worker's report replaces its
/// earlier one, and every process sees every worker's.
async fn open_circuits_are_kept_in_the_catalog_database(backend: Backend) {
    let dir = tempfile::TempDir::new().unwrap();
    let (url, _database) = backend.fresh_database(dir.path()).await;
    let store = storage::connect(&url, PoolConfig::default()).await.unwrap();
    let until = Utc::now().round_subsecs(3) + chrono::Duration::seconds(30);
    let circuit = |target: &str, state| Circuit {
        target: target.into(),
        state,
        until,
    };
    let of = |worker: &str, circuit: &Circuit| OpenCircuit {
        circuit: circuit.clone(),
        worker: worker.into(),
    };
    assert!(store.open_circuits().await.unwrap().is_empty());
    let w1 = [
        circuit("b.example:443", CircuitState::Open),
        circuit("a.example:80", CircuitState::HalfOpen),
    ];
    store.report_circuits("w1", &w1).await.unwrap();
    let w2 = [circuit("b.example:443", CircuitState::Open)];
    store.report_circuits("w2", &w2).await.unwrap();
    // Another process's connection sees them, by host then worker.
    let other = storage::connect(&url, PoolConfig::default()).await.unwrap();
    assert_eq!(
        other.open_circuits().await.unwrap(),
        [of("w1", &w1[1]), of("w1", &w1[0]), of("w2", &w2[0])]
    );
    store.report_circuits("w1", &[]).await.unwrap();
    assert_eq!(
        other.open_circuits().await.unwrap(),
        [of("w2", &w2[0])],
        "w1's report replaced"
    );
}
