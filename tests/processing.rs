//! Background processing end to end: from a catalog write to `completed`, retries,
//! dead letters, idempotency and version races.

mod common;

use chrono::Utc;
use common::brokers::{Sealing, TestBroker, on_every_broker};
use common::{Backend, Roles, TestApp, TestDatabase, game_body, on_every_backend, png, with};
use retrocat::broker::{Consumer, Delivery, Message, Properties, Publish, headers, topology};
use retrocat::domain::{EventId, GenreDraft, GenreName};
use retrocat::processing::fetch::{CoverFetcher, FetchConfig};
use retrocat::processing::retry::RetryPolicy;
use retrocat::processing::worker::{Outcome, Worker, WorkerConfig};
use retrocat::storage::{
    self, FinishOutcome, OutboxLease, OutboxMessage, PoolConfig, ProcessingRecord,
    ProcessingResult, StartOutcome, StartRequest, Store,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// A worker the test drives one delivery at a time.
fn manual_worker(app: &TestApp, simulate_work: Duration) -> Worker {
    Worker::new(
        app.parts.store.clone(),
        app.parts.broker.clone(),
        CoverFetcher::new(FetchConfig {
            allow_private: true,
            ..FetchConfig::default()
        }),
        WorkerConfig {
            simulate_work,
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
            },
            ..WorkerConfig::default()
        },
    )
}

async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer open")
}

async fn history(app: &TestApp, id: &Value) -> Vec<Value> {
    app.get_json(&format!("/api/games/{id}/history"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

fn outcomes(history: &[Value]) -> Vec<&str> {
    history
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect()
}

/// A local image server: `/cover.png` answers a PNG, `/broken` always 503.
async fn image_server() -> String {
    use axum::{Router, http::StatusCode, routing::get};
    let cover = png(640, 480);
    let app = Router::new()
        .route(
            "/cover.png",
            get(move || {
                let cover = cover.clone();
                async move { ([("content-type", "image/png")], cover) }
            }),
        )
        .route("/broken", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn a_new_game_goes_from_pending_to_completed(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let game = app.create_game(&game_body("Shinobi")).await;
    assert_eq!(game["processingStatus"], "pending");
    let id = game["id"].as_i64().unwrap();
    app.wait_for_status(id, "completed", 1).await;
    let attempts = history(&app, &game["id"]).await;
    assert_eq!(outcomes(&attempts), ["completed"]);
    // Every event, game.processed included, is relayed.
    app.wait_until_idle().await;
    app.stop().await;
}

async fn an_uploaded_cover_becomes_a_thumbnail(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let game = app.create_game(&game_body("Ecco the Dolphin")).await;
    let id = game["id"].as_i64().unwrap();
    let response = app
        .client
        .put(app.url(&format!("/api/games/{id}/cover")))
        .header("content-type", "image/png")
        .body(png(800, 400))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let done = app.wait_for_status(id, "completed", 2).await;
    assert_eq!(done["thumbnailUrl"], format!("/api/games/{id}/thumbnail"));
    let thumbnail = app.get(&format!("/api/games/{id}/thumbnail")).await;
    assert_eq!(thumbnail.headers()["content-type"], "image/png");
    let image = image::load_from_memory(&thumbnail.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (image.width(), image.height()),
        (160, 80),
        "fits 160 px, keeps 2:1"
    );
    app.stop().await;
}

async fn a_cover_url_is_fetched_and_thumbnailed(backend: Backend) {
    let images = image_server().await;
    let app = TestApp::spawn_on(backend).await;
    let body = with(
        game_body("Golden Axe"),
        "imageUrl",
        json!(format!("{images}/cover.png")),
    );
    let game = app.create_game(&body).await;
    let id = game["id"].as_i64().unwrap();
    let done = app.wait_for_status(id, "completed", 1).await;
    assert!(done["thumbnailUrl"].is_string(), "{done}");

    // A version without a cover drops the thumbnail of the one before.
    let updated = app
        .put_json(&format!("/api/games/{id}"), &game_body("Golden Axe"))
        .await;
    assert_eq!(updated.status(), 200);
    let done = app.wait_for_status(id, "completed", 2).await;
    assert!(done["thumbnailUrl"].is_null(), "{done}");
    let thumbnail = app.get(&format!("/api/games/{id}/thumbnail")).await;
    assert_eq!(thumbnail.status(), 404, "the old thumbnail is gone");
    app.stop().await;
}

async fn a_failing_cover_url_is_retried_with_growing_delays_then_dead_lettered(backend: Backend) {
    let images = image_server().await;
    let app = TestApp::spawn_on_with(backend, Roles::Serve, &["--max-attempts", "4"]).await;
    let body = with(
        game_body("Altered Beast"),
        "imageUrl",
        json!(format!("{images}/broken")),
    );
    let game = app.create_game(&body).await;
    let id = game["id"].as_i64().unwrap();
    app.wait_for_status(id, "failed", 1).await;

    let attempts = history(&app, &game["id"]).await;
    assert_eq!(outcomes(&attempts), ["retry", "retry", "retry", "failed"]);
    assert!(
        attempts[3]["error"].as_str().unwrap().contains("503"),
        "{attempts:?}"
    );
    // Test settings: 50 ms base delay, doubled, jittered down to half at most.
    for (n, pair) in attempts.windows(2).enumerate() {
        let finished =
            chrono::DateTime::parse_from_rfc3339(pair[0]["finishedAt"].as_str().unwrap()).unwrap();
        let started =
            chrono::DateTime::parse_from_rfc3339(pair[1]["startedAt"].as_str().unwrap()).unwrap();
        let gap = (started - finished).num_milliseconds();
        let minimum = (50 << n) / 2;
        assert!(
            gap >= minimum,
            "retry {} came after {gap} ms, before its backoff of {minimum} ms",
            n + 1
        );
    }

    let mut dlq = app
        .broker()
        .consume(topology::GAME_EVENTS_DLQ, 1)
        .await
        .unwrap();
    let dead = next_delivery(&mut dlq).await;
    let reason = dead
        .message
        .properties
        .header_str(headers::DEAD_LETTER_REASON)
        .unwrap()
        .to_owned();
    assert!(reason.contains("503"), "{reason}");
    let event: Value = serde_json::from_slice(&dead.message.body).unwrap();
    assert_eq!(event["gameId"], id);
    dead.nack(true).await.unwrap();
    app.stop().await;
}

async fn a_duplicate_delivery_has_one_effect(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let worker = manual_worker(&app, Duration::ZERO);
    let game = app.create_game(&game_body("Duplicated")).await;
    let mut consumer = app
        .broker()
        .consume(topology::GAME_EVENTS_QUEUE, 10)
        .await
        .unwrap();
    let first = next_delivery(&mut consumer).await;
    // The broker delivers the same message again (a crash before the ack, a relay
    // that published twice): same id, same body.
    app.broker()
        .publish(vec![Publish::to_queue(
            topology::GAME_EVENTS_QUEUE,
            first.message.clone(),
        )])
        .await
        .unwrap();
    let second = next_delivery(&mut consumer).await;
    assert_eq!(first.message, second.message);

    assert_eq!(worker.handle(first).await.unwrap(), Outcome::Completed);
    assert_eq!(worker.handle(second).await.unwrap(), Outcome::Duplicate);
    assert_eq!(outcomes(&history(&app, &game["id"]).await), ["completed"]);
    app.stop().await;
}

/// Two deliveries of one event in flight at once (a relay that published it twice, a
/// redelivery while the first delivery is still handled): both start before either
/// finishes. Whether they finish one after the other or in one batch, the event settles
/// once, the game keeps the status it settled with (completed or failed, never
/// `processing`), and a copy that starts afterwards finds the event processed. Driven
/// through the store, since only these interleavings show it.
async fn duplicate_deliveries_in_flight_at_once_settle_once(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let store = app.store();
    for (result, status) in [
        (ProcessingResult::Completed { thumbnail: None }, "completed"),
        (
            ProcessingResult::Failed {
                error: "attempt 3: cover unreachable".into(),
            },
            "failed",
        ),
    ] {
        for in_one_batch in [false, true] {
            let game = app
                .create_game(&game_body(&format!("Twice {status} {in_one_batch}")))
                .await;
            let id = game["id"].as_i64().unwrap();
            let record = ProcessingRecord {
                event_id: EventId::generate(),
                game_id: id,
                version: 1,
                attempt: 1,
                started_at: Utc::now(),
                finished_at: Utc::now(),
                result: result.clone(),
                worker: "w1".into(),
                trace_id: None,
            };
            let start = StartRequest {
                event_id: record.event_id.clone(),
                game_id: id,
                version: Some(1),
            };
            let starts = store
                .start_processing(&[start.clone(), start.clone()])
                .await
                .unwrap();
            assert!(
                starts.iter().all(|s| matches!(s, StartOutcome::Ready(_))),
                "{starts:?}"
            );
            let both = [record.clone(), record];
            let finished = if in_one_batch {
                store.finish_processing(&both).await.unwrap()
            } else {
                let mut finished = store.finish_processing(&both[..1]).await.unwrap();
                finished.extend(store.finish_processing(&both[1..]).await.unwrap());
                finished
            };
            assert_eq!(
                finished,
                [FinishOutcome::Applied, FinishOutcome::AlreadyProcessed]
            );
            assert_eq!(
                store.start_processing(&[start]).await.unwrap(),
                [StartOutcome::Processed]
            );

            let game = app.get_json(&format!("/api/games/{id}")).await;
            assert_eq!(game["processingStatus"], status, "{game}");
            assert_eq!(outcomes(&history(&app, &game["id"]).await), [status]);
        }
    }
    app.stop().await;
}

/// One batch of status writes does for each record what it would alone: a stale
/// version is superseded, a deleted game skipped, a retry recorded without settling,
/// and only the current versions' games change status and publish `game.processed`.
async fn a_batch_of_status_writes_applies_each_as_alone(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let store = app.store();
    let mut ids = Vec::new();
    for n in 0..4 {
        let game = app.create_game(&game_body(&format!("Batch {n}"))).await;
        ids.push(game["id"].as_i64().unwrap());
    }
    // Game 1 moves on to version 2; game 3 is deleted.
    let updated = app
        .put_json(
            &format!("/api/games/{}", ids[1]),
            &game_body("Batch 1, again"),
        )
        .await;
    assert_eq!(updated.status(), 200);
    let path = format!("/api/games/{}", ids[3]);
    let deleted = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let starts: Vec<StartRequest> = ids
        .iter()
        .map(|&game_id| StartRequest {
            event_id: EventId::generate(),
            game_id,
            version: Some(1),
        })
        .collect();
    let started = store.start_processing(&starts).await.unwrap();
    assert!(matches!(started[0], StartOutcome::Ready(_)), "{started:?}");
    assert_eq!(started[1], StartOutcome::Stale { current_version: 2 });
    assert!(matches!(started[2], StartOutcome::Ready(_)), "{started:?}");
    assert_eq!(started[3], StartOutcome::Missing);

    let record = |n: usize, result| ProcessingRecord {
        event_id: starts[n].event_id.clone(),
        game_id: ids[n],
        version: 1,
        attempt: 1,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        result,
        worker: "w1".into(),
        trace_id: None,
    };
    let finished = store
        .finish_processing(&[
            record(0, ProcessingResult::Completed { thumbnail: None }),
            // Finishing an old version, as a worker that started before the update.
            record(1, ProcessingResult::Completed { thumbnail: None }),
            record(
                2,
                ProcessingResult::Retry {
                    error: "cover: timeout".into(),
                },
            ),
            record(
                3,
                ProcessingResult::Skipped {
                    reason: "game no longer exists".into(),
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        finished,
        [
            FinishOutcome::Applied,
            FinishOutcome::Superseded,
            FinishOutcome::Applied,
            FinishOutcome::Applied
        ]
    );
    let status = |game: Value| game["processingStatus"].as_str().unwrap().to_owned();
    assert_eq!(
        status(app.get_json(&format!("/api/games/{}", ids[0])).await),
        "completed"
    );
    assert_eq!(
        status(app.get_json(&format!("/api/games/{}", ids[1])).await),
        "pending"
    );
    assert_eq!(
        status(app.get_json(&format!("/api/games/{}", ids[2])).await),
        "processing"
    );
    assert_eq!(outcomes(&history(&app, &json!(ids[2])).await), ["retry"]);
    // The retry's event is not settled: its next delivery starts again.
    assert!(matches!(
        store.start_processing(&starts[2..3]).await.unwrap()[..],
        [StartOutcome::Ready(_)]
    ));
    app.stop().await;
}

async fn an_older_version_finishing_late_never_overwrites_the_newer_one(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let worker = Arc::new(manual_worker(&app, Duration::from_millis(300)));
    let game = app.create_game(&game_body("Racing v1")).await;
    let id = game["id"].as_i64().unwrap();
    let mut consumer = app
        .broker()
        .consume(topology::GAME_EVENTS_QUEUE, 10)
        .await
        .unwrap();
    let v1 = next_delivery(&mut consumer).await;

    // v1 is being processed when the game is updated to v2.
    let processing_v1 = tokio::spawn({
        let worker = worker.clone();
        async move { worker.handle(v1).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let updated: Value = app
        .put_json(&format!("/api/games/{id}"), &game_body("Racing v2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(
        processing_v1.await.unwrap(),
        Outcome::Skipped,
        "v1's result is superseded"
    );
    let game = app.get_json(&format!("/api/games/{id}")).await;
    assert_eq!(
        game["processingStatus"], "pending",
        "v2 still waits: {game}"
    );

    let v2 = next_delivery(&mut consumer).await;
    assert_eq!(worker.handle(v2).await.unwrap(), Outcome::Completed);
    let game = app.get_json(&format!("/api/games/{id}")).await;
    assert_eq!(
        (game["processingStatus"].as_str(), game["version"].as_i64()),
        (Some("completed"), Some(2))
    );
    app.stop().await;
}

async fn an_event_for_an_old_version_delivered_after_the_new_one_is_skipped(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let worker = manual_worker(&app, Duration::ZERO);
    let game = app.create_game(&game_body("Order v1")).await;
    let id = game["id"].as_i64().unwrap();
    app.put_json(&format!("/api/games/{id}"), &game_body("Order v2"))
        .await;
    let mut consumer = app
        .broker()
        .consume(topology::GAME_EVENTS_QUEUE, 10)
        .await
        .unwrap();
    let v1 = next_delivery(&mut consumer).await;
    let v2 = next_delivery(&mut consumer).await;
    assert_eq!(worker.handle(v2).await.unwrap(), Outcome::Completed);
    assert_eq!(worker.handle(v1).await.unwrap(), Outcome::Skipped);
    let game = app.get_json(&format!("/api/games/{id}")).await;
    assert_eq!(
        (game["processingStatus"].as_str(), game["version"].as_i64()),
        (Some("completed"), Some(2))
    );
    app.stop().await;
}

async fn poison_messages_are_dead_lettered_and_the_worker_keeps_going(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let poison = [
        &b"not json"[..],
        br#"{"action":"create"}"#,
        br#"{"gameId":1,"action":"explode"}"#,
    ];
    let batch = poison
        .iter()
        .map(|body| {
            Publish::to_queue(
                topology::GAME_EVENTS_QUEUE,
                Message {
                    body: body.to_vec().into(),
                    properties: Properties::default(),
                },
            )
        })
        .collect();
    app.broker().publish(batch).await.unwrap();
    let game = app.create_game(&game_body("After the poison")).await;
    app.wait_for_status(game["id"].as_i64().unwrap(), "completed", 1)
        .await;

    let mut dlq = app
        .broker()
        .consume(topology::GAME_EVENTS_DLQ, 10)
        .await
        .unwrap();
    let mut reasons = Vec::new();
    for _ in 0..poison.len() {
        let dead = next_delivery(&mut dlq).await;
        reasons.push(
            dead.message
                .properties
                .header_str(headers::DEAD_LETTER_REASON)
                .unwrap()
                .to_owned(),
        );
        dead.ack().await.unwrap();
    }
    assert!(reasons.iter().all(|r| !r.is_empty()), "{reasons:?}");
    app.stop().await;
}

async fn the_original_systems_message_is_processed_like_ours(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let game = app.create_game(&game_body("Original format")).await;
    let id = game["id"].as_i64().unwrap();
    app.wait_for_status(id, "completed", 1).await;
    // As the original producer sent it: no eventId, no version, action "process".
    let body = json!({"gameId": id, "action": "process", "gameData": {"title": "Original format"}, "timestamp": "2024-01-01T00:00:00.000Z"});
    let mut properties = Properties::default();
    properties
        .headers
        .insert(headers::RETRY_COUNT.into(), 0.into());
    app.broker()
        .publish(vec![Publish::to_queue(
            topology::GAME_EVENTS_QUEUE,
            Message {
                body: body.to_string().into_bytes().into(),
                properties,
            },
        )])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while outcomes(&history(&app, &game["id"]).await).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the original message was not processed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        outcomes(&history(&app, &game["id"]).await),
        ["completed", "completed"]
    );
    app.stop().await;
}

async fn the_original_producers_custom_message_moves_to_custom_messages(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    // The original producer sent custom messages to `game_events`, next to game events.
    let body =
        json!({"type": "custom", "message": "hello", "timestamp": "2024-01-01T00:00:00.000Z"});
    let custom = Message {
        body: body.to_string().into_bytes().into(),
        properties: Properties::default(),
    };
    app.broker()
        .publish(vec![Publish::to_queue(topology::GAME_EVENTS_QUEUE, custom)])
        .await
        .unwrap();

    // The custom-message consumer received it, unchanged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let received = app.get_json("/api/messages/received").await;
        if let Some(entry) = received.as_array().unwrap().first() {
            assert_eq!(entry["body"], body, "moved unchanged");
            assert_eq!(entry["routingKey"], topology::CUSTOM_QUEUE);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never received");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.broker()
            .queue_depth(topology::GAME_EVENTS_DLQ)
            .await
            .unwrap(),
        0,
        "not treated as a poison game event"
    );
    app.stop().await;
}

async fn the_live_stream_shows_a_game_going_to_completed(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let mut stream = app.get("/api/stream").await;
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let game = app.create_game(&game_body("Live")).await;
    // The game's update of `kind`, once the stream has sent all of it.
    let update = |seen: &str, kind: &str| {
        let prefix = format!("event: {kind}\ndata: ");
        seen.split("\n\n")
            .filter_map(|event| event.strip_prefix(prefix.as_str()))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .find(|update| update["gameId"] == game["id"])
    };
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let processed = loop {
        if let Some(processed) = update(&seen, "game.processed") {
            break processed;
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("game.processed within 10 s")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    };
    assert_eq!(processed["processingStatus"], "completed", "{processed}");
    assert!(update(&seen, "game.created").is_some(), "{seen}");
    // It says when the game's final status was written: after its attempt finished
    // (`retrocat bench` times create→completed by it).
    let stamp = |stamp: &Value| {
        chrono::DateTime::parse_from_rfc3339(stamp.as_str().expect("a timestamp"))
            .unwrap_or_else(|e| panic!("{stamp}: {e}"))
    };
    let attempts = history(&app, &game["id"]).await;
    assert!(
        stamp(&processed["timestamp"]) >= stamp(&attempts[0]["finishedAt"]),
        "{processed} {attempts:?}"
    );
    app.stop().await;
}

/// Another delivery of an event has claimed it in the inbox, in a transaction still
/// open, when this one finishes: the finish waits for that claim, and once it commits,
/// finds the event processed and writes nothing of its own.
async fn a_finish_behind_another_claim_of_its_event_waits_and_writes_nothing(backend: Backend) {
    match backend {
        Backend::Postgres => finish_behind_another_claim::<sqlx::PgConnection>(backend).await,
        Backend::Mysql => finish_behind_another_claim::<sqlx::MySqlConnection>(backend).await,
        Backend::Sqlite => unreachable!("two writers need a database server"),
    }
}

/// [`a_finish_behind_another_claim_of_its_event_waits_and_writes_nothing`], the other
/// claim on a connection `C`.
async fn finish_behind_another_claim<C>(backend: Backend)
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    let database = TestDatabase::create(backend).await;
    let store = storage::connect(&database.url, PoolConfig::default())
        .await
        .expect("store");
    let event = EventId::generate();
    let mut other = C::connect(&database.url).await.expect("connect");
    let claim = format!("INSERT INTO inbox (event_id, processed_at) VALUES ('{event}', 0)");
    for statement in ["BEGIN".to_owned(), claim] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut other)
            .await
            .expect("the other claim");
    }
    let record = ProcessingRecord {
        event_id: event,
        game_id: 42,
        version: 1,
        attempt: 1,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        result: ProcessingResult::Completed { thumbnail: None },
        worker: "w2".into(),
        trace_id: None,
    };
    let finish = tokio::spawn({
        let store = store.clone();
        async move { store.finish_processing(&[record]).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !finish.is_finished(),
        "the finish waits for the other claim"
    );
    sqlx::raw_sql("COMMIT")
        .execute(&mut other)
        .await
        .expect("the other claim commits");
    assert_eq!(finish.await.unwrap(), [FinishOutcome::AlreadyProcessed]);
    assert!(
        store.history(42).await.unwrap().is_empty(),
        "no attempt of its own"
    );
}

/// Several API instances on one database server run a relay each: while one relay
/// holds the outbox lease, another finds nothing to do, so no row goes out twice at once and a
/// game's events keep their order. A row committed after the lease took rows with
/// higher ids (a sequence hands out ids before the commits) is taken in the same
/// lease, not skipped.
async fn relays_on_one_database_lease_the_outbox_one_at_a_time(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = storage::connect(&database.url, PoolConfig::default())
        .await
        .expect("store");
    store.create_genre(&genre("Rhythm")).await.unwrap();

    let mut first = store.lease_outbox().await.unwrap().expect("a free lease");
    assert_eq!(
        first.take(10).await.unwrap().len(),
        1,
        "the first relay gets the row"
    );
    assert!(
        store.lease_outbox().await.unwrap().is_none(),
        "a second relay publishes nothing while the first one holds the lease"
    );
    // As if two transactions wrote these rows, and the one with the lower id
    // committed last.
    let outbox_row = |id: i64, message_id: &str| {
        format!(
            "INSERT INTO outbox (id, exchange, routing_key, message_id, headers, body, \
             created_at) VALUES ({id}, 'events', 'genre.created', '{message_id}', '{{}}', 'x', 0)"
        )
    };
    let take_ids = async |lease: &mut Box<dyn OutboxLease>| {
        let taken = lease.take(10).await.unwrap();
        taken.into_iter().map(|m| m.message_id).collect::<Vec<_>>()
    };
    database.execute(&outbox_row(1000, "early")).await;
    assert_eq!(take_ids(&mut first).await, ["early"]);
    database.execute(&outbox_row(999, "late")).await;
    assert_eq!(
        take_ids(&mut first).await,
        ["late"],
        "a row with a lower id, committed later, goes out in the same lease"
    );
    for _ in 0..3 {
        first.mark_sent().await.unwrap();
    }
    first.end().await.unwrap();
    let mut third = store
        .lease_outbox()
        .await
        .unwrap()
        .expect("the lease is free again");
    assert!(
        third.take(10).await.unwrap().is_empty(),
        "sent rows are not taken again"
    );
    third.end().await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap().pending, 0);
}

/// A relay sends a batch while earlier ones await their confirms: a lease's batches
/// follow one another, none taking a row twice. Rows a lease leaves unmarked (the
/// relay failed before their confirms) go out again in the next lease; none is lost.
async fn a_leases_batches_follow_one_another_and_unmarked_rows_go_out_again(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (url, _database) = backend.fresh_database(dir.path()).await;
    let store = storage::connect(&url, PoolConfig::default())
        .await
        .expect("store");
    let ids = |messages: &[OutboxMessage]| {
        messages
            .iter()
            .map(|m| m.message_id.clone())
            .collect::<Vec<_>>()
    };
    store.create_genre(&genre("Rhythm")).await.unwrap();
    let mut lease = store.lease_outbox().await.unwrap().expect("a free lease");
    let first = ids(&lease.take(10).await.unwrap());
    assert_eq!(first.len(), 1);
    store.create_genre(&genre("Pachinko")).await.unwrap();
    let second = ids(&lease.take(10).await.unwrap());
    assert_eq!(second.len(), 1);
    assert_ne!(
        first, second,
        "the second batch takes the row after the first's"
    );
    assert!(lease.take(10).await.unwrap().is_empty());
    lease.mark_sent().await.unwrap();
    drop(lease);

    // On a server the dropped lease's transaction rolls back in the background: the
    // lease is free once it has.
    let next_lease = async {
        loop {
            match store.lease_outbox().await.unwrap() {
                Some(lease) => break lease,
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let mut next = tokio::time::timeout(Duration::from_secs(10), next_lease)
        .await
        .expect("the dropped lease ends");
    let again = ids(&next.take(10).await.unwrap());
    assert!(
        again.ends_with(&second),
        "the unconfirmed row goes out again: {again:?}"
    );
    next.mark_sent().await.unwrap();
    next.end().await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap().pending, 0);
}

fn genre(name: &str) -> GenreDraft {
    GenreDraft {
        name: GenreName::parse(name).unwrap(),
        description: None,
    }
}

/// `retrocat migrate` may run from several processes at once (every role migrates at
/// start): the migrator's lock applies each migration once, and the catalog is seeded
/// once, with the same rows as on SQLite.
async fn concurrent_migrate_processes_seed_the_catalog_once(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let migrations = (0..3).map(|_| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_retrocat"))
            .arg("migrate")
            .env("DATABASE_URL", &database.url)
            // The smallest pool: migrating must not need a second connection.
            .env("RETROCAT_DB_MAX_CONNECTIONS", "1")
            .output()
    });
    for output in futures::future::join_all(migrations).await {
        let output = output.expect("retrocat migrate runs");
        assert!(
            output.status.success(),
            "retrocat migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Connecting migrates again: nothing is left to apply, and no checksum differs.
    let store = storage::connect(&database.url, PoolConfig::default())
        .await
        .expect("migrated");
    let dir = tempfile::TempDir::new().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("seed.db").display());
    let sqlite = storage::connect(&sqlite_url, PoolConfig::default())
        .await
        .unwrap();
    assert_eq!(catalog_names(&*store).await, catalog_names(&*sqlite).await);
}

/// Every platform, genre and game name, in the order the API lists them.
async fn catalog_names(store: &dyn Store) -> Vec<String> {
    let platforms = store.platforms().await.unwrap().into_iter().map(|p| p.name);
    let genres = store.genres().await.unwrap().into_iter().map(|g| g.name);
    let games = store.list_games(&Default::default()).await.unwrap();
    let titles = games.items.into_iter().map(|g| g.title);
    platforms.chain(genres).chain(titles).collect()
}

on_every_backend!(
    a_new_game_goes_from_pending_to_completed,
    an_uploaded_cover_becomes_a_thumbnail,
    a_cover_url_is_fetched_and_thumbnailed,
    a_failing_cover_url_is_retried_with_growing_delays_then_dead_lettered,
    a_duplicate_delivery_has_one_effect,
    duplicate_deliveries_in_flight_at_once_settle_once,
    a_batch_of_status_writes_applies_each_as_alone,
    an_older_version_finishing_late_never_overwrites_the_newer_one,
    an_event_for_an_old_version_delivered_after_the_new_one_is_skipped,
    poison_messages_are_dead_lettered_and_the_worker_keeps_going,
    the_original_systems_message_is_processed_like_ours,
    the_original_producers_custom_message_moves_to_custom_messages,
    the_live_stream_shows_a_game_going_to_completed,
    a_leases_batches_follow_one_another_and_unmarked_rows_go_out_again;
    servers:
    relays_on_one_database_lease_the_outbox_one_at_a_time,
    a_finish_behind_another_claim_of_its_event_waits_and_writes_nothing,
    concurrent_migrate_processes_seed_the_catalog_once,
);

/// With `--require-sealed`, a plain message (a client without the keys) is dead-lettered
/// with the reason, unprocessed, while sealed ones (the relay's) are processed.
async fn with_require_sealed_a_plain_message_is_dead_lettered_unprocessed(broker: TestBroker) {
    let sealing = Sealing {
        keys: Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        require_sealed: true,
    };
    let (app, plain) = broker.spawn(sealing, &[]).await;
    let game = app.create_game(&game_body("Sealed")).await;
    let id = game["id"].as_i64().unwrap();
    app.wait_for_status(id, "completed", 1).await;

    let message = Message {
        body: json!({ "gameId": id, "action": "process" })
            .to_string()
            .into(),
        properties: Properties::json("plain-process"),
    };
    plain
        .publish(vec![Publish::to_queue(
            topology::GAME_EVENTS_QUEUE,
            message,
        )])
        .await
        .unwrap();
    let listed = common::eventually(
        "the plain message dead-lettered",
        Duration::from_secs(10),
        || async {
            let listed = app.get_json("/api/dlq").await;
            (listed.as_array().unwrap().len() == 1).then_some(listed)
        },
    )
    .await;
    let dead = &listed[0];
    assert_eq!(dead["id"], "plain-process");
    assert_eq!(dead["queue"], topology::GAME_EVENTS_QUEUE);
    assert_eq!(dead["reason"], retrocat::broker::sealed::PLAIN_REFUSED);
    assert!(dead["body"].as_str().unwrap().contains("process"), "{dead}");
    assert_eq!(
        outcomes(&history(&app, &game["id"]).await),
        ["completed"],
        "the plain message was not processed"
    );
    app.stop().await;
}

on_every_broker!(with_require_sealed_a_plain_message_is_dead_lettered_unprocessed);

/// `--require-sealed` without message keys would refuse every message: the process
/// says what to set and exits at start, before it opens anything.
#[test]
fn require_sealed_without_message_keys_stops_the_worker_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_retrocat"))
        .arg("worker")
        .current_dir(dir.path())
        .env("RETROCAT_REQUIRE_SEALED", "true")
        .env_remove("RETROCAT_MESSAGE_KEYS")
        .env_remove("RABBITMQ_URL")
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run retrocat");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            worker.kill().unwrap();
            panic!("the worker started with --require-sealed and no keys");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut worker.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("set RETROCAT_MESSAGE_KEYS"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing was opened or created: {stderr}"
    );
}
