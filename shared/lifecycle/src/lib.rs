//! What every service binary needs besides telemetry and settings: health endpoints with
//! a readiness loop, and its shutdown: one signal for SIGTERM and Ctrl-C, a deadline
//! after it, and a second signal that exits at once.

pub mod health;
pub mod shutdown;
