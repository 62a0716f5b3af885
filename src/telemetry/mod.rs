//! What a process tells its operators: logs through `tracing` (human-readable by
//! default, JSON for log collectors; `RUST_LOG` filters as usual, default `info` for
//! retrocat and `warn` for libraries), Prometheus [`metrics`], the [`queues`]
//! sampled for `/api/queues` and the queue gauges, and what the Queues page
//! [`charts`] beside them.

pub mod charts;
pub mod metrics;
pub mod queues;

use tracing_subscriber::EnvFilter;

pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,retrocat=info,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second init (tests starting several apps) keeps the first subscriber.
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
