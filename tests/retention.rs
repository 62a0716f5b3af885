//! History retention (`--retain`): a prune deletes what the history tables recorded
//! before its cutoff and nothing recorded since, keeps the attempts a game's current
//! view reads, and leaves the views of recent processing as they were. On every
//! catalog database.

mod common;

use chrono::Utc;
use common::{Backend, Roles, TestApp, game_body, on_every_backend};
use retrocat::broker::topology;
use retrocat::domain::{EventId, ProcessingStatus};
use retrocat::storage::{
    PageRequest, ProcessingRecord, ProcessingResult, PruneReport, ReceivedMessage, StartOutcome,
    StartRequest, Store,
};
use serde_json::json;
use std::time::Duration;

/// Old rows of each table beyond one chunk of a prune (1,000), so that it takes several.
const BULK: u64 = 2_500;

/// Game ids no game has: attempts and inbox rows of events about deleted games.
const NO_GAME: i64 = 1_000_000_000;

fn record(
    event: &EventId,
    game_id: i64,
    version: i64,
    attempt: u32,
    result: ProcessingResult,
) -> ProcessingRecord {
    ProcessingRecord {
        event_id: event.clone(),
        game_id,
        version,
        attempt,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        result,
        worker: "w1".into(),
        trace_id: None,
    }
}

fn retry() -> ProcessingResult {
    ProcessingResult::Retry {
        error: "cover: timeout".into(),
    }
}

fn completed() -> ProcessingResult {
    ProcessingResult::Completed { thumbnail: None }
}

/// Processes one event about `version` of the game as a worker would: a start, then
/// each result as an attempt, the last one settling it (unless it is a retry).
async fn process(
    store: &dyn Store,
    game_id: i64,
    version: i64,
    results: Vec<ProcessingResult>,
) -> EventId {
    let event = EventId::generate();
    for (attempt, result) in (1..).zip(results) {
        let start = StartRequest {
            event_id: event.clone(),
            game_id,
            version: Some(version),
        };
        let started = store.start_processing(&[start]).await.unwrap();
        assert!(
            matches!(started[..], [StartOutcome::Ready(_)]),
            "{started:?}"
        );
        let finish = record(&event, game_id, version, attempt, result);
        store.finish_processing(&[finish]).await.unwrap();
    }
    event
}

fn received(id: &str) -> ReceivedMessage {
    ReceivedMessage {
        subscriber: "archive".into(),
        message_id: id.into(),
        exchange: topology::EVENTS_EXCHANGE.into(),
        routing_key: "game.created".into(),
        headers: Default::default(),
        body: json!({ "id": id }),
        received_at: Utc::now(),
    }
}

async fn create(app: &TestApp, title: &str) -> i64 {
    app.create_game(&game_body(title)).await["id"]
        .as_i64()
        .unwrap()
}

async fn retention_prunes_what_is_older_than_the_period_and_nothing_newer(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let store = app.store();

    // Before the cutoff. `kept` was retried and completed at version 1, then updated
    // and completed at version 2: its version 2 attempt is what its task shows.
    let kept = create(&app, "Kept").await;
    let kept_v1 = process(store, kept, 1, vec![retry(), completed()]).await;
    let updated = app
        .put_json(&format!("/api/games/{kept}"), &game_body("Kept v2"))
        .await;
    assert_eq!(updated.status(), 200);
    let kept_v2 = process(store, kept, 2, vec![completed()]).await;
    // `running` is still being processed: its first attempt failed, the retry waits.
    let running = create(&app, "Running").await;
    process(store, running, 1, vec![retry()]).await;
    // `deleted` was completed, then deleted and its thumbnail cleaned up.
    let deleted = create(&app, "Deleted").await;
    let deleted_v1 = process(store, deleted, 1, vec![completed()]).await;
    let path = format!("/api/games/{deleted}");
    let response = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let cleanup = record(
        &EventId::generate(),
        deleted,
        1,
        1,
        ProcessingResult::CleanedUp,
    );
    store.finish_processing(&[cleanup]).await.unwrap();
    // Events about games long gone, and what a subscriber received.
    let skipped: Vec<ProcessingRecord> = (0..BULK as i64)
        .map(|n| {
            let reason = "game no longer exists".to_owned();
            let skipped = ProcessingResult::Skipped { reason };
            record(&EventId::generate(), NO_GAME + n, 1, 1, skipped)
        })
        .collect();
    store.finish_processing(&skipped).await.unwrap();
    let old: Vec<ReceivedMessage> = (0..BULK).map(|n| received(&format!("old-{n}"))).collect();
    store.record_received(&old).await.unwrap();

    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // After the cutoff.
    let fresh = create(&app, "Fresh").await;
    let fresh_v1 = process(store, fresh, 1, vec![completed()]).await;
    store.record_received(&[received("new")]).await.unwrap();

    let tasks = store
        .tasks(&Default::default(), &all())
        .await
        .unwrap()
        .items;
    let history_of = |id: i64| async move { store.history(id).await.unwrap() };
    let (kept_history, running_history, fresh_history) = (
        history_of(kept).await,
        history_of(running).await,
        history_of(fresh).await,
    );
    assert_eq!(kept_history.len(), 3, "{kept_history:?}");

    let report = store.prune_history(cutoff).await.unwrap();
    // Of the old events: kept's two, deleted's two, and the bulk.
    let expected = PruneReport {
        received: BULK,
        inbox: BULK + 4,
        // kept's version 1 attempts (2), deleted's (2), and the bulk.
        attempts: BULK + 4,
    };
    assert_eq!(report, expected);

    let left: Vec<String> = store
        .received("archive", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(left, ["new"], "only the message received since the cutoff");
    assert_eq!(
        store
            .tasks(&Default::default(), &all())
            .await
            .unwrap()
            .items,
        tasks,
        "every game's task reads as before: attempts, last error, duration"
    );
    let kept_now = history_of(kept).await;
    let current: Vec<_> = kept_history
        .into_iter()
        .filter(|a| a.version == 2)
        .collect();
    assert_eq!(
        kept_now, current,
        "kept keeps its current version's attempt"
    );
    assert_eq!(
        history_of(running).await,
        running_history,
        "a running event's attempt stays"
    );
    assert_eq!(history_of(fresh).await, fresh_history);
    assert!(
        history_of(deleted).await.is_empty(),
        "a deleted game's attempts go"
    );
    let status = store
        .game(running)
        .await
        .unwrap()
        .unwrap()
        .processing_status;
    assert_eq!(status, ProcessingStatus::Processing);

    // The inbox keeps the event processed since the cutoff; the old events are no
    // longer known, and their games' versions decide instead.
    let starts = [
        (fresh_v1, fresh, 1),
        (kept_v2, kept, 2),
        (kept_v1, kept, 1),
        (deleted_v1, deleted, 1),
    ]
    .map(|(event_id, game_id, version)| StartRequest {
        event_id,
        game_id,
        version: Some(version),
    });
    assert_eq!(
        store.start_processing(&starts).await.unwrap(),
        [
            StartOutcome::Processed,
            StartOutcome::Done,
            StartOutcome::Stale { current_version: 2 },
            StartOutcome::Missing,
        ]
    );

    assert_eq!(
        store.prune_history(cutoff).await.unwrap(),
        PruneReport::default(),
        "a second prune with the same cutoff finds nothing"
    );
    app.stop().await;
}

on_every_backend!(retention_prunes_what_is_older_than_the_period_and_nothing_newer);

/// A page that holds every task the tests make.
fn all() -> PageRequest {
    PageRequest {
        limit: PageRequest::MAX_LIMIT,
        cursor: None,
    }
}
