//! Telemetry settings, read once at start from the standard `OTEL_*` variables.
//!
//! The SDK reads some of these variables itself but silently ignores a value it cannot
//! parse (a typo in `OTEL_TRACES_SAMPLER` quietly samples everything). Here every value
//! is parsed up front and a bad one stops the service with an error naming the variable.
//! The parsed values are then handed to the SDK explicitly, so what you see here is what
//! runs. Values are read through the workspace's one settings reader, so tests pass a map
//! and never touch the process environment.

use std::time::Duration;

use crate::limits::Limits;
use crate::semconv::RpcConventions;
use settings::{ProcessEnv, SettingError, Source, check_url, millis_or, positive_or, value};

// OTEL_RESOURCE_ATTRIBUTES values use W3C Baggage's percent-encoding.
use crate::propagation::w3c::percent_decode;

/// Where finished spans go (`OTEL_TRACES_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// OTLP to a Collector (the default).
    Otlp,
    /// Human-readable spans on stdout, for local debugging.
    Console,
}

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    pub protocol: OtlpProtocol,
    /// Full URL: for HTTP it includes the signal's path (`/v1/traces`, `/v1/metrics`).
    pub endpoint: String,
    pub timeout: Duration,
    /// `TELEMETRY_EXPORT_RETRY_MS`: how long the exporter keeps trying one batch that
    /// failed (connection refused, 503, ...) before it gives up and the batch counts as
    /// dropped. Meanwhile the batch processor's queue takes new spans, so an outage
    /// shorter than this, with a queue that holds its spans, loses nothing.
    pub retry_for: Duration,
}

/// Where the process's own metrics go (`OTEL_METRICS_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsExporter {
    /// OTLP to a Collector (the default).
    Otlp,
    /// Printed to stdout at every interval, for local debugging.
    Console,
}

/// The meter provider's settings: the standard `OTEL_METRICS_EXPORTER`,
/// `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_EXPORTER_OTLP_METRICS_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Empty when `OTEL_METRICS_EXPORTER=none`.
    pub exporters: Vec<MetricsExporter>,
    pub otlp: OtlpConfig,
    /// `OTEL_METRIC_EXPORT_INTERVAL`: how often metrics are read and exported (60 s).
    pub interval: Duration,
}

/// Batch span processor settings (`OTEL_BSP_*`). When the queue is full, new spans are
/// dropped: size it for the peak span rate times the schedule delay. Each export is
/// bounded by `OTEL_EXPORTER_OTLP_TIMEOUT` (the SDK's thread-based processor does not
/// read `OTEL_BSP_EXPORT_TIMEOUT`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub scheduled_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// `service.name`: `OTEL_SERVICE_NAME`, else `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, else the binary's own name.
    pub service_name: String,
    /// `service.version`: the crate version unless `OTEL_RESOURCE_ATTRIBUTES` sets it.
    pub service_version: String,
    /// Every other resource attribute from `OTEL_RESOURCE_ATTRIBUTES`;
    /// `deployment.environment.name` defaults to `local`.
    pub resource_attributes: Vec<(String, String)>,
    /// Empty when `OTEL_TRACES_EXPORTER=none`.
    pub exporters: Vec<Exporter>,
    pub otlp: OtlpConfig,
    pub metrics: MetricsConfig,
    pub sampler: SamplerConfig,
    pub batch: BatchSettings,
    /// `OTEL_SEMCONV_STABILITY_OPT_IN`: `rpc/dup` adds the pre-stable RPC attributes.
    pub rpc_conventions: RpcConventions,
    /// `OTEL_SPAN_*_COUNT_LIMIT`, `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT` and kin.
    pub limits: Limits,
    /// `TELEMETRY_SPAN_DETAILS`: `true` adds the `tracing` bridge's source location,
    /// thread, target and busy/idle time to every span, for debugging (default `false`:
    /// weight on every span that few readers need).
    pub span_details: bool,
    /// `RUST_LOG`-style filter for the log lines on stderr (default `info`).
    pub log_filter: String,
}

const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
const DEFAULT_ENVIRONMENT: &str = "local";

impl TelemetryConfig {
    /// Reads the process environment. `service_name` and `service_version` are the
    /// defaults for a binary that sets neither (pass `env!("CARGO_PKG_NAME")` and
    /// `env!("CARGO_PKG_VERSION")`).
    pub fn from_env(service_name: &str, service_version: &str) -> Result<Self, SettingError> {
        Self::from_source(service_name, service_version, &ProcessEnv)
    }

    /// Like [`TelemetryConfig::from_env`] with any source of variables (tests pass a map).
    pub fn from_source(
        service_name: &str,
        service_version: &str,
        source: &impl Source,
    ) -> Result<Self, SettingError> {
        let get = |key: &str| value(source, key);

        let mut resource_attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(raw) => parse_resource_attributes(&raw)?,
            None => Vec::new(),
        };
        let mut take_attribute = |key: &str| {
            let index = resource_attributes.iter().position(|(k, _)| k == key)?;
            Some(resource_attributes.remove(index).1)
        };
        let name_from_attributes = take_attribute("service.name");
        let version_from_attributes = take_attribute("service.version");
        let service_name = get("OTEL_SERVICE_NAME")
            .or(name_from_attributes)
            .unwrap_or_else(|| service_name.to_owned());
        let service_version = version_from_attributes.unwrap_or_else(|| service_version.to_owned());
        if !resource_attributes
            .iter()
            .any(|(k, _)| k == "deployment.environment.name")
        {
            resource_attributes.push((
                "deployment.environment.name".to_owned(),
                DEFAULT_ENVIRONMENT.to_owned(),
            ));
        }

        let exporters = parse_exporter_list(
            "OTEL_TRACES_EXPORTER",
            get("OTEL_TRACES_EXPORTER").as_deref(),
            Exporter::Otlp,
            Exporter::Console,
        )?;
        let otlp = parse_otlp(source, Signal::TRACES)?;
        let metrics = MetricsConfig {
            exporters: parse_exporter_list(
                "OTEL_METRICS_EXPORTER",
                get("OTEL_METRICS_EXPORTER").as_deref(),
                MetricsExporter::Otlp,
                MetricsExporter::Console,
            )?,
            otlp: parse_otlp(source, Signal::METRICS)?,
            interval: millis_or(
                source,
                "OTEL_METRIC_EXPORT_INTERVAL",
                Duration::from_secs(60),
            )?,
        };
        let sampler = parse_sampler(
            get("OTEL_TRACES_SAMPLER").as_deref(),
            get("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        let batch = parse_batch(source)?;
        let rpc_conventions = RpcConventions::from_source(source)?;
        let limits = Limits::from_source(source)?;
        let span_details = settings::parse_or(source, "TELEMETRY_SPAN_DETAILS", false)?;
        let log_filter = get("RUST_LOG").unwrap_or_else(|| "info".to_owned());

        Ok(Self {
            service_name,
            service_version,
            resource_attributes,
            exporters,
            otlp,
            metrics,
            sampler,
            batch,
            rpc_conventions,
            limits,
            span_details,
            log_filter,
        })
    }
}

/// An `OTEL_*_EXPORTER` list: comma-separated `otlp`, `console`, `none`; `otlp` when unset.
/// `otlp` and `console` are the variants the signal's exporter type has for them.
fn parse_exporter_list<E: Copy + PartialEq>(
    var: &str,
    raw: Option<&str>,
    otlp: E,
    console: E,
) -> Result<Vec<E>, SettingError> {
    let Some(raw) = raw else {
        return Ok(vec![otlp]);
    };
    let mut exporters = Vec::new();
    for name in raw.split(',').map(str::trim) {
        let exporter = match name {
            "otlp" => otlp,
            "console" => console,
            "none" => continue,
            other => {
                return Err(SettingError::new(
                    var,
                    raw,
                    format!("unknown exporter {other:?}; expected otlp, console or none"),
                ));
            }
        };
        if !exporters.contains(&exporter) {
            exporters.push(exporter);
        }
    }
    Ok(exporters)
}

/// The variables of one OTLP signal (the OTLP exporter spec's names).
struct Signal {
    protocol: &'static str,
    endpoint: &'static str,
    timeout: &'static str,
    path: &'static str,
}

impl Signal {
    const TRACES: Signal = Signal {
        protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        path: "/v1/traces",
    };
    const METRICS: Signal = Signal {
        protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        path: "/v1/metrics",
    };
}

/// A failed batch is retried for a minute: longer than the 30 s Collector outage the
/// fault drills show survived (`scripts/drill collector-kill`).
const DEFAULT_EXPORT_RETRY: Duration = Duration::from_secs(60);

fn parse_otlp(source: &impl Source, signal: Signal) -> Result<OtlpConfig, SettingError> {
    let (protocol_var, protocol_raw) =
        first_set(source, &[signal.protocol, "OTEL_EXPORTER_OTLP_PROTOCOL"]);
    let protocol = match protocol_raw.as_deref() {
        // The spec's default transport, and the SDK's.
        None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some("grpc") => OtlpProtocol::Grpc,
        Some(other) => {
            return Err(SettingError::new(
                protocol_var,
                other,
                "expected grpc or http/protobuf",
            ));
        }
    };

    // The signal-specific variable is used as it is; the generic one gets the
    // signal's path appended for HTTP (OTLP exporter spec).
    let endpoint = if let Some(raw) = value(source, signal.endpoint) {
        check_url(signal.endpoint, &raw)?;
        raw
    } else {
        let base = match value(source, "OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(raw) => {
                check_url("OTEL_EXPORTER_OTLP_ENDPOINT", &raw)?;
                raw
            }
            None => match protocol {
                OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_owned(),
                OtlpProtocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT.to_owned(),
            },
        };
        match protocol {
            OtlpProtocol::Grpc => base,
            OtlpProtocol::HttpProtobuf => format!("{}{}", base.trim_end_matches('/'), signal.path),
        }
    };

    let (timeout_var, _) = first_set(source, &[signal.timeout, "OTEL_EXPORTER_OTLP_TIMEOUT"]);
    let timeout = millis_or(source, timeout_var, Duration::from_secs(10))?;
    let retry_for = millis_or(source, "TELEMETRY_EXPORT_RETRY_MS", DEFAULT_EXPORT_RETRY)?;
    Ok(OtlpConfig {
        protocol,
        endpoint,
        timeout,
        retry_for,
    })
}

/// The first of `variables` that is set, with its value; else the last, unset.
fn first_set(source: &impl Source, variables: &[&'static str]) -> (&'static str, Option<String>) {
    for var in variables {
        if let Some(value) = value(source, var) {
            return (var, Some(value));
        }
    }
    (variables[variables.len() - 1], None)
}

fn parse_sampler(name: Option<&str>, arg: Option<&str>) -> Result<SamplerConfig, SettingError> {
    let ratio = || -> Result<f64, SettingError> {
        const VAR: &str = "OTEL_TRACES_SAMPLER_ARG";
        match arg {
            None => Ok(1.0),
            Some(raw) => match raw.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(SettingError::new(VAR, raw, "expected a ratio from 0 to 1")),
            },
        }
    };
    Ok(match name {
        None | Some("parentbased_always_on") => SamplerConfig::ParentBasedAlwaysOn,
        Some("always_on") => SamplerConfig::AlwaysOn,
        Some("always_off") => SamplerConfig::AlwaysOff,
        Some("traceidratio") => SamplerConfig::TraceIdRatio(ratio()?),
        Some("parentbased_always_off") => SamplerConfig::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerConfig::ParentBasedTraceIdRatio(ratio()?),
        Some(other) => {
            return Err(SettingError::new(
                "OTEL_TRACES_SAMPLER",
                other,
                "expected always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

/// The batch span processor's queue, in spans. The spec's default, 2048, lost 2,610 of the
/// order-service's spans in a 30 s Collector outage at the drills' load (20 orders/s, about
/// 140 spans/s); 8192 lost none, for about 3.4 MiB more peak memory (README, "What
/// survives what": a full queue costs about 13 MiB).
pub(crate) const DEFAULT_MAX_QUEUE_SIZE: usize = 8192;

fn parse_batch(source: &impl Source) -> Result<BatchSettings, SettingError> {
    let batch = BatchSettings {
        max_queue_size: positive_or(
            source,
            "OTEL_BSP_MAX_QUEUE_SIZE",
            DEFAULT_MAX_QUEUE_SIZE as u64,
        )? as usize,
        max_export_batch_size: positive_or(source, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize,
        scheduled_delay: millis_or(source, "OTEL_BSP_SCHEDULE_DELAY", Duration::from_secs(5))?,
    };
    if batch.max_export_batch_size > batch.max_queue_size {
        return Err(SettingError::new(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            batch.max_export_batch_size,
            format!(
                "must not exceed OTEL_BSP_MAX_QUEUE_SIZE ({})",
                batch.max_queue_size
            ),
        ));
    }
    Ok(batch)
}

/// `key1=value1,key2=value2`, values percent-encoded (W3C Baggage octet rules).
fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>, SettingError> {
    const VAR: &str = "OTEL_RESOURCE_ATTRIBUTES";
    let mut attributes = Vec::new();
    for pair in raw.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(SettingError::new(
                VAR,
                raw,
                format!("{pair:?} is not key=value"),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(SettingError::new(
                VAR,
                raw,
                format!("{pair:?} has an empty key"),
            ));
        }
        let value = percent_decode(value.trim())
            .map(|v| v.into_owned())
            .ok_or_else(|| SettingError::new(VAR, raw, format!("{pair:?} has a bad %-escape")))?;
        attributes.push((key.to_owned(), value));
    }
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<TelemetryConfig, SettingError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::from_source("svc", "1.2.3", &map)
    }

    #[test]
    fn defaults_work_without_any_variable() {
        let c = config(&[]).unwrap();
        assert_eq!(c.service_name, "svc");
        assert_eq!(c.service_version, "1.2.3");
        assert_eq!(c.exporters, vec![Exporter::Otlp]);
        assert_eq!(c.otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otlp.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(c.sampler, SamplerConfig::ParentBasedAlwaysOn);
        assert_eq!(c.batch.max_queue_size, DEFAULT_MAX_QUEUE_SIZE);
        assert_eq!(c.batch.scheduled_delay, Duration::from_secs(5));
        assert_eq!(c.otlp.retry_for, Duration::from_secs(60));
        assert_eq!(c.metrics.exporters, vec![MetricsExporter::Otlp]);
        assert_eq!(c.metrics.otlp.endpoint, "http://localhost:4318/v1/metrics");
        assert_eq!(c.metrics.interval, Duration::from_secs(60));
        assert!(
            c.resource_attributes
                .contains(&("deployment.environment.name".into(), "local".into()))
        );
    }

    #[test]
    fn reads_the_standard_variables() {
        let c = config(&[
            ("OTEL_SERVICE_NAME", "gateway"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=demo,team=a%2Cb,service.version=9",
            ),
            ("OTEL_TRACES_EXPORTER", "console,otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "8192"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ])
        .unwrap();
        assert_eq!(c.service_name, "gateway");
        assert_eq!(c.service_version, "9");
        assert_eq!(
            c.resource_attributes,
            vec![
                ("deployment.environment.name".into(), "demo".into()),
                ("team".into(), "a,b".into())
            ]
        );
        assert_eq!(c.exporters, vec![Exporter::Console, Exporter::Otlp]);
        assert_eq!(c.otlp.endpoint, "http://otel-collector:4317");
        assert_eq!(c.sampler, SamplerConfig::ParentBasedTraceIdRatio(0.25));
        assert_eq!(c.batch.max_queue_size, 8192);
        assert_eq!(c.batch.scheduled_delay, Duration::from_millis(200));
    }

    #[test]
    fn http_endpoints_get_the_traces_path_only_from_the_generic_variable() {
        let generic = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).unwrap();
        assert_eq!(generic.otlp.endpoint, "http://c:4318/v1/traces");
        assert_eq!(generic.metrics.otlp.endpoint, "http://c:4318/v1/metrics");
        let signal = config(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4318/m"),
        ])
        .unwrap();
        assert_eq!(signal.otlp.endpoint, "http://c:4318/custom");
        assert_eq!(signal.metrics.otlp.endpoint, "http://m:4318/m");
    }

    #[test]
    fn none_disables_export() {
        let c = config(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])
        .unwrap();
        assert!(c.exporters.is_empty());
        assert!(c.metrics.exporters.is_empty());
    }

    #[test]
    fn reads_the_metrics_variables() {
        let c = config(&[
            ("OTEL_METRICS_EXPORTER", "console,otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317"),
            ("TELEMETRY_EXPORT_RETRY_MS", "2000"),
        ])
        .unwrap();
        assert_eq!(
            c.metrics.exporters,
            vec![MetricsExporter::Console, MetricsExporter::Otlp]
        );
        assert_eq!(c.metrics.interval, Duration::from_secs(5));
        assert_eq!(c.metrics.otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.metrics.otlp.endpoint, "http://otel-collector:4317");
        // The traces keep the generic protocol.
        assert_eq!(c.otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otlp.retry_for, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("OTEL_TRACES_EXPORTER", "jaeger"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
            ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "none"),
            ("TELEMETRY_SPAN_DETAILS", "yes"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "udp"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector"),
            ("TELEMETRY_EXPORT_RETRY_MS", "-5"),
        ];
        for (var, value) in cases {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.variable, var, "{var}={value}");
            assert!(err.to_string().contains(var));
        }
        let err = config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "OTEL_TRACES_SAMPLER_ARG");
        let err = config(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "20"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
    }
}
