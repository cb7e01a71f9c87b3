//! Test support (feature `testing`): capture each service's spans in memory.
//!
//! Tests that run several services in one process still want to know which service
//! made which span. Each [`CapturedService`] has its own tracer provider (with its own
//! `service.name`) and its own `tracing` dispatcher, and [`CapturedService::runtime`]
//! builds a tokio runtime whose threads all use that dispatcher, so every span made by
//! code running on it, including spawned tasks, lands in that service's exporter.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

use crate::config::TelemetryConfig;
use crate::init::{otel_layer, propagator, resource, sampler};

/// Installs the same global propagator `init` does (idempotent).
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(propagator());
}

#[derive(Debug)]
pub struct CapturedService {
    name: String,
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    dispatch: Dispatch,
}

impl CapturedService {
    pub fn new(service_name: &str) -> Self {
        install_propagator();
        // The defaults: parent-based always-on sampling, as a service has unless told otherwise.
        let config = TelemetryConfig::from_source(service_name, "test", &|_: &str| None)
            .unwrap_or_else(|e| panic!("default telemetry config is invalid: {e}"));
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource(&config))
            .with_sampler(sampler(config.sampler))
            .with_span_limits(config.limits.span_limits())
            // Export as each span ends, so a test sees spans as soon as work is done.
            .with_simple_exporter(exporter.clone())
            .build();
        let otel_layer = otel_layer(
            provider.tracer(service_name.to_owned()),
            config.span_details,
        );
        let dispatch = Dispatch::new(tracing_subscriber::registry().with(otel_layer));
        Self {
            name: service_name.to_owned(),
            exporter,
            provider,
            dispatch,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// A multi-thread runtime on which everything records into this service's spans.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let dispatch = self.dispatch.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name(format!("{}-rt", self.name))
            .on_thread_start(move || {
                // Lives as long as the thread: every span on this thread is this service's.
                std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            })
            .build()
    }

    /// Spans finished so far.
    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap_or_default()
    }

    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

/// The value of a span's attribute `key`, as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}
