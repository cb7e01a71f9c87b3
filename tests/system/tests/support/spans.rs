//! Reading captured spans: find by name, read attributes, follow parents.

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::SpanData;

pub fn of_trace(spans: &[SpanData], trace_id: TraceId) -> Vec<SpanData> {
    spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .cloned()
        .collect()
}

/// The one span called `name` (panics if there is not exactly one).
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

pub fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == Key::from(key.to_owned()))
        .map(|kv| kv.value.clone())
}

pub fn attr_str(span: &SpanData, key: &str) -> String {
    match attr(span, key) {
        Some(value) => value.as_str().into_owned(),
        None => panic!("span {:?} has no attribute {key}", span.name),
    }
}

pub fn attr_i64(span: &SpanData, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::I64(v)) => v,
        other => panic!(
            "span {:?}: {key} is {other:?}, expected an integer",
            span.name
        ),
    }
}

pub fn id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

/// Asserts `child` is a direct child of `parent` with the expected kind.
pub fn assert_child(child: &SpanData, parent: &SpanData, kind: SpanKind) {
    assert_eq!(
        child.parent_span_id,
        id(parent),
        "{:?} should be a child of {:?}",
        child.name,
        parent.name
    );
    assert_eq!(child.span_kind, kind, "kind of {:?}", child.name);
}

pub fn is_error(span: &SpanData) -> bool {
    matches!(span.status, Status::Error { .. })
}
