//! Retries a failed span export for a bounded time, so a Collector that is away for less
//! than that loses no span: while one batch waits here, the batch processor's queue keeps
//! taking new spans, and once the Collector is back the queue drains batch after batch.
//!
//! The OTLP exporter's own retry policy counts attempts (three by default, about 2 s in
//! all), not time, and an attempt against a stalled Collector can take the whole export
//! timeout; a deadline says what the user means. Every failure is retried: the exporter
//! reports a refused connection and a 503 alike, and a permanent error (a wrong endpoint)
//! fails every batch anyway.

use std::time::{Duration, Instant};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Retrying<E> {
    inner: E,
    retry_for: Duration,
}

impl<E> Retrying<E> {
    pub(crate) fn new(inner: E, retry_for: Duration) -> Self {
        Self { inner, retry_for }
    }
}

impl<E: SpanExporter> SpanExporter for Retrying<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = FIRST_BACKOFF;
        loop {
            // A copy per attempt: the exporter takes the batch by value.
            let result = self.inner.export(batch.clone()).await;
            let now = Instant::now();
            if result.is_ok() || now + backoff > deadline {
                return result;
            }
            // The batch processor runs exports on a thread of its own (blocking on each),
            // so sleeping here holds back nothing but the next batch.
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails the first `failures` exports.
    #[derive(Debug)]
    struct FailsFirst {
        failures: u32,
        calls: AtomicU32,
    }

    impl SpanExporter for FailsFirst {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            if self.calls.fetch_add(1, Ordering::Relaxed) < self.failures {
                Err(OTelSdkError::InternalFailure("connection refused".into()))
            } else {
                Ok(())
            }
        }
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn exporter(failures: u32) -> FailsFirst {
        FailsFirst {
            failures,
            calls: AtomicU32::new(0),
        }
    }

    #[test]
    fn a_failure_within_the_deadline_is_retried_until_it_works() {
        let retrying = Retrying::new(exporter(3), Duration::from_secs(5));
        let result = block_on(retrying.export(Vec::new()));
        assert!(result.is_ok());
        assert_eq!(retrying.inner.calls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn past_the_deadline_the_failure_is_returned() {
        let retrying = Retrying::new(exporter(u32::MAX), Duration::from_millis(250));
        let started = Instant::now();
        let result = block_on(retrying.export(Vec::new()));
        assert!(result.is_err());
        // 100 ms, then 200 ms would pass the deadline: two attempts.
        assert_eq!(retrying.inner.calls.load(Ordering::Relaxed), 2);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
