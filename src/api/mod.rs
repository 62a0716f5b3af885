//! The HTTP API: the original system's routes and JSON shapes, plus ours.
//!
//! One module per resource, each with its own `router()`, merged here with the layers
//! every route shares: tracing, CORS, body limit, timeout, and the logging of internal
//! errors (inside the trace span, so the log line carries the route). Every route is
//! registered from its handler's `#[utoipa::path]` declaration, so the router and
//! `/openapi.json` come from one source (see [`openapi`]).

pub mod admission;
mod audit;
pub mod auth;
mod dlq;
pub mod error;
pub mod extract;
#[cfg(fuzzing)]
pub mod fuzz;
mod games;
mod health;
pub mod host;
mod messages;
pub mod openapi;
pub mod origin;
mod processing;
mod queues;
pub mod rate_limit;
mod reference;
pub mod server;
pub mod stream;

use crate::auth::AuthMode;
use crate::broker::Broker;
use crate::broker::headers::TRACEPARENT;
use crate::domain::Game;
use crate::processing::thumbnail::DecodeBudget;
use crate::producer::PublishPolicy;
use crate::shutdown::Shutdown;
use crate::storage::GroupCommit;
use crate::storage::{GameUpdate, NewGame, Store, StoreError, WriteKind};
use crate::telemetry::queues::QueueWatch;
use crate::telemetry::{metrics, trace};
use admission::AdmissionLimits;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use error::{ApiError, InternalError};
use host::AllowedHosts;
use origin::TrustedOrigins;
use std::sync::Arc;
use std::time::Duration;
use stream::LiveFeed;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;
use utoipa_axum::router::OpenApiRouter;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiContext {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub live: LiveFeed,
    pub shutdown: Shutdown,
    /// The queues, sampled in the background.
    pub queues: QueueWatch,
    /// Where `POST /api/messages` may send, and what it may not (`--publish-exchanges`).
    pub publish_policy: PublishPolicy,
    /// What decoding an uploaded cover may take (`--max-image-memory`).
    pub decode_budget: DecodeBudget,
    /// Who may change what (`--auth`).
    pub gate: auth::gate::Gate,
    /// How long a login's token lasts (`--session-ttl`).
    pub session_ttl: chrono::TimeDelta,
    /// What the outbox may hold before catalog writes are refused.
    pub admission: AdmissionLimits,
    /// Creates and updates, group-committed: those in flight together share one
    /// transaction.
    creates: Arc<GroupCommit<NewGame, Result<Game, StoreError>, StoreError>>,
    updates: Arc<GroupCommit<GameUpdate, Result<Game, StoreError>, StoreError>>,
}

/// The most creates or updates one transaction takes. On SQLite every write queues for
/// the one write connection, and a write alone held it for five round trips.
const WRITE_BATCH: usize = 128;

impl ApiContext {
    /// The handlers' context; starts the tasks that commit creates and updates, so it
    /// must be called inside a tokio runtime.
    pub fn new(
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        live: LiveFeed,
        queues: QueueWatch,
        shutdown: Shutdown,
    ) -> Self {
        let creates = GroupCommit::of_store(
            WRITE_BATCH,
            store.clone(),
            WriteKind::Creates,
            |store, batch: Vec<_>| async move { store.create_games(&batch).await },
        );
        let updates = GroupCommit::of_store(
            WRITE_BATCH,
            store.clone(),
            WriteKind::Updates,
            |store, batch: Vec<_>| async move { store.update_games(&batch).await },
        );
        Self {
            gate: auth::gate::Gate::new(store.clone(), AuthMode::default()),
            session_ttl: auth::DEFAULT_SESSION_TTL,
            admission: AdmissionLimits::default(),
            store,
            broker,
            live,
            shutdown,
            queues,
            publish_policy: PublishPolicy::default(),
            decode_budget: DecodeBudget::default(),
            creates: Arc::new(creates),
            updates: Arc::new(updates),
        }
    }

    /// The context with clients publishing by `policy` rather than the default
    /// (`catalog.custom` only).
    pub fn with_publish_policy(mut self, policy: PublishPolicy) -> Self {
        self.publish_policy = policy;
        self
    }

    /// The context with requests authorized in `mode` rather than protected mode, and
    /// logins lasting `session_ttl`.
    pub fn with_auth(mut self, mode: AuthMode, session_ttl: chrono::TimeDelta) -> Self {
        self.gate = auth::gate::Gate::new(self.store.clone(), mode);
        self.session_ttl = session_ttl;
        self
    }

    /// The context with catalog writes refused past `limits` rather than the default
    /// (`--max-outbox-backlog`, `--max-outbox-age`).
    pub fn with_admission(mut self, limits: AdmissionLimits) -> Self {
        self.admission = limits;
        self
    }

    /// The context with uploads checked against `budget` rather than the default.
    pub fn with_decode_budget(mut self, budget: DecodeBudget) -> Self {
        self.decode_budget = budget;
        self
    }
}

/// Every route of the API with its declaration: the router and its document.
fn routes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::with_openapi(openapi::declared())
        .merge(auth::router())
        .merge(games::router())
        .merge(reference::router())
        .merge(processing::router())
        .merge(stream::router())
        .merge(messages::router())
        .merge(dlq::router())
        .merge(audit::router())
        .merge(queues::router())
        .merge(health::router())
        .merge(openapi::router())
}

/// The longest a request may take. Above the longest wait a client may ask for (30 s,
/// `?wait=` and `waitMs`), so that a wait that runs out is answered as documented (202,
/// 504) rather than cut off by this timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);

/// What the router checks of every request (`--cors-origins`, `--public-url`,
/// `--max-body-bytes`).
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Origins allowed to call the API from a browser; empty: same origin only.
    pub cors_origins: Vec<String>,
    /// Names clients call this server by, besides IP addresses and localhost.
    pub public_hosts: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests each client address may make (`--rate-limit`); none: no limit.
    pub rate_limit: Option<crate::rate::RateLimit>,
}

/// The API and the web UI, ready to serve.
pub fn router(ctx: ApiContext, http: &RouterConfig) -> Router {
    let origins = trusted_origins(&http.cors_origins);
    let (api, _) = routes().split_for_parts();
    let mut router = api
        .route("/api/{*rest}", axum::routing::any(unknown_route))
        .with_state(ctx)
        .merge(crate::web::router());
    if let Some(limit) = http.rate_limit {
        let limiter = rate_limit::ClientLimiter::new(limit);
        router = router.layer(axum::middleware::from_fn_with_state(
            limiter,
            rate_limit::limit,
        ));
    }
    router
        .layer(axum::middleware::map_response(log_internal_error))
        .layer(DefaultBodyLimit::max(http.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(ValidateRequestHeaderLayer::custom(TrustedOrigins::new(
            &origins,
        )))
        .layer(cors(&origins))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(ValidateRequestHeaderLayer::custom(AllowedHosts::new(
            &http.public_hosts,
        )))
        .layer(axum::middleware::from_fn(metrics::track_http))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
}

/// The span of one request: it continues the caller's trace when the request carries
/// a `traceparent`, and starts one otherwise (see `telemetry::trace`).
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        trace::REQUEST_SPAN,
        method = %request.method(),
        uri = %request.uri(),
        trace_id = tracing::field::Empty,
        caller = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    trace::continue_trace(&span, traceparent);
    span
}

/// What a worker serves on `--listen`: `/metrics`, `/healthz`, `/readyz` (and the
/// original's `/health`), counted like the API's requests.
pub fn probes(store: Arc<dyn Store>, broker: Arc<dyn Broker>) -> Router {
    let (probes, _) = health::router()
        .with_state(health::Probed {
            store,
            broker,
            admission: None,
        })
        .split_for_parts();
    probes
        .layer(axum::middleware::from_fn(metrics::track_http))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such API route".into())
}

/// Logs the error behind a 500 once, inside the request's span.
async fn log_internal_error(response: Response) -> Response {
    if let Some(InternalError(error)) = response.extensions().get::<InternalError>() {
        tracing::error!(error = format!("{error:#}"), "request failed");
    }
    response
}

/// `?limit=` of a list: 1 to 1000, 100 when absent.
fn list_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_field("limit", "from 1 to 1000"))
    }
}

/// The origins of `--cors-origins` that are usable as header values.
fn trusted_origins(origins: &[String]) -> Vec<HeaderValue> {
    origins
        .iter()
        .filter_map(|origin| match HeaderValue::from_str(origin.trim()) {
            Ok(value) => Some(value),
            Err(_) => {
                tracing::warn!(%origin, "ignoring an unusable CORS origin");
                None
            }
        })
        .collect()
}

/// Browsers may call the API from the listed origins (the original page was served by
/// nginx on another origin than its API). Empty: same origin only.
fn cors(origins: &[HeaderValue]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
}
