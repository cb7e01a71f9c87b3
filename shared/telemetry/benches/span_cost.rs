//! What tracing costs a service per request, measured without the network around it:
//! the gateway's hop (the HTTP server middleware, and inside it a gRPC client call through
//! the client middleware: two spans, extraction, injection, the request metrics) run in a
//! loop, traced and untraced, each variant in a fresh process configured the way
//! `scripts/bench` configures the services:
//!
//! - traced: the defaults (parent-based always-on sampler, OTLP/HTTP to a Collector
//!   stand-in in a process of its own, so its work is not counted);
//! - recorded: spans made and ended as traced, but `OTEL_TRACES_EXPORTER=none`: what the
//!   `tracing` bridge and the SDK cost before any export (batching, OTLP encoding, sending);
//! - untraced: `OTEL_TRACES_SAMPLER=always_off`, `OTEL_TRACES_EXPORTER=none`.
//!
//! The figure is the process's CPU time (every thread: the batch processor's export
//! included, up to the final flush) per request, A B C A B C. Run it with
//! `cargo bench -p telemetry --bench span_cost` (`SPAN_COST_REQUESTS`, default 200000).

// A measurement program: a set-up that fails should stop it loudly, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use http::{Request, Response};
use telemetry::TelemetryConfig;
use telemetry::propagation::grpc::GrpcClientLayer;
use telemetry::propagation::http::{HttpServerLayer, InboundContext};
use tower::{Layer, Service, ServiceExt};

mod loopback_collector {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/loopback_collector.rs"
    ));
}

const ROLE: &str = "SPAN_COST_ROLE";
const SPANS_PER_REQUEST: f64 = 2.0;

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("collector") => collector(),
        Ok(variant) => measure(variant),
        Err(_) => compare(),
    }
}

/// The parent: a Collector stand-in, then each variant twice, alternated; one table.
fn compare() {
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut collector = Command::new(&exe)
        .env(ROLE, "collector")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Collector stand-in");
    let mut endpoint = String::new();
    BufReader::new(collector.stdout.take().expect("piped"))
        .read_line(&mut endpoint)
        .expect("the stand-in's address");
    let endpoint = endpoint.trim().to_owned();

    let requests: u64 = std::env::var("SPAN_COST_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let run = |variant: &str| -> f64 {
        let mut command = Command::new(&exe);
        command
            .env(ROLE, variant)
            .env("SPAN_COST_REQUESTS", requests.to_string())
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("RUST_LOG", "warn");
        match variant {
            "traced" => {
                command.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
            }
            "recorded" => {
                command.env("OTEL_TRACES_EXPORTER", "none");
            }
            _ => {
                command
                    .env("OTEL_TRACES_SAMPLER", "always_off")
                    .env("OTEL_TRACES_EXPORTER", "none");
            }
        }
        let output = command.output().expect("run a variant");
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{variant} printed {text:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    };
    const VARIANTS: [(&str, &str); 3] = [
        ("traced", "traced, exported over OTLP/HTTP"),
        ("recorded", "recorded, not exported"),
        ("untraced", "untraced"),
    ];
    let mut runs: [Vec<f64>; 3] = Default::default();
    for _ in 0..2 {
        for ((variant, _), figures) in VARIANTS.iter().zip(runs.iter_mut()) {
            figures.push(run(variant));
        }
    }
    let _ = collector.kill();
    let _ = collector.wait();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let untraced = mean(&runs[2]);
    println!(
        "span_cost: {requests} requests per run, {SPANS_PER_REQUEST} spans per request (HTTP server + gRPC client)"
    );
    println!();
    println!(
        "| gateway hop, in-process | CPU µs per request, run 1 | run 2 | ÷ untraced | µs per span over untraced |"
    );
    println!("|:--|--:|--:|--:|--:|");
    for ((_, label), figures) in VARIANTS.iter().zip(&runs) {
        let m = mean(figures);
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} |",
            figures[0],
            figures[1],
            m / untraced,
            (m - untraced) / SPANS_PER_REQUEST
        );
    }
}

/// A variant's process: telemetry as the services start it, the loop, the flush; prints
/// CPU µs per request.
fn measure(variant: &str) {
    let requests: u64 = std::env::var("SPAN_COST_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let per_request = runtime.block_on(async {
        let config = TelemetryConfig::from_env("span-cost", "0").expect("telemetry settings");
        let guard = telemetry::init(&config).expect("telemetry");

        // The order-service stand-in answers at once (gRPC status in the headers).
        let order_service = tower::service_fn(|_request: Request<()>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("grpc-status", "0")
                    .body(())
                    .expect("a response"),
            )
        });
        let client = GrpcClientLayer::new("http://order-service:50051".parse().expect("a URI"))
            .layer(order_service);
        let handler = tower::service_fn(move |_request: Request<()>| {
            let mut client = client.clone();
            async move {
                let call = Request::builder()
                    .uri("/order.v1.OrderService/GetOrder")
                    .body(())
                    .expect("a request");
                let _ = client.ready().await?.call(call).await?;
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(200)
                        .body(())
                        .expect("a response"),
                )
            }
        });
        let mut gateway = HttpServerLayer::new(InboundContext::Continue).layer(handler);
        let request = || {
            Request::builder()
                .uri("http://127.0.0.1:8080/api/orders/0b5f1c9e")
                .header("host", "127.0.0.1:8080")
                .header("user-agent", "loadgen/0.1")
                .body(())
                .expect("a request")
        };
        // Warm up: allocator, lazily built parts, the exporter's connection.
        for _ in 0..requests / 10 {
            let _ = gateway.ready().await.expect("ready").call(request()).await;
        }
        let started = (cpu_seconds(), Instant::now());
        for _ in 0..requests {
            let _ = gateway.ready().await.expect("ready").call(request()).await;
        }
        guard.shutdown().await.expect("telemetry flushed");
        let cpu = cpu_seconds() - started.0;
        eprintln!(
            "{variant}: {requests} requests in {:?}",
            started.1.elapsed()
        );
        cpu * 1e6 / requests as f64
    });
    println!("{per_request:.3}");
}

/// This process's user + system CPU time, every thread (/proc/self/stat, in the
/// kernel's USER_HZ ticks, 100 a second on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// The Collector stand-in's process: prints its endpoint, answers every export with 200.
fn collector() {
    let endpoint = loopback_collector::start(&[]).endpoint;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{endpoint}").expect("stdout");
    stdout.flush().expect("stdout");
    loop {
        std::thread::park();
    }
}
