//! Dead letters: listed with their reason, replayed until they succeed, purged; over
//! HTTP and from the command line.

mod common;

use common::brokers::{Sealing, TestBroker, on_every_broker};
use common::{TestApp, flaky_cover_server, game_body, with};
use retrocat::broker::sealed::MessageKeys;
use retrocat::broker::{Message, Properties, Publish, topology};
use serde_json::{Value, json};
use std::collections::BTreeMap;
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

/// `retrocat ARGS` on the embedded broker's file in `dir`, run to the end.
fn retrocat_on_embedded_broker(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_retrocat"))
        .args(args)
        .env("RETROCAT_BROKER_PATH", dir.join("broker.db"))
        .env_remove("RABBITMQ_URL")
        .output()
        .expect("run retrocat")
}

#[tokio::test]
async fn retrocat_dlq_lists_and_purges_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let retrocat = |args: &[&str]| retrocat_on_embedded_broker(dir.path(), args);
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

/// The key this test's system seals and opens with, and one it has never had.
const KEY: &str = "now:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LOST_KEY: &str = "lost:HxscGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQAfHh0=";

/// A dead letter of `game_events`, sealed with `keys`.
fn sealed_dead_letter(keys: &MessageKeys, id: &str) -> Message {
    let mut message = Message {
        body: json!({ "gameId": 1, "action": "process" })
            .to_string()
            .into(),
        properties: Properties::json(id),
    };
    message.properties.mark_dead_lettered(
        "attempt 5: fetching a cover: 503",
        topology::GAME_EVENTS_QUEUE,
    );
    keys.seal(&mut message);
    message
}

/// Dead letters whose bodies this system cannot open (one sealed with a key it lost, one
/// tampered with) are listed with the reason, stay where they are however often they are
/// listed, are refused a replay (which would seal them twice), and can be purged.
async fn an_unopenable_dead_letter_is_listed_with_its_reason_and_stays(broker: TestBroker) {
    let sealing = Sealing {
        keys: Some(KEY),
        ..Sealing::default()
    };
    let (app, plain) = broker.spawn(sealing, &[]).await;
    let lost = sealed_dead_letter(&MessageKeys::parse(LOST_KEY).unwrap(), "lost-key");
    let mut tampered = sealed_dead_letter(&MessageKeys::parse(KEY).unwrap(), "tampered");
    let mut bytes = tampered.body.to_vec();
    *bytes.last_mut().unwrap() ^= 1;
    tampered.body = bytes.into();
    plain
        .publish(
            [lost, tampered]
                .map(|message| Publish::to_queue(topology::GAME_EVENTS_DLQ, message))
                .to_vec(),
        )
        .await
        .unwrap();

    for read in ["first", "second"] {
        let listed = dead_letters(&app, 2).await;
        let reasons: BTreeMap<&str, &str> = listed
            .iter()
            .map(|dead| {
                assert_eq!(dead["queue"], topology::GAME_EVENTS_QUEUE, "{dead}");
                assert!(dead["reason"].as_str().unwrap().contains("503"), "{dead}");
                let unopenable = dead["unopenable"].as_str().unwrap_or_else(|| {
                    panic!("{read} list: an unopenable dead letter says why: {dead}")
                });
                (dead["id"].as_str().unwrap(), unopenable)
            })
            .collect();
        assert!(
            reasons["lost-key"].contains("unknown key id \"lost\""),
            "{read} list: {reasons:?}"
        );
        assert!(
            reasons["tampered"].contains("tampered"),
            "{read} list: {reasons:?}"
        );
    }

    let replay = app
        .client
        .post(app.url("/api/dlq/lost-key/replay"))
        .send()
        .await
        .unwrap();
    let status = replay.status();
    assert_eq!(replay.headers()["content-type"], "application/problem+json");
    let problem: Value = replay.json().await.unwrap();
    assert_eq!(status, 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("cannot be replayed") && detail.contains("RETROCAT_MESSAGE_KEYS"),
        "{problem}"
    );
    dead_letters(&app, 2).await;

    for id in ["lost-key", "tampered"] {
        let purged = app
            .client
            .delete(app.url(&format!("/api/dlq/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(purged.status(), 204, "purge {id}");
    }
    dead_letters(&app, 0).await;
    app.stop().await;
}

on_every_broker!(an_unopenable_dead_letter_is_listed_with_its_reason_and_stays);

#[tokio::test]
async fn retrocat_dlq_acts_on_every_matching_message_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let retrocat = |args: &[&str]| retrocat_on_embedded_broker(dir.path(), args);
    let report = |output: std::process::Output| -> Value {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        serde_json::from_slice(&output.stdout).expect("one JSON object")
    };
    for n in 0..3 {
        let message = format!("stray {n}");
        let sent = retrocat(&["publish", &message, "--routing-key", "nobody.listens"]);
        assert!(sent.status.success());
    }
    let unrouted = ["--queue", "unrouted"];

    let none = report(retrocat(
        &[&["dlq", "purge", "--all", "--reason", "x"], &unrouted[..]].concat(),
    ));
    assert_eq!(
        (&none["matched"], &none["done"]),
        (&json!(0), &json!(0)),
        "{none}"
    );
    // Unrouted messages name no queue to go back to: each is skipped, and stays.
    let output = retrocat(&[&["dlq", "replay", "--all"], &unrouted[..]].concat());
    assert!(String::from_utf8_lossy(&output.stderr).contains("3 could not be replayed"));
    let skipped = report(output);
    assert_eq!(
        (&skipped["skipped"], &skipped["done"]),
        (&json!(3), &json!(0)),
        "{skipped}"
    );
    let output = retrocat(&[&["dlq", "purge", "--all"], &unrouted[..]].concat());
    assert!(String::from_utf8_lossy(&output.stderr).contains("purged 3 of unrouted"));
    let purged = report(output);
    assert_eq!(purged["done"], 3, "{purged}");
    let listed = retrocat(&["dlq", "list", "--queue", "unrouted"]);
    assert!(listed.stdout.is_empty());

    for refused in [
        &["dlq", "replay"][..],
        &["dlq", "purge", "some-id", "--all"],
        &["dlq", "purge", "--reason", "503"],
        &["dlq", "replay", "--all", "--before", "yesterday"],
    ] {
        let output = retrocat(refused);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{refused:?} is a usage error"
        );
    }
}
