//! The request metrics the middleware records beside its spans, named and shaped by the
//! current semantic conventions: `http.server.request.duration`, `rpc.server.call.duration`
//! and `rpc.client.call.duration`, in seconds, with the conventions' bucket boundaries.
//!
//! The instruments come from the global meter provider the first time a request is seen,
//! which is after `init` set it; without one (tests, `OTEL_METRICS_EXPORTER=none`) they do
//! nothing.

use std::sync::OnceLock;
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;

use crate::metrics::DURATION_BUCKETS_SECONDS;

struct Instruments {
    #[cfg(feature = "http")]
    http_server: Histogram<f64>,
    #[cfg(feature = "grpc")]
    rpc_server: Histogram<f64>,
    #[cfg(feature = "grpc")]
    rpc_client: Histogram<f64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("telemetry");
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS_SECONDS.to_vec())
                .build()
        };
        Instruments {
            #[cfg(feature = "http")]
            http_server: histogram(
                "http.server.request.duration",
                "Duration of HTTP server requests.",
            ),
            #[cfg(feature = "grpc")]
            rpc_server: histogram(
                "rpc.server.call.duration",
                "Measures the duration of an incoming Remote Procedure Call (RPC).",
            ),
            #[cfg(feature = "grpc")]
            rpc_client: histogram(
                "rpc.client.call.duration",
                "Measures the duration of an outgoing Remote Procedure Call (RPC).",
            ),
        }
    })
}

#[cfg(feature = "http")]
/// One HTTP request served: its method and route (never the raw path: bounded labels),
/// scheme and status; `error.type` for a 5xx, as on the span.
pub(crate) fn http_server_request(
    started: Instant,
    method: &'static str,
    route: Option<&str>,
    scheme: &str,
    status: u16,
) {
    let mut attributes = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("url.scheme", scheme.to_owned()),
        KeyValue::new("http.response.status_code", i64::from(status)),
    ];
    if let Some(route) = route {
        attributes.push(KeyValue::new("http.route", route.to_owned()));
    }
    if status >= 500 {
        attributes.push(KeyValue::new("error.type", status.to_string()));
    }
    instruments()
        .http_server
        .record(started.elapsed().as_secs_f64(), &attributes);
}

#[cfg(feature = "grpc")]
/// One gRPC call ended, on the server or the client side: its method, status name (when
/// one came back) and `error.type` when the span was marked failed.
pub(crate) fn rpc_call(
    server_side: bool,
    started: Instant,
    method: &str,
    status: Option<&'static str>,
    error_type: Option<&str>,
) {
    let mut attributes = vec![
        KeyValue::new("rpc.system.name", "grpc"),
        KeyValue::new("rpc.method", method.to_owned()),
    ];
    if let Some(status) = status {
        attributes.push(KeyValue::new("rpc.response.status_code", status));
    }
    if let Some(error_type) = error_type {
        attributes.push(KeyValue::new("error.type", error_type.to_owned()));
    }
    let histogram = if server_side {
        &instruments().rpc_server
    } else {
        &instruments().rpc_client
    };
    histogram.record(started.elapsed().as_secs_f64(), &attributes);
}
