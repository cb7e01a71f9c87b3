//! The guard `init` returns: on shutdown it flushes every buffered span.
//!
//! Nothing flushes when a global provider is dropped, and the batch processor holds up
//! to `OTEL_BSP_SCHEDULE_DELAY` worth of spans, so a service that exits without calling
//! `shutdown` loses its last spans, usually the most interesting ones.

use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::span_count::SpanCounter;

#[derive(Debug)]
#[must_use = "dropping the guard at once shuts telemetry down; keep it until exit"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    span_counter: SpanCounter,
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry shutdown: {0}")]
pub struct ShutdownError(String);

impl TelemetryGuard {
    pub(crate) fn new(provider: SdkTracerProvider, span_counter: SpanCounter) -> Self {
        Self {
            provider: Some(provider),
            span_counter,
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
        // The end-to-end test reads `spans_recorded` to prove no span was lost on the
        // way to Jaeger. (The log layer still works; only span export has stopped.)
        tracing::info!(
            spans_recorded = self.span_counter.get(),
            flushed = result.is_ok(),
            "telemetry shut down"
        );
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
    }
}
