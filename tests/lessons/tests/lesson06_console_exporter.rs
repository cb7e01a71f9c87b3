//! Lesson 06 (docs/lessons/06-console-exporter.md): `OTEL_TRACES_EXPORTER=console` prints
//! each span to stdout the moment it ends, with no Collector or Jaeger running; logs stay
//! on stderr, each line with its trace id.
//!
//! Each variant is a child process (this binary again) that runs the worker's real
//! fulfilment under a parent span, then prints a marker line on stdout and only then
//! shuts telemetry down. stdout is one ordered stream, so what stands before the marker
//! was printed while the process was still working.

// Test code: a panic is how a check or a failed set-up reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use proto::order::v1::{Order, OrderCreated, OrderItem};
use support::child;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const MARK: &str = "----- the work is done; telemetry shuts down next -----";

/// The worker's fulfilment of one order under a parent span; returns the trace id.
async fn fulfil_an_order() -> String {
    let span = telemetry::internal_span!("process orders");
    let trace_id = span
        .in_scope(telemetry::current_trace_id)
        .unwrap_or_default();
    let event = OrderCreated::for_order(&Order {
        order_id: "order-6".into(),
        customer_id: "alice".into(),
        items: vec![OrderItem {
            sku: "BOOK-1".into(),
            quantity: 1,
        }],
        ..Order::default()
    });
    worker::fulfilment::fulfil(&event, faults::FaultInjection::Off)
        .instrument(span)
        .await;
    trace_id
}

fn split(output: &child::Output) -> (&str, &str) {
    output
        .stdout
        .split_once(MARK)
        .unwrap_or_else(|| panic!("no marker in the child's stdout: {output:#?}"))
}

fn printed_span(text: &str, name: &str) -> bool {
    text.contains(&format!("Name         : {name}\n"))
}

#[test]
fn broken_a_batched_console_exporter_prints_nothing_while_you_watch() {
    const TEST: &str = "broken_a_batched_console_exporter_prints_nothing_while_you_watch";
    if child::is_child(TEST) {
        // The same stdout exporter behind a batch processor, as one would for OTLP. The
        // delay is an hour here so that the test is exact; the default 5 s is enough to
        // put the spans on the screen long after the logs of the same request.
        let batch = BatchSpanProcessor::builder(opentelemetry_stdout::SpanExporter::default())
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("lesson-06")))
            .init();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let trace_id = runtime.block_on(fulfil_an_order());
        println!("\n{MARK} trace_id={trace_id}");
        provider.shutdown().unwrap();
        return;
    }
    let output = child::run(TEST, &[("RUST_LOG", "info")]);
    assert!(output.status.success(), "{output:#?}");
    let (while_working, at_shutdown) = split(&output);
    for step in ["process orders", "reserve stock", "charge payment"] {
        assert!(
            !printed_span(while_working, step),
            "{step} was printed before the flush: {output:#?}"
        );
        // Only the flush printed it: a process killed before then prints nothing.
        assert!(printed_span(at_shutdown, step), "{output:#?}");
    }
}

#[test]
fn fixed_the_console_exporter_prints_each_span_as_it_ends() {
    const TEST: &str = "fixed_the_console_exporter_prints_each_span_as_it_ends";
    if child::is_child(TEST) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            // What `OTEL_TRACES_EXPORTER=console cargo run -p worker` does.
            let config = telemetry::TelemetryConfig::from_env("lesson-06", "0").unwrap();
            let telemetry = telemetry::init(&config).unwrap();
            let trace_id = fulfil_an_order().await;
            println!("\n{MARK} trace_id={trace_id}");
            telemetry.shutdown().await.unwrap();
        });
        return;
    }
    let output = child::run(
        TEST,
        &[("OTEL_TRACES_EXPORTER", "console"), ("RUST_LOG", "info")],
    );
    assert!(output.status.success(), "{output:#?}");
    let (while_working, _) = split(&output);
    let trace_id = child::value(&output.stdout, "trace_id").unwrap();
    assert_eq!(trace_id.len(), 32, "{output:#?}");
    for step in ["process orders", "reserve stock", "charge payment"] {
        assert!(printed_span(while_working, step), "{step}: {output:#?}");
    }
    // All three in one trace, the steps children of the consumer-like parent.
    assert_eq!(
        while_working
            .matches(&format!("TraceId      : {trace_id}\n"))
            .count(),
        3,
        "{output:#?}"
    );
    // Spans on stdout, logs on stderr: `2>/dev/null` leaves only the spans, and each log
    // line names the trace it belongs to.
    assert!(!output.stderr.contains("TraceId"), "{output:#?}");
    let stock_reserved = output
        .stderr
        .lines()
        .find(|line| line.contains("stock reserved"))
        .unwrap_or_else(|| panic!("no log line for the step: {output:#?}"));
    assert!(
        stock_reserved.contains(&format!("trace_id={trace_id}")),
        "{stock_reserved}"
    );
}
