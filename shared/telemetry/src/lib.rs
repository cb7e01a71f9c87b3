//! Telemetry for every service of the workspace, in one place.
//!
//! # How a trace gets from the first request to the last consumer
//!
//! 1. Each service calls [`init`] once, first thing in `main`: it installs the W3C
//!    propagators, the tracer provider (OTLP or console export, sampler, resource) and the
//!    `tracing` subscriber, and returns a [`TelemetryGuard`] whose `shutdown` flushes.
//! 2. Services write plain `tracing` code. `opentelemetry` types stay in this crate.
//! 3. Context crosses each transport in [`propagation`]: one file per transport, the
//!    server side extracting and the client side injecting, with the span names and
//!    attributes of the OpenTelemetry semantic conventions.
//! 4. Spans a service makes itself (an internal step, a database query) come from
//!    [`span`], and every failure is marked on its span the one way [`span::mark_error`] does.
//!
//! # Layout
//!
//! - `config.rs`: the `OTEL_*` variables, parsed and checked.
//! - `init.rs`: the one call per service. `guard.rs`: the flush on shutdown.
//! - `limits.rs`: how much one span may carry.
//! - `log_format.rs`: log lines with `trace_id` and `span_id`.
//! - `span.rs`: internal and database spans, error marking. `semconv.rs`: which RPC
//!   attribute names are emitted (`OTEL_SEMCONV_STABILITY_OPT_IN`).
//! - `propagation/{http,grpc,kafka}.rs`: context across each transport, each behind the
//!   cargo feature of the same name. `propagation/w3c/`: the W3C propagators.
//! - `testing.rs` (feature `testing`): in-memory span capture.

mod config;
mod export_retry;
mod guard;
mod init;
mod limits;
mod log_format;
mod metrics;
pub mod propagation;
#[cfg(any(feature = "http", feature = "grpc"))]
mod request_metrics;
mod semconv;
pub mod span;
mod span_count;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::{
    BatchSettings, Exporter, MetricsConfig, MetricsExporter, OtlpConfig, OtlpProtocol,
    SamplerConfig, TelemetryConfig,
};
pub use guard::{ShutdownError, TelemetryGuard};
pub use init::{InitError, init};
pub use limits::Limits;
pub use metrics::DURATION_BUCKETS_SECONDS;
pub use propagation::current_trace_id;
pub use semconv::RpcConventions;

/// For the macros of [`span`]: they expand in the services' crates.
#[doc(hidden)]
pub mod __private {
    pub use tracing;
}
