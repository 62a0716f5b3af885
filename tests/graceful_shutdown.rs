//! SIGTERM under load: a worker stopped while 2,000 events flow finishes what it has
//! in flight within its grace period and exits cleanly; what it had not started goes
//! to the others (or, for the one `retrocat serve`, waits for its restart). Nothing is
//! lost, nothing is done twice.

mod common;

use common::Backend;
use common::processes::{Deployment, Effects, create_games, free_port, stop_all};
use common::rabbitmq::Vhost;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

const GAMES: usize = 2000;
/// Slow enough that a backlog builds and each worker has deliveries in flight.
const WORK: [&str; 6] = [
    "--simulate-work",
    "20ms",
    "--concurrency",
    "8",
    "--prefetch",
    "50",
];
/// What a worker logs when its grace period ran out with deliveries unfinished.
const GRACE_OVER: &str = "grace period over";

/// Waits until `effects` counts at least `count` completed games.
async fn wait_for_completions(effects: &Effects, count: usize) {
    common::eventually(
        &format!("{count} games completed"),
        Duration::from_secs(60),
        || async { (effects.completions().await.len() >= count).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_under_load_finishes_its_work_and_the_others_take_the_rest() {
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url);
    let (api, mut workers, amqp) = deployment.start_api_and_workers(&["w1", "w2"], &WORK).await;
    let effects = Effects::open(&deployment).await;
    let creating = tokio::spawn({
        let base = api.base().to_owned();
        async move { create_games(&base, "Stopped", GAMES, 32, &AtomicUsize::new(0)).await }
    });
    wait_for_completions(&effects, 300).await;
    let waiting = amqp.queue_state("game_events").await.0;

    let mut stopped = workers.remove(0);
    let asked = Instant::now();
    let status = stopped.terminate().await;
    let took = asked.elapsed();
    let by_stopped = effects.completed_by("w1").await;
    eprintln!(
        "w1 exited {took:.1?} after SIGTERM, with {status}, having completed {by_stopped}; \
         {waiting} messages were waiting"
    );
    assert!(status.success(), "w1 exited with {status}");
    assert!(
        !stopped.log().contains(GRACE_OVER),
        "w1 left work unfinished:\n{}",
        stopped.log_tail(20)
    );

    let ids = creating.await.expect("creates");
    let split = effects
        .assert_processed_exactly_once(&ids, Duration::from_secs(120))
        .await;
    assert_eq!(
        split.get("w1").copied().unwrap_or(0),
        by_stopped,
        "{split:?}"
    );
    assert_eq!(split.values().sum::<usize>(), GAMES);
    stop_all(workers.into_iter().chain([api]).collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stopped_under_load_finishes_its_work_and_the_rest_waits_for_its_restart() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    let effects = Effects::open(&deployment).await;
    let serve = deployment
        .start_http("serve", "serve", free_port(), &WORK)
        .await;
    let ids = create_games(serve.base(), "Stopped", GAMES, 32, &AtomicUsize::new(0)).await;
    wait_for_completions(&effects, 300).await;

    let mut serve = serve;
    let status = serve.terminate().await;
    let done = effects.completions().await.len();
    eprintln!("serve exited with {status} having completed {done} of {GAMES}");
    assert!(status.success(), "serve exited with {status}");
    assert!(
        !serve.log().contains(GRACE_OVER),
        "serve left work unfinished:\n{}",
        serve.log_tail(20)
    );
    assert!(
        done < GAMES,
        "everything was done before the stop: the test proves nothing"
    );

    let serve = deployment
        .start_http("serve-again", "serve", free_port(), &WORK)
        .await;
    effects
        .assert_processed_exactly_once(&ids, Duration::from_secs(120))
        .await;
    serve.stop().await;
}
