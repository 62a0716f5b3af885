//! Prometheus metrics, under the names DESIGN.md fixes, rendered on `GET /metrics` by
//! every role.
//!
//! Code records through the `metrics` facade (`counter!`, `histogram!`, `gauge!`); one
//! recorder per process, installed on first use, keeps the values. Recording a counter
//! costs a hash of its name and labels and an atomic addition, so the hot paths (each
//! request, each delivery) record directly; the queue and outbox gauges, which need a
//! broker or database round trip, are sampled in the background by
//! [`super::queues::QueueWatch`], never on a request or a delivery.

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

pub const HTTP_REQUESTS: &str = "retrocat_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "retrocat_http_request_duration_seconds";
pub const OUTBOX_PENDING: &str = "retrocat_outbox_pending";
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "retrocat_outbox_oldest_pending_age_seconds";
pub const OUTBOX_PUBLISHED: &str = "retrocat_outbox_published_total";
pub const EVENTS_PROCESSED: &str = "retrocat_events_processed_total";
pub const EVENT_PROCESSING_DURATION: &str = "retrocat_event_processing_duration_seconds";
pub const EVENT_END_TO_END: &str = "retrocat_event_end_to_end_seconds";
pub const QUEUE_MESSAGES: &str = "retrocat_queue_messages";
pub const QUEUE_CONSUMERS: &str = "retrocat_queue_consumers";
pub const DEAD_LETTERS: &str = "retrocat_dead_letters";
pub const BROKER_CONNECTED: &str = "retrocat_broker_connected";
pub const CIRCUIT_STATE: &str = "retrocat_circuit_state";
pub const BUILD_INFO: &str = "retrocat_build_info";

/// Bucket bounds of every `_seconds` histogram: from half a millisecond (a read
/// served from SQLite) to a minute (an event that waited out its retries).
const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process's recorder, installed on first use. Its histograms keep every sample
/// until a scrape or [`PrometheusHandle::run_upkeep`] (the queue sampler's, once a
/// second) drains them, so only a process that runs the sampler installs it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics stays empty");
        }
        describe();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// The `# HELP` line of each metric.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route and status");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request (to its headers, for streams)"
    );
    describe_gauge!(
        OUTBOX_PENDING,
        "Outbox events not yet confirmed by the broker"
    );
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest outbox event not yet confirmed by the broker"
    );
    describe_counter!(OUTBOX_PUBLISHED, "Outbox events the broker confirmed");
    describe_counter!(
        EVENTS_PROCESSED,
        "Deliveries handled by this process's workers, by queue and outcome"
    );
    describe_histogram!(
        EVENT_PROCESSING_DURATION,
        Unit::Seconds,
        "Time from a delivery's arrival to its settlement"
    );
    describe_histogram!(
        EVENT_END_TO_END,
        Unit::Seconds,
        "Time from a game's write to its final status (completed or failed)"
    );
    describe_gauge!(QUEUE_MESSAGES, "Messages in a queue, by state");
    describe_gauge!(QUEUE_CONSUMERS, "Consumers of a queue");
    describe_gauge!(DEAD_LETTERS, "Messages in a queue's dead-letter queue");
    describe_gauge!(BROKER_CONNECTED, "1 while the broker answers, 0 otherwise");
    describe_gauge!(
        CIRCUIT_STATE,
        "A cover host's circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is in the label");
}

/// Prometheus metrics
///
/// This process's metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The exposition", content_type = "text/plain",
        body = String)))]
pub async fn render() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}

/// Middleware: counts and times every request by its route template (`/api/games/{id}`,
/// not the path, so the label set stays small) and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_str().to_owned();
    metrics::histogram!(HTTP_REQUEST_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}
