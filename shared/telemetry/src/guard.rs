//! The guard `init` returns: on shutdown it flushes every buffered span.
//!
//! Nothing flushes when a global provider is dropped, and the batch processor holds up
//! to `OTEL_BSP_SCHEDULE_DELAY` worth of spans, so a service that exits without calling
//! `shutdown` loses its last spans, usually the most interesting ones.

use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::span_count::SpanCounts;

#[derive(Debug)]
#[must_use = "dropping the guard at once shuts telemetry down; keep it until exit"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
    span_counts: SpanCounts,
    /// Whether spans go to OTLP (else none is exported, by design, and none dropped).
    exporting: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry shutdown: {0}")]
pub struct ShutdownError(String);

impl TelemetryGuard {
    pub(crate) fn new(
        provider: SdkTracerProvider,
        meters: Option<SdkMeterProvider>,
        span_counts: SpanCounts,
        exporting: bool,
    ) -> Self {
        Self {
            provider: Some(provider),
            meters,
            span_counts,
            exporting,
        }
    }

    /// Flushes and stops every span processor. Call it last, after the service has
    /// finished its work, on every exit path.
    pub async fn shutdown(mut self) -> Result<(), ShutdownError> {
        let Some(provider) = self.provider.take() else {
            return Ok(());
        };
        // The flush blocks while the exporter's requests complete; on a tokio worker
        // thread that could starve the very runtime those requests run on, so it runs on
        // a blocking thread.
        let result = tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .map_err(|e| ShutdownError(format!("flush task failed: {e}")))?
            .map_err(|e| ShutdownError(e.to_string()));
        // The end-to-end test and the fault drills read these to account for every span
        // on the way to Jaeger: recorded = exported + dropped once the flush is done
        // (dropped: the queue was full, the export failed after its retries
        // (`spans_export_failed`), or the flush ran out of time). The log layer still
        // works; only span export has stopped.
        let spans = self.span_counts.figures(self.exporting);
        tracing::info!(
            spans_recorded = spans.recorded,
            spans_exported = spans.exported,
            spans_dropped = spans.dropped,
            spans_export_failed = spans.export_failed,
            flushed = result.is_ok(),
            "telemetry shut down"
        );
        // The last metrics, the span counts above included, after the traces.
        if let Some(meters) = self.meters.take() {
            let _ = tokio::task::spawn_blocking(move || meters.shutdown()).await;
        }
        result
    }
}

impl Drop for TelemetryGuard {
    /// A last resort for exits that skipped `shutdown` (a `?` in `main`): better a
    /// blocking flush than lost spans.
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry shutdown on drop: {e}");
        }
        if let Some(meters) = self.meters.take() {
            let _ = meters.shutdown();
        }
    }
}
