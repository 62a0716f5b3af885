//! A 3-node RabbitMQ cluster with quorum queues loses the node that leads
//! `game_events` (SIGKILL of its Erlang VM) while 5,000 events flow; the node is then
//! started again. Every process moves to a live node on its own, and in the end every
//! event was completed exactly once and the outbox is empty.
//!
//! Processing must go on while the node is down: the processes connected to it move
//! to the other nodes, and `game_events` gets a new leader.
//!
//! Needs the cluster of `scripts/rabbitmq-cluster up` (`.ci/run` starts it); skipped,
//! loudly, without it. Prints the figures: events/s before, during and after, and how
//! long processing stalled.

mod common;

use common::Backend;
use common::cluster::Cluster;
use common::processes::{Deployment, Effects, create_games_until, stop_all};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::task::block_in_place;
use tokio::time::Instant;

const EVENTS: usize = 5000;
const IN_FLIGHT: usize = 32;
/// Completed events before the leader is killed: processing is well under way.
const BEFORE_KILL: usize = 1000;
/// How long the killed node stays down, at least.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// The workers' prefetch: at most this many deliveries each in hand at the kill.
const PREFETCH: &str = "64";
/// Events that must complete while the node is down: more than the two workers'
/// prefetch windows held at the kill, so only a failover completes them.
const WHILE_DOWN: usize = 500;
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_of_game_events_loses_and_duplicates_nothing() {
    let Some(cluster) = Cluster::create() else {
        return;
    };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&cluster.rabbitmq_url())
        .with_env("RETROCAT_QUEUE_TYPE", "quorum");
    let (api, workers, amqp) = deployment
        .start_api_and_workers(&["w1", "w2"], &["--prefetch", PREFETCH])
        .await;
    drop(amqp);
    let effects = Effects::open(&deployment).await;

    let created = Arc::new(AtomicUsize::new(0));
    let creating = tokio::spawn({
        let (base, created) = (api.base().to_owned(), created.clone());
        async move { create_games_until(&base, "Failover", IN_FLIGHT, &created, |n| n >= EVENTS).await }
    });
    let mut progress = Progress::new(&effects).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.sample().await < BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "processing too slow to reach {BEFORE_KILL}"
        );
    }

    let leader = cluster.leader_of("game_events").clone();
    eprintln!("killing {}, the leader of game_events", leader.name);
    block_in_place(|| leader.kill());
    let killed = progress.mark();
    let deadline = killed.0 + Duration::from_secs(60);
    while progress.sample().await < killed.1 + WHILE_DOWN || killed.0.elapsed() < DOWN_FOR {
        assert!(
            Instant::now() < deadline,
            "processing did not go on without {}",
            leader.name
        );
    }
    // Processing goes on, and is measured, while the node starts.
    let starting = tokio::task::spawn_blocking(move || leader.start());
    while !starting.is_finished() {
        progress.sample().await;
    }
    starting.await.expect("start the node again");
    let back = progress.mark();
    let ids = creating.await.expect("creates");
    let deadline = Instant::now() + Duration::from_secs(300);
    while progress.sample().await < ids.len() && Instant::now() < deadline {}
    let done = progress.mark();
    let (stalled_at, stall) = progress.longest_stall_after(killed, ids.len());
    eprintln!(
        "failover figures: {} before the kill; {} from the kill until the node was back; \
         {} after. Processing stood still from {:.1?} to {:.1?} after the kill.",
        rate(progress.start, killed),
        rate(killed, back),
        rate(back, done),
        stalled_at - killed.0,
        stalled_at + stall - killed.0,
    );

    effects
        .assert_processed_exactly_once(&ids, Duration::from_secs(180))
        .await;
    stop_all(workers.into_iter().chain([api]).collect()).await;
}

/// The completed count, sampled every [`SAMPLE_EVERY`].
struct Progress<'a> {
    effects: &'a Effects,
    start: (Instant, usize),
    samples: Vec<(Instant, usize)>,
}

impl<'a> Progress<'a> {
    async fn new(effects: &'a Effects) -> Self {
        let mut progress = Self {
            effects,
            start: (Instant::now(), 0),
            samples: Vec::new(),
        };
        progress.start = (Instant::now(), progress.completed().await);
        progress
    }

    async fn completed(&self) -> usize {
        self.effects.completions().await.len()
    }

    /// Waits a sampling period, then records and returns the completed count.
    async fn sample(&mut self) -> usize {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let count = self.completed().await;
        self.samples.push((Instant::now(), count));
        count
    }

    /// The time and completed count now.
    fn mark(&self) -> (Instant, usize) {
        let count = self.samples.last().map_or(self.start.1, |sample| sample.1);
        (Instant::now(), count)
    }

    /// When the longest run of samples without a new completion after the mark `from`,
    /// while fewer than `total` were completed, began, and how long it lasted.
    fn longest_stall_after(&self, from: (Instant, usize), total: usize) -> (Instant, Duration) {
        let mut longest = (from.0, Duration::ZERO);
        let mut since = from;
        let remaining = |&&(at, count): &&(Instant, usize)| at >= from.0 && count < total;
        for &(at, count) in self.samples.iter().filter(remaining) {
            if count != since.1 {
                since = (at, count);
            } else if at - since.0 > longest.1 {
                longest = (since.0, at - since.0);
            }
        }
        longest
    }
}

/// Events completed per second between two marks.
fn rate(from: (Instant, usize), to: (Instant, usize)) -> String {
    let seconds = (to.0 - from.0).as_secs_f64();
    let events = to.1 - from.1;
    format!(
        "{:.0} events/s ({events} in {seconds:.1}s)",
        events as f64 / seconds
    )
}
