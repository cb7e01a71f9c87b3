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

/// The same cases through each transport's carrier, with the process-wide propagator.
#[cfg(all(test, feature = "http", feature = "grpc", feature = "kafka"))]
mod transport_tests {
    use opentelemetry::Context;
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::TraceContextExt;
    use rdkafka::message::{Header, OwnedHeaders};

    use crate::propagation::{extract, kafka};

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    /// Headers in order, then: trace id continued?, tracestate, baggage members.
    type Case = (Vec<(&'static str, &'static str)>, bool, &'static str, usize);

    fn cases() -> Vec<Case> {
        vec![
            (vec![("traceparent", PARENT)], true, "", 0),
            (
                vec![
                    ("traceparent", PARENT),
                    ("tracestate", "a=1"),
                    ("tracestate", "b=2"),
                ],
                true,
                "a=1,b=2",
                0,
            ),
            (
                vec![("traceparent", PARENT), ("traceparent", PARENT)],
                false,
                "",
                0,
            ),
            (
                vec![(
                    "traceparent",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                )],
                false,
                "",
                0,
            ),
            (
                vec![(
                    "traceparent",
                    "  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
                )],
                true,
                "",
                0,
            ),
            (vec![("traceparent", "")], false, "", 0),
            (
                vec![("traceparent", "00-bad"), ("tracestate", "a=1")],
                false,
                "",
                0,
            ),
            (
                vec![("traceparent", PARENT), ("tracestate", "A=1")],
                true,
                "",
                0,
            ),
            (
                vec![("baggage", "k1=v1"), ("baggage", "k2=v2,bad key=x")],
                false,
                "",
                2,
            ),
            (
                vec![("traceparent", PARENT), ("baggage", "k=v;p")],
                true,
                "",
                1,
            ),
        ]
    }

    fn check(
        transport: &str,
        case: usize,
        cx: &Context,
        continued: bool,
        tracestate: &str,
        baggage: usize,
    ) {
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(
            sc.is_valid() && sc.trace_id().to_string() == TRACE,
            continued,
            "{transport} case {case}"
        );
        assert_eq!(
            sc.trace_state().header(),
            tracestate,
            "{transport} case {case}"
        );
        assert_eq!(cx.baggage().len(), baggage, "{transport} case {case}");
    }

    #[test]
    fn http_headers() {
        crate::testing::install_propagator();
        for (i, (headers, continued, tracestate, baggage)) in cases().into_iter().enumerate() {
            let mut map = http::HeaderMap::new();
            for (k, v) in headers {
                map.append(k, v.parse().unwrap());
            }
            let cx = extract(&opentelemetry_http::HeaderExtractor(&map));
            check("http", i, &cx, continued, tracestate, baggage);
        }
    }

    #[test]
    fn grpc_metadata() {
        crate::testing::install_propagator();
        for (i, (headers, continued, tracestate, baggage)) in cases().into_iter().enumerate() {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in headers {
                metadata.append(k, v.parse().unwrap());
            }
            // What the gRPC server layer sees: metadata as HTTP/2 headers.
            let headers = metadata.into_headers();
            let cx = extract(&opentelemetry_http::HeaderExtractor(&headers));
            check("grpc", i, &cx, continued, tracestate, baggage);
        }
    }

    #[test]
    fn kafka_headers() {
        crate::testing::install_propagator();
        for (i, (headers, continued, tracestate, baggage)) in cases().into_iter().enumerate() {
            let owned = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(*v),
                })
            });
            let cx = extract(&kafka::RecordHeaderExtractor(&owned));
            check("kafka", i, &cx, continued, tracestate, baggage);
        }
    }
}
