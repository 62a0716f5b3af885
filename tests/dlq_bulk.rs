//! Dead letters in bulk, as after an outage: a thousand counted, then replayed at once,
//! each processed once even when the replay is cut off and run again; purged by a
//! filter; bad filters refused. On the embedded broker and on RabbitMQ, over HTTP.

mod common;

use common::brokers::{TestBroker, on_every_broker};
use common::{Backend, Roles, TestApp, eventually, flaky_cover_server, game_body, with};
use futures::StreamExt;
use retrocat::broker::dead_letters::{self, BulkAction, Filter};
use retrocat::broker::{Message, Properties, Publish, topology};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

const DLQ: &str = topology::GAME_EVENTS_DLQ;
const LETTERS: usize = 1000;

/// The whole system on `broker`, giving up on an event after its first attempt, and
/// with the cover host's circuit breaker out of the way: every game whose cover fails
/// is to die, not wait for the host.
async fn spawn(broker: &TestBroker) -> TestApp {
    let rabbitmq_url = match broker {
        TestBroker::RabbitMq(vhost) => Some(vhost.url.as_str()),
        TestBroker::Embedded => None,
    };
    TestApp::spawn_on_broker(
        Backend::Sqlite,
        rabbitmq_url,
        Roles::Serve,
        &["--max-attempts", "1", "--breaker-failures", "1000000"],
    )
    .await
}

/// Creates `count` games with `cover` as their cover URL and returns their ids.
async fn create_games(app: &TestApp, cover: &str, count: usize) -> Vec<i64> {
    futures::stream::iter(0..count)
        .map(|n| async move {
            let body = with(
                game_body(&format!("Outage {n:04}")),
                "imageUrl",
                json!(cover),
            );
            app.create_game(&body).await["id"].as_i64().unwrap()
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Waits until the dead-letter queue holds `count` messages.
async fn wait_for_letters(app: &TestApp, count: u64) {
    eventually(
        &format!("{count} dead letters"),
        Duration::from_secs(60),
        || async { (app.broker().queue_depth(DLQ).await.ok()? == count).then_some(()) },
    )
    .await;
}

/// `METHOD /api/dlq…`: the report it answered with 200.
async fn bulk(app: &TestApp, method: reqwest::Method, path_and_query: &str) -> Value {
    let response = app
        .client
        .request(method, app.url(path_and_query))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{path_and_query}: {body}");
    body
}

/// How many completed attempts the game's history holds.
async fn completions(app: &TestApp, id: i64) -> usize {
    let history = app.get_json(&format!("/api/games/{id}/history")).await;
    history
        .as_array()
        .unwrap()
        .iter()
        .filter(|attempt| attempt["outcome"] == "completed")
        .count()
}

on_every_broker!(
    a_thousand_dead_letters_replayed_in_bulk_are_each_processed_once,
    dead_letters_are_purged_by_reason_and_time
);

async fn a_thousand_dead_letters_replayed_in_bulk_are_each_processed_once(broker: TestBroker) {
    let app = spawn(&broker).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let cover = flaky_cover_server(healthy.clone()).await;
    let ids = create_games(&app, &cover, LETTERS).await;
    wait_for_letters(&app, LETTERS as u64).await;

    // Counted first, and left in place.
    let counted = bulk(&app, reqwest::Method::GET, "/api/dlq/count?reason=503").await;
    let expected =
        json!({"scanned": LETTERS, "matched": LETTERS, "done": 0, "skipped": 0, "left": 0});
    assert_eq!(counted, expected);
    let other = bulk(
        &app,
        reqwest::Method::GET,
        "/api/dlq/count?reason=timed%20out",
    )
    .await;
    assert_eq!(other["matched"], 0, "{other}");
    wait_for_letters(&app, LETTERS as u64).await;

    // The host is back. A replay is cut off after its first batch, as by a crash...
    healthy.store(true, Ordering::SeqCst);
    let (first_batch, every_letter) = (Notify::new(), Filter::default());
    let replay = dead_letters::bulk(app.broker(), DLQ, &every_letter, BulkAction::Replay, |_| {
        first_batch.notify_one()
    });
    tokio::select! {
        report = replay => panic!("the replay ended before it was cut off: {report:?}"),
        () = first_batch.notified() => {}
    }
    // Run again, as an operator would until the queue is empty: the letters the cut-off
    // pass held come back as its channel closes (on RabbitMQ, shortly after). Every
    // game completes.
    let replayed = AtomicU64::new(0);
    eventually("every letter replayed", Duration::from_secs(60), || async {
        let again = bulk(&app, reqwest::Method::POST, "/api/dlq/replay").await;
        replayed.fetch_add(again["done"].as_u64().unwrap(), Ordering::Relaxed);
        let counts = app.get_json("/api/tasks/counts").await;
        let settled = ["failed", "pending", "processing"]
            .iter()
            .all(|status| counts[status] == 0);
        (settled && app.broker().queue_depth(DLQ).await.ok()? == 0).then_some(())
    })
    .await;
    let replayed = replayed.into_inner();
    assert!(
        replayed < LETTERS as u64,
        "the cut-off pass replayed none: the reruns did it all"
    );
    app.wait_until_idle().await;
    wait_for_letters(&app, 0).await;
    for &id in &ids {
        assert_eq!(completions(&app, id).await, 1, "game {id}");
    }
    app.stop().await;
}

async fn dead_letters_are_purged_by_reason_and_time(broker: TestBroker) {
    let app = spawn(&broker).await;
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let cover = flaky_cover_server(Arc::new(AtomicBool::new(false))).await;
    let failed = create_games(&app, &cover, 5).await;
    let poison = Message {
        body: b"not json".to_vec().into(),
        properties: Properties::default(),
    };
    let publish = (0..3)
        .map(|_| Publish::to_queue(topology::GAME_EVENTS_QUEUE, poison.clone()))
        .collect();
    app.broker().publish(publish).await.unwrap();
    wait_for_letters(&app, 8).await;

    for refused in [
        "?before=yesterday",
        "?after=2026-13-01T00:00:00Z",
        "?queue=game_events",
        "?colour=red",
    ] {
        let response = app
            .client
            .delete(app.url(&format!("/api/dlq{refused}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{refused}");
    }
    wait_for_letters(&app, 8).await;

    let purged = bulk(&app, reqwest::Method::DELETE, "/api/dlq?reason=503").await;
    assert_eq!(
        (&purged["matched"], &purged["done"]),
        (&json!(5), &json!(5)),
        "{purged}"
    );
    wait_for_letters(&app, 3).await;
    let before_start = format!("/api/dlq?before={}", urlencode(&started));
    let purged = bulk(&app, reqwest::Method::DELETE, &before_start).await;
    assert_eq!(
        purged["done"], 0,
        "dead-lettered after the test started: {purged}"
    );
    let since_start = format!("/api/dlq?after={}", urlencode(&started));
    let purged = bulk(&app, reqwest::Method::DELETE, &since_start).await;
    assert_eq!(purged["done"], 3, "{purged}");
    wait_for_letters(&app, 0).await;
    for id in failed {
        assert_eq!(completions(&app, id).await, 0, "game {id}");
    }
    app.stop().await;
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
