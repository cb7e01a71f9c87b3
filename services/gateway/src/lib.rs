//! The gateway: the HTTP API for orders and the first hop of every trace.
//!
//! Its hops in the trace: an HTTP SERVER span `{method} {route}` that continues a
//! caller's `traceparent` (or starts the trace), and inside it a gRPC CLIENT span for
//! each call to the order-service. Responses carry the trace id in a `traceresponse`
//! header and a `trace_id` field.
//!
//! # Layout
//!
//! - `config.rs`: settings. `app.rs`: router, build and run until shutdown.
//! - `edge.rs`: the gateway protecting itself: in-flight limit with load shedding,
//!   request timeout, connection limit, header-read timeout.
//! - `orders.rs`: the two endpoints. `error.rs`: JSON errors and status mapping.
//! - `replicas.rs`: the order-service's replicas: round robin, and failover when safe.
//! - `conformance.rs`: `POST /test` for the W3C Trace Context harness (opt-in).

mod app;
pub mod config;
mod conformance;
mod edge;
mod error;
mod orders;
pub mod replicas;

pub use app::{Application, router};
pub use config::Config;
pub use replicas::Replicas;
