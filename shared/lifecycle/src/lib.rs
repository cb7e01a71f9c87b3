//! What every service binary needs besides telemetry and settings: health endpoints with
//! a readiness loop, and one shutdown signal for SIGTERM and Ctrl-C.

pub mod health;
pub mod shutdown;
