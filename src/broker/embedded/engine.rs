//! The engine: the one task that owns the SQLite connection and every piece of
//! in-memory state (topology, queues, leases, consumers).
//!
//! Every broker call and every settlement is an [`Op`] on one channel. Each turn of the
//! loop drains what is waiting and applies it in ONE transaction (group commit): under
//! load a commit carries many publish batches and acks, so the per-commit cost (the WAL
//! append, the sqlx round trips) is shared; when idle a lone publish commits at once.
//! After the commit the engine replies to the callers, then hands ready messages to
//! consumers with room — that is the wake-up: a publish reaches an idle consumer in the
//! same turn, with no polling. A timer turns the loop when the next delayed message is
//! due.
//!
//! One task also means no locks and no races between a read of ready messages and an
//! ack that deletes one: the trade-off is that the database work is serial, which is how
//! SQLite writes anyway.

use std::collections::HashMap;
use std::mem;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

mod control;
mod stage;

pub(super) use self::control::Control;
use self::stage::Pending;
use super::EmbeddedOptions;
use super::queue::{Entry, Key, QueueState};
use super::routing::Exchange;
use super::store::{self, Loaded, Promoted};
use crate::broker::{BrokerError, Publish};

pub(super) type Reply<T> = oneshot::Sender<Result<T, BrokerError>>;

/// A request to the engine.
pub(super) enum Op {
    Publish {
        batch: Vec<Publish>,
        done: Reply<()>,
    },
    Settle {
        queue: Arc<str>,
        entry: Arc<Entry>,
        settlement: Settlement,
    },
    DeadLetter {
        queue: Arc<str>,
        entry: Arc<Entry>,
        reason: String,
        done: Reply<()>,
    },
    Control(Control),
}

pub(super) enum Settlement {
    Ack,
    /// `nack(false)`: removed without further ado.
    Drop,
    /// `nack(true)`, or dropped unsettled: ready again at once.
    Requeue,
}

/// How long to wait before trying again after a failed read or promotion.
const RETRY_AFTER: Duration = Duration::from_millis(100);

pub(super) struct Engine {
    conn: SqliteConnection,
    ops: mpsc::UnboundedReceiver<Op>,
    /// Cloned into each delivery's acker. Weak, so that the engine stops once every
    /// broker handle and every delivery is gone.
    ops_for_ackers: mpsc::WeakUnboundedSender<Op>,
    options: EmbeddedOptions,
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<Arc<str>, QueueState>,
    /// The `seq` of the next stored message. The engine is the file's only writer, so it
    /// numbers messages itself and never needs a row id back from SQLite.
    next_seq: i64,
    /// The first `seq` of this run: older messages may have been delivered before a
    /// crash, so they are delivered as redelivered.
    session_start: i64,
    /// When the next delayed message is due (milliseconds since the Unix epoch).
    next_due: Option<i64>,
    /// When to retry after a failed read of ready messages.
    retry_at: Option<Instant>,
    next_consumer_id: u64,
    /// Held for the engine's lifetime: the exclusive lock on `<path>.lock`.
    _lock: std::fs::File,
}

impl Engine {
    /// Spawns the engine on the current runtime and returns the channel to it.
    pub fn start(
        conn: SqliteConnection,
        lock: std::fs::File,
        options: EmbeddedOptions,
        loaded: Loaded,
    ) -> mpsc::UnboundedSender<Op> {
        let (sender, ops) = mpsc::unbounded_channel();
        let mut queues: HashMap<Arc<str>, QueueState> = HashMap::new();
        for spec in loaded.queues {
            let stored = loaded.ready_counts.get(&spec.name).copied().unwrap_or(0);
            let delayed = loaded.delayed_counts.get(&spec.name).copied().unwrap_or(0);
            let state = QueueState::new(spec, stored, delayed);
            queues.insert(state.name.clone(), state);
        }
        let mut exchanges: HashMap<String, Exchange> = loaded
            .exchanges
            .into_iter()
            .map(|spec| (spec.name, Exchange::new(spec.kind, spec.alternate_exchange)))
            .collect();
        for (exchange, queue, pattern) in loaded.bindings {
            if let Some(exchange) = exchanges.get_mut(&exchange) {
                exchange.bind(&queue, &pattern);
            }
        }
        let engine = Engine {
            conn,
            ops,
            ops_for_ackers: sender.downgrade(),
            options: EmbeddedOptions {
                fetch_batch: options.fetch_batch.max(1),
                max_ops_per_commit: options.max_ops_per_commit.max(1),
                promote_batch: options.promote_batch.max(1),
            },
            exchanges,
            queues,
            next_seq: loaded.next_seq,
            session_start: loaded.next_seq,
            next_due: loaded.next_due,
            retry_at: None,
            next_consumer_id: 0,
            _lock: lock,
        };
        tokio::spawn(engine.run());
        sender
    }

    async fn run(mut self) {
        let mut batch = Vec::new();
        let limit = self.options.max_ops_per_commit;
        loop {
            let wake_at = self.wake_at();
            tokio::select! {
                received = self.ops.recv_many(&mut batch, limit) => {
                    if received == 0 {
                        break; // Every broker handle and delivery is gone.
                    }
                }
                () = sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {}
            }
            self.retry_at = None;
            self.handle(&mut batch).await;
            self.dispatch().await;
        }
        if let Err(error) = self.conn.close().await {
            tracing::warn!(%error, "embedded broker: closing the database failed");
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        let due = self.next_due.map(|due| {
            let wait = u64::try_from(due - now_ms()).unwrap_or(0);
            Instant::now() + Duration::from_millis(wait)
        });
        match (due, self.retry_at) {
            (Some(due), Some(retry)) => Some(due.min(retry)),
            (due, retry) => due.or(retry),
        }
    }

    /// Applies a drained batch of ops: data ops staged into one commit, control ops in
    /// order between commits.
    async fn handle(&mut self, batch: &mut Vec<Op>) {
        let mut pending = Pending::default();
        for op in batch.drain(..) {
            match op {
                Op::Publish { batch, done } => self.stage_publish(&mut pending, batch, done),
                Op::Settle {
                    queue,
                    entry,
                    settlement: Settlement::Requeue,
                } => {
                    if let Some(state) = self.queues.get_mut(&queue) {
                        state.requeue(entry);
                    }
                }
                Op::Settle { queue, entry, .. } => {
                    // A delivery of a deleted queue has nothing left to remove.
                    if self
                        .queues
                        .get(&queue)
                        .is_some_and(|state| state.is_leased(entry.seq))
                    {
                        pending.removed.push((queue, entry));
                    }
                }
                Op::DeadLetter {
                    queue,
                    entry,
                    reason,
                    done,
                } => match self.stage_dead_letter(&mut pending, &queue, &entry, &reason) {
                    Ok(()) => pending.dead_letters.push((queue, entry, done)),
                    Err(error) => {
                        let _ = done.send(Err(error));
                    }
                },
                Op::Control(control) => {
                    self.commit(mem::take(&mut pending)).await;
                    self.control(control).await;
                }
            }
        }
        self.commit(pending).await;
    }

    /// Commits what was staged, plus the delayed messages now due, then applies it to
    /// memory and replies. On failure nothing changes but the replies: publishes and
    /// dead-letters get the error, acked messages become ready again.
    async fn commit(&mut self, pending: Pending) {
        let now = now_ms();
        let promote = self.next_due.is_some_and(|due| due <= now);
        if pending.is_empty() && !promote {
            // Nothing to write, but publishes may wait: all of them unroutable, dropped
            // (as AMQP drops them without `mandatory`) and confirmed.
            for done in pending.confirms {
                let _ = done.send(Ok(()));
            }
            return;
        }
        match self.write(&pending, promote.then_some(now)).await {
            Ok(promoted) => {
                self.committed(pending, promoted);
                if promote {
                    self.next_due = match store::next_due(&mut self.conn).await {
                        Ok(due) => due,
                        Err(error) => {
                            tracing::error!(%error, "embedded broker: reading the next due time failed");
                            Some(now + millis(RETRY_AFTER))
                        }
                    };
                }
            }
            Err(error) => {
                tracing::error!(%error, "embedded broker: commit failed");
                let message = error.to_string();
                let failure = || BrokerError::Other(format!("embedded broker database: {message}"));
                for done in pending.confirms {
                    let _ = done.send(Err(failure()));
                }
                for (_, _, done) in pending.dead_letters {
                    let _ = done.send(Err(failure())); // Still leased: the caller decides.
                }
                for (queue, entry) in pending.removed {
                    if let Some(state) = self.queues.get_mut(&queue) {
                        state.requeue(entry);
                    }
                }
                if promote {
                    self.next_due = Some(now + millis(RETRY_AFTER));
                }
            }
        }
    }

    async fn write(
        &mut self,
        pending: &Pending,
        promote_at: Option<i64>,
    ) -> Result<Vec<Promoted>, sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        store::insert_rows(&mut tx, &pending.rows).await?;
        let removed: Vec<i64> = pending
            .removed
            .iter()
            .map(|(_, entry)| entry.seq)
            .chain(pending.dead_letters.iter().map(|(_, entry, _)| entry.seq))
            .collect();
        store::delete_messages(&mut tx, &removed).await?;
        let promoted = match promote_at {
            Some(now) => {
                store::promote_due(&mut tx, now, self.options.promote_batch, self.next_seq).await?
            }
            None => Vec::new(),
        };
        tx.commit().await?;
        Ok(promoted)
    }

    fn committed(&mut self, pending: Pending, promoted: Vec<Promoted>) {
        for (queue, entry) in pending.added {
            if let Some(state) = self.queues.get_mut(&queue) {
                state.added(entry, self.options.fetch_batch);
            }
        }
        for (queue, due) in pending.delayed {
            if let Some(state) = self.queues.get_mut(&queue) {
                state.added_delayed();
            }
            self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
        }
        for (queue, entry) in pending.removed {
            if let Some(state) = self.queues.get_mut(&queue) {
                state.removed(entry.seq);
            }
        }
        for (queue, entry, done) in pending.dead_letters {
            if let Some(state) = self.queues.get_mut(&queue) {
                state.removed(entry.seq);
            }
            let _ = done.send(Ok(()));
        }
        self.next_seq += i64::try_from(promoted.len()).unwrap_or(0);
        for promoted in promoted {
            if let Some(state) = self.queues.get_mut(promoted.queue.as_str()) {
                state.promoted(Key::new(promoted.priority, promoted.seq));
            }
        }
        for done in pending.confirms {
            let _ = done.send(Ok(()));
        }
    }

    /// Hands ready messages to every consumer with room, reading ahead from SQLite in
    /// batches as the read-ahead windows empty.
    async fn dispatch(&mut self) {
        let Some(ops) = self.ops_for_ackers.upgrade() else {
            return; // Nobody is left to settle a delivery: the engine is stopping.
        };
        let batch = self.options.fetch_batch;
        for state in self.queues.values_mut() {
            state.forget_closed_consumers();
            while state.has_room() {
                if state.deliver_next(&ops, self.session_start) {
                    continue;
                }
                let Some(after) = state.needs_read() else {
                    break; // Nothing ready in memory nor in SQLite.
                };
                match store::fetch_ready(&mut self.conn, &state.name, after, batch).await {
                    Ok(rows) => state.read(rows, batch),
                    Err(error) => {
                        tracing::error!(%error, queue = %state.name, "embedded broker: reading ready messages failed");
                        self.retry_at = Some(Instant::now() + RETRY_AFTER);
                        break;
                    }
                }
            }
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch: due times are stored, so they must
/// mean the same after a restart (a monotonic clock would not).
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
