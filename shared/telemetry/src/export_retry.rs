//! Retries a failed span export for a bounded time (`TELEMETRY_EXPORT_RETRY_MS`), so a
//! Collector that is away for less than that loses no span: while one batch waits, the
//! batch processor's queue keeps taking new spans, and once the Collector is back the
//! queue drains batch after batch.
//!
//! A deadline says what the user means; the OTLP exporter's default policy counts
//! attempts (three, about 2 s in all). Each attempt stays bounded by the export timeout
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`), so one stalled attempt cannot use up the deadline.
//!
//! - **OTLP/HTTP** (the default): the exporter's own retry, given the deadline as its
//!   timeout and a client whose requests time out per attempt ([`http_client`],
//!   [`http_policy`]). It encodes a batch once and resends those bytes; it retries a
//!   refused connection, 429, 502, 503 and 504, and gives up at once on any other status
//!   (a wrong path or a bad request fails every batch anyway).
//! - **OTLP/gRPC**: tonic's exporter uses one timeout for each call and for its retry
//!   deadline, so it tries once and [`Retrying`] keeps trying. It copies the batch per
//!   attempt, as tonic's exporter itself does.

use std::time::{Duration, Instant};

use opentelemetry_otlp::{ExporterBuildError, RetryPolicy};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The OTLP/HTTP exporter's retry: until its deadline, not a number of attempts.
pub(crate) fn http_policy() -> RetryPolicy {
    RetryPolicy::recommended()
        .with_max_retries(usize::MAX)
        .with_initial_delay(FIRST_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
}

/// The client the OTLP/HTTP exporter sends with: each request times out after
/// `per_attempt`. Blocking, because the batch processor exports on a thread of its own;
/// built on a thread of its own too, because a blocking client may not be built inside
/// the async runtime `init` is called from.
pub(crate) fn http_client(
    per_attempt: Duration,
) -> Result<reqwest::blocking::Client, ExporterBuildError> {
    let failed = |reason: String| ExporterBuildError::InternalFailure(reason);
    std::thread::Builder::new()
        .name("otlp-http-client".into())
        .spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(per_attempt)
                .build()
        })
        .map_err(|error| {
            failed(format!(
                "cannot start a thread for the HTTP client: {error}"
            ))
        })?
        .join()
        .map_err(|_| failed("building the HTTP client panicked".into()))?
        .map_err(|error| failed(format!("cannot build the HTTP client: {error}")))
}

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

    /// The OTLP/HTTP path as `init` builds it, against a Collector stand-in on loopback.
    mod over_http {
        use std::collections::HashMap;

        use opentelemetry::trace::{Tracer, TracerProvider as _};

        use crate::TelemetryConfig;
        use crate::init::tracer_provider;
        use crate::span_count::{SpanCounts, SpanFigures};

        mod loopback_collector {
            include!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/loopback_collector.rs"
            ));
        }

        fn collector(script: &[u16]) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
            let collector = loopback_collector::start(script);
            (collector.endpoint, collector.bodies)
        }

        /// Three spans through a provider built as `init` builds it, then a flush.
        fn export_three(endpoint: &str, retry_ms: &str) -> SpanFigures {
            let source: HashMap<String, String> = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_METRICS_EXPORTER", "none"),
                ("TELEMETRY_EXPORT_RETRY_MS", retry_ms),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            let config = TelemetryConfig::from_source("otel-test-service", "0", &source).unwrap();
            let counts = SpanCounts::default();
            let provider = tracer_provider(&config, &counts).unwrap();
            let tracer = provider.tracer("test");
            for _ in 0..3 {
                tracer.in_span("work", |_| {});
            }
            let _ = provider.force_flush();
            let _ = provider.shutdown();
            counts.figures(true)
        }

        #[test]
        fn a_collector_that_refuses_for_a_while_gets_the_same_batch_again() {
            let (endpoint, bodies) = collector(&[503, 503]);
            let figures = export_three(&endpoint, "10000");
            assert_eq!((figures.exported, figures.export_failed), (3, 0));
            let bodies = bodies.lock().unwrap();
            assert_eq!(bodies.len(), 3, "two refusals, then the one that worked");
            // The resource reached the exporter through the counting processor.
            let has = |text: &[u8]| bodies[0].windows(text.len()).any(|w| w == text);
            assert!(has(b"service.name") && has(b"otel-test-service"));
            assert!(
                bodies.iter().all(|body| body == &bodies[0]),
                "the same bytes each time"
            );
        }

        #[test]
        fn a_status_that_retrying_cannot_change_fails_at_once() {
            let (endpoint, bodies) = collector(&[400]);
            let figures = export_three(&endpoint, "10000");
            assert_eq!((figures.exported, figures.export_failed), (0, 3));
            assert_eq!(bodies.lock().unwrap().len(), 1);
        }

        #[test]
        fn past_the_deadline_the_batch_counts_as_failed() {
            let (endpoint, bodies) = collector(&[503; 100]);
            let figures = export_three(&endpoint, "300");
            assert_eq!((figures.exported, figures.export_failed), (0, 3));
            // 0, 100 and (about) 300 ms: the backoff doubles and the deadline stops it.
            let attempts = bodies.lock().unwrap().len();
            assert!((2..=4).contains(&attempts), "{attempts} attempts");
        }
    }
}
