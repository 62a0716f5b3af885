//! What every queue holds, sampled once a second in the background: the numbers behind
//! `GET /api/queues`, `retrocat queue list`, the Queues page's charts and the queue
//! gauges of `/metrics`.
//!
//! Asking the broker and the database costs round trips, so nothing on a request's or
//! a delivery's path does it: one task per process samples every queue of the topology
//! and the outbox, sets the gauges, and keeps the samples of the last 15 minutes in a
//! ring buffer. Rates are differences between samples ten seconds apart.

use super::charts;
use super::management::{ManagedQueue, Management};
use super::metrics::{
    BROKER_CONNECTED, DEAD_LETTERS, OUTBOX_OLDEST_PENDING_AGE, OUTBOX_PENDING, QUEUE_CONSUMERS,
    QUEUE_MESSAGES,
};
use crate::broker::meter::{MeterTotals, QueueMeter};
use crate::broker::{Broker, QueueStats, topology};
use crate::domain::Outcome;
use crate::shutdown::Shutdown;
use crate::storage::{OpenCircuit, OutboxBacklog, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the queues are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How far back rates look.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Samples kept for the charts: 15 minutes.
const HISTORY: usize = 900;
/// The name of the outbox's row.
pub const OUTBOX: &str = "outbox";

/// The durable queues of the topology, in the order the Queues page lists them; each
/// dead-letter queue after the queue it serves.
pub const WATCHED: [&str; 8] = [
    topology::GAME_EVENTS_QUEUE,
    topology::GAME_EVENTS_DLQ,
    topology::RPC_QUEUE,
    topology::RPC_DLQ,
    topology::CUSTOM_QUEUE,
    topology::CUSTOM_DLQ,
    topology::AUDIT_QUEUE,
    topology::UNROUTED_QUEUE,
];

/// One row of `GET /api/queues`: a queue of the topology, or the outbox. A count the
/// source cannot give is `null`, never a guess.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    pub name: String,
    pub ready: Option<u64>,
    pub unacked: Option<u64>,
    pub delayed: Option<u64>,
    pub consumers: Option<u64>,
    pub paused: bool,
    /// Whether retrocat consumes the queue, so that an admin can pause it.
    pub pausable: bool,
    /// Messages in per second over the last 10 s; for the outbox, rows written.
    pub publish_rate: Option<f64>,
    /// Deliveries to this process's consumers per second.
    pub deliver_rate: Option<f64>,
    /// Settlements (acknowledgements, dead letters) per second; for the outbox, rows
    /// the broker confirmed, whichever relay sent them.
    pub ack_rate: Option<f64>,
    /// The outbox's oldest unpublished event; queues don't say.
    pub oldest_age_seconds: Option<f64>,
    /// Where the counts come from: `embedded` (the embedded broker), `amqp` (RabbitMQ's
    /// passive declare: ready messages and consumers), `management` (the same, plus
    /// unacknowledged messages and rates from RabbitMQ's management API, across every
    /// client) or `database` (the outbox).
    pub source: String,
    /// On `game_events`: the cover hosts whose circuit breaker holds fetches back in
    /// some worker (open or half-open); those games wait without using up attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub circuits: Vec<OpenCircuit>,
}

/// One sampling of every queue.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    /// Milliseconds since the Unix epoch, for the charts' time axis.
    unix_ms: i64,
    /// Whether the broker answered a ping.
    connected: bool,
    /// Per [`WATCHED`] queue.
    queues: Vec<QueueSample>,
    outbox: Option<OutboxBacklog>,
    /// The outbox's rows written and sent per second over the last 10 s, worked out
    /// once, as the sample is kept ([`OutboxRates::since`]).
    outbox_rates: OutboxRates,
    /// The queues paused ([`crate::storage::Pauses`]); none when the database did
    /// not answer.
    paused: Vec<String>,
    /// Every worker's open circuit breakers ([`crate::storage::Circuits`]).
    circuits: Vec<OpenCircuit>,
    /// What this process's worker settled and finished.
    charts: charts::Take,
}

/// One queue in one sample.
#[derive(Clone, Copy, Debug)]
struct QueueSample {
    /// `None`: the broker did not answer. The unacknowledged count is the management
    /// API's where it answered.
    stats: Option<QueueStats>,
    /// This process's deliveries and settlements.
    meter: MeterTotals,
    /// What RabbitMQ's management API said, where it is configured and answered.
    managed: Option<ManagedQueue>,
}

/// The sampler's shared state: cheap to clone, read by the API's handlers.
#[derive(Clone)]
pub struct QueueWatch {
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    /// Shared: the API's context, and so this watch, is cloned for every request.
    management: Option<Arc<Management>>,
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl QueueWatch {
    /// Samples `store`'s outbox and `broker`'s queues, and where `management` is given,
    /// RabbitMQ's management API.
    pub fn new(
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        management: Option<Management>,
    ) -> Self {
        Self {
            store,
            broker,
            management: management.map(Arc::new),
            samples: Arc::default(),
        }
    }

    /// Samples once a second until shutdown. Also drains the metrics recorder's
    /// histogram buffers, which otherwise grow until the next scrape.
    pub async fn run(self, shutdown: Shutdown) {
        let take = || async {
            let mut sample = self.sample().await;
            publish_gauges(&sample);
            super::metrics::handle().run_upkeep();
            let mut samples = self.samples.lock().expect("samples lock");
            sample.outbox_rates = OutboxRates::since(&samples, &sample);
            if samples.len() == HISTORY {
                samples.pop_front();
            }
            samples.push_back(sample);
        };
        shutdown.every(SAMPLE_EVERY, take).await;
    }

    /// Every watched queue and the outbox, now.
    async fn sample(&self) -> Sample {
        let stats = futures::future::join_all(
            WATCHED.map(|queue| async move { self.broker.queue_stats(queue).await.ok() }),
        );
        let managed = async {
            match &self.management {
                Some(management) => management.sample().await,
                None => None,
            }
        };
        let (stats, outbox, paused, circuits, ping, managed) = tokio::join!(
            stats,
            self.store.outbox_backlog(),
            self.store.paused_queues(),
            self.store.open_circuits(),
            self.broker.ping(),
            managed
        );
        let queues = stats.into_iter().zip(WATCHED).map(|(stats, queue)| {
            let managed = managed.as_ref().and_then(|all| all.get(queue)).copied();
            QueueSample {
                stats: stats.map(|stats| QueueStats {
                    unacked: managed.map(|managed| managed.unacked).or(stats.unacked),
                    ..stats
                }),
                meter: QueueMeter::of(queue).totals(),
                managed,
            }
        });
        Sample {
            at: Instant::now(),
            unix_ms: chrono::Utc::now().timestamp_millis(),
            connected: ping.is_ok(),
            queues: queues.collect(),
            outbox: outbox.ok(),
            outbox_rates: OutboxRates::default(),
            paused: paused.unwrap_or_default(),
            circuits: circuits.unwrap_or_default(),
            charts: charts::take(),
        }
    }

    /// The samples of the last 15 minutes, oldest first, for the Queues page's charts.
    pub fn history(&self) -> History {
        let samples = self.samples.lock().expect("samples lock");
        let points = samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(before, sample)| {
                let seconds = sample.at.duration_since(before.at).as_secs_f64();
                let mut depths = BTreeMap::new();
                depths.insert(OUTBOX, sample.outbox.map(|backlog| backlog.pending));
                for (queue, name) in sample.queues.iter().zip(WATCHED) {
                    depths.insert(name, queue.stats.map(held));
                }
                let processed = Outcome::NAMES
                    .iter()
                    .zip(sample.charts.processed.iter().zip(before.charts.processed))
                    .map(|(name, (now, then))| (*name, now.saturating_sub(then) as f64 / seconds))
                    .collect();
                HistoryPoint {
                    at: sample.unix_ms,
                    depths,
                    processed,
                    latency: Latency {
                        p50: sample.charts.latency.map(|(p50, _)| p50),
                        p99: sample.charts.latency.map(|(_, p99)| p99),
                    },
                }
            })
            .collect();
        History {
            interval_seconds: SAMPLE_EVERY.as_secs(),
            samples: points,
        }
    }

    /// The outbox as last sampled, with its drain rate over the last 10 s; `None`
    /// before the first sample, or when the database did not answer it. For admission
    /// control, on every catalog write: no round trip.
    pub fn outbox(&self) -> Option<OutboxSample> {
        let samples = self.samples.lock().expect("samples lock");
        let latest = samples.back()?;
        let backlog = latest.outbox?;
        Some(OutboxSample {
            pending: backlog.pending,
            oldest_age: backlog.oldest_age,
            drain_rate: latest.outbox_rates.sent,
        })
    }

    /// The rows of `GET /api/queues`, from the latest sample, with rates over the
    /// last 10 s. Before the first sample, one is taken now.
    pub async fn views(&self) -> Vec<QueueView> {
        let (latest, earlier) = {
            let samples = self.samples.lock().expect("samples lock");
            let latest = samples.back().cloned();
            let earlier = latest
                .as_ref()
                .and_then(|latest| rate_base(&samples, latest, |_| true).cloned());
            (latest, earlier)
        };
        let latest = match latest {
            Some(latest) => latest,
            None => self.sample().await,
        };
        let whole = self.broker.kind() == "embedded";
        let source = if whole { "embedded" } else { "amqp" };
        let mut views = vec![outbox_view(&latest)];
        for (index, queue) in WATCHED.into_iter().enumerate() {
            let QueueSample {
                stats,
                meter,
                managed,
            } = latest.queues[index];
            let (rates, source) = match managed {
                Some(managed) => (Rates::from(managed), "management"),
                None => {
                    let rates = earlier.as_ref().map(|earlier| {
                        let before = earlier.queues[index];
                        Rates::between(
                            (before.stats, before.meter, earlier.at),
                            (stats, meter, latest.at),
                            whole,
                        )
                    });
                    (rates.unwrap_or_default(), source)
                }
            };
            views.push(QueueView {
                name: queue.to_owned(),
                ready: stats.map(|s| s.ready),
                unacked: stats.and_then(|s| s.unacked),
                delayed: stats.map(|s| s.delayed),
                consumers: stats.map(|s| s.consumers),
                paused: latest.paused.iter().any(|paused| paused == queue),
                pausable: topology::CONSUMED.contains(&queue),
                publish_rate: rates.publish,
                deliver_rate: rates.deliver,
                ack_rate: rates.ack,
                oldest_age_seconds: None,
                source: source.to_owned(),
                circuits: if queue == topology::GAME_EVENTS_QUEUE {
                    latest.circuits.clone()
                } else {
                    Vec::new()
                },
            });
        }
        views
    }
}

/// The sample rates are measured from, up to `latest`: among those `usable`, the
/// newest one 10 s older, or the oldest kept; `None` when there is no earlier one.
fn rate_base<'a>(
    samples: &'a VecDeque<Sample>,
    latest: &Sample,
    usable: impl Fn(&Sample) -> bool,
) -> Option<&'a Sample> {
    samples
        .iter()
        .rev()
        .filter(|sample| usable(sample))
        .find(|sample| latest.at.duration_since(sample.at) >= RATE_WINDOW)
        .or_else(|| samples.iter().find(|sample| usable(sample)))
        .filter(|earlier| latest.at > earlier.at)
}

/// The outbox's rates, from its own readings: so every API instance shows the same.
#[derive(Clone, Copy, Debug, Default)]
struct OutboxRates {
    /// Rows written per second, by every writer together.
    written: Option<f64>,
    /// Rows sent per second, by whichever relay held the lease.
    sent: Option<f64>,
}

impl OutboxRates {
    /// The rates up to `latest` from `samples` before it: from the reading [`rate_base`]
    /// picks among those with a row id to go by (an empty outbox has none).
    fn since(samples: &VecDeque<Sample>, latest: &Sample) -> Self {
        let has_id = |sample: &Sample| sample.outbox.is_some_and(|b| b.last_id.is_some());
        let readings = rate_base(samples, latest, has_id).and_then(|earlier| {
            let elapsed = latest.at.duration_since(earlier.at);
            Some((latest.outbox?, earlier.outbox?, elapsed))
        });
        let Some((now, then, elapsed)) = readings else {
            return Self::default();
        };
        Self {
            written: now.write_rate(&then, elapsed),
            sent: now.drain_rate(&then, elapsed),
        }
    }
}

/// The outbox in the latest sample, as admission control reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutboxSample {
    /// Events waiting for the broker.
    pub pending: u64,
    /// How long the oldest of them has waited.
    pub oldest_age: Option<Duration>,
    /// Events the broker confirmed per second over the last 10 s, from whichever
    /// relay (of any API instance) held the outbox lease; `None` before two samples.
    pub drain_rate: Option<f64>,
}

#[derive(Default)]
struct Rates {
    publish: Option<f64>,
    deliver: Option<f64>,
    ack: Option<f64>,
}

impl From<ManagedQueue> for Rates {
    fn from(managed: ManagedQueue) -> Self {
        Self {
            publish: Some(managed.publish_rate),
            deliver: Some(managed.deliver_rate),
            ack: Some(managed.ack_rate),
        }
    }
}

impl Rates {
    /// Rates between two samples of one queue. Deliveries and settlements are this
    /// process's; messages in are what stayed plus what was settled, which counts every
    /// publish only where every consumer is in this process (`whole`: the embedded
    /// broker). On RabbitMQ the broker alone knows, so publishes are `null` there.
    fn between(
        (before, before_meter, from): (Option<QueueStats>, MeterTotals, Instant),
        (after, after_meter, to): (Option<QueueStats>, MeterTotals, Instant),
        whole: bool,
    ) -> Self {
        let seconds = to.duration_since(from).as_secs_f64();
        let per_second = |count: u64| count as f64 / seconds;
        let settled = per_second(after_meter.settled.saturating_sub(before_meter.settled));
        let publish = match (before, after) {
            (Some(before), Some(after)) if whole => {
                let grown = held(after) as f64 - held(before) as f64;
                Some((grown / seconds + settled).max(0.0))
            }
            _ => None,
        };
        Self {
            publish,
            deliver: Some(per_second(
                after_meter.delivered.saturating_sub(before_meter.delivered),
            )),
            ack: Some(settled),
        }
    }
}

/// Messages a queue holds: ready, delayed and unacknowledged (where known).
fn held(stats: QueueStats) -> u64 {
    stats.ready + stats.delayed + stats.unacked.unwrap_or(0)
}

/// `GET /api/queues/history`: the Queues page's charts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub interval_seconds: u64,
    pub samples: Vec<HistoryPoint>,
}

/// One second of the charts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// Messages each queue held, and the outbox's pending events; `null` when unknown.
    pub depths: BTreeMap<&'static str, Option<u64>>,
    /// Deliveries this process settled per second, by outcome.
    pub processed: BTreeMap<&'static str, f64>,
    /// End-to-end latency of the games this process finished in that second.
    pub latency: Latency,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Latency {
    /// Seconds; `null` when no game finished.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// The outbox's row: events written and not yet confirmed by the broker. Every event
/// enters it in a catalog write and leaves when the relay's batch is confirmed. Its
/// rates are read from the outbox itself, so every API instance shows the same: rows
/// written by all of them, and sent by whichever relay held the lease.
fn outbox_view(latest: &Sample) -> QueueView {
    let backlog = latest.outbox;
    QueueView {
        name: OUTBOX.to_owned(),
        ready: backlog.map(|b| b.pending),
        unacked: None,
        delayed: None,
        consumers: None,
        paused: false,
        pausable: false,
        publish_rate: latest.outbox_rates.written,
        deliver_rate: None,
        ack_rate: latest.outbox_rates.sent,
        oldest_age_seconds: backlog.map(|b| b.oldest_age.map_or(0.0, |age| age.as_secs_f64())),
        source: "database".to_owned(),
        circuits: Vec::new(),
    }
}

/// The queue gauges of `/metrics`, from one sample.
fn publish_gauges(sample: &Sample) {
    metrics::gauge!(BROKER_CONNECTED).set(if sample.connected { 1.0 } else { 0.0 });
    for (sampled, queue) in sample.queues.iter().zip(WATCHED) {
        let Some(stats) = sampled.stats else { continue };
        let states = [
            ("ready", Some(stats.ready)),
            ("unacked", stats.unacked),
            ("delayed", Some(stats.delayed)),
        ];
        for (state, count) in states {
            if let Some(count) = count {
                metrics::gauge!(QUEUE_MESSAGES, "queue" => queue, "state" => state)
                    .set(count as f64);
            }
        }
        metrics::gauge!(QUEUE_CONSUMERS, "queue" => queue).set(stats.consumers as f64);
        if let Some(source) = queue.strip_suffix(".dlq") {
            metrics::gauge!(DEAD_LETTERS, "queue" => source).set(stats.ready as f64);
        }
    }
    if let Some(backlog) = sample.outbox {
        metrics::gauge!(OUTBOX_PENDING).set(backlog.pending as f64);
        let age = backlog.oldest_age.unwrap_or_default();
        metrics::gauge!(OUTBOX_OLDEST_PENDING_AGE).set(age.as_secs_f64());
    }
}

/// `retrocat queue list`: the rows of a running system's `GET /api/queues`.
pub async fn fetch(base: &url::Url) -> anyhow::Result<Vec<QueueView>> {
    use anyhow::Context;
    let url = base.join("/api/queues")?;
    let fail = || format!("no retrocat answers at {url}: start one (retrocat serve) or set --url");
    crate::install_crypto_provider();
    let response = reqwest::get(url.clone()).await.with_context(fail)?;
    let response = response.error_for_status().with_context(fail)?;
    response.json().await.context("reading GET /api/queues")
}

/// The rows as a table for a terminal; `-` where a count is unknown.
pub fn table(views: &[QueueView]) -> String {
    fn count(value: Option<u64>) -> String {
        value.map_or_else(|| "-".into(), |value| value.to_string())
    }
    fn rate(value: Option<f64>) -> String {
        value.map_or_else(|| "-".into(), |value| format!("{value:.1}"))
    }
    let mut out = format!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>8}  {}\n",
        "queue",
        "ready",
        "unacked",
        "delayed",
        "consumers",
        "paused",
        "in/s",
        "out/s",
        "ack/s",
        "oldest",
        "source"
    );
    for view in views {
        let oldest = view
            .oldest_age_seconds
            .map_or_else(|| "-".into(), |age| format!("{age:.1}s"));
        out += &format!(
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>8}  {}\n",
            view.name,
            count(view.ready),
            count(view.unacked),
            count(view.delayed),
            count(view.consumers),
            if view.paused { "yes" } else { "no" },
            rate(view.publish_rate),
            rate(view.deliver_rate),
            rate(view.ack_rate),
            oldest,
            view.source,
        );
    }
    for OpenCircuit { circuit, worker } in views.iter().flat_map(|view| &view.circuits) {
        out += &format!(
            "circuit {} for cover host {} in worker {worker}, until {}\n",
            circuit.state.as_str(),
            circuit.target,
            circuit
                .until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    out
}
