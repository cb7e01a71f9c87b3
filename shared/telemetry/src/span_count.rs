//! Counts every span this process records and what became of it, so no span is lost
//! silently: the counts are logged at shutdown (`spans_recorded= spans_exported=
//! spans_dropped= spans_export_failed=`) and exported as the OpenTelemetry SDK
//! self-metrics (semantic conventions, "OpenTelemetry SDK metrics", status Development):
//!
//! - `otel.sdk.span.started` and `otel.sdk.span.live`, from [`SpanCounter`], the span
//!   processor that hands spans on to the exporting ones (it sees recording spans only:
//!   a span the sampler drops never reaches a processor);
//! - `otel.sdk.exporter.span.exported`, with `error.type` for a batch whose export
//!   failed after the exporter's retries, from [`CountingExporter`] around the OTLP exporter;
//! - `otel.sdk.processor.span.processed` with `error.type=queue_full`, from the SDK's own
//!   batch span processor (its `experimental_metrics_bound_instruments` feature).
//!
//! At shutdown, once the batch processor has flushed, every ended span was either
//! exported or dropped: `dropped = ended - exported`, of which `export_failed` failed in
//! the exporter and the rest never reached it (the queue was full, or the flush ran out
//! of time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::metrics::{BoundCounter, BoundUpDownCounter, Counter, Meter};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

#[derive(Debug, Default)]
struct Counts {
    started: AtomicU64,
    ended: AtomicU64,
    exported: AtomicU64,
    export_failed: AtomicU64,
}

/// What the shutdown line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanFigures {
    pub recorded: u64,
    pub exported: u64,
    pub dropped: u64,
    pub export_failed: u64,
}

/// The counts one process keeps; cheap to clone (one `Arc`).
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanCounts(Arc<Counts>);

impl SpanCounts {
    /// `exporting`: whether spans go to an exporter that [`CountingExporter`] counts; when
    /// none does (`OTEL_TRACES_EXPORTER=none` or `console`), nothing is exported by design
    /// and nothing counts as dropped.
    pub(crate) fn figures(&self, exporting: bool) -> SpanFigures {
        let counts = &self.0;
        let exported = counts.exported.load(Ordering::Relaxed);
        let ended = counts.ended.load(Ordering::Relaxed);
        SpanFigures {
            recorded: counts.started.load(Ordering::Relaxed),
            exported,
            dropped: if exporting {
                ended.saturating_sub(exported)
            } else {
                0
            },
            export_failed: counts.export_failed.load(Ordering::Relaxed),
        }
    }
}

/// The tracer provider's one span processor: counts spans as they start and end, and
/// hands each on to the processors that export it.
///
/// One processor rather than one beside the others: the SDK gives every registered
/// processor its own copy of each ended span, so a counter registered beside the batch
/// processor would cost a copy of every span just to count it. Here a span is copied
/// only when it has more than one destination (console and OTLP at once).
#[derive(Debug)]
pub(crate) struct SpanCounter {
    counts: SpanCounts,
    /// Bound to `otel.span.sampling_result` once, so a span's count skips the attribute
    /// lookup: indexed by [`SpanCounter::by_result`].
    started: [BoundCounter<u64>; 2],
    live: [BoundUpDownCounter<i64>; 2],
    destinations: Vec<Box<dyn SpanProcessor>>,
}

impl SpanCounter {
    pub(crate) fn new(
        counts: SpanCounts,
        meter: &Meter,
        destinations: Vec<Box<dyn SpanProcessor>>,
    ) -> Self {
        let started = meter
            .u64_counter("otel.sdk.span.started")
            .with_unit("{span}")
            .with_description(
                "The number of created spans (recording spans only: those the sampler kept).",
            )
            .build();
        let live = meter
            .i64_up_down_counter("otel.sdk.span.live")
            .with_unit("{span}")
            .with_description("The number of created spans with recording=true for which the end operation has not been called yet.")
            .build();
        let result = |sampled| {
            [KeyValue::new(
                "otel.span.sampling_result",
                if sampled {
                    "RECORD_AND_SAMPLE"
                } else {
                    "RECORD_ONLY"
                },
            )]
        };
        Self {
            counts,
            started: [false, true].map(|sampled| started.bind(&result(sampled))),
            live: [false, true].map(|sampled| live.bind(&result(sampled))),
            destinations,
        }
    }

    fn by_result(sampled: bool) -> usize {
        usize::from(sampled)
    }
}

impl SpanProcessor for SpanCounter {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.counts.0.started.fetch_add(1, Ordering::Relaxed);
        let sampled = opentelemetry::trace::Span::span_context(span).is_sampled();
        self.started[Self::by_result(sampled)].add(1);
        self.live[Self::by_result(sampled)].add(1);
        for destination in &self.destinations {
            destination.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        self.counts.0.ended.fetch_add(1, Ordering::Relaxed);
        self.live[Self::by_result(span.span_context.is_sampled())].add(-1);
        if let Some((last, others)) = self.destinations.split_last() {
            for destination in others {
                destination.on_end(span.clone());
            }
            last.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        first_error(self.destinations.iter().map(|d| d.force_flush()))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        first_error(
            self.destinations
                .iter()
                .map(|d| d.shutdown_with_timeout(timeout)),
        )
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        for destination in &mut self.destinations {
            destination.set_resource(resource);
        }
    }
}

/// Runs every destination's flush or shutdown (collected first, so one failing does not
/// skip the others) and reports the first failure.
fn first_error(results: impl Iterator<Item = OTelSdkResult>) -> OTelSdkResult {
    results
        .collect::<Vec<_>>()
        .into_iter()
        .find(Result::is_err)
        .unwrap_or(Ok(()))
}

/// Counts each batch's spans once its export has finished (retries included): exported,
/// or failed with the cause as `error.type`.
#[derive(Debug)]
pub(crate) struct CountingExporter<E> {
    inner: E,
    counts: SpanCounts,
    exported: Counter<u64>,
    component: [KeyValue; 2],
}

impl<E> CountingExporter<E> {
    /// `component_type`: the semantic conventions' `otel.component.type`
    /// (`otlp_http_span_exporter`, `otlp_grpc_span_exporter`).
    pub(crate) fn new(
        inner: E,
        counts: SpanCounts,
        meter: &Meter,
        component_type: &'static str,
    ) -> Self {
        Self {
            inner,
            counts,
            exported: meter
                .u64_counter("otel.sdk.exporter.span.exported")
                .with_unit("{span}")
                .with_description(
                    "The number of spans for which the export has finished, either successful or failed.",
                )
                .build(),
            component: [
                KeyValue::new("otel.component.type", component_type),
                // One exporter of its type per process.
                KeyValue::new("otel.component.name", format!("{component_type}/0")),
            ],
        }
    }
}

/// A low-cardinality cause for `error.type`.
fn error_type(error: &OTelSdkError) -> &'static str {
    match error {
        OTelSdkError::Timeout(_) => "timeout",
        OTelSdkError::AlreadyShutdown => "already_shutdown",
        OTelSdkError::InternalFailure(_) => "export_failed",
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.counts.0.exported.fetch_add(spans, Ordering::Relaxed);
                self.exported.add(spans, &self.component);
            }
            Err(error) => {
                self.counts
                    .0
                    .export_failed
                    .fetch_add(spans, Ordering::Relaxed);
                let [kind, name] = self.component.clone();
                self.exported.add(
                    spans,
                    &[kind, name, KeyValue::new("error.type", error_type(error))],
                );
            }
        }
        result
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
    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};

    /// Fails every export, like an exporter whose Collector is gone.
    #[derive(Debug)]
    struct Unreachable;

    impl SpanExporter for Unreachable {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("connection refused".into()))
        }
    }

    fn run(exporter: impl SpanExporter + 'static, spans: usize) -> SpanFigures {
        let counts = SpanCounts::default();
        let meter = opentelemetry::global::meter("test");
        let provider = SdkTracerProvider::builder()
            .with_span_processor(SpanCounter::new(
                counts.clone(),
                &meter,
                vec![Box::new(SimpleSpanProcessor::new(CountingExporter::new(
                    exporter,
                    counts.clone(),
                    &meter,
                    "otlp_http_span_exporter",
                )))],
            ))
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..spans {
            tracer.in_span("work", |_| {});
        }
        let _ = provider.shutdown();
        counts.figures(true)
    }

    #[test]
    fn exported_spans_are_counted_as_exported() {
        let figures = run(InMemorySpanExporter::default(), 3);
        assert_eq!(
            figures,
            SpanFigures {
                recorded: 3,
                exported: 3,
                dropped: 0,
                export_failed: 0
            }
        );
    }

    #[test]
    fn failed_exports_are_counted_as_dropped() {
        assert_eq!(
            run(Unreachable, 4),
            SpanFigures {
                recorded: 4,
                exported: 0,
                dropped: 4,
                export_failed: 4
            }
        );
    }

    #[test]
    fn without_an_exporter_nothing_counts_as_dropped() {
        let counts = SpanCounts::default();
        counts.0.started.fetch_add(2, Ordering::Relaxed);
        counts.0.ended.fetch_add(2, Ordering::Relaxed);
        assert_eq!(counts.figures(false).dropped, 0);
        assert_eq!(counts.figures(true).dropped, 2);
    }
}
