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
//!
//! # Layout
//!
//! - `config.rs`: the `OTEL_*` variables, parsed and checked.
//! - `init.rs`: the one call per service. `guard.rs`: the flush on shutdown.
//! - `log_format.rs`: log lines with `trace_id` and `span_id`.
//! - `propagation/{http,grpc,kafka}.rs`: context across each transport.
//! - `testing.rs` (feature `testing`): in-memory span capture.

mod config;
mod guard;
mod init;
mod log_format;
pub mod propagation;
mod span_count;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::{
    BatchSettings, ConfigError, Exporter, OtlpConfig, OtlpProtocol, SamplerConfig, TelemetryConfig,
};
pub use guard::{ShutdownError, TelemetryGuard};
pub use init::{InitError, init};
pub use propagation::current_trace_id;
