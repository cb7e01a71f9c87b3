//! W3C Trace Context Level 2 (`traceparent`, `tracestate`) and W3C Baggage (`baggage`),
//! implemented to the letter, because the stock opentelemetry-rust propagators are not:
//! they accept fields of the wrong length (`0` or `000` versions, one-digit flags, short
//! ids), read only the first of repeated headers, drop the `random` flag and do not
//! enforce the `tracestate` grammar or its 32-member limit.
//!
//! Both are used for every transport (HTTP headers, gRPC metadata, Kafka record headers)
//! through the process-wide propagator that `init` installs. Invalid input never fails a
//! request: an invalid `traceparent` means "no parent" (a fresh trace, and its `tracestate`
//! is dropped with it); an invalid `tracestate` is dropped on its own; an invalid baggage
//! member is skipped. Oversized headers are ignored without being parsed.

mod baggage;
mod trace_context;

pub(crate) use baggage::percent_decode;
pub use baggage::{BaggagePropagator, parse_baggage};
pub use trace_context::{TraceContextPropagator, parse_traceparent, parse_tracestate};

/// HTTP optional whitespace (RFC 9110): spaces and horizontal tabs.
pub(crate) fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// The same cases through each transport's carrier, with the process-wide propagator: what
/// the SDK's `TraceState` holds after extraction, and what a child span sends on.
#[cfg(test)]
#[cfg(all(feature = "http", feature = "grpc", feature = "kafka"))]
mod transport_tests {
    use opentelemetry::Context;
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_http::HeaderInjector;
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::propagation::{extract, http, inject, kafka};
    use crate::testing::CapturedService;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    struct Case {
        headers: Vec<(&'static str, &'static str)>,
        /// The caller's trace is continued.
        continued: bool,
        /// What the SDK's `TraceState` holds of the caller's `tracestate`.
        held: &'static str,
        /// The `tracestate` a child span sends on.
        sent: &'static str,
        /// Baggage members extracted.
        baggage: usize,
    }

    /// A case whose `tracestate` the SDK holds whole.
    fn case(
        headers: Vec<(&'static str, &'static str)>,
        continued: bool,
        tracestate: &'static str,
        baggage: usize,
    ) -> Case {
        Case {
            headers,
            continued,
            held: tracestate,
            sent: tracestate,
            baggage,
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            case(vec![("traceparent", PARENT)], true, "", 0),
            case(
                vec![
                    ("traceparent", PARENT),
                    ("tracestate", "a=1"),
                    ("tracestate", "b=2"),
                ],
                true,
                "a=1,b=2",
                0,
            ),
            case(
                vec![("traceparent", PARENT), ("traceparent", PARENT)],
                false,
                "",
                0,
            ),
            case(
                vec![(
                    "traceparent",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                )],
                false,
                "",
                0,
            ),
            case(
                vec![(
                    "traceparent",
                    "  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
                )],
                true,
                "",
                0,
            ),
            case(vec![("traceparent", "")], false, "", 0),
            case(
                vec![("traceparent", "00-bad"), ("tracestate", "a=1")],
                false,
                "",
                0,
            ),
            case(
                vec![("traceparent", PARENT), ("tracestate", "A=1")],
                true,
                "",
                0,
            ),
            // Keys the current grammar allows: the SDK's `TraceState` holds `foo@` and a
            // leading digit, not a second `@`; the whole list goes on either way.
            Case {
                headers: vec![
                    ("traceparent", PARENT),
                    ("tracestate", "foo@=1,1a=2"),
                    ("tracestate", "foo@bar@baz=3,foo@@bar=4,b=5"),
                ],
                continued: true,
                held: "foo@=1,1a=2,b=5",
                sent: "foo@=1,1a=2,foo@bar@baz=3,foo@@bar=4,b=5",
                baggage: 0,
            },
            // Duplicate keys, in one header and across two, are kept as they came.
            case(
                vec![
                    ("traceparent", PARENT),
                    ("tracestate", "foo=1,foo=2"),
                    ("tracestate", "foo=1"),
                ],
                true,
                "foo=1,foo=2,foo=1",
                0,
            ),
            // A key cannot start with `@`: the list is dropped, not the trace.
            case(
                vec![("traceparent", PARENT), ("tracestate", "@foo=1,bar=2")],
                true,
                "",
                0,
            ),
            case(
                vec![("baggage", "k1=v1"), ("baggage", "k2=v2,bad key=x")],
                false,
                "",
                2,
            ),
            case(
                vec![("traceparent", PARENT), ("baggage", "k=v;p")],
                true,
                "",
                1,
            ),
        ]
    }

    /// Checks what was extracted, then makes a child span of it and returns the context
    /// to inject.
    fn check(transport: &str, i: usize, case: &Case, cx: Context) -> tracing::Span {
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(
            sc.is_valid() && sc.trace_id().to_string() == TRACE,
            case.continued,
            "{transport} case {i}"
        );
        assert_eq!(sc.trace_state().header(), case.held, "{transport} case {i}");
        assert_eq!(cx.baggage().len(), case.baggage, "{transport} case {i}");
        let child = tracing::info_span!("hop");
        child.set_parent(cx).unwrap();
        child
    }

    #[test]
    fn http_headers() {
        let service = CapturedService::new("transport-test");
        tracing::dispatcher::with_default(service.dispatch(), || {
            for (i, case) in cases().into_iter().enumerate() {
                let mut map = ::http::HeaderMap::new();
                for (k, v) in &case.headers {
                    map.append(*k, v.parse().unwrap());
                }
                let cx = extract(&opentelemetry_http::HeaderExtractor(&map));
                let child = check("http", i, &case, cx);
                let mut out = ::http::HeaderMap::new();
                http::inject_headers(&child, &mut out);
                let sent = out.get("tracestate").map(|v| v.to_str().unwrap());
                assert_eq!(sent.unwrap_or_default(), case.sent, "http case {i}");
            }
        });
    }

    #[test]
    fn grpc_metadata() {
        let service = CapturedService::new("transport-test");
        tracing::dispatcher::with_default(service.dispatch(), || {
            for (i, case) in cases().into_iter().enumerate() {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &case.headers {
                    metadata.append(*k, v.parse().unwrap());
                }
                // What the gRPC server layer sees: metadata as HTTP/2 headers.
                let headers = metadata.into_headers();
                let cx = extract(&opentelemetry_http::HeaderExtractor(&headers));
                let child = check("grpc", i, &case, cx);
                // What the gRPC client layer writes, as the next server reads it.
                let mut out = ::http::HeaderMap::new();
                inject(&child.context(), &mut HeaderInjector(&mut out));
                let metadata = tonic::metadata::MetadataMap::from_headers(out);
                let sent = metadata.get("tracestate").map(|v| v.to_str().unwrap());
                assert_eq!(sent.unwrap_or_default(), case.sent, "grpc case {i}");
            }
        });
    }

    #[test]
    fn kafka_headers() {
        let service = CapturedService::new("transport-test");
        tracing::dispatcher::with_default(service.dispatch(), || {
            for (i, case) in cases().into_iter().enumerate() {
                let owned = case.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(*v),
                    })
                });
                let cx = extract(&kafka::RecordHeaderExtractor(&owned));
                let child = check("kafka", i, &case, cx);
                let out = kafka::inject_headers(&child, OwnedHeaders::new());
                let sent = out
                    .iter()
                    .find(|h| h.key == "tracestate")
                    .and_then(|h| h.value)
                    .map(|v| std::str::from_utf8(v).unwrap());
                assert_eq!(sent.unwrap_or_default(), case.sent, "kafka case {i}");
            }
        });
    }
}
