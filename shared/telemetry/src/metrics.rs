//! The process's one meter provider: resource as for traces, exporters and interval from
//! `OTEL_METRICS_EXPORTER` and `OTEL_METRIC_EXPORT_INTERVAL` (OTLP endpoint and protocol
//! from the `OTEL_EXPORTER_OTLP_METRICS_*` variables, else the generic ones).
//!
//! `init` sets it as the global meter provider before anything else is built, so every
//! instrument created later (the SDK's own batch-processor counters included) reports
//! through it; a service's own metrics come from `opentelemetry::global::meter(..)` too.

use opentelemetry_otlp::WithExportConfig;

/// The semantic conventions' advised bucket boundaries for durations in seconds (HTTP,
/// RPC and messaging durations alike).
pub const DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::config::{MetricsExporter, OtlpProtocol, TelemetryConfig};
use crate::init::{InitError, resource};

/// `None` when `OTEL_METRICS_EXPORTER=none`: instruments are then no-ops.
pub(crate) fn meter_provider(
    config: &TelemetryConfig,
) -> Result<Option<SdkMeterProvider>, InitError> {
    let metrics = &config.metrics;
    if metrics.exporters.is_empty() {
        return Ok(None);
    }
    let mut builder = SdkMeterProvider::builder().with_resource(resource(config));
    for exporter in &metrics.exporters {
        builder = match exporter {
            MetricsExporter::Console => builder.with_reader(
                PeriodicReader::builder(opentelemetry_stdout::MetricExporter::default())
                    .with_interval(metrics.interval)
                    .build(),
            ),
            MetricsExporter::Otlp => {
                let otlp = &metrics.otlp;
                let exporter = match otlp.protocol {
                    OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                        .with_tonic()
                        .with_endpoint(otlp.endpoint.clone())
                        .with_timeout(otlp.timeout)
                        .build(),
                    OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                        .with_http()
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .with_endpoint(otlp.endpoint.clone())
                        .with_timeout(otlp.timeout)
                        .build(),
                }
                .map_err(|source| InitError::Exporter {
                    endpoint: otlp.endpoint.clone(),
                    source,
                })?;
                builder.with_reader(
                    PeriodicReader::builder(exporter)
                        .with_interval(metrics.interval)
                        .build(),
                )
            }
        };
    }
    Ok(Some(builder.build()))
}
