//! One trace from an HTTP request to the final status of the event it caused.
//!
//! Every HTTP request and every delivery a worker handles is a span with a W3C trace
//! context (OpenTelemetry, through `tracing-opentelemetry`). A catalog write stores its
//! request's context with its outbox row; the relay sends it as the message's
//! `traceparent` header; the worker's span continues it. So one trace id runs from the
//! request to the final status: on the log lines of both spans (their `trace_id`
//! field), in the game's history, and, with `OTEL_EXPORTER_OTLP_ENDPOINT` set, in an
//! OTLP collector. A message without `traceparent` (the original producer's) starts a
//! trace of its own; so does a request without one.
//!
//! Only those two kinds of span are OpenTelemetry spans, and without an endpoint
//! nothing is exported: the cost on the hot paths is two span ids per event and the
//! header, measured in docs/benchmarks.md.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::OnceLock;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// The span of an HTTP request.
pub const REQUEST_SPAN: &str = "request";
/// The span of a delivery a worker handles.
pub const DELIVERY_SPAN: &str = "process_event";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The layer that gives [`REQUEST_SPAN`]s and [`DELIVERY_SPAN`]s their trace context,
/// exporting them by OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the
/// exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables).
pub fn layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let mut provider = SdkTracerProvider::builder();
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        crate::install_crypto_provider();
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => provider = provider.with_batch_exporter(exporter),
            Err(error) => eprintln!(
                "OTEL_EXPORTER_OTLP_ENDPOINT: no exporter ({error}); spans are not exported"
            ),
        }
    }
    let provider = PROVIDER.get_or_init(|| {
        provider
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("retrocat")
                    .build(),
            )
            .build()
    });
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("retrocat"))
        // Nothing else of OpenTelemetry runs here: entering a span need not make its
        // context current, and no timing attributes are wanted.
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(filter_fn(|metadata| {
            metadata.is_span() && matches!(metadata.name(), REQUEST_SPAN | DELIVERY_SPAN)
        }))
}

/// Exports the spans not exported yet; for the end of the process.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// Makes `span`, not entered yet, continue the trace `traceparent` names (a new trace
/// without one, or with one that does not parse), and records the trace id in its
/// `trace_id` field, which every log line inside it then shows. Returns the trace id;
/// `None` where no tracing layer runs (an application embedded in a test).
pub fn continue_trace(span: &Span, traceparent: Option<&str>) -> Option<String> {
    if let Some(traceparent) = traceparent {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    let trace_id = span_context(span)?.trace_id().to_string();
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

/// `span`'s OpenTelemetry span context, started now if it was not yet; `None` where no
/// tracing layer runs.
fn span_context(span: &Span) -> Option<SpanContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}
