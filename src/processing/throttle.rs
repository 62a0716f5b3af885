//! A processing rate limit per queue (`--max-rate game_events=200/s`), across every
//! worker process without a word between them: each process takes the share of the
//! rate that its consumer is of the queue's consumers, as the broker counts them, and
//! reads that count again every [`SHARE_EVERY`]. The approximation: for up to that long
//! after a worker starts or stops, the shares add up to more or less than the rate; and
//! a consumer that is not retrocat's (the original system's) counts as a share, which it
//! does not keep to.

use super::pause::QueuePause;
use crate::broker::{Broker, topology};
use crate::rate::RateLimit;
use crate::shutdown::Shutdown;
use governor::{DefaultDirectRateLimiter, RateLimiter};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a worker reads the queue's consumers again to recompute its share.
pub const SHARE_EVERY: Duration = Duration::from_secs(2);

/// The queues a worker processes, whose rate `--max-rate` may limit.
const LIMITABLE: [&str; 2] = [topology::GAME_EVENTS_QUEUE, topology::RPC_QUEUE];

/// `QUEUE=RATE` of `--max-rate`: the most deliveries of the queue processed per second
/// (or minute) by every worker together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRate {
    pub queue: String,
    pub rate: RateLimit,
}

impl std::str::FromStr for QueueRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (queue, rate) = text.split_once('=').ok_or_else(|| {
            format!("{text:?}: QUEUE=RATE, such as game_events=200/s or catalog.rpc=600/m")
        })?;
        let queue = queue.trim();
        if !LIMITABLE.contains(&queue) {
            return Err(format!(
                "{queue:?}: --max-rate limits a queue the workers process: {}",
                LIMITABLE.join(" or ")
            ));
        }
        Ok(Self {
            queue: queue.to_owned(),
            rate: rate.parse()?,
        })
    }
}

/// This process's share of a queue's rate.
pub struct Throttle {
    rate: RateLimit,
    /// The limiter of the share, and the consumers it was computed for.
    share: Mutex<(u64, Arc<DefaultDirectRateLimiter>)>,
}

impl Throttle {
    /// The throttle of `queue` at `rate`, its share read from `broker` now and every
    /// [`SHARE_EVERY`] until shutdown.
    pub fn start(
        rate: RateLimit,
        queue: &'static str,
        broker: Arc<dyn Broker>,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let throttle = Arc::new(Self {
            rate,
            share: Mutex::new((1, Arc::new(RateLimiter::direct(rate.share(1))))),
        });
        let watched = throttle.clone();
        tokio::spawn(async move {
            shutdown
                .every(SHARE_EVERY, || async {
                    match broker.queue_glance(queue).await {
                        Ok(stats) => watched.shared_by(queue, stats.consumers),
                        Err(error) => tracing::debug!(%error, queue, "consumers not read"),
                    }
                })
                .await;
        });
        throttle
    }

    /// Waits until this process may take one more delivery.
    pub async fn admit(&self) {
        let limiter = self.share.lock().expect("throttle lock").1.clone();
        limiter.until_ready().await;
    }

    /// Recomputes the share for `consumers` (this one among them; 0 while it has none).
    fn shared_by(&self, queue: &str, consumers: u64) {
        let consumers = consumers.max(1);
        let mut share = self.share.lock().expect("throttle lock");
        if share.0 != consumers {
            let quota = self.rate.share(consumers);
            tracing::info!(queue, consumers, one_delivery_every = ?quota.replenish_interval(),
                "this worker's share of --max-rate");
            *share = (consumers, Arc::new(RateLimiter::direct(quota)));
        }
    }
}

/// Waits until `throttle` (if any) lets this worker take one more delivery: false if
/// the queue was paused or shutdown came first.
pub async fn admitted(
    throttle: Option<&Throttle>,
    pause: &QueuePause,
    shutdown: &Shutdown,
) -> bool {
    let Some(throttle) = throttle else {
        return true;
    };
    tokio::select! {
        biased;
        _ = shutdown.wait() => false,
        () = pause.paused() => false,
        () = throttle.admit() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_rate_names_a_queue_the_workers_process() {
        let rate: QueueRate = "game_events=200/s".parse().unwrap();
        assert_eq!(rate.queue, "game_events");
        assert_eq!(rate.rate, "200/s".parse().unwrap());
        assert!("catalog.rpc = 10/m".parse::<QueueRate>().is_ok());
        for wrong in [
            "game_events",
            "audit=5/s",
            "game_events.dlq=5/s",
            "game_events=0/s",
        ] {
            assert!(wrong.parse::<QueueRate>().is_err(), "{wrong:?}");
        }
    }
}
