//! Pause and resume: an operator stops consumption of a queue by every worker of every
//! process (`POST /api/queues/{name}/pause`, `retrocat queue pause NAME`).
//!
//! The paused queues are rows of the database ([`crate::storage::Pauses`]), so a pause
//! reaches every process and outlives restarts. Each process that consumes polls them
//! every [`POLL_EVERY`]: one small read, off the delivery path. A consumer whose queue
//! is paused stops taking deliveries, lets those in flight finish, and gives back its
//! consumer, so that what it had prefetched returns to the queue; it opens a new one
//! once the queue is resumed. The messages stay in the queue all along.

use super::subscriber;
use crate::backoff::ReconnectBackoff;
use crate::broker::topology;
use crate::shutdown::Shutdown;
use crate::storage::Store;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a process reads the paused queues: a pause takes effect within this,
/// plus the time the deliveries in flight take to finish.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// Whether `queue` is one that retrocat's consumers take from: dead-letter queues,
/// `unrouted` and the live feeds have no consumer a pause could stop.
pub fn check_pausable(queue: &str) -> Result<(), String> {
    let subscriber = queue
        .strip_prefix(topology::AUDIT_QUEUE)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|name| subscriber::parse_name(name).is_ok());
    if topology::CONSUMED.contains(&queue) || subscriber {
        return Ok(());
    }
    Err(format!(
        "{queue:?} is not a queue retrocat consumes; one of {} or audit.NAME of a \
         named subscriber",
        topology::CONSUMED.join(", ")
    ))
}

/// The queues paused, as this process last read them.
#[derive(Clone)]
pub struct PauseWatch {
    paused: watch::Receiver<BTreeSet<String>>,
}

impl PauseWatch {
    /// Reads the paused queues from `store` now, then every [`POLL_EVERY`] until
    /// shutdown. While the database does not answer, the last state read holds; the
    /// first read is waited for, so that no consumer starts on a paused queue.
    pub async fn start(store: Arc<dyn Store>, shutdown: Shutdown) -> Self {
        let first = first_read(store.as_ref(), &shutdown).await;
        let (sender, paused) = watch::channel(first);
        tokio::spawn(async move {
            let poll = || async {
                match store.paused_queues().await {
                    Ok(now) => {
                        let now: BTreeSet<String> = now.into_iter().collect();
                        sender.send_if_modified(|paused| {
                            let changed = *paused != now;
                            *paused = now;
                            changed
                        });
                    }
                    Err(error) => tracing::debug!(%error, "paused queues not read"),
                }
            };
            shutdown.every(POLL_EVERY, poll).await;
        });
        Self { paused }
    }

    /// The pause of one queue.
    pub fn of(&self, queue: &str) -> QueuePause {
        QueuePause {
            queue: queue.to_owned(),
            paused: self.paused.clone(),
        }
    }
}

/// The paused queues, read again with backoff until the database answers (or
/// shutdown, when nothing will consume anyway).
async fn first_read(store: &dyn Store, shutdown: &Shutdown) -> BTreeSet<String> {
    let mut backoff = ReconnectBackoff::new();
    loop {
        match store.paused_queues().await {
            Ok(paused) => return paused.into_iter().collect(),
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "paused queues not read; consumers wait");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return BTreeSet::new(),
                }
            }
        }
    }
}

/// One queue's pause, as its consumers follow it.
#[derive(Clone)]
pub struct QueuePause {
    queue: String,
    paused: watch::Receiver<BTreeSet<String>>,
}

impl QueuePause {
    /// Resolves once the queue is paused: at once if it is.
    pub async fn paused(&self) {
        self.until(true).await;
    }

    /// Waits while the queue is paused (not at all if it is not), logging the wait;
    /// false if shutdown came first.
    pub async fn resumed(&self, shutdown: &Shutdown) -> bool {
        if self.is_paused() {
            tracing::info!(queue = self.queue, "queue paused: consumption stopped");
            tokio::select! {
                () = self.until(false) => {}
                () = shutdown.wait() => return false,
            }
            tracing::info!(queue = self.queue, "queue resumed");
        }
        !shutdown.is_triggered()
    }

    fn is_paused(&self) -> bool {
        self.paused.borrow().contains(&self.queue)
    }

    async fn until(&self, paused: bool) {
        let mut watch = self.paused.clone();
        let reached = watch
            .wait_for(|queues| queues.contains(&self.queue) == paused)
            .await
            .is_ok();
        if !reached {
            // The poller stopped (shutdown): the state no longer changes.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_queues_retrocat_consumes_can_be_paused() {
        for queue in topology::CONSUMED.into_iter().chain(["audit.archive"]) {
            assert_eq!(check_pausable(queue), Ok(()), "{queue}");
        }
        for queue in [
            "game_events.dlq",
            "unrouted",
            "live_feed.x",
            "audit.",
            "audit.A B",
            "",
        ] {
            let refused = check_pausable(queue).unwrap_err();
            assert!(refused.contains("game_events, catalog.rpc"), "{refused}");
        }
    }
}
