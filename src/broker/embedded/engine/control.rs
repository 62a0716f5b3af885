//! Requests that declare, delete or inspect: rare, so each runs on its own, between
//! the commits of the data ops received before and after it.

use sqlx::Connection;

use super::{Engine, Reply};
use crate::broker::embedded::queue::QueueState;
use crate::broker::embedded::routing::Exchange;
use crate::broker::embedded::store::{self, sql_error};
use crate::broker::{BrokerError, Consumer, ExchangeSpec, QueueSpec, QueueStats};

/// Requests that change or read the topology. Rare, so each gets its own transaction,
/// after the data ops received before it (a publish after a declaration sees the queue).
pub(in crate::broker::embedded) enum Control {
    DeclareExchange {
        spec: ExchangeSpec,
        done: Reply<()>,
    },
    DeclareQueue {
        spec: QueueSpec,
        done: Reply<()>,
    },
    Bind {
        queue: String,
        exchange: String,
        pattern: String,
        done: Reply<()>,
    },
    DeleteQueue {
        name: String,
        done: Reply<()>,
    },
    Consume {
        queue: String,
        prefetch: u16,
        done: Reply<Consumer>,
    },
    Stats {
        queue: String,
        done: Reply<QueueStats>,
    },
    Ping {
        done: Reply<()>,
    },
}

impl Engine {
    pub(super) async fn control(&mut self, control: Control) {
        match control {
            Control::DeclareExchange { spec, done } => {
                let _ = done.send(self.declare_exchange(spec).await);
            }
            Control::DeclareQueue { spec, done } => {
                let _ = done.send(self.declare_queue(spec).await);
            }
            Control::Bind {
                queue,
                exchange,
                pattern,
                done,
            } => {
                let _ = done.send(self.bind(&queue, &exchange, &pattern).await);
            }
            Control::DeleteQueue { name, done } => {
                let _ = done.send(self.delete_queue(&name).await);
            }
            Control::Consume {
                queue,
                prefetch,
                done,
            } => {
                let result = match self.queues.get_mut(queue.as_str()) {
                    Some(state) => {
                        self.next_consumer_id += 1;
                        Ok(state.add_consumer(self.next_consumer_id, prefetch))
                    }
                    None => Err(queue_not_found(&queue)),
                };
                let _ = done.send(result);
            }
            Control::Stats { queue, done } => {
                let result = self
                    .queues
                    .get(queue.as_str())
                    .map(QueueState::stats)
                    .ok_or_else(|| queue_not_found(&queue));
                let _ = done.send(result);
            }
            Control::Ping { done } => {
                let _ = done.send(self.conn.ping().await.map_err(sql_error));
            }
        }
    }

    async fn declare_exchange(&mut self, spec: ExchangeSpec) -> Result<(), BrokerError> {
        let ExchangeSpec {
            name,
            kind,
            alternate_exchange,
        } = spec;
        if name.is_empty() {
            return Err(BrokerError::Topology(
                "the default exchange \"\" always exists and cannot be declared".into(),
            ));
        }
        match self.exchanges.get(&name) {
            Some(existing)
                if (existing.kind, &existing.alternate) == (kind, &alternate_exchange) =>
            {
                Ok(())
            }
            Some(existing) => Err(BrokerError::Topology(format!(
                "exchange {name:?} exists as {:?} with alternate exchange {:?}, not {kind:?} \
                 with {alternate_exchange:?}: declare it as it is, or delete it from the \
                 broker (for the embedded broker, its database file)",
                existing.kind, existing.alternate
            ))),
            None => {
                let spec = ExchangeSpec {
                    name,
                    kind,
                    alternate_exchange,
                };
                store::insert_exchange(&mut self.conn, &spec)
                    .await
                    .map_err(sql_error)?;
                let exchange = Exchange::new(spec.kind, spec.alternate_exchange);
                self.exchanges.insert(spec.name, exchange);
                Ok(())
            }
        }
    }

    /// Idempotent. The dead-letter queue is not a queue argument (see
    /// [`QueueSpec::dead_letter_queue`]): a redeclaration may change it.
    async fn declare_queue(&mut self, spec: QueueSpec) -> Result<(), BrokerError> {
        if spec.name.is_empty() {
            return Err(BrokerError::Topology(
                "a queue needs a name (server-named queues are not supported)".into(),
            ));
        }
        let Some(existing) = self.queues.get_mut(spec.name.as_str()) else {
            store::upsert_queue(&mut self.conn, &spec)
                .await
                .map_err(sql_error)?;
            let state = QueueState::new(spec, 0, 0);
            self.queues.insert(state.name.clone(), state);
            return Ok(());
        };
        let old = &existing.spec;
        if (old.durable, old.exclusive, old.max_priority)
            != (spec.durable, spec.exclusive, spec.max_priority)
        {
            return Err(BrokerError::Topology(format!(
                "queue {:?} exists with durable={}, exclusive={}, max_priority={:?} but is now \
                 declared with durable={}, exclusive={}, max_priority={:?}: delete the queue \
                 (its messages go with it) and declare it again, or declare it as it is",
                spec.name,
                old.durable,
                old.exclusive,
                old.max_priority,
                spec.durable,
                spec.exclusive,
                spec.max_priority
            )));
        }
        if old.dead_letter_queue != spec.dead_letter_queue {
            store::upsert_queue(&mut self.conn, &spec)
                .await
                .map_err(sql_error)?;
            existing.spec.dead_letter_queue = spec.dead_letter_queue;
        }
        Ok(())
    }

    async fn bind(
        &mut self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError> {
        if exchange.is_empty() {
            return Err(BrokerError::Topology(
                "the default exchange routes by queue name and takes no bindings".into(),
            ));
        }
        if !self.queues.contains_key(queue) {
            return Err(queue_not_found(queue));
        }
        let bound = self.exchanges.get_mut(exchange).ok_or_else(|| {
            BrokerError::NotFound(format!("exchange {exchange:?} is not declared"))
        })?;
        store::insert_binding(&mut self.conn, exchange, queue, pattern)
            .await
            .map_err(sql_error)?;
        bound.bind(queue, pattern);
        Ok(())
    }

    /// Deleting a queue ends its consumers (their `next()` returns `None`), as RabbitMQ
    /// cancels them; deleting a queue that does not exist succeeds.
    async fn delete_queue(&mut self, name: &str) -> Result<(), BrokerError> {
        store::delete_queue(&mut self.conn, name)
            .await
            .map_err(sql_error)?;
        self.queues.remove(name);
        for exchange in self.exchanges.values_mut() {
            exchange.unbind_queue(name);
        }
        Ok(())
    }
}

fn queue_not_found(queue: &str) -> BrokerError {
    BrokerError::NotFound(format!("queue {queue:?} is not declared"))
}
