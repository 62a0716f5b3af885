//! The system as separate OS processes on a real RabbitMQ: `retrocat api` and several
//! `retrocat worker`s sharing one SQLite database, each test in a vhost of its own.
//! Skipped without `TEST_RABBITMQ_URL` (and `rabbitmqctl`, to make the vhost).

mod common;

use common::Backend;
use common::processes::{Deployment, Effects, Process, create_games, free_port, stop_all};
use common::rabbitmq::{Amqp, Vhost, rabbitmqctl};
use lapin::types::{AMQPValue, FieldTable};
use retrocat::broker::QueueType;
use serde_json::{Value, json};
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

const GAMES: usize = 5000;
const IN_FLIGHT: usize = 32;
const QUEUE: &str = "game_events";
const DLQ: &str = "game_events.dlq";

/// A migrated database, an API on RabbitMQ, and one worker per id, each consuming.
async fn start(
    vhost: &Vhost,
    workers: &[&str],
    args: &[&str],
) -> (Deployment, Process, Vec<Process>, Amqp) {
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url);
    let (api, workers, amqp) = deployment.start_api_and_workers(workers, args).await;
    (deployment, api, workers, amqp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_and_three_workers_process_every_event_exactly_once() {
    let Some(vhost) = Vhost::create() else { return };
    let (deployment, api, workers, _amqp) =
        start(&vhost, &["w1", "w2", "w3"], &["--simulate-work", "2ms"]).await;

    let ids = create_games(
        api.base(),
        "Distributed",
        GAMES,
        IN_FLIGHT,
        &AtomicUsize::new(0),
    )
    .await;
    let effects = Effects::open(&deployment).await;
    let split = effects
        .assert_processed_exactly_once(&ids, Duration::from_secs(120))
        .await;
    for worker in ["w1", "w2", "w3"] {
        let share = split.get(worker).copied().unwrap_or(0);
        assert!(
            share >= GAMES / 10,
            "{worker} completed only {share} of {GAMES} events: {split:?}"
        );
    }
    stop_all(workers.into_iter().chain([api]).collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_unacknowledged_deliveries_go_to_the_others() {
    let Some(vhost) = Vhost::create() else { return };
    // Slow work and few at a time: a backlog builds, and each worker holds a full
    // prefetch window of unacknowledged deliveries.
    let (deployment, api, mut workers, amqp) = start(
        &vhost,
        &["w1", "w2", "w3"],
        &[
            "--simulate-work",
            "50ms",
            "--concurrency",
            "4",
            "--prefetch",
            "50",
        ],
    )
    .await;
    let effects = Effects::open(&deployment).await;

    let creating = tokio::spawn({
        let base = api.base().to_owned();
        async move { create_games(&base, "Victim", GAMES, IN_FLIGHT, &AtomicUsize::new(0)).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while effects.completions().await.len() < 500 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not even 500 games completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Messages still waiting in the queue mean every consumer's window is full: the
    // victim dies holding deliveries it has not acknowledged. The workers take 240
    // events/s in all, the creates come faster, so a backlog builds.
    let mut ready = 0;
    while ready == 0 && tokio::time::Instant::now() < deadline {
        ready = amqp.queue_state(QUEUE).await.0;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut victim = workers.remove(0);
    victim.kill().await;
    let by_victim = effects.completed_by("w1").await;
    eprintln!("killed w1 after it completed {by_victim}; {ready} messages were waiting");
    assert!(
        ready > 0,
        "no backlog when w1 died; the test proves nothing"
    );

    let ids = creating.await.expect("creates");
    let split = effects
        .assert_processed_exactly_once(&ids, Duration::from_secs(150))
        .await;
    assert_eq!(
        split.get("w1").copied().unwrap_or(0),
        by_victim,
        "w1 completed events after it was killed: {split:?}"
    );
    assert_eq!(split.values().sum::<usize>(), GAMES);
    stop_all(workers.into_iter().chain([api]).collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_original_format_messages_on_rabbitmq() {
    let Some(vhost) = Vhost::create() else { return };
    let (deployment, api, workers, amqp) = start(&vhost, &["w1"], &[]).await;
    let client = common::processes::http_client();
    let created = create_games(api.base(), "Original", 1, 1, &AtomicUsize::new(0)).await;
    let id = created[0];
    let effects = Effects::open(&deployment).await;
    effects
        .wait_until_completed(&created, Duration::from_secs(30))
        .await;

    // As the original Python and Node clients published: no message id, no eventId.
    let poison = [
        ("not json", "not a game event"),
        (r#"{"action":"create"}"#, "gameId"),
        (r#"{"gameId":1,"action":"explode"}"#, "explode"),
    ];
    for (body, _) in poison {
        amqp.publish_original(QUEUE, body.as_bytes(), FieldTable::default())
            .await;
    }
    let original = |timestamp: &str| {
        json!({"gameId": id, "action": "process", "timestamp": timestamp,
               "gameData": {"title": "Original 0000", "platformId": 1, "genreId": 1,
                            "developer": "Test Studio", "releaseYear": 1991,
                            "yearCategory": "1990s", "description": "", "imageUrl": null}})
        .to_string()
    };
    amqp.publish_original(
        QUEUE,
        original("2024-05-01T10:00:00.000Z").as_bytes(),
        FieldTable::default(),
    )
    .await;
    let mut retried = FieldTable::default();
    retried.insert("x-retry-count".into(), AMQPValue::LongInt(2));
    amqp.publish_original(
        QUEUE,
        original("2024-05-01T10:00:01.000Z").as_bytes(),
        retried,
    )
    .await;

    // The worker keeps going: both original-format messages are processed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let completed = loop {
        let history: Vec<Value> = client
            .get(api.url(&format!("/api/games/{id}/history")))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("history JSON");
        let completed: Vec<Value> = history
            .into_iter()
            .filter(|a| a["outcome"] == "completed")
            .collect();
        if completed.len() >= 3 {
            break completed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the original-format messages were not processed: {completed:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(completed.len(), 3, "{completed:#?}");
    assert!(
        completed.iter().all(|a| a["worker"] == "w1"),
        "{completed:#?}"
    );
    assert!(
        completed.iter().any(|a| a["attempt"] == 3),
        "x-retry-count 2 makes attempt 3: {completed:#?}"
    );

    // The poison messages are in the dead-letter queue, each with what was wrong.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while amqp.queue_state(DLQ).await.0 < poison.len() as u32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "poison messages missing from {DLQ}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API lists them, with their reasons, and leaves them in place.
    let listed: Vec<Value> = client
        .get(api.url("/api/dlq"))
        .send()
        .await
        .expect("list dead letters")
        .json()
        .await
        .expect("dead letters JSON");
    assert_eq!(listed.len(), poison.len(), "{listed:#?}");
    assert!(
        listed.iter().all(|dead| dead["reason"].is_string()),
        "{listed:#?}"
    );
    while amqp.queue_state(DLQ).await.0 < poison.len() as u32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listing took dead letters out of {DLQ}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = amqp.take_all(DLQ).await;
    assert_eq!(dead.len(), poison.len(), "{dead:#?}");
    for (body, expected) in poison {
        let (_, headers) = dead
            .iter()
            .find(|(dead_body, _)| dead_body == body)
            .unwrap_or_else(|| panic!("{body:?} is not in {DLQ}: {dead:#?}"));
        let reason = headers
            .get("x-dead-letter-reason")
            .unwrap_or_else(|| panic!("{body:?} has no x-dead-letter-reason: {headers:?}"));
        eprintln!("dead-lettered {body:?}: {reason}");
        assert!(
            reason.contains(expected),
            "the reason for {body:?} does not mention {expected:?}: {reason}"
        );
    }

    // The original consumer's callback.
    let response = client
        .put(api.url(&format!("/api/games/{id}/process-complete")))
        .json(&json!({"status": "completed"}))
        .send()
        .await
        .expect("process-complete");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );

    stop_all(workers.into_iter().chain([api]).collect()).await;
}

/// Reads a Server-Sent Events stream until it shows `game.processed` for `id`.
async fn wait_for_processed(mut stream: reqwest::Response, id: i64, api: &str) {
    let wanted = format!("\"gameId\":{id},");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen
        .split("\n\n")
        .any(|event| event.contains("event: game.processed") && event.contains(&wanted))
    {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("{api} never streamed game.processed for {id}: {seen}"))
            .expect("stream")
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_both_stream_what_any_worker_processed() {
    let Some(vhost) = Vhost::create() else { return };
    let (deployment, first, workers, _amqp) = start(&vhost, &["w1"], &[]).await;
    let second = deployment.start_http("api2", "api", free_port(), &[]).await;
    let client = common::processes::http_client();
    let mut streams = Vec::new();
    for api in [&first, &second] {
        let stream = client
            .get(api.url("/api/stream"))
            .send()
            .await
            .expect("open the live stream");
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }

    // Created through the first API, processed by the worker: both APIs stream it.
    let ids = create_games(first.base(), "Live", 1, 1, &AtomicUsize::new(0)).await;
    let [second_stream, first_stream] = [streams.pop().unwrap(), streams.pop().unwrap()];
    tokio::join!(
        wait_for_processed(first_stream, ids[0], "the first API"),
        wait_for_processed(second_stream, ids[0], "the second API"),
    );
    stop_all(workers.into_iter().chain([first, second]).collect()).await;
}

#[tokio::test]
async fn a_policy_lets_rabbitmq_dead_letter_what_other_consumers_reject() {
    let Some(vhost) = Vhost::create() else { return };
    let broker = vhost.connect(QueueType::Classic).await;
    retrocat::broker::topology::declare(&broker)
        .await
        .expect("declare the topology");
    // What the README tells operators who also run the original consumer.
    rabbitmqctl(&[
        "set_policy",
        "-p",
        &vhost.name,
        "--apply-to",
        "queues",
        "game-events-dlx",
        "^game_events$",
        r#"{"dead-letter-exchange":"catalog.dlx","dead-letter-routing-key":"game_events"}"#,
    ])
    .expect("set the policy");
    let amqp = Amqp::connect(&vhost.url).await;
    amqp.publish_original(QUEUE, b"refused elsewhere", FieldTable::default())
        .await;
    assert!(
        amqp.reject_next(QUEUE).await,
        "the message was in game_events"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while amqp.queue_state(DLQ).await.0 < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rejected message did not reach {DLQ} through catalog.dlx"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = amqp.take_all(DLQ).await;
    assert_eq!(dead[0].0, "refused elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_messages_are_processed_and_a_tampered_one_is_dead_lettered() {
    const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url);
    deployment.run("migrate", &[]).await;
    let sealed = ["--message-keys", KEYS];
    let api = deployment
        .start_http("api", "api", free_port(), &sealed)
        .await;
    let workers = deployment.start_workers(&["w1"], &sealed);
    let amqp = Amqp::connect(&vhost.url).await;
    amqp.wait_for_consumers(QUEUE, 1).await;
    const EVENTS_TAP: &str = "test.events_tap";
    amqp.tap(EVENTS_TAP, "catalog.events", "game.#").await;

    let ids = create_games(api.base(), "Sealed", 20, 4, &AtomicUsize::new(0)).await;
    Effects::open(&deployment)
        .await
        .assert_processed_exactly_once(&ids, Duration::from_secs(30))
        .await;

    // On the broker, bodies are ciphertext that names its key: the events the outbox
    // relay sent, and a custom message.
    let events = amqp.take_all(EVENTS_TAP).await;
    assert!(
        events.len() >= 2 * ids.len(),
        "created and processed events"
    );
    for (body, headers) in &events {
        assert!(!body.contains("Sealed"), "the event is sealed: {body}");
        assert_eq!(headers.get("x-key-id").map(String::as_str), Some("k1"));
    }
    const TAP: &str = "test.custom_tap";
    amqp.tap(TAP, "catalog.custom", "custom.#").await;
    let client = common::processes::http_client();
    let sent = client
        .post(api.url("/api/messages/custom"))
        .json(&json!({"message": "hello, in secret"}))
        .send()
        .await
        .expect("send a custom message");
    assert_eq!(sent.status(), 201);
    let on_the_wire = amqp.take_all(TAP).await;
    assert_eq!(on_the_wire.len(), 1);
    let (body, headers) = &on_the_wire[0];
    assert!(!body.contains("hello"), "the body is sealed: {body}");
    assert_eq!(headers.get("x-key-id").map(String::as_str), Some("k1"));

    // A body that claims to be sealed with our key but was tampered with.
    let mut claims = FieldTable::default();
    claims.insert(
        "x-encryption".into(),
        AMQPValue::LongString("xchacha20poly1305".into()),
    );
    claims.insert("x-key-id".into(), AMQPValue::LongString("k1".into()));
    amqp.publish_original(QUEUE, &[7u8; 64], claims).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while amqp.queue_state(DLQ).await.0 < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tampered message did not reach {DLQ}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = amqp.take_all(DLQ).await;
    let reason = &dead[0].1["x-dead-letter-reason"];
    assert!(reason.contains("cannot decrypt"), "{reason}");
    stop_all(workers.into_iter().chain([api]).collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_overtakes_a_backlog_of_ten_thousand_events() {
    const BACKLOG: u32 = 10_000;
    let Some(vhost) = Vhost::create() else { return };
    // One event at a time, each taking 2 ms: the backlog needs 20 s or more, so that
    // what is left of it when the request is answered shows whether it waited its turn,
    // however fast the machine.
    let (_deployment, api, workers, amqp) = start(
        &vhost,
        &["w1"],
        &["--concurrency", "1", "--simulate-work", "2ms"],
    )
    .await;
    // Events in the original format asking to process a seeded game again, each its
    // own (the timestamp tells them apart): each takes its turn on game_events.
    let bodies: Vec<Vec<u8>> = (0..BACKLOG)
        .map(|n| {
            json!({ "gameId": 1, "action": "process", "timestamp": format!("backlog {n}") })
                .to_string()
                .into_bytes()
        })
        .collect();
    amqp.publish_originals(
        QUEUE,
        bodies
            .iter()
            .map(|body| (body.as_slice(), FieldTable::default())),
    )
    .await;

    let response = common::processes::http_client()
        .post(api.url("/api/games?wait=20s"))
        .json(&common::game_body("Jumps the queue"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
    let game: Value = response.json().await.unwrap();
    assert_eq!(game["processingStatus"], "completed", "{game}");
    let (left, _) = amqp.queue_state(QUEUE).await;
    assert!(
        left > BACKLOG / 2,
        "only {left} of {BACKLOG} events were still queued: the request waited its turn"
    );
    stop_all(workers.into_iter().chain([api]).collect()).await;
}

/// Polls `path` on `base` until its list holds `count` entries, and returns them.
async fn wait_for_entries(base: &str, path: &str, count: usize) -> Vec<Value> {
    let client = common::processes::http_client();
    for _ in 0..600 {
        let entries: Vec<Value> = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("a JSON list");
        if entries.len() >= count {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never held {count} entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_event_and_the_cli_gets_its_reply() {
    const CREATED: usize = 20;
    let Some(vhost) = Vhost::create() else { return };
    // Both workers run both subscribers: they compete within a subscriber's queue,
    // and each subscriber's queue gets its own copy of every event.
    let (deployment, api, workers, _amqp) =
        start(&vhost, &["w1", "w2"], &["--subscribers", "audit,archive"]).await;
    let ids = create_games(api.base(), "Audited", CREATED, 4, &AtomicUsize::new(0)).await;
    let effects = Effects::open(&deployment).await;
    effects
        .wait_until_completed(&ids, Duration::from_secs(60))
        .await;

    // game.created and game.processed for each game.
    let events = 2 * CREATED;
    let message_ids = |entries: &[Value]| {
        entries
            .iter()
            .map(|entry| entry["messageId"].as_str().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let audit = wait_for_entries(api.base(), "/api/audit?limit=1000", events).await;
    let archive = wait_for_entries(
        api.base(),
        "/api/audit?subscriber=archive&limit=1000",
        events,
    )
    .await;
    assert_eq!(audit.len(), events, "each event once in the audit log");
    assert_eq!(message_ids(&audit), message_ids(&archive));

    // Request/reply from the command line: the custom-message consumer answers.
    deployment
        .run(
            "publish",
            &["--wait", "10s", r#"{"from": "the command line"}"#],
        )
        .await;
    let output = std::fs::read_to_string(deployment.path().join("publish.log")).unwrap();
    assert!(
        output.contains(r#""received":true"#),
        "publish --wait printed no reply: {output}"
    );
    let received = wait_for_entries(api.base(), "/api/messages/received", 1).await;
    assert_eq!(received[0]["body"]["message"]["from"], "the command line");
    stop_all(workers.into_iter().chain([api]).collect()).await;
}
