//! Dead letters: listed with their reason, replayed until they succeed, purged; over
//! HTTP and from the command line.

mod common;

use common::{TestApp, flaky_cover_server, game_body, with};
use retrocat::broker::{Message, Properties, Publish, topology};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

async fn dead_letters(app: &TestApp, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = app.get_json("/api/dlq").await;
        let listed = listed.as_array().unwrap().clone();
        if listed.len() == count {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} dead letters: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failed_event_is_listed_with_its_reason_and_succeeds_when_replayed() {
    let app = TestApp::spawn_with(common::Roles::Serve, &["--max-attempts", "2"]).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let url = flaky_cover_server(healthy.clone()).await;
    let game = app
        .create_game(&with(game_body("Replayed"), "imageUrl", json!(url)))
        .await;
    let id = game["id"].as_i64().unwrap();
    app.wait_for_status(id, "failed", 1).await;

    let listed = dead_letters(&app, 1).await;
    let dead = &listed[0];
    assert_eq!(dead["queue"], topology::GAME_EVENTS_QUEUE);
    assert_eq!(dead["attempts"], 2);
    assert!(
        dead["reason"].as_str().unwrap().contains("503"),
        "the reason says what failed: {dead}"
    );

    healthy.store(true, Ordering::SeqCst);
    let replay = app
        .client
        .post(app.url(&format!("/api/dlq/{}/replay", dead["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    app.wait_for_status(id, "completed", 1).await;
    dead_letters(&app, 0).await;
    let history = app.get_json(&format!("/api/games/{id}/history")).await;
    let outcomes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| attempt["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "failed", "completed"]);
    app.stop().await;
}

#[tokio::test]
async fn an_unreadable_message_is_purged_and_only_once() {
    let app = TestApp::spawn().await;
    let poison = Message {
        body: b"not json".to_vec().into(),
        properties: Properties::default(),
    };
    app.broker()
        .publish(vec![Publish::to_queue(topology::GAME_EVENTS_QUEUE, poison)])
        .await
        .unwrap();
    let listed = dead_letters(&app, 1).await;
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed[0]["body"], "not json");

    let path = format!("/api/dlq/{id}");
    let purged = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(purged.status(), 204);
    dead_letters(&app, 0).await;
    let again = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(again.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn dead_letter_queries_are_checked() {
    let app = TestApp::spawn().await;
    for query in [
        "?queue=game_events",
        "?limit=0",
        "?limit=many",
        "?colour=red",
    ] {
        let response = app.get(&format!("/api/dlq{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
    }
    let listed = app.get_json("/api/dlq?queue=unrouted&limit=5").await;
    assert_eq!(listed, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn retrocat_dlq_lists_and_purges_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let retrocat = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_retrocat"))
            .args(args)
            .env("RETROCAT_BROKER_PATH", dir.path().join("broker.db"))
            .env_remove("RABBITMQ_URL")
            .output()
            .expect("run retrocat")
    };
    let sent = retrocat(&[
        "publish",
        "stray",
        "--exchange",
        "catalog.custom",
        "--routing-key",
        "nobody.listens",
    ]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let id = String::from_utf8(sent.stdout).unwrap().trim().to_owned();

    let listed = retrocat(&["dlq", "list", "--queue", "unrouted"]);
    let line: Value = serde_json::from_slice(&listed.stdout).expect("one JSON line");
    assert_eq!(line["id"], id);

    let purged = retrocat(&["dlq", "purge", &id, "--queue", "unrouted"]);
    assert!(
        purged.status.success(),
        "{}",
        String::from_utf8_lossy(&purged.stderr)
    );
    let listed = retrocat(&["dlq", "list", "--queue", "unrouted"]);
    assert!(listed.stdout.is_empty());
    let missing = retrocat(&["dlq", "purge", &id, "--queue", "unrouted"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no message"));
}
