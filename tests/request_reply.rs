//! Request/reply through the API: `POST` and `PUT /api/games?wait=` answer with the
//! processed game, ahead of any backlog, or with 202 when the wait runs out; the write's
//! ordinary event, processed later, changes nothing.

mod common;

use common::brokers::{Sealing, TestBroker, on_every_broker};
use common::{Backend, Roles, TestApp, game_body, on_every_backend, with};
use retrocat::broker::{Message, Properties, Publish, dead_letters, topology};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Completed attempts in a game's history.
async fn completions(app: &TestApp, id: i64) -> usize {
    let history = app.get_json(&format!("/api/games/{id}/history")).await;
    history
        .as_array()
        .expect("a list of attempts")
        .iter()
        .filter(|attempt| attempt["outcome"] == "completed")
        .count()
}

async fn a_create_that_waits_answers_the_processed_game_processed_once(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let response = app
        .post_json("/api/games?wait=10s", &game_body("Waited for"))
        .await;
    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("location"));
    let game: Value = response.json().await.unwrap();
    assert_eq!(game["processingStatus"], "completed", "{game}");
    let id = game["id"].as_i64().unwrap();

    app.wait_until_idle().await;
    assert_eq!(
        completions(&app, id).await,
        1,
        "the request and the event are one processing"
    );
    assert_eq!(app.broker().waiting_requests(), 0);
}

async fn an_update_that_waits_answers_the_processed_version(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let game = app.create_game(&game_body("Before")).await;
    let id = game["id"].as_i64().unwrap();
    app.wait_for_status(id, "completed", 1).await;

    let response = app
        .put_json(
            &format!("/api/games/{id}?wait=10s"),
            &with(game_body("After"), "releaseYear", json!(1993)),
        )
        .await;
    assert_eq!(response.status(), 200);
    let game: Value = response.json().await.unwrap();
    assert_eq!(game["title"], "After");
    assert_eq!(game["version"], 2);
    assert_eq!(game["processingStatus"], "completed", "{game}");

    app.wait_until_idle().await;
    assert_eq!(completions(&app, id).await, 2, "one per version");
}

async fn a_wait_that_runs_out_answers_202_with_the_pending_game(backend: Backend) {
    // The API alone: nobody answers, and the wait runs out.
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let response = app
        .post_json("/api/games?wait=300ms", &game_body("Nobody home"))
        .await;
    assert_eq!(response.status(), 202);
    assert!(response.headers().contains_key("location"));
    let game: Value = response.json().await.unwrap();
    assert_eq!(game["processingStatus"], "pending");
    assert_eq!(
        app.broker().waiting_requests(),
        0,
        "a request that timed out leaves nothing behind"
    );
    // The write stands, and its event waits for a worker as any other.
    let id = game["id"].as_i64().unwrap();
    app.get_json(&format!("/api/games/{id}")).await;
}

async fn a_bad_wait_is_refused_and_writes_nothing(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let before = app.get_json("/api/games").await.as_array().unwrap().len();
    for wait in ["forever", "-1s", "31s", "1h"] {
        let response = app
            .post_json(&format!("/api/games?wait={wait}"), &game_body("Refused"))
            .await;
        assert_eq!(response.status(), 400, "wait={wait}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["errors"][0]["field"], "wait",
            "wait={wait}: {problem}"
        );
    }
    let after = app.get_json("/api/games").await.as_array().unwrap().len();
    assert_eq!(before, after);
}

on_every_backend!(
    a_create_that_waits_answers_the_processed_game_processed_once,
    an_update_that_waits_answers_the_processed_version,
    a_wait_that_runs_out_answers_202_with_the_pending_game,
    a_bad_wait_is_refused_and_writes_nothing,
);

/// Events queued on `game_events`, in the original producer's format: each asks to
/// process a seeded game again, and each is its own event.
fn backlog(events: usize) -> Vec<Publish> {
    (0..events)
        .map(|n| {
            let body = json!({ "gameId": 1, "action": "process" }).to_string();
            let message = Message {
                body: body.into(),
                properties: Properties::json(format!("backlog-{n}")),
            };
            Publish::to_queue(topology::GAME_EVENTS_QUEUE, message)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_processed_ahead_of_a_backlog_of_ten_thousand_events() {
    const BACKLOG: u64 = 10_000;
    // One event at a time, each taking 2 ms: the backlog needs 20 s or more, so that
    // what is left of it when the request is answered shows whether it waited its
    // turn, however fast the machine.
    let app = TestApp::spawn_with(
        Roles::Serve,
        &["--concurrency", "1", "--simulate-work", "2ms"],
    )
    .await;
    app.broker()
        .publish(backlog(BACKLOG as usize))
        .await
        .expect("queue the backlog");

    let response = app
        .post_json("/api/games?wait=20s", &game_body("Jumps the queue"))
        .await;
    assert_eq!(response.status(), 201);
    let game: Value = response.json().await.unwrap();
    assert_eq!(game["processingStatus"], "completed", "{game}");

    // Processed while most of the backlog still waits: it did not queue behind it.
    let left = app
        .broker()
        .queue_depth(topology::GAME_EVENTS_QUEUE)
        .await
        .unwrap();
    assert!(
        left > BACKLOG / 2,
        "only {left} of {BACKLOG} events were still queued: the request waited its turn"
    );
}

/// A cover server whose `/cover.png` answers 404 after `delay`: a cover that fails for
/// good, slowly enough that both copies of an event are fetching it at once. Returns
/// the URL and the count of fetches.
async fn slow_missing_cover(delay: Duration) -> (String, Arc<AtomicUsize>) {
    use axum::{Router, http::StatusCode, routing::get};
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let app = Router::new().route(
        "/cover.png",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                StatusCode::NOT_FOUND
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/cover.png"), fetches)
}

/// The request on `catalog.rpc` and the event on `game_events` are two copies of one
/// event, processed at once; when its cover fails for good, each copy fails, and the
/// event still has one dead letter, in one dead-letter queue.
async fn a_create_that_waits_and_fails_for_good_has_one_dead_letter(broker: TestBroker) {
    let (app, _) = broker.spawn(Sealing::default(), &[]).await;
    let (url, fetches) = slow_missing_cover(Duration::from_millis(800)).await;
    let body = with(game_body("Lost cover"), "imageUrl", json!(url));
    let response = app.post_json("/api/games?wait=10s", &body).await;
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    app.wait_for_status(id, "failed", 1).await;
    common::eventually(
        "both copies fetched the cover",
        Duration::from_secs(10),
        || {
            let fetches = fetches.load(Ordering::SeqCst);
            async move { (fetches >= 2).then_some(()) }
        },
    )
    .await;
    // Both settled: the slower copy's fetch ends `delay` after it started.
    app.wait_until_idle().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut dead = Vec::new();
    for queue in dead_letters::QUEUES {
        let listed = app.get_json(&format!("/api/dlq?queue={queue}")).await;
        for letter in listed.as_array().unwrap() {
            dead.push((queue, letter["reason"].clone()));
        }
    }
    assert_eq!(dead.len(), 1, "one dead letter for the event: {dead:?}");
    assert!(dead[0].1.as_str().unwrap().contains("404"), "{dead:?}");
    app.stop().await;
}

on_every_broker!(a_create_that_waits_and_fails_for_good_has_one_dead_letter);
