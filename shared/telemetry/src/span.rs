//! Spans a service makes itself, and the one way to mark any span as failed.
//!
//! Edge spans (HTTP, gRPC, Kafka) are made by [`crate::propagation`]; services never set
//! `otel.kind` or `otel.status_code` by hand. Every span made here or there declares the
//! error fields up front (`tracing` can only record fields a span was created with), so
//! [`mark_error`] works on any of them.

/// An INTERNAL span for a step of work inside a service, named `$name`, with any extra
/// `tracing` fields after it:
///
/// ```
/// let span = telemetry::internal_span!("reserve stock", app.order.id = "o-1");
/// ```
///
/// Create it where the work is started, in the caller's context, and attach it to the
/// work with `.instrument(span)`: that is what keeps a spawned task in its trace.
#[macro_export]
macro_rules! internal_span {
    ($name:expr $(, $($field:tt)+)?) => {
        $crate::__private::tracing::info_span!(
            "internal",
            otel.name = $name,
            otel.kind = "internal",
            otel.status_code = $crate::__private::tracing::field::Empty,
            otel.status_description = $crate::__private::tracing::field::Empty,
            error.type = $crate::__private::tracing::field::Empty,
            $($($field)+)?
        )
    };
}

/// A database CLIENT span, named by its query summary (`{operation} {collection}`, e.g.
/// `INSERT orders`), with the database semantic conventions' attributes. Create it on the
/// async side, in the caller's context; enter it where the query runs.
pub fn db_client(system: &'static str, operation: &'static str, collection: &str) -> tracing::Span {
    let summary = format!("{operation} {collection}");
    tracing::info_span!(
        "db query",
        otel.name = summary.as_str(),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        error.type = tracing::field::Empty,
        db.system.name = system,
        db.operation.name = operation,
        db.collection.name = collection,
        db.query.summary = summary.as_str(),
        db.namespace = tracing::field::Empty,
        db.response.status_code = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
    )
}

/// Adds to a [`db_client`] span where the database is, for a client/server database:
/// `db.namespace` (as that system's conventions define it, e.g. PostgreSQL's
/// `{database}.{schema}`), `server.address` and `server.port`. An embedded database
/// (SQLite) has none of these.
pub fn record_db_server(span: &tracing::Span, namespace: &str, address: &str, port: u16) {
    span.record("db.namespace", namespace);
    span.record("server.address", address);
    span.record("server.port", i64::from(port));
}

/// Marks `span` as failed: status ERROR with a description a person can act on, and
/// `error.type`, the low-cardinality class of the failure (semantic conventions).
pub fn mark_error(span: &tracing::Span, error_type: &str, description: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", description);
    span.record("error.type", error_type);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CapturedService, attribute};
    use opentelemetry::trace::{SpanKind, Status};

    #[test]
    fn helpers_make_the_kinds_and_mark_errors() {
        let service = CapturedService::new("span-test");
        tracing::dispatcher::with_default(service.dispatch(), || {
            let step = crate::internal_span!("reserve stock", app.order.id = "o-1");
            mark_error(&step, "out_of_stock", "out of stock: OOS-1");
            drop(step);
            drop(db_client("sqlite", "INSERT", "orders"));
            let remote = db_client("postgresql", "UPDATE", "orders");
            record_db_server(&remote, "orders.public", "db.internal", 5433);
            drop(remote);
        });
        let spans = service.spans();
        let step = spans.iter().find(|s| s.name == "reserve stock").unwrap();
        assert_eq!(step.span_kind, SpanKind::Internal);
        // The bridge's debugging attributes are off unless TELEMETRY_SPAN_DETAILS=true.
        for heavy in [
            "code.file.path",
            "thread.id",
            "target",
            "busy_ns",
            "idle_ns",
        ] {
            assert_eq!(attribute(step, heavy), None, "{heavy}");
        }
        assert_eq!(attribute(step, "app.order.id").as_deref(), Some("o-1"));
        assert_eq!(
            attribute(step, "error.type").as_deref(),
            Some("out_of_stock")
        );
        assert_eq!(
            step.status,
            Status::Error {
                description: "out of stock: OOS-1".into()
            }
        );
        let query = spans.iter().find(|s| s.name == "INSERT orders").unwrap();
        assert_eq!(query.span_kind, SpanKind::Client);
        assert_eq!(
            attribute(query, "db.system.name").as_deref(),
            Some("sqlite")
        );
        assert_eq!(
            attribute(query, "db.query.summary").as_deref(),
            Some("INSERT orders")
        );
        assert_eq!(query.status, Status::Unset);
        // An embedded database has no server, and the span says none.
        for absent in ["db.namespace", "server.address", "server.port"] {
            assert_eq!(attribute(query, absent), None, "{absent}");
        }
        let remote = spans.iter().find(|s| s.name == "UPDATE orders").unwrap();
        for (key, value) in [
            ("db.system.name", "postgresql"),
            ("db.namespace", "orders.public"),
            ("server.address", "db.internal"),
            ("server.port", "5433"),
        ] {
            assert_eq!(attribute(remote, key).as_deref(), Some(value), "{key}");
        }
    }
}
