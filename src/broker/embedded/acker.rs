//! How a delivery of the embedded broker is settled: by an op sent to the engine.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::engine::{Op, Settlement};
use super::queue::Entry;
use crate::broker::{Acker, BrokerError};

pub(super) struct EmbeddedAcker {
    ops: mpsc::UnboundedSender<Op>,
    queue: Arc<str>,
    entry: Arc<Entry>,
    settled: bool,
}

impl EmbeddedAcker {
    pub fn new(ops: mpsc::UnboundedSender<Op>, queue: Arc<str>, entry: Arc<Entry>) -> Self {
        Self {
            ops,
            queue,
            entry,
            settled: false,
        }
    }

    fn settle(&mut self, settlement: Settlement) -> Result<(), BrokerError> {
        if self.settled {
            return Err(BrokerError::Other("delivery already settled".into()));
        }
        self.settled = true;
        self.ops
            .send(Op::Settle {
                queue: self.queue.clone(),
                entry: self.entry.clone(),
                settlement,
            })
            .map_err(|_| stopped())
    }
}

pub(super) fn stopped() -> BrokerError {
    BrokerError::Unavailable("the embedded broker has stopped".into())
}

/// Acks and nacks return once the engine has the request, without waiting for the
/// commit, as AMQP's `basic.ack` has no confirmation: a consumer that acks one delivery
/// at a time then runs at the speed of its work, not of our commits. Should the process
/// die before the commit, the message is delivered again, which at-least-once allows.
#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(&mut self) -> Result<(), BrokerError> {
        self.settle(Settlement::Ack)
    }

    async fn nack(&mut self, requeue: bool) -> Result<(), BrokerError> {
        self.settle(if requeue {
            Settlement::Requeue
        } else {
            Settlement::Drop
        })
    }

    /// Waits for the commit: the caller must learn when there is no dead-letter queue,
    /// and then the delivery stays unsettled (requeued when dropped).
    async fn dead_letter(&mut self, reason: &str) -> Result<(), BrokerError> {
        if self.settled {
            return Err(BrokerError::Other("delivery already settled".into()));
        }
        let (done, result) = oneshot::channel();
        self.ops
            .send(Op::DeadLetter {
                queue: self.queue.clone(),
                entry: self.entry.clone(),
                reason: reason.to_owned(),
                done,
            })
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())??;
        self.settled = true;
        Ok(())
    }
}

impl Drop for EmbeddedAcker {
    fn drop(&mut self) {
        if !self.settled {
            // If the engine is gone, so is every lease: nothing left to requeue.
            let _ = self.settle(Settlement::Requeue);
        }
    }
}
