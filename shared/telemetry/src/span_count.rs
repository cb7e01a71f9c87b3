//! Counts the spans this process records, so a test can prove that none was lost
//! between the service and the trace store: the count is logged at shutdown and the
//! end-to-end test compares it with what Jaeger stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

/// Counts on start (no copy of the span data); at a clean shutdown every started span
/// has ended, so this is the number of spans handed to the exporters.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanCounter(Arc<AtomicU64>);

impl SpanCounter {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl SpanProcessor for SpanCounter {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}
