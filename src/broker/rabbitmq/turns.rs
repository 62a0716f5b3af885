//! Declarations of one queue made one at a time within a process.
//!
//! RabbitMQ (3.10 at least) answers a declaration of a quorum queue that another
//! channel is creating at that moment at once, before the new queue's leader runs,
//! and refuses (nacks) a message published to the queue right after. Publishers of a
//! new delay queue often come together (the retries of one batch, delayed messages
//! sent at once), so each waits for the declaration before its own to finish.
//! Processes do not coordinate: two that create one delay queue at the same moment may
//! still see a message refused, which fails its publish as any refusal does: what was
//! to be sent stays where it was (an outbox row, a worker's unacknowledged delivery).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;

/// A turn per queue name being declared.
#[derive(Default)]
pub(super) struct Turns {
    queues: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl Turns {
    /// Runs `declare` once no other declaration of `queue` through these turns runs.
    pub async fn one_at_a_time<T>(&self, queue: &str, declare: impl Future<Output = T>) -> T {
        let turn = self.queues().entry(queue.to_owned()).or_default().clone();
        let declared = {
            let _turn = turn.lock().await;
            declare.await
        };
        let mut queues = self.queues();
        // Forgotten once no one else holds or awaits it (the map has the other copy).
        if Arc::strong_count(&turn) == 2 {
            queues.remove(queue);
        }
        declared
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AsyncMutex<()>>>> {
        self.queues.lock().expect("turns lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn declarations_of_one_queue_never_overlap_and_are_forgotten_after() {
        let turns = Arc::new(Turns::default());
        let (running, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let declarations = (0..8).map(|_| {
            let (turns, running, most) = (turns.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                turns
                    .one_at_a_time("q.delay.100", async {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await;
            })
        });
        for declaration in declarations.collect::<Vec<_>>() {
            declaration.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert!(turns.queues().is_empty());
    }
}
