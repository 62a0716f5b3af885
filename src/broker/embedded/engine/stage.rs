//! Staging: turning publishes and dead-letters into rows for the next commit, and
//! remembering what to do in memory once that commit is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Engine, Reply, now_ms};
use crate::broker::embedded::queue::{Entry, QueueState};
use crate::broker::embedded::routing::Exchange;
use crate::broker::embedded::store::NewRow;
use crate::broker::{BrokerError, Publish};

/// Changes staged for the next commit, and what to do once it is durable.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) rows: Vec<NewRow>,
    /// Ready rows: their queue and entry, for the queue's read-ahead window.
    pub(super) added: Vec<(Arc<str>, Arc<Entry>)>,
    /// Delayed rows: their queue and due time.
    pub(super) delayed: Vec<(Arc<str>, i64)>,
    /// Acked or dropped deliveries.
    pub(super) removed: Vec<(Arc<str>, Arc<Entry>)>,
    pub(super) dead_letters: Vec<(Arc<str>, Arc<Entry>, Reply<()>)>,
    pub(super) confirms: Vec<Reply<()>>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.removed.is_empty() && self.dead_letters.is_empty()
    }
}

impl Engine {
    pub(super) fn stage_publish(
        &mut self,
        pending: &mut Pending,
        batch: Vec<Publish>,
        done: Reply<()>,
    ) {
        // Checked before anything is staged: a batch is refused or accepted whole.
        if let Some(publish) = batch.iter().find(|publish| {
            !publish.exchange.is_empty() && !self.exchanges.contains_key(&publish.exchange)
        }) {
            let error =
                BrokerError::NotFound(format!("exchange {:?} is not declared", publish.exchange));
            let _ = done.send(Err(error));
            return;
        }
        let mut properties = Vec::with_capacity(batch.len());
        for publish in &batch {
            match serde_json::to_string(&publish.message.properties) {
                Ok(json) => properties.push(json),
                Err(error) => {
                    let _ = done.send(Err(BrokerError::Other(format!(
                        "message properties: {error}"
                    ))));
                    return;
                }
            }
        }
        // A delay counts from now, when the broker accepts the message (as a RabbitMQ
        // TTL counts from enqueueing), rounded up so that it is never cut short.
        let now = now_ms() + 1;
        for (publish, properties) in batch.into_iter().zip(properties) {
            let queues = route(&self.exchanges, &self.queues, &publish);
            if queues.is_empty() {
                // Unroutable, with no alternate exchange to take it: dropped, as AMQP
                // does without `mandatory`.
                tracing::debug!(exchange = %publish.exchange, routing_key = %publish.routing_key,
                    "embedded broker: dropping an unroutable message");
                continue;
            }
            let visible_at = publish
                .delay
                .filter(|delay| !delay.is_zero())
                .map(|delay| now + millis_rounded_up(delay));
            for queue in queues {
                let Some(state) = self.queues.get(&queue) else {
                    continue; // `route` returns declared queues only.
                };
                let priority = state.effective_priority(publish.message.properties.priority);
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Some(due) = visible_at {
                    pending.delayed.push((queue.clone(), due));
                } else {
                    let entry = Arc::new(Entry {
                        seq,
                        priority,
                        exchange: publish.exchange.clone(),
                        routing_key: publish.routing_key.clone(),
                        message: publish.message.clone(),
                    });
                    pending.added.push((queue.clone(), entry));
                }
                pending.rows.push(NewRow {
                    seq,
                    queue: queue.to_string(),
                    priority,
                    exchange: publish.exchange.clone(),
                    routing_key: publish.routing_key.clone(),
                    properties: properties.clone(),
                    body: publish.message.body.clone(),
                    visible_at,
                });
            }
        }
        pending.confirms.push(done);
    }

    /// Stages a copy of the delivery into its queue's dead-letter queue, with the reason
    /// in its headers, and the removal of the original (by the caller, on success).
    pub(super) fn stage_dead_letter(
        &mut self,
        pending: &mut Pending,
        queue: &str,
        entry: &Entry,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let source = self
            .queues
            .get(queue)
            .ok_or_else(|| BrokerError::NotFound(format!("queue {queue:?} was deleted")))?;
        if !source.is_leased(entry.seq) {
            return Err(BrokerError::Other("delivery already settled".into()));
        }
        let dlq_name = source.spec.dead_letter_queue.as_deref().ok_or_else(|| {
            BrokerError::Topology(format!(
                "queue {queue:?} has no dead-letter queue: declare it with \
                 QueueSpec::with_dead_letter_queue"
            ))
        })?;
        let (dlq_name, dlq) = self.queues.get_key_value(dlq_name).ok_or_else(|| {
            BrokerError::NotFound(format!(
                "dead-letter queue {dlq_name:?} of queue {queue:?} is not declared"
            ))
        })?;

        let mut message = entry.message.clone();
        message.properties.mark_dead_lettered(reason, queue);
        let properties = serde_json::to_string(&message.properties)
            .map_err(|error| BrokerError::Other(format!("message properties: {error}")))?;
        let priority = dlq.effective_priority(message.properties.priority);
        let seq = self.next_seq;
        self.next_seq += 1;
        // Republished through the default exchange, as a RabbitMQ client would.
        let dead = Entry {
            seq,
            priority,
            exchange: String::new(),
            routing_key: dlq_name.to_string(),
            message,
        };
        pending.rows.push(NewRow {
            seq,
            queue: dlq_name.to_string(),
            priority,
            exchange: String::new(),
            routing_key: dlq_name.to_string(),
            properties,
            body: dead.message.body.clone(),
            visible_at: None,
        });
        pending.added.push((dlq_name.clone(), Arc::new(dead)));
        Ok(())
    }
}

/// The queues a publish goes to (existing ones only). A message no binding matches
/// goes to the exchange's alternate exchange, and on along that chain as in RabbitMQ
/// (a chain that loops back ends there).
fn route(
    exchanges: &HashMap<String, Exchange>,
    queues: &HashMap<Arc<str>, QueueState>,
    publish: &Publish,
) -> Vec<Arc<str>> {
    let existing = |name: &str| queues.get_key_value(name).map(|(name, _)| name.clone());
    if publish.exchange.is_empty() {
        return existing(&publish.routing_key).into_iter().collect();
    }
    let mut visited: Vec<&str> = Vec::new();
    let mut name = publish.exchange.as_str();
    while let Some(exchange) = exchanges.get(name).filter(|_| !visited.contains(&name)) {
        let routed: Vec<Arc<str>> = exchange
            .route(&publish.routing_key)
            .into_iter()
            .filter_map(existing)
            .collect();
        match &exchange.alternate {
            Some(alternate) if routed.is_empty() => {
                visited.push(name);
                name = alternate;
            }
            _ => return routed,
        }
    }
    Vec::new()
}

/// A delay in whole milliseconds, rounded up so that it is never cut short (and capped
/// far in the future rather than overflowing).
fn millis_rounded_up(delay: Duration) -> i64 {
    i64::try_from(delay.as_nanos().div_ceil(1_000_000))
        .map_or(i64::MAX / 2, |ms| ms.min(i64::MAX / 2))
}
