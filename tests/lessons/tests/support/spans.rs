//! Reading captured spans: find by name, read attributes, compare traces.

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;

/// The one span called `name` (panics, listing what there is, if not exactly one).
pub fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one span {name:?}, found {} among {:?}",
        found.len(),
        spans.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>()
    );
    found[0]
}

pub fn of_trace(spans: &[SpanData], trace_id: TraceId) -> Vec<SpanData> {
    spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .cloned()
        .collect()
}

pub fn trace(span: &SpanData) -> TraceId {
    span.span_context.trace_id()
}

pub fn id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    telemetry::testing::attribute(span, key)
}

/// A root: the first span of a trace of its own.
pub fn is_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID
}

/// Asserts `child` is a direct child of `parent`, in its trace, with the expected kind.
pub fn assert_child(child: &SpanData, parent: &SpanData, kind: SpanKind) {
    assert_eq!(
        trace(child),
        trace(parent),
        "{:?} should be in the trace of {:?}",
        child.name,
        parent.name
    );
    assert_eq!(
        child.parent_span_id,
        id(parent),
        "{:?} should be a child of {:?}",
        child.name,
        parent.name
    );
    assert_eq!(child.span_kind, kind, "kind of {:?}", child.name);
}

/// Asserts `span` started a trace of its own, apart from `other`'s.
pub fn assert_own_trace(span: &SpanData, other: &SpanData) {
    assert!(
        is_root(span),
        "{:?} should be a root, but has parent {}",
        span.name,
        span.parent_span_id
    );
    assert_ne!(
        trace(span),
        trace(other),
        "{:?} should not be in the trace of {:?}",
        span.name,
        other.name
    );
}
