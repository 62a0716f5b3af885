//! Health endpoints: the original's `/health`, plus `/healthz` (alive) and `/readyz`
//! (database and broker reachable) for orchestrators, and `/metrics` for Prometheus.
//! Every role serves them: the API on its address, a worker on `--listen`.

use crate::broker::Broker;
use crate::storage::Store;
use crate::telemetry::metrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;
use std::sync::Arc;

/// What the probes ask.
#[derive(Clone)]
struct Probed {
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
}

pub fn router(store: Arc<dyn Store>, broker: Arc<dyn Broker>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::render))
        .with_state(Probed { store, broker })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: &'static str,
    database: &'static str,
    rabbitmq: &'static str,
    /// `embedded` or `rabbitmq`: which broker answers as `rabbitmq` above.
    broker: &'static str,
    outbox_pending: Option<u64>,
    timestamp: String,
}

async fn check(ctx: &Probed) -> (StatusCode, Health) {
    let (database, broker) = tokio::join!(ctx.store.ping(), ctx.broker.ping());
    let up = |ok: bool| if ok { "connected" } else { "disconnected" };
    let ready = database.is_ok() && broker.is_ok();
    let health = Health {
        status: if ready { "ok" } else { "degraded" },
        database: up(database.is_ok()),
        rabbitmq: up(broker.is_ok()),
        broker: ctx.broker.kind(),
        // Not asked of a database that just failed the ping: it would only wait for
        // the pool's timeout a second time and make the probe twice as slow.
        outbox_pending: if database.is_ok() {
            ctx.store.outbox_backlog().await.ok().map(|b| b.pending)
        } else {
            None
        },
        timestamp: crate::domain::timestamp_now(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, health)
}

/// Always 200, as the original: the body says what is down.
async fn health(State(ctx): State<Probed>) -> axum::Json<Health> {
    axum::Json(check(&ctx).await.1)
}

/// 503 while the database or the broker cannot be reached.
async fn ready(State(ctx): State<Probed>) -> (StatusCode, axum::Json<Health>) {
    let (status, health) = check(&ctx).await;
    (status, axum::Json(health))
}
