//! Crash recovery: a `retrocat serve` process killed with SIGKILL while events are in
//! flight loses nothing and applies nothing twice once restarted, on every catalog
//! database.

mod common;

use common::processes::{Deployment, Effects, create_games, free_port};
use common::{Backend, on_every_backend};
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

on_every_backend!(a_killed_server_completes_every_event_exactly_once_after_restart);

async fn a_killed_server_completes_every_event_exactly_once_after_restart(backend: Backend) {
    const GAMES: usize = 1000;
    let deployment = Deployment::on(backend).await;
    let port = free_port();
    // Slow processing so that a backlog is in flight when the process dies.
    let mut server = deployment
        .start_http(
            "server",
            "serve",
            port,
            &["--simulate-work", "20ms", "--concurrency", "4"],
        )
        .await;
    let ids = create_games(server.base(), "Crash test", GAMES, 16, &AtomicUsize::new(0)).await;
    assert_eq!(ids.len(), GAMES);

    let effects = Effects::open(&deployment).await;
    let unfinished_before = effects.unfinished(&ids).await.len();
    server.kill().await; // SIGKILL: no chance to finish anything
    assert!(
        unfinished_before > 0,
        "everything finished before the kill; the test proves nothing"
    );

    let server = deployment.start_http("server", "serve", port, &[]).await;
    // Count effects, not statuses: each game's history holds exactly one completion.
    effects
        .assert_processed_exactly_once(&ids, Duration::from_secs(120))
        .await;

    server.stop().await; // SIGTERM: a clean exit
}
