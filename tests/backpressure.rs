//! Admission control: with the broker away, the outbox fills; past
//! `--max-outbox-backlog`, catalog writes get 503 with `Retry-After` while reads are
//! served and `/readyz` says why; once the broker is back, every write accepted before
//! is processed, and writes are taken again.

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
