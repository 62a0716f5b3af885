//! One queue's in-memory state: its counts, leases, consumers, and a small window of
//! ready messages in delivery order: read ahead from SQLite, or kept as they were
//! committed while the queue keeps up.
//!
//! Memory stays bounded whatever the backlog: the window holds at most about one fetch
//! batch per queue, and leases exist only for messages consumers hold (at most their
//! prefetch). Nothing here is persisted: after a crash every lease is simply gone, so
//! every message still in the file is ready again.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::acker::EmbeddedAcker;
use super::engine::Op;
use super::store::StoredRow;
use crate::broker::meter::QueueMeter;
use crate::broker::{Consumer, Delivery, Message, Properties, QueueSpec, QueueStats};

/// A message as the engine hands it out. Shared with the delivery's acker, so that a
/// requeue or dead-letter has the message at hand without reading it back.
pub(super) struct Entry {
    pub seq: i64,
    /// Effective priority: clamped to the queue's `max_priority`, 0 without one.
    pub priority: u8,
    pub exchange: String,
    pub routing_key: String,
    pub message: Message,
}

impl Entry {
    pub fn key(&self) -> Key {
        Key::new(self.priority, self.seq)
    }
}

/// Position in delivery order: higher priority first, then lower `seq` (FIFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    rank: Reverse<u8>,
    seq: i64,
}

impl Key {
    pub fn new(priority: u8, seq: i64) -> Self {
        Self {
            rank: Reverse(priority),
            seq,
        }
    }
}

struct ConsumerSlot {
    id: u64,
    deliveries: mpsc::Sender<Delivery>,
    prefetch: usize,
    unsettled: usize,
}

impl ConsumerSlot {
    fn has_room(&self) -> bool {
        self.unsettled < self.prefetch && !self.deliveries.is_closed()
    }
}

pub(super) struct QueueState {
    pub name: Arc<str>,
    pub spec: QueueSpec,
    meter: Arc<QueueMeter>,
    /// Rows of this queue in `messages`: ready or leased.
    stored: u64,
    /// Rows of this queue in `delayed`.
    delayed: u64,
    /// Which consumer holds each delivered, unsettled message (by `seq`).
    leases: HashMap<i64, u64>,
    /// Messages requeued in this session: their next delivery says `redelivered`.
    requeued: HashSet<i64>,
    /// Ready messages read ahead, in delivery order. Invariant: every stored message of
    /// this queue whose key is at or before `cursor` is either leased or in `ready`, so
    /// the next read from SQLite starts after `cursor`.
    ready: VecDeque<Arc<Entry>>,
    /// The key of the last message read from SQLite; `None` to read from the start.
    cursor: Option<Key>,
    /// Whether SQLite may hold ready messages after `cursor`.
    more_in_store: bool,
    consumers: Vec<ConsumerSlot>,
    /// Round-robin position among `consumers`, so competing consumers share the load.
    turn: usize,
}

impl QueueState {
    pub fn new(spec: QueueSpec, stored: u64, delayed: u64) -> Self {
        Self {
            name: spec.name.as_str().into(),
            meter: QueueMeter::of(&spec.name),
            spec,
            stored,
            delayed,
            leases: HashMap::new(),
            requeued: HashSet::new(),
            ready: VecDeque::new(),
            cursor: None,
            more_in_store: stored > 0,
            consumers: Vec::new(),
            turn: 0,
        }
    }

    /// The priority a message is queued with: RabbitMQ ignores priorities on a queue
    /// without `x-max-priority` and caps them at the maximum on one with it.
    pub fn effective_priority(&self, priority: u8) -> u8 {
        self.spec.max_priority.map_or(0, |max| priority.min(max))
    }

    /// Ready, held by consumers (read ahead into their windows included), delayed.
    pub fn stats(&self) -> QueueStats {
        let unacked = self.leases.len() as u64;
        QueueStats {
            ready: self.stored.saturating_sub(unacked),
            unacked: Some(unacked),
            delayed: self.delayed,
            consumers: self
                .consumers
                .iter()
                .filter(|consumer| !consumer.deliveries.is_closed())
                .count() as u64,
        }
    }

    pub fn is_leased(&self, seq: i64) -> bool {
        self.leases.contains_key(&seq)
    }

    /// Whether a new message at `key` sorts before messages already read ahead, so it
    /// must join `ready` rather than wait in SQLite (a high priority on a busy queue).
    fn is_before_cursor(&self, key: Key) -> bool {
        self.cursor.is_some_and(|cursor| key < cursor)
    }

    /// A committed ready message. It joins the read-ahead window when it sorts before
    /// the cursor, and also when it comes right after the window: SQLite holds no
    /// ready message after the cursor, someone consumes the queue, and the window has
    /// fewer than `window` messages. Then the consumers get it without a read of it
    /// back from SQLite, which on a queue that keeps up is every message. Otherwise
    /// it waits in SQLite for the next read.
    pub fn added(&mut self, entry: Arc<Entry>, window: usize) {
        self.stored += 1;
        let key = entry.key();
        if self.is_before_cursor(key) {
            self.insert_ready(entry);
        } else if !self.more_in_store && !self.consumers.is_empty() && self.ready.len() < window {
            self.cursor = Some(key);
            self.ready.push_back(entry);
        } else {
            self.more_in_store = true;
        }
    }

    pub fn added_delayed(&mut self) {
        self.delayed += 1;
    }

    /// A delayed message that became ready (it has a new `seq`). It is not at hand, so
    /// one that sorts before the cursor makes the queue read again from the start.
    pub fn promoted(&mut self, key: Key) {
        self.delayed = self.delayed.saturating_sub(1);
        self.stored += 1;
        if self.is_before_cursor(key) {
            self.read_again_from_start();
        } else {
            self.more_in_store = true;
        }
    }

    /// A delivered message whose removal (ack, drop, dead-letter) is committed.
    pub fn removed(&mut self, seq: i64) {
        self.release(seq);
        self.requeued.remove(&seq);
        self.stored = self.stored.saturating_sub(1);
    }

    /// A delivered message returned unsettled: ready again, ahead of later messages.
    pub fn requeue(&mut self, entry: Arc<Entry>) {
        if !self.release(entry.seq) {
            return; // Not leased: the queue was deleted since, or it was settled already.
        }
        self.requeued.insert(entry.seq);
        if self.cursor.is_some_and(|cursor| entry.key() <= cursor) {
            self.insert_ready(entry);
        } else {
            self.more_in_store = true;
        }
    }

    /// Ends a lease and frees a prefetch slot of its consumer. False if not leased.
    fn release(&mut self, seq: i64) -> bool {
        let Some(holder) = self.leases.remove(&seq) else {
            return false;
        };
        if let Some(consumer) = self.consumers.iter_mut().find(|c| c.id == holder) {
            consumer.unsettled = consumer.unsettled.saturating_sub(1);
        }
        true
    }

    fn insert_ready(&mut self, entry: Arc<Entry>) {
        let key = entry.key();
        let at = self.ready.partition_point(|other| other.key() < key);
        self.ready.insert(at, entry);
    }

    fn read_again_from_start(&mut self) {
        self.ready.clear();
        self.cursor = None;
        self.more_in_store = true;
    }

    pub fn add_consumer(&mut self, id: u64, prefetch: u16) -> Consumer {
        // AMQP's prefetch 0 means "no limit"; a channel needs some capacity.
        let prefetch = if prefetch == 0 { u16::MAX } else { prefetch };
        let (deliveries, receiver) = mpsc::channel(usize::from(prefetch));
        self.consumers.push(ConsumerSlot {
            id,
            deliveries,
            prefetch: usize::from(prefetch),
            unsettled: 0,
        });
        Consumer::new(receiver)
    }

    /// Forgets consumers whose [`Consumer`] was dropped. Their deliveries come back on
    /// their own: each one's acker requeues it when dropped.
    pub fn forget_closed_consumers(&mut self) {
        self.consumers
            .retain(|consumer| !consumer.deliveries.is_closed());
    }

    /// Whether some consumer can take a delivery now.
    pub fn has_room(&self) -> bool {
        self.consumers.iter().any(ConsumerSlot::has_room)
    }

    /// Where the next read from SQLite starts, if one is worth making.
    pub fn needs_read(&self) -> Option<Option<(u8, i64)>> {
        (self.ready.is_empty() && self.more_in_store)
            .then(|| self.cursor.map(|key| (key.rank.0, key.seq)))
    }

    /// Takes in rows read after the cursor. Leased rows (seen again after a restart from
    /// the start) are skipped; so are rows that do not decode, which are logged and left
    /// in the file for an operator rather than deleted.
    pub fn read(&mut self, rows: Vec<StoredRow>, limit: usize) {
        self.more_in_store = rows.len() >= limit;
        for row in rows {
            self.cursor = Some(Key::new(row.priority, row.seq));
            if self.is_leased(row.seq) {
                continue;
            }
            match serde_json::from_str::<Properties>(&row.properties) {
                Ok(properties) => self.ready.push_back(Arc::new(Entry {
                    seq: row.seq,
                    priority: row.priority,
                    exchange: row.exchange,
                    routing_key: row.routing_key,
                    message: Message {
                        body: row.body.into(),
                        properties,
                    },
                })),
                Err(error) => tracing::error!(
                    queue = %self.name,
                    seq = row.seq,
                    %error,
                    "embedded broker: skipping a stored message whose properties do not decode"
                ),
            }
        }
    }

    /// Hands the next ready message to the next consumer with room. Returns false when
    /// there is nothing to deliver or nobody to deliver it to.
    ///
    /// `session_start` is the first `seq` of this run of the broker: a message stored
    /// before it may have been delivered before a crash (leases are not persisted), so
    /// it is marked redelivered.
    pub fn deliver_next(&mut self, ops: &mpsc::UnboundedSender<Op>, session_start: i64) -> bool {
        let count = self.consumers.len();
        let Some(offset) =
            (0..count).find(|offset| self.consumers[(self.turn + offset) % count].has_room())
        else {
            return false;
        };
        let Some(entry) = self.ready.pop_front() else {
            return false;
        };
        let index = (self.turn + offset) % count;
        self.turn = index + 1;
        let consumer = &mut self.consumers[index];
        let redelivered = entry.seq < session_start || self.requeued.contains(&entry.seq);
        self.leases.insert(entry.seq, consumer.id);
        consumer.unsettled += 1;
        let delivery = Delivery::new(
            entry.message.clone(),
            entry.exchange.clone(),
            entry.routing_key.clone(),
            redelivered,
            Box::new(EmbeddedAcker::new(ops.clone(), self.name.clone(), entry)),
            self.meter.clone(),
        );
        // The channel holds `prefetch` deliveries and a consumer never has more unsettled,
        // so this fails only when the Consumer was just dropped: the delivery is dropped
        // with the error and its acker requeues it.
        let _ = consumer.deliveries.try_send(delivery);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(priority: u8, seq: i64) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            priority,
            exchange: String::new(),
            routing_key: "q".into(),
            message: Message {
                body: bytes::Bytes::new(),
                properties: Properties::default(),
            },
        })
    }

    const WINDOW: usize = 2;

    fn order(queue: &QueueState) -> Vec<i64> {
        queue.ready.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn keys_order_higher_priority_first_then_fifo() {
        let mut keys = vec![
            Key::new(1, 1),
            Key::new(9, 4),
            Key::new(5, 2),
            Key::new(9, 3),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                Key::new(9, 3),
                Key::new(9, 4),
                Key::new(5, 2),
                Key::new(1, 1)
            ]
        );
    }

    #[test]
    fn priorities_are_ignored_without_max_priority_and_capped_with_it() {
        let plain = QueueState::new(QueueSpec::durable("q"), 0, 0);
        assert_eq!(plain.effective_priority(7), 0);
        let prioritised = QueueState::new(QueueSpec::durable("q").with_max_priority(5), 0, 0);
        assert_eq!(prioritised.effective_priority(3), 3);
        assert_eq!(prioritised.effective_priority(9), 5);
    }

    #[test]
    fn a_message_before_the_cursor_joins_the_read_ahead_window_in_order() {
        let mut queue = QueueState::new(QueueSpec::durable("q").with_max_priority(9), 0, 0);
        queue.ready.push_back(entry(1, 1));
        queue.cursor = Some(Key::new(1, 2));
        queue.ready.push_back(entry(1, 2));
        let urgent = entry(9, 3);
        assert!(queue.is_before_cursor(urgent.key()));
        queue.added(urgent, WINDOW);
        assert_eq!(order(&queue), [3, 1, 2]);
        assert!(!queue.is_before_cursor(Key::new(1, 4)));
    }

    #[test]
    fn a_consumed_queue_that_keeps_up_gets_committed_messages_without_a_read() {
        let mut queue = QueueState::new(QueueSpec::durable("q"), 0, 0);
        let _consumer = queue.add_consumer(1, 10);
        queue.added(entry(0, 1), WINDOW);
        queue.added(entry(0, 2), WINDOW);
        assert_eq!(order(&queue), [1, 2]);
        assert_eq!(queue.needs_read(), None, "nothing waits in SQLite");

        // The window is full: the next one waits in SQLite, and so does every one
        // after it (the window must not skip it), until a read catches up.
        queue.added(entry(0, 3), WINDOW);
        let (sender, _receiver) = mpsc::unbounded_channel();
        assert!(queue.deliver_next(&sender, 0));
        queue.added(entry(0, 4), WINDOW);
        assert_eq!(order(&queue), [2]);
        queue.ready.clear();
        assert_eq!(
            queue.needs_read(),
            Some(Some((0, 2))),
            "read after the window"
        );
        assert_eq!(depth(&queue), 3);
    }

    #[test]
    fn a_queue_nobody_consumes_keeps_its_messages_in_sqlite_only() {
        let mut queue = QueueState::new(QueueSpec::durable("q"), 0, 0);
        queue.added(entry(0, 1), WINDOW);
        assert!(queue.ready.is_empty());
        let _consumer = queue.add_consumer(1, 10);
        assert_eq!(queue.needs_read(), Some(None), "read from the start");
    }

    /// Messages ready or delayed, as `Broker::queue_depth` counts them.
    fn depth(queue: &QueueState) -> u64 {
        let stats = queue.stats();
        stats.ready + stats.delayed
    }

    fn read_ahead(queue: &mut QueueState, entries: &[Arc<Entry>]) {
        for entry in entries {
            queue.cursor = Some(entry.key());
            queue.ready.push_back(entry.clone());
        }
        queue.more_in_store = false;
    }

    #[test]
    fn a_requeued_message_goes_back_to_its_place_in_the_window() {
        let mut queue = QueueState::new(QueueSpec::durable("q"), 3, 0);
        let (first, second, third) = (entry(0, 1), entry(0, 2), entry(0, 3));
        read_ahead(&mut queue, &[first.clone(), second, third]);
        let (sender, _receiver) = mpsc::unbounded_channel();
        let _consumer = queue.add_consumer(1, 1);
        assert!(queue.deliver_next(&sender, 0));
        assert!(queue.is_leased(1));
        assert_eq!(depth(&queue), 2, "a leased message is not in the depth");
        let stats = queue.stats();
        assert_eq!((stats.unacked, stats.consumers), (Some(1), 1), "{stats:?}");

        queue.requeue(first);
        assert!(!queue.is_leased(1));
        assert_eq!(depth(&queue), 3);
        assert_eq!(order(&queue), [1, 2, 3]);
        assert!(queue.requeued.contains(&1), "delivered next as redelivered");
    }

    #[test]
    fn a_promoted_message_before_the_cursor_makes_the_queue_read_again_from_the_start() {
        let mut queue = QueueState::new(QueueSpec::durable("q").with_max_priority(9), 2, 1);
        read_ahead(&mut queue, &[entry(1, 1), entry(1, 2)]);
        queue.promoted(Key::new(9, 3));
        assert!(queue.ready.is_empty());
        assert_eq!(queue.needs_read(), Some(None), "read from the start");
        assert_eq!(depth(&queue), 3);
    }
}
