//! What every service binary needs besides telemetry: settings read from the environment
//! with errors that name the variable, health endpoints, and one shutdown signal for
//! SIGTERM and Ctrl-C.

pub mod env;
pub mod health;
pub mod shutdown;
