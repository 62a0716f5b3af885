//! The producer: the original producer's routes, ours to any exchange, and
//! `retrocat publish`, each checked at the queue the message should reach.

mod common;

use common::{TestApp, game_body};
use retrocat::broker::embedded::EmbeddedBroker;
use retrocat::broker::{Broker, Consumer, Delivery, HeaderValue, QueueSpec, topology};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer open")
}

/// A test-owned queue bound to `catalog.custom` as `custom_messages` is: it keeps a
/// copy of every message that reaches `custom_messages`, which the system's own
/// custom-message consumer reads and empties.
async fn tap_custom(broker: &dyn Broker) -> &'static str {
    const TAP: &str = "test.custom_tap";
    broker
        .declare_queue(&QueueSpec::durable(TAP))
        .await
        .unwrap();
    broker
        .bind_queue(TAP, topology::CUSTOM_EXCHANGE, topology::CUSTOM_KEYS)
        .await
        .unwrap();
    TAP
}

fn body(delivery: &Delivery) -> Value {
    serde_json::from_slice(&delivery.message.body).expect("a JSON body")
}

async fn history_len(app: &TestApp, id: i64) -> usize {
    app.get_json(&format!("/api/games/{id}/history"))
        .await
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn the_original_producers_routes_answer_as_it_did_and_deliver() {
    let app = TestApp::spawn().await;
    let game = app.create_game(&game_body("Produced")).await;
    let id = game["id"].as_i64().unwrap();
    app.wait_for_status(id, "completed", 1).await;

    let response = app
        .post_json(
            "/api/messages/game-event",
            &json!({"gameId": id, "action": "process", "gameData": {}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "Game event message sent successfully", "gameId": id,
               "action": "process", "status": "success"})
    );
    // "process" means: process this game again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while history_len(&app, id).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the game event was not processed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let tap = tap_custom(app.broker()).await;
    let mut custom = app.broker().consume(tap, 10).await.unwrap();
    let response = app
        .post_json("/api/messages/custom", &json!({"message": "hello"}))
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "Custom message sent successfully", "status": "success"})
    );
    let delivered = body(&next(&mut custom).await);
    assert_eq!(
        (&delivered["type"], &delivered["message"]),
        (&json!("custom"), &json!("hello"))
    );

    for (route, body) in [
        ("/api/messages/game-event", json!({"action": "create"})),
        ("/api/messages/game-event", json!({"gameId": id})),
        ("/api/messages/custom", json!({})),
    ] {
        let response = app.post_json(route, &body).await;
        assert_eq!(response.status(), 400, "{route} {body}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["message"].as_str().unwrap().contains("required"),
            "{route} {body}: {problem}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_message_reaches_its_exchange_with_its_priority_delay_and_headers() {
    let app = TestApp::spawn().await;
    let tap = tap_custom(app.broker()).await;
    let mut custom = app.broker().consume(tap, 10).await.unwrap();
    let sent = Instant::now();
    let response = app
        .post_json(
            "/api/messages",
            &json!({"exchange": "catalog.custom", "routingKey": "custom.orders",
                    "message": {"order": 7}, "priority": 5, "delayMs": 300,
                    "headers": {"x-origin": "test", "x-count": 3}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["routingKey"], "custom.orders");

    let delivery = next(&mut custom).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "delivered before its delay"
    );
    let properties = &delivery.message.properties;
    assert_eq!(
        properties.message_id.as_deref(),
        answer["messageId"].as_str()
    );
    assert_eq!(properties.priority, 5);
    assert_eq!(properties.header_str("x-origin"), Some("test"));
    assert_eq!(properties.header_int("x-count"), Some(3));
    assert_eq!(body(&delivery)["message"], json!({"order": 7}));
    app.stop().await;
}

#[tokio::test]
async fn a_message_nobody_is_bound_for_is_kept_in_unrouted() {
    let app = TestApp::spawn().await;
    let tap = tap_custom(app.broker()).await;
    let response = app
        .post_json(
            "/api/messages",
            &json!({"routingKey": "orders.new", "message": "stray"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let mut unrouted = app
        .broker()
        .consume(topology::UNROUTED_QUEUE, 10)
        .await
        .unwrap();
    let kept = next(&mut unrouted).await;
    assert_eq!(kept.routing_key, "orders.new");
    assert_eq!(body(&kept)["message"], "stray");
    assert_eq!(app.broker().queue_depth(tap).await.unwrap(), 0);
    app.stop().await;
}

#[tokio::test]
async fn bad_messages_are_refused_and_nothing_is_sent() {
    let app = TestApp::spawn().await;
    let tap = tap_custom(app.broker()).await;
    let cases = [
        (json!({"message": "x", "priority": 11}), 422, "priority"),
        (json!({"message": "x", "priority": -1}), 400, "priority"),
        (json!({"message": "x", "delayMs": 90_000_000}), 422, "delay"),
        (
            json!({"message": "x", "exchange": "no.such"}),
            404,
            "no.such",
        ),
        (json!({"message": "x", "colour": "red"}), 400, "colour"),
        (json!({"priority": 1}), 400, "message"),
        (json!({"message": null}), 422, "message"),
    ];
    for (body, status, mention) in cases {
        let response = app.post_json("/api/messages", &body).await;
        assert_eq!(response.status(), status, "{body}");
        let problem = response.text().await.unwrap();
        assert!(problem.contains(mention), "{body}: {problem}");
    }
    for queue in [tap, topology::UNROUTED_QUEUE] {
        assert_eq!(app.broker().queue_depth(queue).await.unwrap(), 0, "{queue}");
    }
    app.stop().await;
}

#[tokio::test]
async fn retrocat_publish_sends_a_custom_message_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker_path = dir.path().join("broker.db");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_retrocat"))
        .args(["publish", r#"{"hello": "world"}"#, "--priority", "3"])
        .args(["--header", "x-from=cli", "--delay", "10ms"])
        .env("RETROCAT_BROKER_PATH", &broker_path)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("unused.db").display()),
        )
        .env_remove("RABBITMQ_URL")
        .output()
        .expect("run retrocat publish");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let broker = EmbeddedBroker::open(&broker_path).await.unwrap();
    let mut custom = broker.consume(topology::CUSTOM_QUEUE, 10).await.unwrap();
    let delivery = next(&mut custom).await;
    assert_eq!(delivery.message.properties.message_id, Some(id));
    assert_eq!(delivery.message.properties.priority, 3);
    assert_eq!(
        delivery.message.properties.headers.get("x-from"),
        Some(&HeaderValue::from("cli"))
    );
    assert_eq!(body(&delivery)["message"], json!({"hello": "world"}));

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_retrocat"))
        .args(["publish", "x", "--priority", "11"])
        .env("RETROCAT_BROKER_PATH", dir.path().join("other.db"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("priority"));
}
