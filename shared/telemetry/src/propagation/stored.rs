//! Context that waits in storage. The order-service saves the creating request's context
//! with each order's outbox entry; the event, published moments or hours later, joins the
//! order's trace instead of starting an orphan one.
//!
//! The stored form is the W3C headers themselves, one `key: value` per line.

use std::collections::HashMap;

use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{extract, inject};

/// The context of `span`, ready to store next to the data it belongs to.
pub fn capture(span: &tracing::Span) -> String {
    let mut headers: HashMap<String, String> = HashMap::new();
    inject(&span.context(), &mut headers);
    let mut lines: Vec<String> = headers
        .into_iter()
        .map(|(key, value)| format!("{key}: {value}"))
        .collect();
    lines.sort();
    lines.join("\n")
}

/// Makes the stored context the parent of `span` (before it is first entered). Stored text
/// that does not parse leaves `span` as a new trace.
pub fn restore_parent(span: &tracing::Span, stored: &str) {
    let headers: HashMap<String, String> = stored
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    if let Err(error) = span.set_parent(extract(&headers)) {
        tracing::warn!(%error, "could not restore the stored trace context");
    }
}

/// The trace id in a stored context, for log lines about the data it belongs to.
pub fn trace_id(stored: &str) -> Option<String> {
    stored
        .lines()
        .filter_map(|line| line.split_once(": "))
        .find(|(key, _)| *key == "traceparent")
        .and_then(|(_, value)| super::w3c::parse_traceparent(value))
        .map(|(trace_id, _, _)| trace_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CapturedService;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn a_restored_span_continues_the_captured_trace() {
        let service = CapturedService::new("stored-test");
        tracing::dispatcher::with_default(service.dispatch(), || {
            let original = tracing::info_span!("create");
            let stored = capture(&original);
            assert!(stored.starts_with("traceparent: 00-"), "{stored}");
            assert_eq!(
                trace_id(&stored),
                Some(
                    original
                        .context()
                        .span()
                        .span_context()
                        .trace_id()
                        .to_string()
                )
            );
            assert_eq!(trace_id("not: a context"), None);
            let later = tracing::info_span!("publish later");
            restore_parent(&later, &stored);
            assert_eq!(
                later.context().span().span_context().trace_id(),
                original.context().span().span_context().trace_id()
            );
            let orphan = tracing::info_span!("garbage");
            restore_parent(&orphan, "not: a context");
            assert_ne!(
                orphan.context().span().span_context().trace_id(),
                original.context().span().span_context().trace_id()
            );
        });
    }
}
