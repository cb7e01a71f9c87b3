//! Context propagation: how a trace crosses each transport. One file per transport:
//!
//! | hop | carrier | file |
//! |-----|---------|------|
//! | client → gateway | HTTP headers | [`http`]: server layer extracts |
//! | gateway/worker → order-service | gRPC metadata (HTTP/2 headers) | [`grpc`]: client layer injects, server layer extracts |
//! | order-service → worker | Kafka record headers | [`kafka`]: producer injects, consumer extracts |
//! | order-service → (outbox) → worker | the outbox entry | [`stored`]: captured with the order, restored when the relay sends it |
//!
//! Every carrier goes through [`extract`] and [`inject`], which use the process-wide
//! propagator that `init` installs (W3C Trace Context and Baggage). Each transport's file
//! is behind the cargo feature of the same name.

#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod stored;
pub mod w3c;

use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads the remote context (trace parent, trace state, baggage) from a carrier.
/// A missing or invalid `traceparent` gives an empty context: the caller then starts a
/// fresh trace rather than failing the request.
pub fn extract(carrier: &dyn Extractor) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(carrier))
}

/// Writes `cx` into a carrier (`traceparent`, `tracestate`, `baggage`).
pub fn inject(cx: &Context, carrier: &mut dyn Injector) {
    global::get_text_map_propagator(|propagator| propagator.inject_context(cx, carrier));
}

/// The trace id of the current `tracing` span, as 32 hex digits, for error bodies and
/// responses that point a person at their trace.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The W3C Trace Context Level 2 `traceresponse` value for a span:
/// `00-{trace-id}-{span-id}-{flags}`.
#[cfg(feature = "http")]
pub(crate) fn traceresponse(span_context: &opentelemetry::trace::SpanContext) -> Option<String> {
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}
