//! The worker: consumes `game_events` and applies each event exactly once.
//!
//! The same worker serves `catalog.rpc`: a request there (`POST /api/games?wait=`) is a
//! copy of the write's event, with the same event id, a priority and a reply address.
//! Its own consumer takes it ahead of any backlog on `game_events`, and the inbox makes
//! whichever copy comes second a duplicate. Once settled, a request is answered.
//!
//! Delivery is at least once, so every step is safe to repeat: the inbox check skips an
//! event already processed; `start_processing` touches only the version the event
//! describes; `finish_processing` commits the result together with the inbox row, so a
//! crash before the acknowledgement leads to a redelivery that changes nothing.

use super::fetch::CoverFetcher;
use super::outcome::{EndToEnd, OutcomeMetrics};
use super::pause::{PauseWatch, QueuePause};
use super::retry::{Failure, RetryPolicy};
use super::throttle::{QueueRate, Throttle, admitted};
use super::thumbnail::{DecodeBudget, render};
use crate::broker::{
    Broker, BrokerError, Delivery, Message, Publish, dead_letters, headers, topology,
};
pub use crate::domain::Outcome;
use crate::domain::{EventId, GameAction, Thumbnail, WorkMessage};
use crate::shutdown::Shutdown;
use crate::storage::GroupCommit;
use crate::storage::{
    FinishOutcome, ProcessingRecord, ProcessingResult, StartOutcome, StartRequest, Store,
    StoreError, WorkItem, WriteKind,
};
use crate::telemetry::trace;
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Covers fetched and thumbnailed at the same time, whatever the concurrency: each may
/// hold up to `--fetch-max-bytes` and its decoded pixels, so this bounds the memory.
const COVER_WORK_AT_ONCE: usize = 16;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Deliveries processed at the same time by one worker; also the largest batch of
    /// status writes, which concurrent deliveries share.
    pub concurrency: usize,
    /// Unacknowledged deliveries the broker may push ahead of processing.
    pub prefetch: u16,
    pub retry: RetryPolicy,
    /// Pretend each event takes this long (the original's demo setting was 2 s).
    pub simulate_work: Duration,
    /// Thumbnails fit in a square of this side, in pixels.
    pub thumbnail_side: u32,
    /// What decoding one cover may take (`--max-image-memory`).
    pub decode_budget: DecodeBudget,
    /// How long in-flight deliveries may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
    /// Names this worker in the attempts it records.
    pub worker_id: String,
    /// The processing rate limits of its queues (`--max-rate`), shared with the other
    /// workers.
    pub max_rates: Vec<QueueRate>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 128,
            prefetch: 256,
            retry: RetryPolicy::default(),
            simulate_work: Duration::ZERO,
            thumbnail_side: 160,
            decode_budget: DecodeBudget::default(),
            shutdown_grace: Duration::from_secs(10),
            worker_id: default_worker_id(),
            max_rates: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub struct Worker {
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    fetcher: CoverFetcher,
    config: WorkerConfig,
    /// `Processing::start_processing` and `Processing::finish_processing`, each shared by the
    /// deliveries in flight: one transaction per batch.
    starts: GroupCommit<StartRequest, StartOutcome, StoreError>,
    finishes: GroupCommit<ProcessingRecord, FinishOutcome, StoreError>,
    cover_work: Semaphore,
    end_to_end: EndToEnd,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        fetcher: CoverFetcher,
        config: WorkerConfig,
    ) -> Self {
        let batch = config.concurrency;
        let starts = GroupCommit::of_store(
            batch,
            store.clone(),
            WriteKind::Starts,
            |store, requests: Vec<_>| async move { store.start_processing(&requests).await },
        );
        let finishes = GroupCommit::of_store(
            batch,
            store.clone(),
            WriteKind::Finishes,
            |store, records: Vec<_>| async move { store.finish_processing(&records).await },
        );
        Self {
            store,
            broker,
            fetcher,
            config,
            starts,
            finishes,
            cover_work: Semaphore::new(COVER_WORK_AT_ONCE),
            end_to_end: EndToEnd::default(),
        }
    }

    /// Consumes `queue` (`game_events` or `catalog.rpc`) until shutdown, reconnecting
    /// with backoff when the broker goes away. On shutdown it stops taking deliveries,
    /// lets in-flight ones finish within the grace period, and leaves everything else
    /// unacknowledged.
    ///
    /// While `queue` is paused it holds no consumer: it finishes what it has in flight,
    /// gives back what it prefetched, and consumes again once the queue is resumed.
    /// With a `--max-rate` of the queue, it takes deliveries no faster than its share.
    pub async fn run(
        self: Arc<Self>,
        queue: &'static str,
        pauses: &PauseWatch,
        shutdown: Shutdown,
    ) {
        let pause = pauses.of(queue);
        let throttle = self
            .config
            .max_rates
            .iter()
            .find(|limit| limit.queue == queue)
            .map(|limit| Throttle::start(limit.rate, queue, self.broker.clone(), shutdown.clone()));
        let open = || async {
            if !pause.resumed(&shutdown).await {
                return Err(BrokerError::Unavailable("shutting down".into()));
            }
            self.broker.consume(queue, self.config.prefetch).await
        };
        let drain = |consumer| {
            let throttle = throttle.as_deref();
            self.clone()
                .drain(queue, consumer, &pause, throttle, &shutdown)
        };
        crate::broker::consume_until_shutdown(queue, &shutdown, open, drain).await;
        tracing::info!(queue, "worker stopped");
    }

    /// Processes deliveries from one consumer, up to `concurrency` at a time and no
    /// faster than `throttle` admits them, until the consumer ends (broker gone: the
    /// caller reconnects), the queue is paused, or shutdown is requested.
    async fn drain(
        self: Arc<Self>,
        queue: &'static str,
        mut consumer: crate::broker::Consumer,
        pause: &QueuePause,
        throttle: Option<&Throttle>,
        shutdown: &Shutdown,
    ) {
        let metrics = Arc::new(OutcomeMetrics::new(queue));
        let mut in_flight = JoinSet::new();
        loop {
            if in_flight.len() >= self.config.concurrency.max(1) {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    () = pause.paused() => break,
                    Some(joined) = in_flight.join_next() => log_task(joined),
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                () = pause.paused() => break,
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => log_task(joined),
                next = consumer.next() => match next {
                    Some(delivery) => {
                        if !admitted(throttle, pause, shutdown).await {
                            break; // Unsettled, the delivery is delivered again.
                        }
                        let (worker, metrics) = (self.clone(), metrics.clone());
                        in_flight.spawn(async move {
                            let arrived = Instant::now();
                            let result = worker.serve(delivery).await;
                            if let Ok(outcome) = &result {
                                metrics.settled(outcome, arrived.elapsed());
                            }
                            if result.is_err() {
                                // The delivery went back to the queue; don't hot-loop on
                                // it while the database or broker is down.
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            result
                        });
                    }
                    None => break,
                },
            }
        }
        // Deliveries buffered but not started go back to the queue now.
        drop(consumer);
        let finish = async {
            while let Some(joined) = in_flight.join_next().await {
                log_task(joined);
            }
        };
        // A pause waits for the work in flight however long it takes; shutdown gives it
        // the grace period, from when shutdown came.
        let grace_over = async {
            shutdown.wait().await;
            tokio::time::sleep(self.config.shutdown_grace).await;
        };
        let finished = tokio::select! {
            () = finish => true,
            () = grace_over => false,
        };
        if !finished {
            // Aborting drops the deliveries unsettled (they are redelivered) and rolls
            // back any open transaction: nothing half-applied remains.
            tracing::warn!(
                aborted = in_flight.len(),
                "grace period over; unfinished deliveries left for redelivery"
            );
            in_flight.abort_all();
        }
    }

    /// Handles one delivery and, when it is a request, answers it once settled. The
    /// answer is best effort: a requester that stopped waiting is no error.
    async fn serve(&self, delivery: Delivery) -> Result<Outcome, WorkerError> {
        let request = delivery
            .message
            .is_request()
            .then(|| delivery.message.clone());
        let outcome = self.handle(delivery).await?;
        // A forwarded custom message keeps its reply address: its consumer answers.
        if let Some(request) = request.filter(|_| outcome != Outcome::Forwarded) {
            let body = serde_json::json!({ "outcome": outcome.name() }).to_string();
            if let Some(reply) = request.reply(body)
                && let Err(error) = self.broker.publish(vec![reply]).await
            {
                tracing::debug!(%error, "reply not sent");
            }
        }
        Ok(outcome)
    }

    /// Handles one delivery from start to settlement, in a span that continues the
    /// trace its message carries (`traceparent`), or starts one.
    pub async fn handle(&self, delivery: Delivery) -> Result<Outcome, WorkerError> {
        let properties = &delivery.message.properties;
        let span = tracing::info_span!(
            trace::DELIVERY_SPAN,
            message_id = properties.message_id.as_deref(),
            trace_id = tracing::field::Empty,
        );
        let trace_id = trace::continue_trace(&span, properties.header_str(headers::TRACEPARENT));
        async move {
            let outcome = self.process_delivery(delivery, trace_id).await;
            if let Ok(outcome) = &outcome {
                tracing::debug!(outcome = outcome.name(), "delivery settled");
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn process_delivery(
        &self,
        delivery: Delivery,
        trace_id: Option<String>,
    ) -> Result<Outcome, WorkerError> {
        let properties = &delivery.message.properties;
        let event =
            match WorkMessage::decode(&delivery.message.body, properties.message_id.as_deref()) {
                Ok(WorkMessage::Game(event)) => event,
                Ok(WorkMessage::Custom(_)) => {
                    let forward =
                        Publish::to_queue(topology::CUSTOM_QUEUE, delivery.message.clone());
                    // Acknowledged once the copy is confirmed: never lost, at worst twice.
                    self.broker.publish(vec![forward]).await?;
                    delivery.ack().await?;
                    return Ok(Outcome::Forwarded);
                }
                Err(poison) => {
                    tracing::warn!(reason = %poison, "unreadable message dead-lettered");
                    delivery.dead_letter(&poison.0).await?;
                    return Ok(Outcome::DeadLettered { reason: poison.0 });
                }
            };
        // A replayed dead letter is processed anew: its own failure is in the inbox.
        let event_id = match properties.header_int(dead_letters::REPLAY_COUNT) {
            Some(replay) if replay > 0 => EventId::new(format!("{}#replay-{replay}", event.id())),
            _ => event.id(),
        };
        let attempt = properties
            .header_int(headers::RETRY_COUNT)
            .unwrap_or(0)
            .clamp(0, i64::from(u32::MAX - 1)) as u32
            + 1;
        let started_at = Utc::now();
        let record = |version: i64, result: ProcessingResult| ProcessingRecord {
            event_id: event_id.clone(),
            game_id: event.game_id,
            version,
            attempt,
            started_at,
            finished_at: Utc::now(),
            result,
            worker: self.config.worker_id.clone(),
            trace_id: trace_id.clone(),
        };

        if event.action == GameAction::Delete {
            let version = event.version.unwrap_or(0);
            return self
                .settle(delivery, record(version, ProcessingResult::CleanedUp))
                .await;
        }
        let version = match event.action {
            GameAction::Process => None,
            _ => event.version,
        };
        let start = StartRequest {
            event_id: event_id.clone(),
            game_id: event.game_id,
            version,
        };
        let item = match self.starts.call(start).await? {
            StartOutcome::Ready(item) => item,
            StartOutcome::Processed => {
                delivery.ack().await?;
                return Ok(Outcome::Duplicate);
            }
            StartOutcome::Stale { current_version } => {
                let reason = format!("superseded by version {current_version}");
                let skipped = ProcessingResult::Skipped { reason };
                return self
                    .settle(delivery, record(event.version.unwrap_or(0), skipped))
                    .await;
            }
            StartOutcome::Done => {
                delivery.ack().await?;
                return Ok(Outcome::Duplicate);
            }
            StartOutcome::Missing => {
                let skipped = ProcessingResult::Skipped {
                    reason: "game no longer exists".into(),
                };
                return self
                    .settle(delivery, record(event.version.unwrap_or(0), skipped))
                    .await;
            }
        };

        match self.process(&item).await {
            Ok(thumbnail) => {
                let completed = ProcessingResult::Completed { thumbnail };
                let outcome = self
                    .settle(delivery, record(item.version, completed))
                    .await?;
                if outcome == Outcome::Completed {
                    self.end_to_end.finished(event.timestamp.as_deref());
                }
                Ok(outcome)
            }
            Err(Failure::Deferred { reason, wait }) => {
                // Not an attempt: the copy keeps the retry count this delivery had.
                self.retry_later(delivery, attempt - 1, wait).await?;
                tracing::info!(game_id = item.game_id, ?wait, %reason, "processing deferred");
                Ok(Outcome::Retried {
                    attempt,
                    delay: wait,
                })
            }
            Err(failure) => match self.config.retry.delay_after(attempt, &failure) {
                Some(delay) => {
                    let retry = ProcessingResult::Retry {
                        error: failure.to_string(),
                    };
                    self.finishes.call(record(item.version, retry)).await?;
                    self.retry_later(delivery, attempt, delay).await?;
                    tracing::info!(game_id = item.game_id, attempt, ?delay, error = %failure, "processing failed; will retry");
                    Ok(Outcome::Retried { attempt, delay })
                }
                None => {
                    let reason = format!("attempt {attempt}: {failure}");
                    let failed = ProcessingResult::Failed {
                        error: reason.clone(),
                    };
                    let finished = self.finishes.call(record(item.version, failed)).await?;
                    if finished == FinishOutcome::AlreadyProcessed {
                        // Another copy of the event settled it first: the request on
                        // `catalog.rpc` and the event on `game_events`, in flight at
                        // once, both failing. That copy was dead-lettered if it failed;
                        // this one is acknowledged, so an event has one dead letter.
                        delivery.ack().await?;
                        return Ok(Outcome::Duplicate);
                    }
                    delivery.dead_letter(&reason).await?;
                    tracing::warn!(game_id = item.game_id, %reason, "processing failed for good; dead-lettered");
                    self.end_to_end.finished(event.timestamp.as_deref());
                    Ok(Outcome::Failed { reason })
                }
            },
        }
    }

    /// Records a final result and acknowledges the delivery.
    async fn settle(
        &self,
        delivery: Delivery,
        record: ProcessingRecord,
    ) -> Result<Outcome, WorkerError> {
        let skipped = matches!(record.result, ProcessingResult::Skipped { .. });
        let outcome = match self.finishes.call(record).await? {
            FinishOutcome::AlreadyProcessed => Outcome::Duplicate,
            FinishOutcome::Superseded => Outcome::Skipped,
            FinishOutcome::Applied if skipped => Outcome::Skipped,
            FinishOutcome::Applied => Outcome::Completed,
        };
        delivery.ack().await?;
        Ok(outcome)
    }

    /// Publishes a copy of the delivery with a delay and `retries` as its retry count,
    /// then acknowledges the original: the retry survives a crash between the two
    /// (the copy is confirmed before the original is released).
    async fn retry_later(
        &self,
        delivery: Delivery,
        retries: u32,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let mut properties = delivery.message.properties.clone();
        properties
            .headers
            .insert(headers::RETRY_COUNT.into(), i64::from(retries).into());
        // A request was answered ("retried") already; its retry is an ordinary event.
        properties.reply_to = None;
        properties.correlation_id = None;
        properties.priority = 0;
        let copy = Message {
            body: delivery.message.body.clone(),
            properties,
        };
        self.broker
            .publish(vec![
                Publish::to_queue(topology::GAME_EVENTS_QUEUE, copy).delayed(delay),
            ])
            .await?;
        delivery.ack().await
    }

    /// The real work: a thumbnail of the cover, uploaded or fetched from `image_url`.
    async fn process(&self, item: &WorkItem) -> Result<Option<Thumbnail>, Failure> {
        if !self.config.simulate_work.is_zero() {
            tokio::time::sleep(self.config.simulate_work).await;
        }
        // A fetch waits for its host's turn before it takes a place among the covers
        // worked on: a host held back holds no other back.
        let fetch = match &item.image_url {
            _ if item.has_cover => None,
            Some(url) => {
                let admitted = self.fetcher.admit(url).await;
                Some((url, admitted.map_err(|e| e.failure(url))?))
            }
            None => return Ok(None),
        };
        let _permit = self
            .cover_work
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let image = match fetch {
            Some((url, admitted)) => Some(
                self.fetcher
                    .fetch_admitted(admitted)
                    .await
                    .map_err(|e| e.failure(url))?,
            ),
            None => self
                .store
                .cover(item.game_id)
                .await
                .map_err(|e| Failure::Transient(format!("reading the cover: {e}")))?
                .map(|cover| bytes::Bytes::from(cover.bytes)),
        };
        let Some(image) = image else {
            return Ok(None);
        };
        let thumbnail = render(image, self.config.thumbnail_side, self.config.decode_budget)
            .await
            .map_err(|e| Failure::Transient(format!("thumbnail task failed: {e}")))?
            .map_err(|e| Failure::Permanent(format!("cover image: {e}")))?;
        Ok(Some(thumbnail))
    }
}

/// `HOST-PID`: unique among the workers of one deployment, and says where to look.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "retrocat".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// Logs a delivery that was not settled (a settled one logs in its own span): it was
/// dropped, and goes back to the queue.
fn log_task(joined: Result<Result<Outcome, WorkerError>, tokio::task::JoinError>) {
    match joined {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(%error, "delivery not handled; it will be redelivered"),
        Err(error) => tracing::error!(%error, "delivery task panicked; it will be redelivered"),
    }
}
