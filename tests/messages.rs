//! The producer: the original producer's routes, ours to any exchange, and
//! `retrocat publish`, each checked at the queue the message should reach.

mod common;

use common::rabbitmq::Vhost;
use common::{Backend, Roles, TestApp, game_body};
use retrocat::broker::embedded::EmbeddedBroker;
use retrocat::broker::{
    Broker, Consumer, Delivery, ExchangeKind, ExchangeSpec, HeaderValue, QueueSpec, topology,
};
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
            422,
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

/// Runs each named test body (`async fn name(rabbitmq_url: Option<&str>)`) on the
/// embedded broker, and on a vhost of its own on RabbitMQ when `TEST_RABBITMQ_URL` is
/// set.
macro_rules! on_both_brokers {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(None).await
                }
            )*
        }

        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(vhost) = super::Vhost::create() else { return };
                    super::$test(Some(&vhost.url)).await
                }
            )*
        }
    };
}

on_both_brokers!(
    a_forged_dead_letter_is_refused_naming_the_header_and_never_listed,
    an_exchange_not_allowed_is_refused_naming_those_allowed,
    the_default_exchange_never_reaches_retrocats_queues,
    publish_exchanges_widens_what_clients_may_reach,
);

/// The API and relay only, so that a message that got through would stay in its queue
/// for the test to see.
async fn api_on(rabbitmq_url: Option<&str>, extra: &[&str]) -> TestApp {
    TestApp::spawn_on_broker(Backend::Sqlite, rabbitmq_url, Roles::ApiOnly, extra).await
}

/// Posts `body` to `POST /api/messages`, expects `status`, and returns the answer.
async fn post_message(app: &TestApp, body: &Value, status: u16) -> Value {
    let response = app.post_json("/api/messages", body).await;
    assert_eq!(response.status(), status, "{body}");
    response.json().await.unwrap()
}

async fn assert_empty(app: &TestApp, queues: &[&str]) {
    for queue in queues {
        let depth = app.broker().queue_depth(queue).await.unwrap();
        assert_eq!(depth, 0, "{queue} received a message");
    }
}

/// The attack of issue 23: a message to the default exchange, routed to
/// `game_events.dlq` with dead-letter headers, was listed as a real dead letter with 42
/// attempts, which replay sent wherever the forger chose.
async fn a_forged_dead_letter_is_refused_naming_the_header_and_never_listed(
    rabbitmq_url: Option<&str>,
) {
    // As configured by default, and with the default exchange allowed: the headers
    // alone must stop the forgery.
    let allowing_default = ["--publish-exchanges", "catalog.custom,amq.default"];
    for extra in [&[][..], &allowing_default[..]] {
        let app = api_on(rabbitmq_url, extra).await;
        forge_dead_letters(&app).await;
        app.stop().await;
    }
}

/// Sends forged dead letters through `app`, and checks none got through.
async fn forge_dead_letters(app: &TestApp) {
    let forged = |exchange: &str, routing_key: &str, header: &str| {
        json!({"exchange": exchange, "routingKey": routing_key,
               "message": {"gameId": 1, "action": "create"},
               "headers": {header: "game_events", "x-retry-count": 41, "x-origin": "test"}})
    };
    let cases = [
        forged("", topology::GAME_EVENTS_DLQ, "x-dead-letter-reason"),
        forged("", topology::GAME_EVENTS_DLQ, "X-Dead-Letter-Queue"),
        forged("", topology::GAME_EVENTS_DLQ, "x-dead-lettered-at"),
        forged("catalog.custom", "custom.message", "x-dead-letter-reason"),
    ];
    for body in cases {
        let problem = post_message(app, &body, 400).await;
        let header = body["headers"].as_object().unwrap().keys().next().unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert_eq!(problem["errors"][0]["field"], "headers", "{problem}");
        for named in [header.as_str(), "x-retry-count"] {
            assert!(detail.contains(named), "{named} not named: {problem}");
        }
        assert!(!detail.contains("x-origin"), "{problem}");
    }
    for (header, value) in [
        ("x-replay-count", json!(3)),
        ("x-key-id", json!("a")),
        ("x-encryption", json!("xchacha20poly1305")),
    ] {
        let body = json!({"message": "x", "headers": {header: value}});
        let problem = post_message(app, &body, 400).await;
        assert!(
            problem["detail"].as_str().unwrap().contains(header),
            "{problem}"
        );
    }

    let listed = app.get_json("/api/dlq").await;
    assert_eq!(listed, json!([]), "a forged dead letter is listed");
    assert_empty(app, &[topology::GAME_EVENTS_DLQ, topology::CUSTOM_QUEUE]).await;
}

async fn an_exchange_not_allowed_is_refused_naming_those_allowed(rabbitmq_url: Option<&str>) {
    let app = api_on(rabbitmq_url, &[]).await;
    let cases = [
        (topology::EVENTS_EXCHANGE, "game.created"),
        (topology::DEAD_LETTER_EXCHANGE, topology::GAME_EVENTS_QUEUE),
        ("", topology::GAME_EVENTS_QUEUE),
        ("amq.default", "orders"),
        ("amq.topic", "orders"),
    ];
    for (exchange, routing_key) in cases {
        let body = json!({"exchange": exchange, "routingKey": routing_key, "message": "x"});
        let problem = post_message(&app, &body, 422).await;
        assert_eq!(problem["errors"][0]["field"], "exchange", "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("allowed: catalog.custom"), "{problem}");
        assert!(detail.contains("--publish-exchanges"), "{problem}");
    }
    assert_empty(
        &app,
        &[
            topology::GAME_EVENTS_QUEUE,
            topology::GAME_EVENTS_DLQ,
            topology::AUDIT_QUEUE,
        ],
    )
    .await;
    // The allowed one still carries the message.
    let sent = post_message(&app, &json!({"message": "allowed"}), 201).await;
    assert_eq!(sent["exchange"], topology::CUSTOM_EXCHANGE);
    app.stop().await;
}

async fn the_default_exchange_never_reaches_retrocats_queues(rabbitmq_url: Option<&str>) {
    let app = api_on(
        rabbitmq_url,
        &["--publish-exchanges", "catalog.custom,amq.default"],
    )
    .await;
    let internal = [
        topology::GAME_EVENTS_QUEUE,
        topology::GAME_EVENTS_DLQ,
        topology::CUSTOM_QUEUE,
        topology::RPC_QUEUE,
        topology::RPC_DLQ,
        topology::AUDIT_QUEUE,
        topology::UNROUTED_QUEUE,
    ];
    for queue in internal {
        for exchange in ["", "amq.default"] {
            let body = json!({"exchange": exchange, "routingKey": queue,
                              "message": {"gameId": 1, "action": "create"}});
            let problem = post_message(&app, &body, 422).await;
            assert_eq!(problem["errors"][0]["field"], "routingKey", "{problem}");
            let detail = problem["detail"].as_str().unwrap();
            assert!(detail.contains(&format!("`{queue}`")), "{problem}");
        }
    }
    assert_empty(&app, &internal).await;

    // A queue of the operator's own is still reached through the default exchange.
    const OWN: &str = "test.inbox";
    app.broker()
        .declare_queue(&QueueSpec::durable(OWN))
        .await
        .unwrap();
    let mut own = app.broker().consume(OWN, 10).await.unwrap();
    for exchange in ["", "amq.default"] {
        let body = json!({"exchange": exchange, "routingKey": OWN, "message": exchange});
        let sent = post_message(&app, &body, 201).await;
        assert_eq!(sent["exchange"], "", "the default exchange, by its name");
        let delivery = next(&mut own).await;
        assert_eq!(self::body(&delivery)["message"], exchange);
        delivery.ack().await.unwrap();
    }
    app.stop().await;
}

async fn publish_exchanges_widens_what_clients_may_reach(rabbitmq_url: Option<&str>) {
    const ORDERS: &str = "test.orders";
    let body = json!({"exchange": ORDERS, "routingKey": "order.new", "message": {"order": 7}});
    let narrow = api_on(rabbitmq_url, &[]).await;
    post_message(&narrow, &body, 422).await;
    narrow.stop().await;

    let wide = api_on(
        rabbitmq_url,
        &["--publish-exchanges", "catalog.custom, test.orders,no.such"],
    )
    .await;
    let broker = wide.broker();
    broker
        .declare_exchange(&ExchangeSpec::new(ORDERS, ExchangeKind::Topic))
        .await
        .unwrap();
    broker
        .declare_queue(&QueueSpec::durable(ORDERS))
        .await
        .unwrap();
    broker.bind_queue(ORDERS, ORDERS, "order.#").await.unwrap();
    let mut orders = broker.consume(ORDERS, 10).await.unwrap();
    let sent = post_message(&wide, &body, 201).await;
    let delivery = next(&mut orders).await;
    assert_eq!(
        delivery.message.properties.message_id.as_deref(),
        sent["messageId"].as_str()
    );
    assert_eq!(self::body(&delivery)["message"], json!({"order": 7}));
    // Still refused: an exchange left out, and reserved headers on one let in.
    let refused = json!({"exchange": "catalog.events", "routingKey": "game.created", "message": 1});
    let problem = post_message(&wide, &refused, 422).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("allowed: catalog.custom, test.orders, no.such"),
        "{problem}"
    );
    let forged = json!({"exchange": ORDERS, "routingKey": "order.new", "message": 1,
                        "headers": {"x-retry-count": 41}});
    post_message(&wide, &forged, 400).await;
    // Allowed, yet missing from the broker: the broker's answer, 404.
    let missing = json!({"exchange": "no.such", "routingKey": "x", "message": 1});
    let problem = post_message(&wide, &missing, 404).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("no.such"),
        "{problem}"
    );
    wide.stop().await;
}

/// `retrocat publish` refuses as `POST /api/messages` does, before it reaches the
/// broker, and `RETROCAT_PUBLISH_EXCHANGES` widens its list.
#[tokio::test]
async fn retrocat_publish_refuses_reserved_headers_and_exchanges_not_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let broker_path = dir.path().join("broker.db");
    let publish = |args: &[&str], exchanges: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_retrocat"));
        command
            .arg("publish")
            .args(args)
            .env("RETROCAT_BROKER_PATH", &broker_path)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.path().join("unused.db").display()),
            )
            .env_remove("RABBITMQ_URL")
            .env_remove("RETROCAT_PUBLISH_EXCHANGES");
        if let Some(exchanges) = exchanges {
            command.env("RETROCAT_PUBLISH_EXCHANGES", exchanges);
        }
        command.output().expect("run retrocat publish")
    };
    let default_exchange = ["--exchange", "", "--routing-key"];
    let cases: [(Vec<&str>, Option<&str>, &[&str]); 5] = [
        (
            vec![
                "x",
                "--header",
                "x-dead-letter-reason=forged",
                "--header",
                "X-Retry-Count=41",
            ],
            None,
            &["x-dead-letter-reason", "X-Retry-Count", "reserved"],
        ),
        (
            vec![
                "x",
                "--exchange",
                "catalog.events",
                "--routing-key",
                "game.created",
            ],
            None,
            &["catalog.events", "allowed: catalog.custom"],
        ),
        (
            [&default_exchange[..], &["game_events.dlq", "x"]].concat(),
            None,
            &["the default exchange", "allowed: catalog.custom"],
        ),
        (
            [&default_exchange[..], &["game_events", "x"]].concat(),
            Some("catalog.custom,amq.default"),
            &["`game_events`", "default exchange may not deliver"],
        ),
        (
            [
                &default_exchange[..],
                &["game_events", "x", "--publish-exchanges", "amq.default"],
            ]
            .concat(),
            None,
            &["`game_events`", "default exchange may not deliver"],
        ),
    ];
    for (args, exchanges, mentions) in cases {
        let output = publish(&args, exchanges);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was sent");
        for mention in mentions {
            assert!(
                stderr.contains(mention),
                "{args:?}: {mention} not in {stderr}"
            );
        }
    }

    // A queue of the operator's own, through the default exchange once it is listed
    // (the API's test sees it delivered).
    let sent = publish(
        &[
            "to my queue",
            "--exchange",
            "",
            "--routing-key",
            "test.inbox",
        ],
        Some("catalog.custom,amq.default"),
    );
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{stderr}");

    let broker = EmbeddedBroker::open(&broker_path).await.unwrap();
    for queue in [topology::GAME_EVENTS_QUEUE, topology::GAME_EVENTS_DLQ] {
        assert_eq!(broker.queue_depth(queue).await.unwrap(), 0, "{queue}");
    }
}
