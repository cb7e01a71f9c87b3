//! The order-service: stores orders in SQLite (one replica) or PostgreSQL (several) and
//! publishes `order.created` events to Kafka, behind the `order.v1.OrderService` gRPC API.
//!
//! Its hops in the trace: a SERVER span for each gRPC call (from the gateway's
//! CreateOrder/GetOrder and the worker's CompleteOrder), database CLIENT spans inside
//! it, and a PRODUCER span `send orders`, sent by the outbox relay in the request's
//! trace, whose context the worker continues.
//!
//! # Layout
//!
//! - `config.rs`: settings from the environment.
//! - `app.rs`: build (bind, open, connect) and run until shutdown.
//! - `orders.rs`: the gRPC API. `store/`: the orders, one interface (`mod.rs`) and two
//!   backends, `sqlite.rs` and `postgres.rs`. `db.rs`: SQLite's connections, and group
//!   commit of concurrent writes.
//! - `idempotency.rs`: one order per `Idempotency-Key`.
//! - `outbox.rs`: the transactional outbox: entry, relay, marking, reconciliation.
//! - `events.rs`: the Kafka producer and topic.
//! - `health.rs`: readiness over the gRPC health service and HTTP.
//! - `metrics.rs`: orders created and completed, the outbox backlog.

mod app;
pub mod config;
mod db;
mod events;
mod health;
mod idempotency;
mod metrics;
mod orders;
pub mod outbox;
mod store;

pub use app::Application;
pub use config::Config;
