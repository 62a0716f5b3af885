//! Backpressure.
//! - Admission control: with the broker away, the outbox fills; past
//!   `--max-outbox-backlog`, catalog writes get 503 with `Retry-After` while reads are
//!   served and `/readyz` says why; once the broker is back, every write accepted
//!   before is processed, and writes are taken again.
//! - A bounded queue: with `--max-queue-length` and no worker taking from
//!   `game_events`, the relay fills the queue to its bound and the outbox holds the
//!   rest; once the workers take again, every event is processed, once. On both
//!   brokers.

mod common;

use common::rabbitmq::Vhost;
use common::{Backend, Roles, TestApp, eventually, game_body};
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: usize = 10;

/// `/readyz`, once what it says of writes is as `expected` (it answers 503 while the
/// broker is away, with the same body).
async fn wait_for_writes(app: &TestApp, expected: impl Fn(&str) -> bool) -> Value {
    eventually("/readyz on writes", Duration::from_secs(30), || async {
        let ready: Value = app.get("/readyz").await.json().await.ok()?;
        expected(ready["writes"].as_str()?).then_some(ready)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_outbox_backlog_limit_writes_wait_and_reads_go_on() {
    let Some(vhost) = Vhost::create() else { return };
    let limit = LIMIT.to_string();
    let app = TestApp::spawn_on_broker(
        Backend::Sqlite,
        Some(&vhost.url),
        Roles::Serve,
        &["--max-outbox-backlog", &limit],
    )
    .await;
    let ready = wait_for_writes(&app, |writes| writes == "accepted").await;
    assert_eq!(ready["status"], "ok", "{ready}");

    // The broker away: writes are still taken, up to the limit and a little past it
    // (the backlog is sampled once a second), their events held in the outbox.
    vhost.delete();
    let mut accepted = Vec::new();
    for n in 0..=LIMIT {
        let game = app.create_game(&game_body(&format!("Held {n:02}"))).await;
        accepted.push(game["id"].as_i64().unwrap());
    }
    let ready = wait_for_writes(&app, |writes| writes != "accepted").await;
    let why = ready["writes"].as_str().unwrap();
    assert!(why.contains("--max-outbox-backlog 10"), "{ready}");

    // Past it: every catalog write is refused, saying when to try again...
    let id = accepted[0];
    let writes = [
        app.client
            .post(app.url("/api/games"))
            .json(&game_body("Refused")),
        app.client
            .put(app.url(&format!("/api/games/{id}")))
            .json(&game_body("Renamed")),
        app.client.delete(app.url(&format!("/api/games/{id}"))),
        app.client
            .post(app.url("/api/genres"))
            .json(&json!({"name": "Refused Genre"})),
    ];
    for write in writes {
        let response = write.send().await.unwrap();
        assert_eq!(response.status(), 503);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("outbox"),
            "{problem}"
        );
    }
    // ...and nothing of them was written, while reads are served.
    let games = app.get_json("/api/games?search=Refused").await;
    assert_eq!(games, json!([]));
    assert_eq!(app.get(&format!("/api/games/{id}")).await.status(), 200);
    assert_eq!(app.get("/api/games?limit=5").await.status(), 200);

    // The broker back: what was accepted is processed, and writes are taken again.
    vhost.add();
    for &id in &accepted {
        app.wait_for_status(id, "completed", 1).await;
    }
    wait_for_writes(&app, |writes| writes == "accepted").await;
    let after = app.create_game(&game_body("Taken Again")).await;
    app.wait_for_status(after["id"].as_i64().unwrap(), "completed", 1)
        .await;
    app.stop().await;
}

/// `GET /api/queues`'s row of `name` once `test` holds of it.
async fn wait_for_row(app: &TestApp, name: &str, test: impl Fn(&Value) -> bool) -> Value {
    eventually(
        &format!("{name} in /api/queues"),
        Duration::from_secs(30),
        || async {
            let rows = app.get_json("/api/queues").await;
            let row = rows.as_array()?.iter().find(|row| row["name"] == name)?;
            test(row).then(|| row.clone())
        },
    )
    .await
}

/// The ready messages of `game_events` and of the outbox, as `GET /api/queues` shows
/// them.
async fn held(app: &TestApp) -> (Value, Value) {
    let rows = app.get_json("/api/queues").await;
    let ready = |name: &str| {
        rows.as_array()
            .and_then(|rows| rows.iter().find(|row| row["name"] == name))
            .map_or(Value::Null, |row| row["ready"].clone())
    };
    (ready("game_events"), ready("outbox"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_events_in_the_outbox_on_the_embedded_broker() {
    a_full_queue_holds_events_in_the_outbox(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_events_in_the_outbox_on_rabbitmq() {
    let Some(vhost) = Vhost::create() else { return };
    a_full_queue_holds_events_in_the_outbox(Some(&vhost.url)).await;
}

/// With `game_events` bounded at 20 and paused, 60 creates: 20 events in the queue
/// and 40 in the outbox, held there; resumed, every game is processed once.
async fn a_full_queue_holds_events_in_the_outbox(rabbitmq_url: Option<&str>) {
    let app = TestApp::spawn_on_broker(
        Backend::Sqlite,
        rabbitmq_url,
        Roles::Serve,
        &["--max-queue-length", "20"],
    )
    .await;
    // A worker consumes game_events; paused, none does.
    wait_for_row(&app, "game_events", |row| row["consumers"] == 1).await;
    let paused = app
        .post_json("/api/queues/game_events/pause", &json!({}))
        .await;
    assert_eq!(paused.status(), 200);
    wait_for_row(&app, "game_events", |row| row["consumers"] == 0).await;

    let mut ids = Vec::new();
    for n in 0..60 {
        let game = app
            .create_game(&game_body(&format!("Bounded {n:02}")))
            .await;
        ids.push(game["id"].as_i64().unwrap());
    }
    // The queue fills to its bound and no further; the outbox holds the rest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while held(&app).await != (json!(20), json!(40)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if held(&app).await != (json!(20), json!(40)) {
        // A rare failure seen in CI only, as (0, 0): say where the events went.
        let mut statuses = std::collections::BTreeMap::<String, usize>::new();
        for &id in &ids {
            let game = app.get_json(&format!("/api/games/{id}")).await;
            *statuses
                .entry(game["processingStatus"].to_string())
                .or_default() += 1;
        }
        panic!(
            "not (20, 40) held: /api/queues {}; the games' statuses {statuses:?}",
            app.get_json("/api/queues").await
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(held(&app).await, (json!(20), json!(40)), "(queue, outbox)");

    // Room again: every event is processed, once.
    let resumed = app
        .post_json("/api/queues/game_events/resume", &json!({}))
        .await;
    assert_eq!(resumed.status(), 200);
    for &id in &ids {
        app.wait_for_status(id, "completed", 1).await;
    }
    wait_for_row(&app, "outbox", |row| row["ready"] == 0).await;
    for &id in &ids {
        let attempts = app.get_json(&format!("/api/games/{id}/history")).await;
        assert_eq!(
            attempts.as_array().map(Vec::len),
            Some(1),
            "game {id}: {attempts}"
        );
    }
    app.stop().await;
}
