//! What a process tells its operators: logs through `tracing` (human-readable by
//! default, JSON for log collectors; `RUST_LOG` filters as usual, default `info` for
//! retrocat and `warn` for libraries), Prometheus [`metrics`], the [`queues`]
//! sampled for `/api/queues` and the queue gauges, and what the Queues page
//! [`charts`] beside them; and the [`trace`] that follows an event from its HTTP
//! request to its final status.

pub mod charts;
pub mod management;
pub mod metrics;
pub mod queues;
pub mod trace;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Logs in `format` (`text` or `json`) filtered by `RUST_LOG`, and [`trace`]s. The
/// filter is the log's alone: a request's trace continues whatever is logged.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,retrocat=info,tower_http=info"));
    let log = tracing_subscriber::fmt::layer();
    let log = if format == "json" {
        log.json().boxed()
    } else {
        log.boxed()
    };
    // A second init (tests starting several apps) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(trace::layer())
        .try_init();
}
