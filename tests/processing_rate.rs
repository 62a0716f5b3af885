//! `--max-rate game_events=20/s`: the workers together process no more than 20 events
//! a second (bursts of 20 aside), each taking its share of the rate, and every event
//! is still processed once. On the embedded broker (one `retrocat serve`) and on
//! RabbitMQ (`retrocat api` and two `retrocat worker`s, each given the same rate).
//!
//! The duration asserted is a lower bound, the limit itself: at 20 a second, 100
//! events take at least (100 - 20) / 20 = 4 s however fast the machine. Two workers
//! that each took the whole rate would take 1.5 s.

mod common;

use common::Backend;
use common::processes::{Deployment, Effects, Process, create_games, free_port};
use common::rabbitmq::Vhost;
use retrocat::processing::throttle::SHARE_EVERY;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

const RATE: &str = "game_events=20/s";
const GAMES: usize = 100;
/// (100 - 20) / 20 s, less a margin for the clocks.
const AT_LEAST: Duration = Duration::from_millis(3_500);

/// Creates the games through `api` and returns how long they took to be processed,
/// each once.
async fn process_all(api: &Process, effects: &Effects) -> Duration {
    let started = Instant::now();
    let ids = create_games(api.base(), "Metered", GAMES, 8, &AtomicUsize::new(0)).await;
    effects
        .wait_until_completed(&ids, Duration::from_secs(60))
        .await;
    let took = started.elapsed();
    effects.assert_each_completed_once(&ids).await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processing_rate_holds_on_the_embedded_broker() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    let serve = deployment
        .start_http("serve", "serve", free_port(), &["--max-rate", RATE])
        .await;
    let effects = Effects::open(&deployment).await;
    let took = process_all(&serve, &effects).await;
    assert!(took >= AT_LEAST, "{GAMES} events in {took:?} at {RATE}");
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_processing_rate_on_rabbitmq() {
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url);
    let (api, workers, _amqp) = deployment
        .start_api_and_workers(&["w1", "w2"], &["--max-rate", RATE])
        .await;
    let effects = Effects::open(&deployment).await;
    // Each worker has counted the queue's two consumers, and takes half the rate.
    tokio::time::sleep(SHARE_EVERY + Duration::from_secs(1)).await;
    let took = process_all(&api, &effects).await;
    assert!(took >= AT_LEAST, "{GAMES} events in {took:?} at {RATE}");
    for worker in ["w1", "w2"] {
        assert!(effects.completed_by(worker).await > 0, "{worker} took none");
    }
    common::processes::stop_all(workers).await;
    api.stop().await;
}
