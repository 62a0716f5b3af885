//! What the Queues page charts beside the queue depths: events this process settled,
//! by outcome, and the end-to-end latency of the games it finished. The worker feeds
//! it where it records the same figures in the Prometheus metrics; the queue sampler
//! takes what came in each second.

use crate::domain::Outcome;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Latencies are kept in microseconds, up to an hour, to three significant digits.
const HOUR_MICROS: u64 = 3_600_000_000;

struct Feed {
    /// Deliveries settled, by outcome, since the process started.
    processed: [AtomicU64; Outcome::NAMES.len()],
    /// End-to-end latencies since the last [`take`].
    latency: Mutex<hdrhistogram::Histogram<u64>>,
}

fn feed() -> &'static Feed {
    static FEED: OnceLock<Feed> = OnceLock::new();
    FEED.get_or_init(|| Feed {
        processed: Default::default(),
        latency: Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, HOUR_MICROS, 3).expect("valid bounds"),
        ),
    })
}

pub fn processed(outcome: usize) {
    feed().processed[outcome].fetch_add(1, Ordering::Relaxed);
}

pub fn end_to_end(seconds: f64) {
    let micros = ((seconds * 1e6) as u64).clamp(1, HOUR_MICROS);
    let mut latency = feed().latency.lock().expect("latency lock");
    // Within the bounds, so it cannot fail.
    let _ = latency.record(micros);
}

/// What the feed holds now: the settled totals, and the latencies since the last take.
#[derive(Clone, Copy, Debug, Default)]
pub struct Take {
    pub processed: [u64; Outcome::NAMES.len()],
    /// p50 and p99 of the latencies since the last take, in seconds; `None` when no
    /// game finished meanwhile.
    pub latency: Option<(f64, f64)>,
}

pub fn take() -> Take {
    let feed = feed();
    let latency = {
        let mut histogram = feed.latency.lock().expect("latency lock");
        let taken = (!histogram.is_empty()).then(|| {
            let at = |quantile| histogram.value_at_quantile(quantile) as f64 / 1e6;
            (at(0.5), at(0.99))
        });
        histogram.reset();
        taken
    };
    Take {
        processed: feed.processed.each_ref().map(|n| n.load(Ordering::Relaxed)),
        latency,
    }
}
