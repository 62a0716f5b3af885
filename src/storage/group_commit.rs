//! Group commit: many concurrent callers, one store call per batch.
//!
//! A worker handles many deliveries at once, and each would otherwise pay a database
//! transaction of its own for each status write; the API takes many creates at once,
//! likewise. A [`GroupCommit`] takes the callers'
//! requests on a channel; its task waits for the first, takes whatever else is waiting
//! (up to `max_batch`) and makes one call for all of them: one transaction of a few
//! multi-row statements. Idle, a lone request goes at once (no timer, no added
//! latency); busy, batches grow with the load, while the previous batch commits.
//! Where the batches queue for one database connection (SQLite's writer), the task
//! first waits for its slot at it ([`GroupCommit::spawn_with_slot`]) and only then
//! takes the batch, so that what arrived during the wait goes in this slot, not the
//! next one.
//! A commit that panics fails its own batch's callers with [`Panicked`], and the task
//! goes on with the next batch.

use super::{Store, StoreError, WriteKind};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Answer<Out, E> = oneshot::Sender<Result<Out, Arc<E>>>;

/// A batch's commit panicked (a bug): its callers get this instead of an answer.
#[derive(Debug, thiserror::Error)]
#[error("the batch's commit panicked: {0}")]
pub struct Panicked(String);

/// A handle to a group-commit task; the task ends when the last handle is dropped.
pub struct GroupCommit<In, Out, E> {
    requests: mpsc::Sender<(In, Answer<Out, E>)>,
}

impl<In, Out, E> GroupCommit<In, Out, E>
where
    In: Send + 'static,
    Out: Send + 'static,
    E: From<Panicked> + Send + Sync + 'static,
{
    /// Starts the task. `commit` takes a clone of `shared` (the store, say) and a
    /// batch, and answers one output per input, in order; its error goes to every
    /// caller of the batch.
    pub fn spawn<S, F, Fut>(max_batch: usize, shared: S, commit: F) -> Self
    where
        S: Clone + Send + 'static,
        F: Fn(S, Vec<In>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Out>, E>> + Send + 'static,
    {
        Self::spawn_with_slot(max_batch, shared, |_| async {}, commit)
    }

    /// As [`Self::spawn`], but once a request has come the task awaits `slot` (the
    /// store's writer slot, say) before it takes the batch: the requests that
    /// arrive meanwhile join it. What `slot` answers is held until the batch's commit
    /// has returned, then dropped.
    pub fn spawn_with_slot<S, T, SlotFut, F, Fut>(
        max_batch: usize,
        shared: S,
        slot: T,
        commit: F,
    ) -> Self
    where
        S: Clone + Send + 'static,
        T: Fn(S) -> SlotFut + Send + 'static,
        SlotFut: Future + Send + 'static,
        SlotFut::Output: Send,
        F: Fn(S, Vec<In>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Out>, E>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (requests, mut waiting) = mpsc::channel(max_batch);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while waiting.recv_many(&mut batch, max_batch).await > 0 {
                let slot = slot(shared.clone()).await;
                while batch.len() < max_batch
                    && let Ok(request) = waiting.try_recv()
                {
                    batch.push(request);
                }
                let (inputs, answers): (Vec<In>, Vec<Answer<Out, E>>) = batch.drain(..).unzip();
                let (size, started) = (inputs.len(), std::time::Instant::now());
                // A task of its own, so that a panic fails this batch, not the task.
                let committed = match tokio::spawn(commit(shared.clone(), inputs)).await {
                    Ok(committed) => committed,
                    Err(crashed) => {
                        tracing::error!(%crashed, size, "a group commit panicked; its callers get an error");
                        Err(Panicked(crashed.to_string()).into())
                    }
                };
                drop(slot);
                tracing::debug!(
                    size,
                    elapsed = ?started.elapsed(),
                    input = std::any::type_name::<In>(),
                    "group commit"
                );
                match committed {
                    Ok(outputs) => {
                        assert_eq!(outputs.len(), answers.len(), "one output per input");
                        for (answer, output) in answers.into_iter().zip(outputs) {
                            // A caller that stopped waiting (shutdown) needs no answer.
                            let _ = answer.send(Ok(output));
                        }
                    }
                    Err(error) => {
                        let error = Arc::new(error);
                        for answer in answers {
                            let _ = answer.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
        Self { requests }
    }

    /// Queues `input` for the next batch and waits for its output.
    pub async fn call(&self, input: In) -> Result<Out, Arc<E>> {
        let (answer, output) = oneshot::channel();
        self.requests
            .send((input, answer))
            .await
            .unwrap_or_else(|_| panic!("the group-commit task lives as long as its handle"));
        output
            .await
            .unwrap_or_else(|_| panic!("the group-commit task answers every request"))
    }
}

impl<In, Out> GroupCommit<In, Out, StoreError>
where
    In: Send + 'static,
    Out: Send + 'static,
{
    /// A group commit of the store's writes of `kind`, each batch taken in its slot at
    /// the writer ([`Backend::take_writer_slot`]).
    pub fn of_store<F, Fut>(
        max_batch: usize,
        store: Arc<dyn Store>,
        kind: WriteKind,
        commit: F,
    ) -> Self
    where
        F: Fn(Arc<dyn Store>, Vec<In>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Out>, StoreError>> + Send + 'static,
    {
        let slot = move |store: Arc<dyn Store>| async move { store.take_writer_slot(kind).await };
        Self::spawn_with_slot(max_batch, store, slot, commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let doubler = Arc::new(GroupCommit::spawn(8, seen, |seen, batch: Vec<u32>| {
            seen.lock().unwrap().push(batch.len());
            async move {
                // Slow enough that the other callers queue up meanwhile.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok::<_, StoreError>(batch.into_iter().map(|n| n * 2).collect::<Vec<_>>())
            }
        }));
        let calls: Vec<_> = (0..20)
            .map(|n| {
                let doubler = doubler.clone();
                tokio::spawn(async move { (n, doubler.call(n).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (n, doubled) = call.await.unwrap();
            assert_eq!(doubled, n * 2);
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&size| size <= 8), "{sizes:?}");
        assert!(sizes.len() < 20, "calls were batched: {sizes:?}");
    }

    #[tokio::test]
    async fn calls_that_come_while_the_slot_is_awaited_join_the_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let slow_slot = |_| tokio::time::sleep(std::time::Duration::from_millis(50));
        let echo = Arc::new(GroupCommit::spawn_with_slot(
            8,
            seen,
            slow_slot,
            |seen, batch: Vec<u32>| {
                seen.lock().unwrap().push(batch.len());
                async move { Ok::<_, StoreError>(batch) }
            },
        ));
        let first = tokio::spawn({
            let echo = echo.clone();
            async move { echo.call(0).await.unwrap() }
        });
        // The first call has been taken, and its batch awaits the slot.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let later = futures::future::join_all((1..4).map(|n| echo.call(n))).await;
        assert_eq!(first.await.unwrap(), 0);
        assert_eq!(
            later.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(*sizes.lock().unwrap(), [4], "one batch");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_call_in_it() {
        let failing = GroupCommit::spawn(4, (), |(), _batch: Vec<u32>| async {
            Err::<Vec<u32>, _>(StoreError::Unavailable("database down".into()))
        });
        let error = failing.call(1).await.unwrap_err();
        assert!(matches!(*error, StoreError::Unavailable(_)), "{error}");
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_calls_and_the_next_batch_goes_on() {
        let picky = GroupCommit::spawn(4, (), |(), batch: Vec<u32>| async move {
            assert!(!batch.contains(&13), "unlucky");
            Ok::<_, StoreError>(batch)
        });
        let error = picky.call(13).await.unwrap_err();
        assert!(matches!(*error, StoreError::Panicked(_)), "{error}");
        assert_eq!(picky.call(7).await.unwrap(), 7);
    }
}
