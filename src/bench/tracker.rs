//! Which of a run's events have been processed, and how long each took.
//!
//! `GET /api/stream` says so as it happens (`game.processed` / `game.failed` with the
//! game's id and version), with the time the game's final status was written, on the
//! server's clock: an event's latency runs from its write's stamp to that time. A
//! stream can fall behind (it then sends `resync`) or drop, so when it has said
//! nothing new for a while the tracker asks each unfinished game itself; an event
//! learnt of that way has no latency, and is counted as such.

use super::BenchArgs;
use super::load::bar;
use super::report::{ErrorLog, Histogram};
use anyhow::Context;
use chrono::{DateTime, Utc};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::task::AbortOnDropHandle;

/// An event a write caused: the version of the game it will process.
#[derive(Clone, Debug)]
pub struct Expected {
    pub game_id: i64,
    pub version: i64,
    /// The write's own stamp: `createdAt` of a create, `updatedAt` of an update.
    pub written_at: DateTime<Utc>,
}

/// The newest processed version of a game, as far as the tracker knows.
#[derive(Clone, Copy, Debug)]
struct Processed {
    version: i64,
    failed: bool,
    /// When its final status was written (server clock), if the stream said.
    written_at: Option<DateTime<Utc>>,
    /// When the tracker learnt it.
    seen: Instant,
}

impl Processed {
    /// A version's end, learnt now.
    fn ended(version: i64, failed: bool, written_at: Option<DateTime<Utc>>) -> Self {
        Self {
            version,
            failed,
            written_at,
            seen: Instant::now(),
        }
    }
}

/// Follows the stream until dropped.
pub struct Tracker {
    processed: Arc<Mutex<HashMap<i64, Processed>>>,
    _stream: AbortOnDropHandle<()>,
}

/// What became of a run's events.
#[derive(Debug, Default)]
pub struct Events {
    pub expected: u64,
    pub completed: u64,
    pub failed: u64,
    pub unfinished: u64,
    /// When the tracker learnt of the last one processed.
    pub last_processed: Option<Instant>,
    /// Write → its final status written, microseconds.
    pub latency: Histogram,
    /// Events whose latency is unknown: the stream did not say when they ended.
    pub errors: ErrorLog,
}

/// The fields of a live update the tracker needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Update {
    game_id: i64,
    version: Option<i64>,
    processing_status: Option<String>,
    timestamp: Option<DateTime<Utc>>,
}

impl Tracker {
    /// Connects to `GET /api/stream`; events processed from then on are seen.
    pub async fn follow(args: &BenchArgs) -> anyhow::Result<Self> {
        let url = args.endpoint("/api/stream");
        // A client of its own: the stream lasts longer than any request may.
        let response = reqwest::Client::new()
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("following {url}"))?;
        let processed = Arc::new(Mutex::new(HashMap::new()));
        let stream = tokio::spawn({
            let processed = processed.clone();
            async move {
                let mut events = response.bytes_stream().eventsource();
                while let Some(Ok(event)) = events.next().await {
                    let Ok(update) = serde_json::from_str::<Update>(&event.data) else {
                        continue;
                    };
                    if let (Some(version), Some(status)) =
                        (update.version, update.processing_status.as_deref())
                    {
                        let failed = status == "failed";
                        if failed || status == "completed" {
                            let ended = Processed::ended(version, failed, update.timestamp);
                            record(&processed, update.game_id, ended);
                        }
                    }
                }
            }
        });
        Ok(Self {
            processed,
            _stream: AbortOnDropHandle::new(stream),
        })
    }

    /// Waits until every event of `expected` is processed or `--wait-timeout` has
    /// passed since the last write.
    pub async fn wait(
        &self,
        client: &reqwest::Client,
        args: &BenchArgs,
        expected: &[Expected],
    ) -> Events {
        let progress = bar(expected.len() as u64, "processed");
        let deadline = Instant::now() + args.wait_timeout;
        let mut unfinished: Vec<&Expected> = expected.iter().collect();
        let mut last_change = Instant::now();
        while !unfinished.is_empty() && Instant::now() < deadline {
            let before = unfinished.len();
            {
                let known = self.known();
                unfinished.retain(|event| outcome(&known, event).is_none());
            }
            progress.set_position((expected.len() - unfinished.len()) as u64);
            if unfinished.len() < before {
                last_change = Instant::now();
            } else if last_change.elapsed() > STREAM_SILENCE {
                self.ask_games(client, args, &unfinished).await;
                last_change = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        progress.finish_and_clear();
        let mut events = Events {
            expected: expected.len() as u64,
            unfinished: unfinished.len() as u64,
            ..Events::default()
        };
        let known = self.known();
        for event in expected {
            let Some(processed) = outcome(&known, event) else {
                continue;
            };
            if processed.failed {
                events.failed += 1;
            } else {
                events.completed += 1;
            }
            events.last_processed = events.last_processed.max(Some(processed.seen));
            match processed.written_at {
                // Only the version written is timed: a newer write's processing
                // would say nothing of this one's.
                Some(at) if processed.version == event.version => events
                    .latency
                    .record((at - event.written_at).to_std().unwrap_or_default()),
                Some(_) => events.errors.add(format!(
                    "game {}: a newer write overtook version {}",
                    event.game_id, event.version
                )),
                None => events.errors.add(format!(
                    "game {}: the live stream did not say when it ended (it fell behind)",
                    event.game_id
                )),
            }
        }
        events
    }

    /// The processed games as known now: one lock for a whole pass over the events.
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Processed>> {
        self.processed.lock().expect("not poisoned")
    }

    /// Asks each game in `unfinished` how far its processing is.
    async fn ask_games(
        &self,
        client: &reqwest::Client,
        args: &BenchArgs,
        unfinished: &[&Expected],
    ) {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Game {
            version: i64,
            processing_status: String,
        }
        let asks = unfinished.iter().map(|event| async move {
            let url = args.endpoint(&format!("/api/games/{}", event.game_id));
            let game: Game = client.get(url).send().await.ok()?.json().await.ok()?;
            Some((event.game_id, game))
        });
        let answers: Vec<_> = futures::stream::iter(asks)
            .buffer_unordered(args.concurrency as usize)
            .collect()
            .await;
        for (game_id, game) in answers.into_iter().flatten() {
            let failed = game.processing_status == "failed";
            if failed || game.processing_status == "completed" {
                record(
                    &self.processed,
                    game_id,
                    Processed::ended(game.version, failed, None),
                );
            }
        }
    }
}

/// How long a stream may stay silent, with events unfinished, before the tracker asks
/// the games themselves.
const STREAM_SILENCE: Duration = Duration::from_secs(2);

/// How `event` ended, once a version at least as new is processed.
fn outcome(known: &HashMap<i64, Processed>, event: &Expected) -> Option<Processed> {
    known
        .get(&event.game_id)
        .filter(|processed| processed.version >= event.version)
        .copied()
}

fn record(processed: &Mutex<HashMap<i64, Processed>>, game_id: i64, ended: Processed) {
    let mut processed = processed.lock().expect("not poisoned");
    let newer = processed
        .get(&game_id)
        .is_none_or(|known| known.version < ended.version);
    if newer {
        processed.insert(game_id, ended);
    }
}
