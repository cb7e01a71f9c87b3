//! The worker: consumes `order.created` events from Kafka, fulfils each order (stock and
//! payment, concurrently) and reports the outcome to the order-service over gRPC.
//!
//! Its hops in the trace: a CONSUMER span `process orders` that continues the producer's
//! trace and links to it; `reserve stock` and `charge payment` spans from spawned tasks;
//! a CLIENT span `order.v1.OrderService/CompleteOrder` per try; for a record that can
//! never be handled, a PRODUCER span `send orders.dlq`.
//!
//! # Layout
//!
//! - `config.rs`: settings. `app.rs`: build and run until shutdown.
//! - `consumer.rs`: the Kafka consumer. `dispatch.rs`: the consume loop, one lane per
//!   partition, records of different orders concurrently, backpressure (at least once).
//!   `offsets.rs`: which offset may be stored when records finish out of order.
//! - `process.rs`: one record, in its CONSUMER span. `fulfilment.rs`: the work, in spawned
//!   tasks that keep their trace. `reporting.rs`: the gRPC call back.
//! - `metrics.rs`: how long each record took, and the consumer lag.
//! - `failure.rs`: which failures are retried, re-checked or dead-lettered, and the
//!   backoff. `dead_letter.rs`: the dead-letter topic and its headers.

mod app;
pub mod config;
mod consumer;
mod dead_letter;
mod dispatch;
mod failure;
pub mod fulfilment;
mod metrics;
mod offsets;
mod process;
mod reporting;

pub use app::Application;
pub use config::Config;
pub use failure::RetryPolicy;
