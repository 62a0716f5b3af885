//! RabbitMQ stopped and started again while the system is under load: the API keeps
//! taking writes (their events wait in the outbox), every process reconnects on its
//! own, and in the end every event was processed exactly once.
//!
//! A test binary of its own because it stops the whole RabbitMQ application (every
//! vhost), and cargo runs test binaries one after another. Skipped without
//! `TEST_RABBITMQ_URL` (and `rabbitmqctl`).

mod common;

use common::Backend;
use common::processes::{Deployment, Effects, create_games_until, http_client, stop_all};
use common::rabbitmq::{StoppedBroker, Vhost};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::task::block_in_place;
use tokio::time::Instant;

const IN_FLIGHT: usize = 32;
/// Creates answered before RabbitMQ is stopped. The creates go on until it is back,
/// however long stopping and starting it take.
const BEFORE_STOP: usize = 1000;
const DOWN_FOR: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_load_loses_and_duplicates_nothing() {
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url);
    let (api, workers, _amqp) = deployment
        .start_api_and_workers(&["w1", "w2"], &["--simulate-work", "2ms"])
        .await;
    let effects = Effects::open(&deployment).await;
    let client = http_client();

    let created = Arc::new(AtomicUsize::new(0));
    let restarted = Arc::new(AtomicBool::new(false));
    let creating = tokio::spawn({
        let (base, created) = (api.base().to_owned(), created.clone());
        let restarted = restarted.clone();
        async move {
            let done = |_| restarted.load(Ordering::Relaxed);
            create_games_until(&base, "Restart", IN_FLIGHT, &created, done).await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while created.load(Ordering::Relaxed) < BEFORE_STOP {
        assert!(
            Instant::now() < deadline,
            "creates too slow to reach {BEFORE_STOP}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Blocking calls on this thread; the creates go on on the runtime's other thread.
    let stopped = block_in_place(StoppedBroker::stop);
    let down_since = Instant::now();
    let created_at_stop = created.load(Ordering::Relaxed);
    eprintln!("RabbitMQ stopped after {created_at_stop} creates");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = readyz(&client, &api.url("/readyz")).await;
        if status == Some(503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz answered {status:?}, not 503, with RabbitMQ down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(DOWN_FOR.saturating_sub(down_since.elapsed())).await;
    let created_while_down = created.load(Ordering::Relaxed) - created_at_stop;
    let waiting = effects.outbox_depth().await;
    block_in_place(|| stopped.start());
    restarted.store(true, Ordering::Relaxed);
    eprintln!(
        "RabbitMQ started again after {:.1?}; {created_while_down} creates answered while it \
         was down, {waiting} events waiting in the outbox",
        down_since.elapsed()
    );
    assert!(
        created_while_down > 0,
        "no create answered while RabbitMQ was down"
    );
    assert!(
        waiting > 0,
        "no event waited in the outbox while RabbitMQ was down"
    );

    let ids = creating.await.expect("creates");
    effects
        .assert_processed_exactly_once(&ids, Duration::from_secs(180))
        .await;
    let status = readyz(&client, &api.url("/readyz")).await;
    assert_eq!(status, Some(200), "/readyz after the restart");
    stop_all(workers.into_iter().chain([api]).collect()).await;
}

/// The status `/readyz` answers, if it answers.
async fn readyz(client: &reqwest::Client, url: &str) -> Option<u16> {
    let response = client.get(url).send().await.ok()?;
    Some(response.status().as_u16())
}
