//! The process's one connection to RabbitMQ, and the declarations it replays.
//!
//! The connection is opened again on first use after it dropped (broker restart,
//! network, a cluster node lost), to the next node of `RABBITMQ_URL` that answers.
//! Callers already retry with backoff on `Unavailable`, so reconnecting lazily
//! is all recovery needs: consumers end when their channel dies and are started again,
//! publishes are retried from the outbox. One caller reconnects; the others wait for it
//! up to [`RECONNECT_WAIT`], then are told the broker is unavailable: going round the
//! nodes may take seconds per node that does not answer, too long for a readiness
//! probe or an API request. Before a new connection is handed out, every declaration made so far is
//! replayed on it, so a broker that came back without our exchanges, queues or
//! bindings (a reset node, a new cluster member) has them again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tokio::sync::Mutex as AsyncMutex;

use super::nodes::Nodes;
use super::{arguments, classify};
use crate::broker::{BrokerError, ExchangeKind, ExchangeSpec, QueueSpec, QueueType};

/// How long a caller waits for another's reconnect before it is told the broker is
/// unavailable: a node that is up takes a few milliseconds.
const RECONNECT_WAIT: Duration = Duration::from_millis(500);

/// A declaration, kept so that it can be made again on a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Declaration {
    Exchange(ExchangeSpec),
    Queue(QueueSpec),
    Binding {
        queue: String,
        exchange: String,
        pattern: String,
    },
}

impl Declaration {
    async fn run(&self, channel: &Channel, queue_type: QueueType) -> lapin::Result<()> {
        match self {
            Self::Exchange(spec) => {
                let kind = match spec.kind {
                    ExchangeKind::Topic => lapin::ExchangeKind::Topic,
                    ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                    ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
                };
                let mut arguments = FieldTable::default();
                if let Some(alternate) = &spec.alternate_exchange {
                    arguments.insert(
                        "alternate-exchange".into(),
                        AMQPValue::LongString(alternate.as_str().into()),
                    );
                }
                let options = ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(spec.name.as_str().into(), kind, options, arguments)
                    .await
            }
            Self::Queue(spec) => {
                let (options, arguments) = arguments::queue(spec, queue_type);
                channel
                    .queue_declare(spec.name.as_str().into(), options, arguments)
                    .await
                    .map(drop)
            }
            Self::Binding {
                queue,
                exchange,
                pattern,
            } => {
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        pattern.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
        }
    }

    /// A conflict is explained with the way out; other errors pass as they are.
    fn explain(&self, error: BrokerError) -> BrokerError {
        let BrokerError::Topology(reason) = error else {
            return error;
        };
        BrokerError::Topology(match self {
            Self::Exchange(spec) => format!(
                "exchange {:?} exists with other arguments ({reason}); delete it (management \
                 UI, or rabbitmqadmin delete exchange name={}) or declare it the same way",
                spec.name, spec.name
            ),
            Self::Queue(spec) if reason.contains("x-queue-type") => format!(
                "queue {:?} exists as another type ({reason}); run with the --queue-type \
                 (RETROCAT_QUEUE_TYPE) it was created with, or delete it \
                 (rabbitmqctl delete_queue {}) to change its type",
                spec.name, spec.name
            ),
            Self::Queue(spec) => format!(
                "queue {:?} exists with other arguments ({reason}); delete it \
                 (rabbitmqctl delete_queue {}) or declare it the same way",
                spec.name, spec.name
            ),
            Self::Binding { .. } => reason,
        })
    }

    /// The queue a declaration is about, if any.
    fn queue(&self) -> Option<&str> {
        match self {
            Self::Queue(spec) => Some(&spec.name),
            Self::Binding { queue, .. } => Some(queue),
            Self::Exchange(_) => None,
        }
    }
}

/// The declarations to replay on a new connection.
#[derive(Default)]
struct Remembered {
    declarations: Vec<Declaration>,
    /// Exclusive queues belong to the connection that declared them: their owners
    /// declare them again, with their bindings, once they notice the connection is new.
    exclusive: HashSet<String>,
}

impl Remembered {
    fn remember(&mut self, declaration: Declaration) {
        if let Declaration::Queue(spec) = &declaration
            && spec.exclusive
        {
            self.exclusive.insert(spec.name.clone());
        }
        let of_exclusive = declaration
            .queue()
            .is_some_and(|queue| self.exclusive.contains(queue));
        if !of_exclusive && !self.declarations.contains(&declaration) {
            self.declarations.push(declaration);
        }
    }

    fn forget_queue(&mut self, name: &str) {
        self.exclusive.remove(name);
        self.declarations
            .retain(|declaration| declaration.queue() != Some(name));
    }
}

/// The connection in use, and the node it goes to.
#[derive(Clone)]
struct Current {
    connection: Arc<Connection>,
    node: usize,
}

pub(super) struct Link {
    nodes: Nodes,
    /// What every durable queue declared here is, where RabbitMQ allows it.
    queue_type: QueueType,
    current: Mutex<Current>,
    /// Held by the one caller that reconnects.
    reconnecting: AsyncMutex<()>,
    remembered: Mutex<Remembered>,
}

impl Link {
    pub async fn open(nodes: Nodes, queue_type: QueueType) -> Result<Self, BrokerError> {
        let (node, connection) = nodes.connect_from(nodes.random_start()).await?;
        // Debug: commands that print JSON (`bench --json`) log to the same stream.
        tracing::debug!(node = nodes.address(node), "connected to RabbitMQ");
        Ok(Self {
            current: Mutex::new(Current {
                connection: Arc::new(connection),
                node,
            }),
            reconnecting: AsyncMutex::new(()),
            nodes,
            queue_type,
            remembered: Mutex::default(),
        })
    }

    /// The live connection, reconnecting (and declaring everything again) first if it
    /// dropped: to the next node on, so a node that is going down is tried last. While
    /// another caller reconnects, waits up to [`RECONNECT_WAIT`] for it, then fails with
    /// [`BrokerError::Unavailable`].
    pub async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        let current = self.current();
        if current.connection.status().connected() {
            return Ok(current.connection);
        }
        let Ok(_reconnecting) =
            tokio::time::timeout(RECONNECT_WAIT, self.reconnecting.lock()).await
        else {
            return Err(BrokerError::Unavailable(
                "the connection to RabbitMQ dropped, and another task is reconnecting".into(),
            ));
        };
        // Another caller may have reconnected since the connection was read.
        let current = self.current();
        if current.connection.status().connected() {
            return Ok(current.connection);
        }
        let (node, fresh) = self.nodes.connect_from(current.node + 1).await?;
        self.redeclare(&fresh).await?;
        let connection = Arc::new(fresh);
        *self.current.lock().expect("connection lock") = Current {
            connection: connection.clone(),
            node,
        };
        tracing::info!(
            node = self.nodes.address(node),
            "reconnected to RabbitMQ and declared the topology again"
        );
        Ok(connection)
    }

    fn current(&self) -> Current {
        self.current.lock().expect("connection lock").clone()
    }

    /// Closes the connection cleanly: frames written before (acknowledgements) reach
    /// the broker first.
    pub async fn close(&self) -> Result<(), BrokerError> {
        let connection = self.current().connection;
        if connection.status().connected() {
            connection
                .close(200, "closing".into())
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        self.connection()
            .await?
            .create_channel()
            .await
            .map_err(classify)
    }

    /// Runs `op` on a channel of its own and closes it, whatever the outcome: RabbitMQ
    /// answers a conflict or a missing queue by closing the channel it came on.
    pub async fn on_own_channel<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let channel = self.channel().await?;
        let result = op(channel.clone()).await.map_err(classify);
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result
    }

    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// Makes a declaration and remembers it for the next connection.
    pub async fn declare(&self, declaration: Declaration) -> Result<(), BrokerError> {
        let run = &declaration;
        let queue_type = self.queue_type;
        self.on_own_channel(|channel| async move { run.run(&channel, queue_type).await })
            .await
            .map_err(|error| declaration.explain(error))?;
        self.remembered().remember(declaration);
        Ok(())
    }

    /// Forgets the declarations of a deleted queue.
    pub fn forget_queue(&self, name: &str) {
        self.remembered().forget_queue(name);
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered
            .lock()
            .expect("remembered declarations lock")
    }

    /// Replays every remembered declaration, in order, on a new connection.
    ///
    /// In a cluster, a classic queue (`catalog.rpc`) lives on one node: while that
    /// node is down, declaring it answers "not found". The rest of the topology does
    /// not wait for it: that queue comes back with its node, and its consumers retry
    /// until then.
    async fn redeclare(&self, connection: &Connection) -> Result<(), BrokerError> {
        let declarations = self.remembered().declarations.clone();
        let mut channel = connection.create_channel().await.map_err(classify)?;
        for declaration in &declarations {
            match declaration.run(&channel, self.queue_type).await {
                Ok(()) => {}
                Err(error) => match classify(error) {
                    BrokerError::NotFound(reason) => {
                        tracing::warn!(
                            %reason,
                            "a queue is unavailable until its node is back; declaring the rest"
                        );
                        // The refusal closed the channel.
                        channel = connection.create_channel().await.map_err(classify)?;
                    }
                    error => return Err(declaration.explain(error)),
                },
            }
        }
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }
}
