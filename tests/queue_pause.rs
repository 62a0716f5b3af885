//! Pausing a queue, as an operator does for a deploy or an incident: every worker stops
//! taking from it within a second while writes go on, the pause outlives a restart,
//! and a resume drains what waited, each event processed once. On the embedded broker
//! (one `retrocat serve`) and on RabbitMQ (`retrocat api` and a `retrocat worker`).

mod common;

use common::processes::{
    Deployment, Effects, Process, create_games, create_games_until, free_port, http_client,
};
use common::rabbitmq::Vhost;
use common::{Backend, eventually, on_every_backend};
use retrocat::storage::{self, PoolConfig};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const QUEUE: &str = "game_events";

/// `POST /api/queues/{queue}/{action}` (`pause` or `resume`): its status and body.
async fn post(api: &Process, queue: &str, action: &str) -> (u16, Value) {
    let response = http_client()
        .post(api.url(&format!("/api/queues/{queue}/{action}")))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Waits until `GET /api/queues` shows `game_events` with `field` equal to `expected`.
async fn wait_row(api: &Process, field: &str, expected: Value) -> Value {
    eventually(
        &format!("{QUEUE}.{field} = {expected}"),
        Duration::from_secs(30),
        || async {
            let rows = api.get_json("/api/queues").await;
            let row = rows.as_array()?.iter().find(|row| row["name"] == QUEUE)?;
            (row[field] == expected).then(|| row.clone())
        },
    )
    .await
}

/// Creates games while `pause` pauses `game_events`, and for a second after it
/// returned; then creates 30 more. Returns every id and those 30.
async fn create_across(api: &Process, pause: impl Future<Output = ()>) -> (Vec<i64>, Vec<i64>) {
    let (created, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let pausing = async {
        eventually("creates under way", Duration::from_secs(30), || async {
            (created.load(Ordering::Relaxed) >= 20).then_some(())
        })
        .await;
        pause.await;
        // DESIGN.md: every worker stops taking deliveries within a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let stopped = |_| stop.load(Ordering::Relaxed);
    let (mut ids, ()) = tokio::join!(
        create_games_until(api.base(), "Flowing", 4, &created, stopped),
        pausing
    );
    let held = create_games(api.base(), "Held", 30, 4, &AtomicUsize::new(0)).await;
    ids.extend(&held);
    (ids, held)
}

/// With `game_events` paused: none of `held` is processed, every unfinished game's
/// event waits in the queue (none in a worker's hands), and nothing consumes it.
async fn assert_held(api: &Process, effects: &Effects, ids: &[i64], held: &[i64]) {
    // Long enough for a worker that still consumed to take some.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unfinished = effects.unfinished(ids).await;
    for id in held {
        assert!(
            unfinished.contains(id),
            "game {id} was processed while paused"
        );
    }
    let row = wait_row(api, "ready", json!(unfinished.len())).await;
    assert_eq!(row["paused"], true, "{row}");
    assert_eq!(row["consumers"], 0, "{row}");
    assert_eq!(
        effects.unfinished(ids).await,
        unfinished,
        "processed while paused"
    );
}

/// After a resume: every game is completed exactly once, and the queue is empty.
async fn assert_drained(api: &Process, effects: &Effects, ids: &[i64]) {
    effects
        .wait_until_completed(ids, Duration::from_secs(60))
        .await;
    effects.assert_each_completed_once(ids).await;
    let row = wait_row(api, "ready", json!(0)).await;
    assert_eq!(row["paused"], false, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_waits_across_a_restart_on_the_embedded_broker() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    let effects = Effects::open(&deployment).await;
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;

    let (ids, held) = create_across(&serve, async {
        let (status, body) = post(&serve, QUEUE, "pause").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"name": QUEUE, "paused": true, "changed": true})
        );
    })
    .await;
    assert_held(&serve, &effects, &ids, &held).await;
    let (status, body) = post(&serve, QUEUE, "pause").await;
    assert_eq!((status, &body["changed"]), (200, &json!(false)), "{body}");

    // Stopped and started again, the process does not consume the paused queue.
    serve.stop().await;
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    assert_held(&serve, &effects, &ids, &held).await;

    let said = deployment.output("queue", &["resume", QUEUE]).await;
    assert!(said.is_empty(), "messages go to standard error: {said}");
    assert_drained(&serve, &effects, &ids).await;
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_waits_across_a_worker_restart_on_rabbitmq() {
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url);
    let effects = Effects::open(&deployment).await;
    let (api, workers, amqp) = deployment.start_api_and_workers(&["w1"], &[]).await;

    let (ids, held) = create_across(&api, async {
        deployment.output("queue", &["pause", QUEUE]).await;
    })
    .await;
    assert_held(&api, &effects, &ids, &held).await;

    // A worker started while the queue is paused does not consume it either.
    common::processes::stop_all(workers).await;
    let workers = deployment.start_workers(&["w2"], &[]);
    assert_held(&api, &effects, &ids, &held).await;

    let (status, body) = post(&api, QUEUE, "resume").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"name": QUEUE, "paused": false, "changed": true})
    );
    amqp.wait_for_consumers(QUEUE, 1).await;
    assert_drained(&api, &effects, &ids).await;
    common::processes::stop_all(workers).await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_queues_retrocat_consumes_can_be_paused() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    let api = deployment.start_http("api", "api", free_port(), &[]).await;
    for queue in ["game_events.dlq", "unrouted", "no_such_queue"] {
        let (status, body) = post(&api, queue, "pause").await;
        assert_eq!(status, 404, "{queue}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("game_events, catalog.rpc"),
            "{body}"
        );
    }
    let (status, body) = post(&api, "custom_messages", "resume").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], false, "it was not paused: {body}");
    api.stop().await;
}

on_every_backend!(a_pause_is_kept_in_the_catalog_database);

/// What every process reads: paused queues are rows of the catalog database, and
/// pausing or resuming twice changes nothing the second time.
async fn a_pause_is_kept_in_the_catalog_database(backend: Backend) {
    let dir = tempfile::TempDir::new().unwrap();
    let (url, _database) = backend.fresh_database(dir.path()).await;
    let store = storage::connect(&url, PoolConfig::default()).await.unwrap();
    assert!(store.paused_queues().await.unwrap().is_empty());
    assert!(store.pause_queue(QUEUE).await.unwrap());
    assert!(!store.pause_queue(QUEUE).await.unwrap(), "paused already");
    assert!(store.pause_queue("audit.archive").await.unwrap());
    // Another process's connection sees them.
    let other = storage::connect(&url, PoolConfig::default()).await.unwrap();
    assert_eq!(
        other.paused_queues().await.unwrap(),
        ["audit.archive", QUEUE]
    );
    assert!(other.resume_queue(QUEUE).await.unwrap());
    assert!(!store.resume_queue(QUEUE).await.unwrap(), "not paused");
    assert_eq!(store.paused_queues().await.unwrap(), ["audit.archive"]);
}
