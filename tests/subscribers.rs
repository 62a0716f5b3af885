//! Pub/sub and the custom-message consumer: every subscriber of `catalog.events` keeps
//! every domain event (`GET /api/audit`); custom messages are recorded
//! (`GET /api/messages/received`) and answered when the sender waits for a reply.

mod common;

use common::{Backend, Roles, TestApp, game_body, on_every_backend};
use retrocat::broker::topology;
use retrocat::storage::ReceivedMessage;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

/// Polls `path` until its list holds at least `count` entries, and returns it.
async fn wait_for_entries(app: &TestApp, path: &str, count: usize) -> Vec<Value> {
    for _ in 0..500 {
        let entries = app.get_json(path).await.as_array().unwrap().clone();
        if entries.len() >= count {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} never held {count} entries");
}

fn field_set(entries: &[Value], field: &str) -> BTreeSet<String> {
    entries
        .iter()
        .map(|entry| entry[field].as_str().unwrap().to_owned())
        .collect()
}

async fn each_subscriber_keeps_every_domain_event(backend: Backend) {
    let app =
        TestApp::spawn_on_with(backend, Roles::Serve, &["--subscribers", "audit,archive"]).await;
    let game = app.create_game(&game_body("Audited")).await;
    let id = game["id"].as_i64().unwrap();
    app.wait_for_status(id, "completed", 1).await;
    let platform = app
        .post_json("/api/platforms", &json!({ "name": "Audit Box" }))
        .await;
    assert_eq!(platform.status(), 201);
    let deleted = app
        .client
        .delete(app.url(&format!("/api/games/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);

    // game.created, game.processed, platform.created, game.deleted
    let audit = wait_for_entries(&app, "/api/audit", 4).await;
    let keys = field_set(&audit, "routingKey");
    for key in [
        "game.created",
        "game.processed",
        "platform.created",
        "game.deleted",
    ] {
        assert!(keys.contains(key), "the audit log lacks {key}: {keys:?}");
    }
    let created = audit
        .iter()
        .find(|entry| entry["routingKey"] == "game.created")
        .unwrap();
    assert_eq!(created["body"]["gameId"], id, "the event body is kept");
    assert_eq!(created["exchange"], topology::EVENTS_EXCHANGE);

    // Fan-out: the second subscriber got the same events, not a share of them.
    let archive = wait_for_entries(&app, "/api/audit?subscriber=archive", audit.len()).await;
    assert_eq!(
        field_set(&archive, "messageId"),
        field_set(&audit, "messageId")
    );
}

async fn a_custom_message_is_recorded_and_answered(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let response = app
        .post_json(
            "/api/messages",
            &json!({ "message": { "hello": "world" }, "waitMs": 10_000 }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let sent: Value = response.json().await.unwrap();
    assert_eq!(sent["reply"]["received"], true, "{sent}");
    assert_eq!(sent["reply"]["messageId"], sent["messageId"]);

    // The original producer's route reaches the same consumer.
    let original = app
        .post_json(
            "/api/messages/custom",
            &json!({ "message": "from the original" }),
        )
        .await;
    assert_eq!(original.status(), 201);

    let received = wait_for_entries(&app, "/api/messages/received", 2).await;
    let ours = received
        .iter()
        .find(|entry| entry["messageId"] == sent["messageId"])
        .expect("the waited-for message is recorded");
    assert_eq!(ours["body"]["type"], "custom");
    assert_eq!(ours["body"]["message"], json!({ "hello": "world" }));
    assert!(
        received
            .iter()
            .any(|entry| entry["body"]["message"] == "from the original")
    );
    assert_eq!(app.broker().waiting_requests(), 0);
}

async fn an_unroutable_request_is_kept_and_times_out(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let response = app
        .post_json(
            "/api/messages",
            &json!({ "message": "lost?", "routingKey": "nowhere.at.all", "waitMs": 300 }),
        )
        .await;
    assert_eq!(response.status(), 504, "nobody consumes the unrouted queue");
    assert_eq!(app.broker().waiting_requests(), 0);
    // The alternate exchange kept it, visible, rather than dropping it.
    let unrouted = app
        .broker()
        .queue_depth(topology::UNROUTED_QUEUE)
        .await
        .unwrap();
    assert_eq!(unrouted, 1);
}

async fn bad_audit_queries_are_refused(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for (query, field) in [
        ("subscriber=Not%20A%20Name", "subscriber"),
        ("subscriber=custom", "subscriber"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let response = app.get(&format!("/api/audit?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }
    let response = app.get("/api/audit?color=green").await;
    assert_eq!(response.status(), 400, "unknown parameters are refused");
    let response = app
        .post_json(
            "/api/messages",
            &json!({ "message": "x", "waitMs": 60_000 }),
        )
        .await;
    assert_eq!(response.status(), 400);
}

/// A subscriber records what it has ready in one statement; a redelivered message in
/// a batch (recorded before, or twice in the batch) is refused alone, the rest kept.
async fn a_redelivered_message_is_recorded_once(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let message = |id: &str| ReceivedMessage {
        subscriber: "archive".into(),
        message_id: id.into(),
        exchange: topology::EVENTS_EXCHANGE.into(),
        routing_key: "game.created".into(),
        headers: Default::default(),
        body: json!({ "id": id }),
        received_at: chrono::Utc::now(),
    };
    let store = app.store();
    let first = store
        .record_received(&[message("m1"), message("m2")])
        .await
        .unwrap();
    assert_eq!(first, [true, true]);
    let again = store
        .record_received(&[message("m2"), message("m3"), message("m3")])
        .await
        .unwrap();
    assert_eq!(again, [false, true, false]);
    let kept: Vec<String> = store
        .received("archive", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(kept, ["m3", "m2", "m1"]);
    app.stop().await;
}

on_every_backend!(
    a_redelivered_message_is_recorded_once,
    each_subscriber_keeps_every_domain_event,
    a_custom_message_is_recorded_and_answered,
    an_unroutable_request_is_kept_and_times_out,
    bad_audit_queries_are_refused,
);
