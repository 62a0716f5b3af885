//! One trace from an HTTP request to the final status of the event it caused.
//!
//! Every HTTP request and every delivery a worker handles is a span with a W3C trace
//! context. A catalog write stores its request's context with its outbox row; the relay
//! sends it as the message's `traceparent` header; the worker's span continues it. So
//! one trace id runs from the request to the final status: on the log lines of both
//! spans (their `trace_id` field), in the game's history, and, with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, in an OTLP collector. A message without
//! `traceparent` (the original producer's) starts a trace of its own; so does a request
//! without one.
//!
//! With an endpoint, the two kinds of span are OpenTelemetry spans
//! (`tracing-opentelemetry`), exported in batches. Without one, nothing of
//! OpenTelemetry runs: [`continue_trace`] draws the span's ids and keeps them with the
//! span, so the hot paths pay three random numbers per event (a trace id and two span
//! ids) and the header, measured in docs/performance.md.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use std::sync::OnceLock;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::Identity;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// The span of an HTTP request.
pub const REQUEST_SPAN: &str = "request";
/// The span of a delivery a worker handles.
pub const DELIVERY_SPAN: &str = "process_event";

/// The exporting provider, when `OTEL_EXPORTER_OTLP_ENDPOINT` gave one; decided once
/// per process.
static EXPORTER: OnceLock<Option<SdkTracerProvider>> = OnceLock::new();

/// The layer that keeps [`REQUEST_SPAN`]s and [`DELIVERY_SPAN`]s, whatever the log
/// filter says, and exports them by OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set (the exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables).
pub fn layer<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + Send + Sync + for<'span> LookupSpan<'span>,
{
    let traced = filter_fn(|metadata| {
        metadata.is_span() && matches!(metadata.name(), REQUEST_SPAN | DELIVERY_SPAN)
    });
    match EXPORTER.get_or_init(exporting_provider) {
        Some(provider) => tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("retrocat"))
            // Nothing else of OpenTelemetry runs here: entering a span need not make
            // its context current, and no timing attributes are wanted.
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(traced)
            .boxed(),
        // A layer that only enables the spans: `continue_trace` gives them their ids.
        None => Identity::new().with_filter(traced).boxed(),
    }
}

/// A provider exporting to `OTEL_EXPORTER_OTLP_ENDPOINT`; `None` when it is unset or
/// names no usable exporter.
fn exporting_provider() -> Option<SdkTracerProvider> {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    crate::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .inspect_err(|error| {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: no exporter ({error}); spans are not exported");
        })
        .ok()?;
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("retrocat")
                    .build(),
            )
            .build(),
    )
}

/// Exports the spans not exported yet; for the end of the process.
pub fn shutdown() {
    if let Some(Some(provider)) = EXPORTER.get() {
        let _ = provider.shutdown();
    }
}

/// Makes `span`, not entered yet, continue the trace `traceparent` names (a new trace
/// without one, or with one that does not parse), and records the trace id in its
/// `trace_id` field, which every log line inside it then shows. Returns the trace id;
/// `None` where no tracing layer runs (an application embedded in a test).
pub fn continue_trace(span: &Span, traceparent: Option<&str>) -> Option<String> {
    let parent = traceparent
        .map(|traceparent| {
            TraceContextPropagator::new()
                .extract_with_context(&Default::default(), &Traceparent(traceparent))
                .span()
                .span_context()
                .clone()
        })
        .filter(SpanContext::is_valid);
    let context = if exporting() {
        if let Some(parent) = parent {
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
        }
        span_context(span)?
    } else {
        let ids = RandomIdGenerator::default();
        let context = SpanContext::new(
            parent
                .as_ref()
                .map_or_else(|| ids.new_trace_id(), SpanContext::trace_id),
            ids.new_span_id(),
            parent
                .as_ref()
                .map_or(TraceFlags::SAMPLED, SpanContext::trace_flags),
            false,
            TraceState::NONE,
        );
        with_extensions(span, |extensions| extensions.replace(context.clone()))?;
        context
    };
    let trace_id = context.trace_id().to_string();
    span.record("trace_id", trace_id.as_str());
    Some(trace_id)
}

/// `span`'s W3C `traceparent`, for the messages its work publishes: the worker's span
/// will be its child.
pub fn traceparent(span: &Span) -> Option<String> {
    let context = span_context(span)?;
    Some(format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    ))
}

fn exporting() -> bool {
    matches!(EXPORTER.get(), Some(Some(_)))
}

/// `span`'s trace context: OpenTelemetry's, started now if it was not yet, when
/// exporting, or the one [`continue_trace`] kept; `None` where no tracing layer runs.
fn span_context(span: &Span) -> Option<SpanContext> {
    let context = if exporting() {
        span.context().span().span_context().clone()
    } else {
        with_extensions(span, |extensions| {
            extensions.get_mut::<SpanContext>().cloned()
        })??
    };
    context.is_valid().then_some(context)
}

/// Calls `f` with `span`'s extensions in the registry; `None` where the span is
/// disabled or no registry runs.
fn with_extensions<T>(
    span: &Span,
    f: impl FnOnce(&mut tracing_subscriber::registry::ExtensionsMut<'_>) -> T,
) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| {
        let span = dispatch.downcast_ref::<Registry>()?.span(id)?;
        Some(f(&mut span.extensions_mut()))
    })?
}

/// The one header a `traceparent` is read from.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}
