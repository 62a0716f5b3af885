//! Several API instances on one database server, the deployment issue 4 is for: two
//! `retrocat api` processes, each running its own outbox relay, and two workers, on a
//! fresh PostgreSQL database and a RabbitMQ vhost of the test's own.
//!
//! The relays share one outbox. If both published the same row, a consumer would see
//! an event twice; if one published a game's `update` while the other still held its
//! `create`, consumers would see a game's versions out of order. A queue of the test's
//! own, bound to `catalog.events`, records what reached the broker and in which order.
//! Skipped without `TEST_POSTGRES_URL` and `TEST_RABBITMQ_URL`.

mod common;

use common::processes::{Deployment, Effects, Process, free_port, http_client, stop_all};
use common::rabbitmq::{Taken, Vhost};
use common::{Backend, game_body};
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const GAMES: usize = 1000;
/// A create and four updates per game: 5,000 writes in all.
const WRITES_PER_GAME: i64 = 5;
/// Games written at a time; each game's writes go one after the other.
const IN_FLIGHT: usize = 32;
/// The test's queue on `catalog.events`.
const TAP: &str = "test.game_events";
/// Every event about a game: created, updated, deleted, processed, failed.
const GAME_EVENTS: &str = "game.#";
/// Relays log each published batch at debug level: the test reads who published what.
const LOG_FILTER: &str = "warn,retrocat=info,retrocat::outbox=debug";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_with_a_relay_each_publish_every_event_once_and_in_order_per_game() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(backend)
        .await
        .with_rabbitmq(&vhost.url)
        .with_env("RUST_LOG", LOG_FILTER);
    let (first, workers, amqp) = deployment.start_api_and_workers(&["w1", "w2"], &[]).await;
    let second = deployment.start_http("api2", "api", free_port(), &[]).await;
    let apis = [first, second];
    // The APIs declared `catalog.events`; tap it before the first write.
    amqp.tap(TAP, "catalog.events", GAME_EVENTS).await;

    let bases: Vec<String> = apis.iter().map(|api| api.base().to_owned()).collect();
    let client = http_client();
    let ids: Vec<i64> = futures::stream::iter(0..GAMES)
        .map(|n| write_game(&client, &bases, n))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    eprintln!("{} writes answered", ids.len() * WRITES_PER_GAME as usize);

    let effects = Effects::open(&deployment).await;
    effects
        .wait_until_completed(&ids, Duration::from_secs(120))
        .await;
    // The last `game.processed` events may still be on their way to the broker.
    effects.wait_until_outbox_empty().await;
    assert_each_version_settled_once(&effects, &ids).await;

    let published = amqp.take(TAP).await;
    assert_published_once_in_order(&published, &ids);
    let split: Vec<(String, usize)> = apis
        .iter()
        .map(|api| (api.name.clone(), published_by(api)))
        .collect();
    eprintln!("events published per relay: {split:?}");
    for (api, count) in &split {
        assert!(
            *count > 0,
            "the relay of {api} published nothing, the test proves nothing: {split:?}"
        );
    }
    stop_all(workers.into_iter().chain(apis).collect()).await;
}

/// Creates game `n` through one API and updates it four times, alternating APIs, each
/// write after the previous one was answered: consecutive versions of a game commit
/// through different processes, so their events sit in the outbox for different relays.
/// Returns the game's id.
async fn write_game(client: &reqwest::Client, bases: &[String], n: usize) -> i64 {
    let api = |version: i64| &bases[(n + version as usize) % bases.len()];
    let body = |version: i64| game_body(&format!("Database server {n:04} v{version}"));
    let created = send(
        client.post(format!("{}/api/games", api(1))).json(&body(1)),
        201,
    )
    .await;
    let id = created["id"].as_i64().expect("game id");
    for version in 2..=WRITES_PER_GAME {
        let url = format!("{}/api/games/{id}", api(version));
        let updated = send(client.put(url).json(&body(version)), 200).await;
        assert_eq!(
            updated["version"], version,
            "game {id} after update: {updated}"
        );
    }
    id
}

/// Sends a write; panics unless it was answered with `expected`. Returns the game JSON.
async fn send(request: reqwest::RequestBuilder, expected: u16) -> Value {
    let response = request.send().await.expect("write request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, expected, "write answered {status}: {text}");
    serde_json::from_str(&text).expect("game JSON")
}

/// Every version of every game was settled by exactly one attempt (an older version
/// may be skipped, superseded by the next write), and the last one completed.
async fn assert_each_version_settled_once(effects: &Effects, ids: &[i64]) {
    let mut settled: HashMap<(i64, i64), Vec<String>> = HashMap::new();
    for attempt in effects.settled().await {
        settled
            .entry((attempt.game_id, attempt.version))
            .or_default()
            .push(format!("{} by {}", attempt.outcome, attempt.worker));
    }
    let mut wrong = Vec::new();
    for &id in ids {
        for version in 1..=WRITES_PER_GAME {
            let outcomes = settled.get(&(id, version)).cloned().unwrap_or_default();
            let last_completed = version < WRITES_PER_GAME
                || outcomes.first().is_some_and(|o| o.starts_with("completed"));
            if outcomes.len() != 1 || !last_completed {
                wrong.push((id, version, outcomes));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} versions not settled exactly once, or a last version not completed \
         (game, version, attempts): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// What the broker received: no message twice; of each game, one `created` and four
/// `updated` events with versions 1 to 5 in that order, and a `game.processed` event
/// for its last version.
fn assert_published_once_in_order(published: &[Taken], ids: &[i64]) {
    let mut seen = HashSet::new();
    let twice: Vec<&Taken> = published
        .iter()
        .filter(|message| !seen.insert(message.message_id.clone().expect("a message id")))
        .collect();
    assert!(
        twice.is_empty(),
        "{} of {} messages were published more than once, e.g. {:?}",
        twice.len(),
        published.len(),
        &twice[..twice.len().min(5)]
    );

    let ours: HashSet<i64> = ids.iter().copied().collect();
    let mut versions: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    let mut processed: HashMap<i64, Vec<i64>> = HashMap::new();
    for message in published {
        let event: Value = serde_json::from_str(&message.body).expect("JSON event");
        let game = event["gameId"].as_i64().expect("gameId");
        let version = event["version"].as_i64().expect("version");
        if !ours.contains(&game) {
            continue;
        }
        if message.routing_key == "game.processed" {
            processed.entry(game).or_default().push(version);
        } else {
            assert_eq!(
                event["eventId"].as_str(),
                message.message_id.as_deref(),
                "the message id is the event id: {message:?}"
            );
            versions
                .entry(game)
                .or_default()
                .push((message.routing_key.clone(), version));
        }
    }
    let expected: Vec<(String, i64)> = (1..=WRITES_PER_GAME)
        .map(|version| {
            let key = if version == 1 { "created" } else { "updated" };
            (format!("game.{key}"), version)
        })
        .collect();
    let wrong: Vec<_> = ids
        .iter()
        .filter(|id| versions.get(id) != Some(&expected))
        .map(|id| (id, versions.get(id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} games' events did not arrive once each in write order (expected \
         {expected:?}), e.g. {:?}",
        wrong.len(),
        ids.len(),
        &wrong[..wrong.len().min(5)]
    );
    let unprocessed: Vec<&i64> = ids
        .iter()
        .filter(|id| {
            !processed
                .get(id)
                .is_some_and(|versions| versions.contains(&WRITES_PER_GAME))
        })
        .collect();
    assert!(
        unprocessed.is_empty(),
        "{} games have no game.processed event for their last version, e.g. {:?}",
        unprocessed.len(),
        &unprocessed[..unprocessed.len().min(10)]
    );
}

/// Events the relay of `api` published, from its debug log lines
/// (`outbox rows published sent=N`).
fn published_by(api: &Process) -> usize {
    api.log()
        .lines()
        .filter(|line| line.contains("outbox rows published"))
        .filter_map(|line| line.rsplit("sent=").next()?.trim().parse::<usize>().ok())
        .sum()
}
