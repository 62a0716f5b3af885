//! The transactional outbox and its relay.
//!
//! A catalog write inserts its event into the `outbox` table in the same transaction
//! (see [`crate::storage`]); the relay publishes unsent rows to the broker and marks them
//! sent only after the broker confirmed them. With the broker down, writes still succeed
//! and events wait, visibly, in the outbox. A crash between publish and mark-sent
//! publishes a row twice: consumers are idempotent, so that costs nothing but a
//! redundant delivery.
//!
//! The relay does not wait for a batch's confirms before it sends the next: RabbitMQ
//! confirms a persistent message once it is on disk or consumed by every queue, about
//! 10 ms at a steady 500 events/s, and an event written meanwhile would wait for them
//! too. Up to a batch of rows ([`RelayConfig::batch_size`]) awaits confirms at once;
//! the batches are marked sent in order, as their confirms come.
//!
//! With `--max-queue-length`, the relay also keeps `game_events` within a bound (see
//! [`bound`]).

pub mod bound;

use self::bound::QueueBound;
use crate::backoff::ReconnectBackoff;
use crate::broker::{Broker, Confirms};
use crate::shutdown::Shutdown;
use crate::storage::{OutboxMessage, Store, StoreError};
use crate::telemetry::metrics::OUTBOX_PUBLISHED;
use futures::FutureExt;
use futures::future::{self, MaybeDone};
use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Relay settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Rows published per broker round trip.
    pub batch_size: u32,
    /// How often to look for rows written by other processes, and for room in a full
    /// queue.
    pub poll_interval: Duration,
    /// The most ready messages `game_events` may hold before the relay waits
    /// (`--max-queue-length`); `None`: no bound.
    pub max_queue_length: Option<NonZeroU64>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(250),
            max_queue_length: None,
        }
    }
}

/// How long a relay pass holds its outbox lease at most while rows keep coming. On a
/// database server the lease is a transaction, whose marks commit when it ends: it
/// must end now and then.
const LEASE_LIMIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
}

/// Publishes outbox rows to the broker, oldest first.
pub struct Relay {
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    config: RelayConfig,
    /// Held by the one pass that runs at a time.
    bound: tokio::sync::Mutex<Option<QueueBound>>,
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, broker: Arc<dyn Broker>, config: RelayConfig) -> Self {
        Self {
            store,
            broker,
            bound: tokio::sync::Mutex::new(config.max_queue_length.map(QueueBound::new)),
            config,
        }
    }

    /// Publishes until shutdown. Errors (broker or database down) are logged and retried
    /// with capped exponential backoff; rows stay in the outbox meanwhile.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = ReconnectBackoff::new();
        while !shutdown.is_triggered() {
            // Register interest before looking, so a commit between the look and the
            // wait is not missed.
            let written = self.store.outbox_written().notified();
            match self.relay_pass().await {
                Ok(Pass { full: true, .. }) => {
                    backoff = ReconnectBackoff::new();
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.wait() => {}
                    }
                }
                Ok(Pass { more: true, .. }) => {
                    backoff = ReconnectBackoff::new();
                    continue;
                }
                Ok(Pass { more: false, .. }) => {
                    backoff = ReconnectBackoff::new();
                    tokio::select! {
                        _ = written => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.wait() => {}
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "outbox relay failed; events wait in the outbox");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait() => {}
                    }
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// One relay pass: leases the outbox and publishes until nothing waits (or the
    /// lease has lasted [`LEASE_LIMIT`]): takes batches of rows and sends them while
    /// fewer than a batch await their confirms, and marks each batch sent once
    /// confirmed, oldest first. It takes no more rows than the queue's bound leaves
    /// room for, and ends once the queue is full. On an error the lease is dropped: its
    /// unmarked rows are published again by the next pass.
    #[tracing::instrument(skip(self), err)]
    pub async fn relay_pass(&self) -> Result<Pass, RelayError> {
        let Some(mut lease) = self.store.lease_outbox().await? else {
            return Ok(Pass::default());
        };
        let started = Instant::now();
        let mut bound = self.bound.lock().await;
        let mut full = false;
        // Batches sent, oldest first: each one's rows, and its confirms.
        let mut confirming: VecDeque<(usize, MaybeDone<Confirms>)> = VecDeque::new();
        let mut unconfirmed = 0;
        let mut sent = 0;
        let mut more;
        // The last batch took every row there was: the next waits for a commit.
        let mut drained = false;
        loop {
            // Marks the batches the broker has confirmed, oldest first (the embedded
            // broker's at once: it accepts a batch as it is sent).
            while let Some((rows, confirms)) = confirming.front_mut()
                && confirms.now_or_never().is_some()
            {
                let confirmed = Pin::new(confirms).take_output();
                confirmed.expect("confirms, done, hold their result")?;
                unconfirmed -= *rows;
                sent += *rows;
                confirming.pop_front();
                lease.mark_sent().await?;
            }
            // The rows awaiting confirms stay within one batch: more would only move
            // a backlog from the outbox into the broker's queues, which RabbitMQ then
            // writes to disk.
            let mut room = self.config.batch_size as usize - unconfirmed;
            more = started.elapsed() >= LEASE_LIMIT;
            if let Some(bound) = bound.as_mut()
                && room > 0
                && !more
                && !drained
            {
                let broker = self.broker.as_ref();
                room = bound.room(broker, room as u64, unconfirmed as u64).await? as usize;
                full = room == 0;
            }
            let taking = room > 0 && !more;
            // Registered before the take: a commit after it wakes the wait below.
            let written = self.store.outbox_written().notified();
            if taking && !drained {
                let batch = lease.take(room as u32).await?;
                drained = batch.len() < room;
                if !batch.is_empty() {
                    let rows = batch.len();
                    if let Some(bound) = bound.as_mut() {
                        bound.sent(rows as u64);
                    }
                    let batch = batch.into_iter().map(OutboxMessage::into_publish);
                    let confirms = self.broker.send(batch.collect()).await?;
                    confirming.push_back((rows, future::maybe_done(confirms)));
                    unconfirmed += rows;
                    continue;
                }
            }
            // Nothing to take now: the oldest batch's confirms, or new rows.
            let Some((_, oldest)) = confirming.front_mut() else {
                break;
            };
            tokio::select! {
                () = oldest => {}
                () = written, if taking => drained = false,
            }
        }
        lease.end().await?;
        tracing::debug!(sent, "outbox rows published");
        metrics::counter!(OUTBOX_PUBLISHED).increment(sent as u64);
        Ok(Pass { sent, more, full })
    }
}

/// What a relay pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    /// Rows published and marked sent.
    pub sent: usize,
    /// The pass ended at its time limit: rows may wait still.
    pub more: bool,
    /// The pass ended with `game_events` at its bound: rows wait for room.
    pub full: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::embedded::EmbeddedBroker;
    use crate::broker::{
        BrokerError, Consumer, Delivery, ExchangeKind, ExchangeSpec, Message, Publish, QueueSpec,
        QueueStats, topology,
    };
    use crate::domain::{GenreDraft, GenreName};
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::{Backend, Outbox, PoolConfig, References};
    use async_trait::async_trait;
    use tokio::sync::watch;

    /// The embedded broker, whose confirms wait until the test lets them go, as
    /// RabbitMQ's do until a persistent message is on disk or consumed.
    struct HeldConfirms {
        broker: EmbeddedBroker,
        released: watch::Receiver<bool>,
    }

    #[async_trait]
    impl Broker for HeldConfirms {
        fn kind(&self) -> &'static str {
            self.broker.kind()
        }
        async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
            self.broker.declare_exchange(spec).await
        }
        async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
            self.broker.declare_queue(spec).await
        }
        async fn bind_queue(
            &self,
            queue: &str,
            exchange: &str,
            key: &str,
        ) -> Result<(), BrokerError> {
            self.broker.bind_queue(queue, exchange, key).await
        }
        async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
            self.broker.delete_queue(name).await
        }
        async fn send(&self, batch: Vec<Publish>) -> Result<Confirms, BrokerError> {
            self.broker.publish(batch).await?;
            let mut released = self.released.clone();
            Ok(Box::pin(async move {
                let _ = released.wait_for(|released| *released).await;
                Ok(())
            }))
        }
        async fn request(
            &self,
            publish: Publish,
            timeout: Duration,
        ) -> Result<Message, BrokerError> {
            self.broker.request(publish, timeout).await
        }
        fn waiting_requests(&self) -> usize {
            self.broker.waiting_requests()
        }
        async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
            self.broker.consume(queue, prefetch).await
        }
        async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
            self.broker.queue_stats(queue).await
        }
        async fn ping(&self) -> Result<(), BrokerError> {
            self.broker.ping().await
        }
        async fn close(&self) -> Result<(), BrokerError> {
            self.broker.close().await
        }
    }

    async fn next(consumer: &mut Consumer) -> Delivery {
        tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .expect("consumer open")
    }

    /// An event written while the broker has yet to confirm the relay's last batch
    /// goes out without waiting for that confirm; each row is marked sent only once
    /// its own batch is confirmed.
    #[tokio::test]
    async fn an_event_written_while_a_batch_awaits_its_confirms_goes_out_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let store = Arc::new(
            SqliteStore::connect(&url, PoolConfig::default())
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let (release, released) = watch::channel(false);
        let broker = Arc::new(HeldConfirms {
            broker: EmbeddedBroker::open(&dir.path().join("broker.db"))
                .await
                .unwrap(),
            released,
        });
        let exchange = ExchangeSpec::new(topology::EVENTS_EXCHANGE, ExchangeKind::Topic);
        broker.declare_exchange(&exchange).await.unwrap();
        broker
            .declare_queue(&QueueSpec::durable("tap"))
            .await
            .unwrap();
        broker
            .bind_queue("tap", topology::EVENTS_EXCHANGE, "#")
            .await
            .unwrap();
        let mut tap = broker.consume("tap", 10).await.unwrap();
        let shutdown = Shutdown::new();
        let relay = Relay::new(store.clone(), broker.clone(), RelayConfig::default());
        let relay = tokio::spawn(relay.run(shutdown.clone()));
        let genre = |name: &str| GenreDraft {
            name: GenreName::parse(name).unwrap(),
            description: None,
        };

        store.create_genre(&genre("Rhythm")).await.unwrap();
        let first = next(&mut tap).await;
        store.create_genre(&genre("Pachinko")).await.unwrap();
        let second = next(&mut tap).await;
        assert_ne!(
            first.message.properties.message_id,
            second.message.properties.message_id
        );
        assert_eq!(
            store.outbox_backlog().await.unwrap().pending,
            2,
            "neither row is marked sent before its confirm"
        );

        release.send(true).unwrap();
        let marked = async {
            while store.outbox_backlog().await.unwrap().pending > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), marked)
            .await
            .expect("both rows marked sent once confirmed");
        shutdown.trigger();
        relay.await.unwrap();
    }
}
