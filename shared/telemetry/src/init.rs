//! `init`: the one call at the top of each service's `main`. It sets the propagator, the
//! tracer provider (resource, sampler, exporters) and the `tracing` subscriber, and
//! returns the guard that flushes everything on shutdown.

use std::io::IsTerminal;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue, global};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SimpleSpanProcessor,
    SpanProcessor,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Exporter, OtlpProtocol, SamplerConfig, TelemetryConfig};
use crate::export_retry::{self, Retrying};
use crate::guard::TelemetryGuard;
use crate::limits::Truncating;
use crate::log_format::LineWithTraceIds;
use crate::metrics::meter_provider;
use crate::propagation::w3c::{BaggagePropagator, TraceContextPropagator};
use crate::span_count::{CountingExporter, SpanCounter, SpanCounts};

/// Spans from the libraries that carry the exporter's own traffic. Without this filter
/// every export makes new spans, which are exported in turn: the exporter traces itself.
const EXPORTER_TRANSPORT_OFF: &str = "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid RUST_LOG={value:?}: {source}")]
    LogFilter {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot build the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("telemetry was already initialised in this process")]
    AlreadyInitialised(#[source] tracing_subscriber::util::TryInitError),
}

/// Initialises telemetry for this process. Call it once, first thing in `main`, from
/// inside the tokio runtime (the OTLP gRPC exporter needs one), and keep the guard:
/// `guard.shutdown().await` on exit is what flushes the last spans.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, InitError> {
    let log_filter =
        EnvFilter::try_new(&config.log_filter).map_err(|source| InitError::LogFilter {
            value: config.log_filter.clone(),
            source,
        })?;

    // Set a format for propagating context. This MUST be set: the default is a no-op,
    // and every service would then start its own trace.
    global::set_text_map_propagator(propagator());
    crate::semconv::set_rpc(config.rpc_conventions);

    // Metrics first: the tracer provider's parts (the SDK's batch processor, our span
    // counters) take their instruments from the global meter provider when built.
    let meters = meter_provider(config)?;
    if let Some(meters) = &meters {
        global::set_meter_provider(meters.clone());
    }
    let span_counts = SpanCounts::default();
    let provider = tracer_provider(config, &span_counts)?;
    global::set_tracer_provider(provider.clone());
    // The instrumentation scope names what made the spans (this crate, through the
    // `tracing` bridge), not the service: that is the resource's `service.name`. Static
    // text also spares every span an allocated copy of the scope when it ends.
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );

    let otel_layer = otel_layer(tracer, config.span_details);
    let log_layer = tracing_subscriber::fmt::layer()
        .event_format(LineWithTraceIds)
        // Colour only for a person at a terminal; log collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(log_filter);
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(log_layer)
        .try_init()
        .map_err(InitError::AlreadyInitialised)?;

    let exporting = config.exporters.contains(&Exporter::Otlp);
    Ok(TelemetryGuard::new(
        provider,
        meters,
        span_counts,
        exporting,
    ))
}

/// W3C `traceparent`/`tracestate` plus W3C `baggage`: this crate's strict implementations
/// (see `propagation::w3c` for where the stock ones fall short).
pub(crate) fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::default()),
        Box::new(BaggagePropagator::default()),
    ])
}

/// The bridge from `tracing` spans to OpenTelemetry spans. `details` adds the source
/// location, thread, target and busy/idle time to every span (`TELEMETRY_SPAN_DETAILS`).
pub(crate) fn otel_layer<S>(
    tracer: opentelemetry_sdk::trace::SdkTracer,
    details: bool,
) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(details)
        .with_threads(details)
        .with_target(details)
        .with_tracked_inactivity(details)
        .with_filter(otel_filter())
}

/// Which `tracing` spans and events become OpenTelemetry data.
pub(crate) fn otel_filter() -> EnvFilter {
    EnvFilter::new(format!("info,{EXPORTER_TRANSPORT_OFF}"))
}

pub(crate) fn resource(config: &TelemetryConfig) -> Resource {
    // `builder_empty` rather than `builder`: the default builder reads OTEL_SERVICE_NAME
    // and OTEL_RESOURCE_ATTRIBUTES again by itself; the config has already parsed them.
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new(
            "service.version",
            config.service_version.clone(),
        ))
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

pub(crate) fn sampler(config: SamplerConfig) -> Sampler {
    match config {
        SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
        SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
        SamplerConfig::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
        SamplerConfig::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerConfig::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerConfig::ParentBasedTraceIdRatio(ratio) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// The meter this crate's own instruments come from (the SDK names its own `otel.sdk`).
fn self_meter() -> opentelemetry::metrics::Meter {
    global::meter("telemetry")
}

pub(crate) fn tracer_provider(
    config: &TelemetryConfig,
    span_counts: &SpanCounts,
) -> Result<SdkTracerProvider, InitError> {
    let mut destinations: Vec<Box<dyn SpanProcessor>> = Vec::new();
    for exporter in &config.exporters {
        destinations.push(match exporter {
            // Console output is for a person watching: print each span as it ends.
            Exporter::Console => Box::new(SimpleSpanProcessor::new(Truncating::new(
                opentelemetry_stdout::SpanExporter::default(),
                &config.limits,
            ))),
            Exporter::Otlp => Box::new(otlp_batch_processor(config, span_counts)?),
        });
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource(config))
        .with_sampler(sampler(config.sampler))
        .with_span_limits(config.limits.span_limits())
        .with_span_processor(SpanCounter::new(
            span_counts.clone(),
            &self_meter(),
            destinations,
        ))
        .build())
}

fn otlp_batch_processor(
    config: &TelemetryConfig,
    span_counts: &SpanCounts,
) -> Result<BatchSpanProcessor, InitError> {
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
    let otlp = &config.otlp;
    let built_for = |source| InitError::Exporter {
        endpoint: otlp.endpoint.clone(),
        source,
    };
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.batch.max_queue_size)
        .with_max_export_batch_size(config.batch.max_export_batch_size)
        .with_scheduled_delay(config.batch.scheduled_delay)
        .build();
    // A failed export is retried for `TELEMETRY_EXPORT_RETRY_MS`, each attempt bounded by
    // the export timeout; the two transports get there differently (export_retry.rs).
    // Spans are counted once a batch's export has finished, retries included.
    let processor = match otlp.protocol {
        OtlpProtocol::HttpProtobuf => {
            // The exporter's own retry: it encodes a batch once and sends the same bytes
            // again, where a wrapper would have to copy every span of every batch up
            // front in case the first attempt fails (measurable per request: issue 10).
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(otlp.endpoint.clone())
                .with_http_client(export_retry::http_client(otlp.timeout).map_err(built_for)?)
                .with_timeout(otlp.retry_for)
                .with_retry_policy(export_retry::http_policy())
                .build()
                .map_err(built_for)?;
            let exporter = CountingExporter::new(
                Truncating::new(exporter, &config.limits),
                span_counts.clone(),
                &self_meter(),
                "otlp_http_span_exporter",
            );
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build()
        }
        OtlpProtocol::Grpc => {
            // tonic's exporter bounds each call by the same timeout it uses as its retry
            // deadline, so it tries once here and `Retrying` keeps trying.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(otlp.endpoint.clone())
                .with_timeout(otlp.timeout)
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
                .build()
                .map_err(built_for)?;
            let exporter = CountingExporter::new(
                Retrying::new(Truncating::new(exporter, &config.limits), otlp.retry_for),
                span_counts.clone(),
                &self_meter(),
                "otlp_grpc_span_exporter",
            );
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build()
        }
    };
    Ok(processor)
}
