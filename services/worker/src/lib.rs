//! The worker: consumes `order.created` events from Kafka, fulfils each order (stock and
//! payment, concurrently) and reports the outcome to the order-service over gRPC.
//!
//! Its hops in the trace: a CONSUMER span `process orders` that continues the producer's
//! trace and links to it; `reserve stock` and `charge payment` spans from spawned tasks;
//! a CLIENT span `order.v1.OrderService/CompleteOrder`.
//!
//! # Layout
//!
//! - `config.rs`: settings. `app.rs`: build and run until shutdown.
//! - `consumer.rs`: the at-least-once consume loop. `fulfilment.rs`: the work, in spawned
//!   tasks that keep their trace. `reporting.rs`: the gRPC call back.

mod app;
pub mod config;
mod consumer;
pub mod fulfilment;
mod reporting;

pub use app::Application;
pub use config::Config;
