//! Health endpoints: the original's `/health`, plus `/healthz` (alive) and `/readyz`
//! (database and broker reachable; on the API, whether it takes catalog writes) for
//! orchestrators, and `/metrics` for Prometheus.
//! Every role serves them: the API on its address, a worker on `--listen`.

use super::ApiContext;
use super::admission::AdmissionLimits;
use crate::broker::Broker;
use crate::storage::Store;
use crate::telemetry::metrics;
use crate::telemetry::queues::QueueWatch;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the probes ask.
#[derive(Clone)]
pub struct Probed {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    /// For the API: whether it takes catalog writes now (`api::admission`).
    pub admission: Option<(AdmissionLimits, QueueWatch)>,
}

impl FromRef<ApiContext> for Probed {
    fn from_ref(ctx: &ApiContext) -> Self {
        Self {
            store: ctx.store.clone(),
            broker: ctx.broker.clone(),
            admission: Some((ctx.admission, ctx.queues.clone())),
        }
    }
}

/// The probes, for any state they can be drawn from: the API's, or a worker's own.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Probed: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(alive))
        .routes(routes!(ready))
        .routes(routes!(metrics::render))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Health {
    /// `ok`, or `degraded` while the database or the broker cannot be reached.
    #[schema(pattern = "^(ok|degraded)$")]
    status: &'static str,
    /// `connected` or `disconnected`.
    #[schema(pattern = "^(connected|disconnected)$")]
    database: &'static str,
    /// `connected` or `disconnected`: the broker, whichever it is.
    #[schema(pattern = "^(connected|disconnected)$")]
    rabbitmq: &'static str,
    /// `embedded` or `rabbitmq`: which broker answers as `rabbitmq` above.
    broker: &'static str,
    outbox_pending: Option<u64>,
    /// On the API: `accepted`, or why catalog writes are refused (the outbox backlog
    /// is past its limit: `--max-outbox-backlog`, `--max-outbox-age`). Reads are
    /// served either way, so this alone does not make the API unready.
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<String>,
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
        writes: ctx.admission.as_ref().map(|(limits, queues)| {
            limits
                .refusal_now(queues)
                .map_or_else(|| "accepted".to_owned(), |refusal| refusal.reason)
        }),
        timestamp: crate::domain::timestamp_now(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, health)
}

/// Health, as the original reported it
///
/// Always 200, as the original: the body says what is down.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "What is up and what is down", body = Health)))]
async fn health(State(ctx): State<Probed>) -> axum::Json<Health> {
    axum::Json(check(&ctx).await.1)
}

/// Readiness
///
/// 503 while the database or the broker cannot be reached.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The database or the broker is down", body = Health),
    ))]
async fn ready(State(ctx): State<Probed>) -> (StatusCode, axum::Json<Health>) {
    let (status, health) = check(&ctx).await;
    (status, axum::Json(health))
}

/// Liveness
///
/// 200 while the process serves requests, whatever its dependencies.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
async fn alive() -> &'static str {
    "ok"
}
