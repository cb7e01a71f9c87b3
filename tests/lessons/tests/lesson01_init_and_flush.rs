//! Lesson 01 (docs/lessons/01-init-and-flush.md): initialise telemetry once per process,
//! keep the guard, and flush it on every exit path.
//!
//! Each variant is a child process (this binary again) that exports over OTLP/HTTP to an
//! endpoint the test records, with `OTEL_BSP_SCHEDULE_DELAY` an hour long: nothing leaves
//! the batch processor on its own, so only a flush can export the span. The child makes a
//! span, prints its trace id, and exits the way a service's `main` does.

// Test code: a panic is how a check or a failed set-up reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use support::child;
use telemetry::{InitError, TelemetryConfig};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// What the child does in every variant: one span, its trace id and the headers the
/// propagator writes for it, printed for the parent.
fn make_a_span() {
    let span = telemetry::internal_span!("place order");
    let trace_id = span.in_scope(telemetry::current_trace_id);
    let mut headers: HashMap<String, String> = HashMap::new();
    telemetry::propagation::inject(&span.context(), &mut headers);
    drop(span);
    let mut names: Vec<&String> = headers.keys().collect();
    names.sort();
    println!("trace_id={}", trace_id.as_deref().unwrap_or("none"));
    println!(
        "injected={}",
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
}

fn config() -> TelemetryConfig {
    TelemetryConfig::from_env("lesson-01", "0").unwrap()
}

/// Runs `test` as a child exporting to a recording endpoint; returns its output and the
/// body of every export request the endpoint received.
fn run_exporting(test: &str) -> (child::Output, Vec<Bytes>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exports: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let record = Arc::clone(&exports);
    let app = Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            record.lock().unwrap().push(body);
            // An empty ExportTraceServiceResponse: everything accepted.
            async { ([("content-type", "application/x-protobuf")], Bytes::new()) }
        }),
    );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move { axum::serve(listener, app).await });

    let output = child::run(
        test,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
            ("RUST_LOG", "warn"),
        ],
    );
    assert!(output.status.success(), "{output:#?}");
    let exports = exports.lock().unwrap().clone();
    (output, exports)
}

/// Whether an export carried the trace id the child printed.
fn carries_the_trace(exports: &[Bytes], output: &child::Output) -> bool {
    let hex = child::value(&output.stdout, "trace_id").expect("the child printed its trace id");
    // An OTLP protobuf export holds each span's trace id as 16 raw bytes.
    let id: Vec<u8> = (0..16)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    id.len() == 16 && exports.concat().windows(16).any(|w| w == id.as_slice())
}

#[test]
fn broken_never_initialised_no_span_is_recorded_and_no_context_is_propagated() {
    const TEST: &str = "broken_never_initialised_no_span_is_recorded_and_no_context_is_propagated";
    if child::is_child(TEST) {
        // No `telemetry::init`: OpenTelemetry's defaults are a no-op propagator and no
        // tracer provider.
        make_a_span();
        return;
    }
    let (output, exports) = run_exporting(TEST);
    assert_eq!(child::value(&output.stdout, "trace_id"), Some("none"));
    assert_eq!(
        child::value(&output.stdout, "injected"),
        Some(""),
        "the default propagator writes no traceparent: the next service starts a trace of its own"
    );
    assert!(
        exports.is_empty(),
        "nothing was set up to export, yet something was"
    );
}

#[test]
fn broken_a_guard_dropped_at_once_exports_nothing() {
    const TEST: &str = "broken_a_guard_dropped_at_once_exports_nothing";
    if child::is_child(TEST) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            // `let _ =` drops the guard on this line, and with it shuts telemetry down:
            // every span made afterwards goes nowhere.
            let _ = telemetry::init(&config());
            make_a_span();
        });
        return;
    }
    let (output, exports) = run_exporting(TEST);
    // The provider is shut down: its tracer makes no real span, so there is no trace id
    // and nothing for the propagator to write either.
    assert_eq!(
        child::value(&output.stdout, "trace_id"),
        Some("none"),
        "{output:#?}"
    );
    assert_eq!(child::value(&output.stdout, "injected"), Some(""));
    assert!(
        exports.is_empty(),
        "a span made after the guard was dropped was exported"
    );
}

#[test]
fn broken_exit_without_shutdown_loses_the_buffered_spans() {
    const TEST: &str = "broken_exit_without_shutdown_loses_the_buffered_spans";
    if child::is_child(TEST) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let _telemetry = telemetry::init(&config()).unwrap();
            make_a_span();
            // The end of every `main` here, minus `telemetry.shutdown().await`:
            // `process::exit` runs no destructor, not even the guard's.
            lifecycle::shutdown::exit(Ok::<(), String>(()), Ok::<(), String>(()))
        })
    }
    let (output, exports) = run_exporting(TEST);
    assert!(
        child::value(&output.stdout, "injected").is_some_and(|h| h.contains("traceparent")),
        "{output:#?}"
    );
    assert!(
        exports.is_empty(),
        "without the flush the span should have died in the batch processor"
    );
}

#[test]
fn fixed_init_once_then_shutdown_before_exit_exports_every_span() {
    const TEST: &str = "fixed_init_once_then_shutdown_before_exit_exports_every_span";
    if child::is_child(TEST) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            // As in services/*/src/main.rs.
            let telemetry = telemetry::init(&config()).unwrap();
            // Once: a second call fails (the subscriber stays the first one).
            assert!(matches!(
                telemetry::init(&config()),
                Err(InitError::AlreadyInitialised(_))
            ));
            make_a_span();
            let flushed = telemetry.shutdown().await;
            lifecycle::shutdown::exit(Ok::<(), String>(()), flushed)
        })
    }
    let (output, exports) = run_exporting(TEST);
    assert!(
        child::value(&output.stdout, "injected").is_some_and(|h| h.contains("traceparent")),
        "{output:#?}"
    );
    assert!(
        carries_the_trace(&exports, &output),
        "the flush on exit should have exported the span: {output:#?}"
    );
}
