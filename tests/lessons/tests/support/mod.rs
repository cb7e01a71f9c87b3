//! What the lessons' tests share: reading captured spans, running a lesson in a child
//! process, the real order-service on librdkafka's mock cluster, and the whole stack.

#![allow(dead_code)] // each test binary uses a different part

pub mod child;
pub mod kafka;
pub mod services;
pub mod spans;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process-wide propagator, for the test binaries where a broken variant empties it.
/// Tests in one binary run on parallel threads of one process, and every service a test
/// makes installs the project's propagator again, so every test of such a binary holds
/// this lock for its whole run; the project's propagator is back when the lock drops,
/// even after a panic.
pub struct PropagatorLock(MutexGuard<'static, ()>);

static PROPAGATOR: Mutex<()> = Mutex::new(());

impl PropagatorLock {
    /// The lock, with the project's W3C propagator installed.
    pub fn take() -> Self {
        let guard = PROPAGATOR
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        telemetry::testing::install_propagator();
        Self(guard)
    }

    /// The broken variant: a propagator that writes and reads nothing, which is what a
    /// process has when nobody set one (OpenTelemetry's default is a no-op). Call it
    /// after making the services: `CapturedService::new` installs the project's.
    pub fn empty(&self) {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![]),
        );
    }
}

impl Drop for PropagatorLock {
    fn drop(&mut self) {
        telemetry::testing::install_propagator();
    }
}
