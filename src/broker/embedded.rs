//! The embedded broker: durable queues in SQLite, for the one-process default.
//!
//! It gives the [`Broker`] contract the AMQP semantics RabbitMQ gives it (topic, direct
//! and fanout exchanges, the default exchange, priorities, delays, prefetch, requeue,
//! dead letters, redelivery after a crash), so the same conformance suite runs against
//! both. How it is built:
//!
//! - [`EmbeddedBroker`] is a cheap handle around a channel to one engine task
//!   (`engine.rs`) that owns the SQLite connection and all in-memory state. The engine
//!   group-commits: everything waiting is applied in one transaction, then consumers are
//!   handed what became ready. A publish returns after its commit (our publisher
//!   confirm); an ack does not wait for one, as AMQP's does not.
//! - Leases (which consumer holds which message) live only in memory (`queue.rs`). The
//!   process holds an exclusive lock on the file, so nothing else can see them; after a
//!   crash they are simply gone and every message still in the file is ready again.
//! - Ready messages are read in delivery order from an index, one batch ahead per queue,
//!   so memory stays bounded whatever the backlog (`store.rs` has the SQL).
//! - Routing happens in memory (`routing.rs`); the tables only make declarations durable.

mod acker;
mod engine;
mod queue;
mod routing;
mod store;

use std::ffi::OsString;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};

use self::acker::stopped;
use self::engine::{Control, Engine, Op, Reply};
use self::store::sql_error;
use super::reply::{Replies, is_reply_address};
use super::{
    Broker, BrokerError, Confirms, Consumer, ExchangeSpec, Message, Publish, QueueSpec, QueueStats,
};

/// Tuning of the embedded broker. The defaults suit retrocat's workloads.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Ready messages read from SQLite at a time for a queue whose consumers have room.
    /// Bounds the read-ahead memory per queue; bigger batches mean fewer queries.
    pub fetch_batch: usize,
    /// Most requests (publish batches, acks, …) applied in one transaction. Bounds how
    /// long one commit holds up the others.
    pub max_ops_per_commit: usize,
    /// Most delayed messages made ready in one transaction.
    pub promote_batch: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            fetch_batch: 256,
            max_ops_per_commit: 4096,
            promote_batch: 1024,
        }
    }
}

/// The embedded broker. Clones share one broker; it stops once every clone and every
/// unsettled delivery is dropped.
#[derive(Clone, Debug)]
pub struct EmbeddedBroker {
    ops: mpsc::UnboundedSender<Op>,
    /// Requests of this process waiting for their reply. Replies never touch the file:
    /// like RabbitMQ's direct reply-to, they go straight to the waiting requester.
    replies: Arc<Replies>,
}

impl EmbeddedBroker {
    /// Opens (or creates) the broker's database at `path`, with default options.
    pub async fn open(path: &Path) -> Result<Self, BrokerError> {
        Self::open_with(path, EmbeddedOptions::default()).await
    }

    /// Opens (or creates) the broker's database at `path`.
    ///
    /// Fails if another process has it open: the broker keeps leases in memory, so it
    /// must be the file's only user. Messages delivered but unacknowledged when the
    /// previous process stopped are ready again. Since leases were not persisted, the
    /// broker cannot tell them from messages never delivered, so every message stored
    /// before this open is delivered with `redelivered = true`: the flag means "may have
    /// been delivered before", never a false "first time". Exclusive and non-durable
    /// queues are gone, as after a RabbitMQ restart. Messages are all stored durably,
    /// `persistent` or not (delivery mode 1 allows a loss; it does not require one).
    pub async fn open_with(path: &Path, options: EmbeddedOptions) -> Result<Self, BrokerError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| {
                BrokerError::Unavailable(format!("cannot create {}: {error}", dir.display()))
            })?;
        }
        let lock = lock(path)?;
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL syncs the log at checkpoints rather than at every commit.
            // A commit is durable as soon as it is written to the log: a crash of the
            // process loses nothing, and only an OS crash or power cut can lose the last
            // commits (never corrupt the file). Process crashes are what this broker
            // guards against; FULL would cost an fsync per commit.
            .synchronous(SqliteSynchronous::Normal)
            .connect()
            .await
            .map_err(sql_error)?;
        store::create_schema(&mut conn).await.map_err(sql_error)?;
        store::drop_transient_queues(&mut conn)
            .await
            .map_err(sql_error)?;
        let loaded = store::load(&mut conn).await?;
        Ok(Self {
            ops: Engine::start(conn, lock, options, loaded),
            replies: Arc::default(),
        })
    }

    async fn control<T>(
        &self,
        control: impl FnOnce(Reply<T>) -> Control,
    ) -> Result<T, BrokerError> {
        let (done, result) = oneshot::channel();
        self.ops
            .send(Op::Control(control(done)))
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

/// Takes the exclusive lock on `<path>.lock` for as long as the returned file is open.
/// The OS releases it when the process dies, so a crash never leaves it stale.
fn lock(path: &Path) -> Result<File, BrokerError> {
    let mut lock_path = OsString::from(path.as_os_str());
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| {
            BrokerError::Unavailable(format!("cannot open {}: {error}", lock_path.display()))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(BrokerError::Unavailable(format!(
            "the embedded broker at {} is in use by another process (it holds {}); stop \
             that process, or give this one another database file",
            path.display(),
            lock_path.display()
        ))),
        Err(TryLockError::Error(error)) => Err(BrokerError::Unavailable(format!(
            "cannot lock {}: {error}",
            lock_path.display()
        ))),
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        let spec = spec.clone();
        self.control(|done| Control::DeclareExchange { spec, done })
            .await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let spec = spec.clone();
        self.control(|done| Control::DeclareQueue { spec, done })
            .await
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError> {
        let (queue, exchange, pattern) =
            (queue.to_owned(), exchange.to_owned(), pattern.to_owned());
        self.control(|done| Control::Bind {
            queue,
            exchange,
            pattern,
            done,
        })
        .await
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        let name = name.to_owned();
        self.control(|done| Control::DeleteQueue { name, done })
            .await
    }

    /// Answers once the batch is committed to the broker's file: its confirms are ready.
    async fn send(&self, mut batch: Vec<Publish>) -> Result<Confirms, BrokerError> {
        batch.retain(|publish| {
            let is_reply = publish.exchange.is_empty() && is_reply_address(&publish.routing_key);
            if is_reply {
                self.replies.deliver(publish.message.clone());
            }
            !is_reply
        });
        if !batch.is_empty() {
            let (done, result) = oneshot::channel();
            self.ops
                .send(Op::Publish { batch, done })
                .map_err(|_| stopped())?;
            result.await.map_err(|_| stopped())??;
        }
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    async fn request(
        &self,
        mut publish: Publish,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let pending = self.replies.expect();
        pending.address(&mut publish.message);
        self.publish(vec![publish]).await?;
        pending.wait(timeout).await
    }

    fn waiting_requests(&self) -> usize {
        self.replies.waiting()
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        let queue = queue.to_owned();
        self.control(|done| Control::Consume {
            queue,
            prefetch,
            done,
        })
        .await
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let queue = queue.to_owned();
        self.control(|done| Control::Stats { queue, done }).await
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.control(|done| Control::Ping { done }).await
    }

    /// A control request commits every data op sent before it (see `engine::control`),
    /// acknowledgements included.
    async fn close(&self) -> Result<(), BrokerError> {
        self.ping().await
    }
}
