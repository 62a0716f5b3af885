//! One shutdown mechanism shared by every task.
//!
//! Every long-running task (HTTP server, relay, workers, live feed, SSE streams) holds a
//! clone of [`Shutdown`] and stops taking new work once it fires. Tasks finish what they
//! hold: a worker completes its in-flight deliveries (or leaves them unacknowledged for
//! redelivery) rather than being aborted halfway through a transaction.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal: a flag plus a wake-up for everyone waiting on it.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder of this signal to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been triggered (immediately if it already was).
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// Runs `task` now, then every `period` (later when a run takes longer), until
    /// shutdown: the pollers and samplers.
    pub async fn every<F: Future<Output = ()>>(
        &self,
        period: Duration,
        mut task: impl FnMut() -> F,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.wait() => return,
            }
            task().await;
        }
    }

    /// Triggers shutdown on SIGINT or SIGTERM; returns when one arrived.
    pub async fn trigger_on_signal(&self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
            _ = terminate => tracing::info!("SIGTERM received, shutting down"),
            _ = self.wait() => return,
        }
        self.trigger();
    }
}
