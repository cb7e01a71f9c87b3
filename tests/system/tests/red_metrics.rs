//! RED metrics end to end, against the real stack (`scripts/stack`): the three services
//! as processes send spans to the real Collector, whose spanmetrics connector turns them
//! into call counts and duration histograms and pushes those to the real Prometheus,
//! which Jaeger's Monitor tab reads (`/api/metrics/...`).
//!
//! Orders are placed in two rounds, some of them failing in the worker (an `OOS-` SKU
//! fails `reserve stock`, more than 100 units fails `charge payment`); the second round
//! starts only once Prometheus holds the first round's series, so every rate has an
//! increase to see. Prometheus must then count exactly this run's spans (its series carry
//! the run's `service.instance.id` as `instance`), keep exemplars that lead to this run's
//! traces, and Jaeger's metrics API must show calls, errors and latencies for each service.
//! `scripts/test` runs it after the stack is up; a plain `cargo test` skips it.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::native::{Order, Services, StackEnv, WAIT, wait_until_final};
use support::prometheus::Prometheus;

/// Per round: orders that are fulfilled, fail on stock, fail on payment.
const FULFILLED: usize = 6;
const OUT_OF_STOCK: usize = 2;
const DECLINED: usize = 2;
const ROUNDS: usize = 2;

/// What an order is made to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Fulfilled,
    OutOfStock,
    Declined,
}

impl Kind {
    fn item(self, n: usize) -> Value {
        match self {
            Kind::Fulfilled => json!({"sku": format!("BOOK-{n}"), "quantity": 2}),
            Kind::OutOfStock => json!({"sku": format!("OOS-{n}"), "quantity": 1}),
            Kind::Declined => json!({"sku": format!("BOOK-{n}"), "quantity": 101}),
        }
    }

    fn final_status(self) -> &'static str {
        match self {
            Kind::Fulfilled => "FULFILLED",
            _ => "FAILED",
        }
    }
}

fn round() -> Vec<Kind> {
    let mut kinds = vec![Kind::Fulfilled; FULFILLED];
    kinds.extend([Kind::OutOfStock; OUT_OF_STOCK]);
    kinds.extend([Kind::Declined; DECLINED]);
    kinds
}

async fn place(http: &reqwest::Client, gateway: &str, kind: Kind, n: usize) -> Order {
    let response = http
        .post(format!("{gateway}/api/orders"))
        .json(&json!({"customer_id": format!("red-{n}"), "items": [kind.item(n)]}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(response.status(), 201, "{kind:?} order {n}");
    let body: Value = response.json().await.unwrap();
    Order {
        id: body["order_id"].as_str().unwrap().to_owned(),
        trace_id: body["trace_id"].as_str().unwrap().to_owned(),
        caller_span_id: None,
    }
}

/// `url?k=v&…`, percent-encoded.
fn with_params(url: &str, params: &[(&str, &str)]) -> reqwest::Url {
    reqwest::Url::parse_with_params(url, params).unwrap()
}

/// Polls `probe` until it returns `Ok`, for at most `WAIT`; past that, fails with the
/// `Err` it returned last (what was seen instead).
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Jaeger's metrics API (what the Monitor tab draws): the points of each series, by the
/// series' `operation` label (empty when not grouped by operation).
async fn jaeger_metric(
    http: &reqwest::Client,
    jaeger: &str,
    metric: &str,
    service: &str,
    span_kind: &str,
    extra: &[(&str, &str)],
) -> BTreeMap<String, Vec<f64>> {
    let mut params = vec![
        ("service", service),
        ("spanKind", span_kind),
        ("groupByOperation", "true"),
        // The last 10 minutes, a point every 5 s, rates per second over 1 minute.
        ("lookback", "600000"),
        ("step", "5000"),
        ("ratePer", "60000"),
    ];
    params.extend_from_slice(extra);
    let response = http
        .get(with_params(
            &format!("{jaeger}/api/metrics/{metric}"),
            &params,
        ))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{metric} for {service}: {answer}");
    answer["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|series| {
            let operation = series["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["name"] == "operation")
                .and_then(|l| l["value"].as_str())
                .unwrap_or_default()
                .to_owned();
            let points = series["metricPoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["gaugeValue"]["doubleValue"].as_f64())
                .filter(|v| v.is_finite())
                .collect();
            (operation, points)
        })
        .collect()
}

/// The highest point of the operation's series, if it has any.
fn peak(series: &BTreeMap<String, Vec<f64>>, operation: &str) -> Option<f64> {
    series.get(operation)?.iter().copied().reduce(f64::max)
}

/// Peak resident memory (VmHWM) of a process, in MiB; what a container limit must allow.
fn peak_rss_mib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

#[test]
#[ignore = "needs the native stack: run scripts/test"]
fn red_metrics_from_spans_reach_prometheus_and_jaegers_monitor_tab() {
    let stack = StackEnv::from_env();
    let prometheus_port = std::env::var("STACK_PROMETHEUS_PORT")
        .expect("STACK_PROMETHEUS_PORT is not set: run this test through scripts/test");
    let (runtime, http) = support::native::http_client();
    let prometheus = Prometheus {
        url: format!("http://127.0.0.1:{prometheus_port}"),
        http: http.clone(),
    };
    let services = Services::start(&stack, "red", &runtime);
    let gateway = services.gateway_url.clone();
    // This run's series: its processes' `service.instance.id` is Prometheus' `instance`.
    let run = services.run_id.clone();
    let calls = |matchers: &str| {
        format!(r#"traces_span_metrics_calls_total{{instance="{run}"{matchers}}}"#)
    };
    let durations = |matchers: &str| {
        format!(r#"traces_span_metrics_duration_milliseconds_count{{instance="{run}"{matchers}}}"#)
    };
    let (prometheus, calls, durations) = (&prometheus, &calls, &durations);

    let mut orders: Vec<(Kind, Order)> = Vec::new();
    runtime.block_on(async {
        for round_no in 0..ROUNDS {
            let mut placed = tokio::task::JoinSet::new();
            for (i, kind) in round().into_iter().enumerate() {
                let (http, gateway) = (http.clone(), gateway.clone());
                let n = round_no * 100 + i;
                placed.spawn(async move { (kind, place(&http, &gateway, kind, n).await) });
            }
            while let Some(order) = placed.join_next().await {
                orders.push(order.unwrap());
            }
            for (kind, order) in &orders {
                assert_eq!(
                    wait_until_final(&http, &gateway, order).await,
                    kind.final_status(),
                    "order {} ({kind:?})",
                    order.id
                );
            }
            if round_no + 1 < ROUNDS {
                // The next round only once every service's series (the worker's error
                // series too) are in Prometheus: then each rate sees an increase.
                eventually("the first round's series in Prometheus", || async move {
                    let errors = prometheus
                        .by("span_name", &calls(r#", status_code="STATUS_CODE_ERROR""#))
                        .await;
                    let services = prometheus.by("service_name", &calls("")).await;
                    (services.len() == 3 && errors.len() == 2)
                        .then_some(())
                        .ok_or(format!("services {services:?}, errors {errors:?}"))
                })
                .await;
            }
        }
    });
    let placed = orders.len() as f64;
    let count = |kind: Kind| orders.iter().filter(|(k, _)| *k == kind).count() as f64;
    let (topic, http, jaeger) = (&services.topic, &http, &stack.jaeger);

    // Prometheus counts exactly this run's spans, by the names Jaeger's Monitor tab reads.
    runtime.block_on(async {
        let server_calls = eventually("every POST /api/orders counted", || async move {
            let by_span = prometheus
                .by(
                    "span_name",
                    &calls(r#", service_name="gateway", span_kind="SPAN_KIND_SERVER""#),
                )
                .await;
            (by_span.get("POST /api/orders") == Some(&placed))
                .then_some(by_span.clone())
                .ok_or(format!("{by_span:?}, want {placed} POST /api/orders"))
        })
        .await;
        println!("gateway SERVER calls: {server_calls:?}");

        let want_errors = BTreeMap::from([
            ("charge payment".to_owned(), count(Kind::Declined)),
            ("reserve stock".to_owned(), count(Kind::OutOfStock)),
        ]);
        let want_errors = &want_errors;
        let errors = eventually("every failed step counted as an error", || async move {
            let errors = prometheus
                .by(
                    "span_name",
                    &calls(r#", service_name="worker", status_code="STATUS_CODE_ERROR""#),
                )
                .await;
            (&errors == want_errors)
                .then_some(errors.clone())
                .ok_or(format!("{errors:?}, want {want_errors:?}"))
        })
        .await;
        println!("worker errors: {errors:?}");
        // No error anywhere else: a failed order is a business outcome, not a fault of
        // the gateway or the order-service.
        let elsewhere = prometheus
            .by(
                "service_name",
                &calls(r#", status_code="STATUS_CODE_ERROR", service_name!="worker""#),
            )
            .await;
        assert!(elsewhere.is_empty(), "errors outside the worker: {elsewhere:?}");

        // A duration histogram for each service's entry span, one observation per call.
        let process = format!("process {topic}");
        for (service, kind, span) in [
            ("gateway", "SPAN_KIND_SERVER", "POST /api/orders"),
            ("order-service", "SPAN_KIND_SERVER", "order.v1.OrderService/CreateOrder"),
            ("order-service", "SPAN_KIND_SERVER", "order.v1.OrderService/CompleteOrder"),
            ("worker", "SPAN_KIND_CONSUMER", process.as_str()),
        ] {
            eventually(&format!("a duration for every {service} {span}"), || async move {
                let observed = prometheus
                    .by(
                        "span_name",
                        &durations(&format!(r#", service_name="{service}", span_kind="{kind}""#)),
                    )
                    .await;
                (observed.get(span) == Some(&placed))
                    .then_some(())
                    .ok_or(format!("{observed:?}, want {placed}"))
            })
            .await;
        }

        // The services' own metrics (OTLP from each service's meter provider, not derived
        // from spans), exactly this run's.
        let run = run.as_str();
        let fulfilled = count(Kind::Fulfilled);
        let failed = placed - fulfilled;
        for (what, promql, want) in [
            (
                "orders created",
                format!(r#"app_orders_created_total{{instance="{run}"}}"#),
                placed,
            ),
            (
                "orders FULFILLED",
                format!(
                    r#"app_orders_completed_total{{instance="{run}", app_order_status="ORDER_STATUS_FULFILLED"}}"#
                ),
                fulfilled,
            ),
            (
                "orders FAILED",
                format!(
                    r#"app_orders_completed_total{{instance="{run}", app_order_status="ORDER_STATUS_FAILED"}}"#
                ),
                failed,
            ),
            (
                "POST /api/orders durations (http.server.request.duration)",
                format!(
                    r#"http_server_request_duration_seconds_count{{instance="{run}", http_route="/api/orders", http_request_method="POST"}}"#
                ),
                placed,
            ),
            (
                "CreateOrder durations on the server (rpc.server.call.duration)",
                format!(
                    r#"rpc_server_call_duration_seconds_count{{instance="{run}", rpc_method="order.v1.OrderService/CreateOrder"}}"#
                ),
                placed,
            ),
            (
                "CreateOrder durations at the gateway (rpc.client.call.duration)",
                format!(
                    r#"rpc_client_call_duration_seconds_count{{instance="{run}", rpc_method="order.v1.OrderService/CreateOrder"}}"#
                ),
                placed,
            ),
            (
                "records processed (messaging.process.duration)",
                format!(r#"messaging_process_duration_seconds_count{{instance="{run}"}}"#),
                placed,
            ),
        ] {
            let promql = &promql;
            eventually(&format!("the services' metric: {what}"), || async move {
                let total: f64 = prometheus.query(&format!("sum({promql})")).await.iter().map(|(_, v)| v).sum();
                (total == want)
                    .then_some(())
                    .ok_or(format!("{promql} = {total}, want {want}"))
            })
            .await;
        }
        for gauge in ["app_outbox_backlog", "app_kafka_consumer_lag"] {
            eventually(&format!("the services' gauge {gauge}"), || async move {
                let series = prometheus.query(&format!(r#"{gauge}{{instance="{run}"}}"#)).await;
                (!series.is_empty())
                    .then_some(())
                    .ok_or(format!("no {gauge} series for {run}"))
            })
            .await;
        }

        // Exemplars: a bucket of POST /api/orders leads to one of this run's traces.
        let ours: Vec<&str> = orders.iter().map(|(_, o)| o.trace_id.as_str()).collect();
        let (ours, run) = (&ours, &run);
        let exemplars = eventually("exemplars that lead to this run's traces", || async move {
            let ids = prometheus
                .exemplar_trace_ids(
                    &format!(
                        r#"traces_span_metrics_duration_milliseconds_bucket{{instance="{run}", span_name="POST /api/orders"}}"#
                    ),
                    Duration::from_secs(600),
                )
                .await;
            let matching = ids.iter().filter(|id| ours.contains(&id.as_str())).count();
            (matching > 0)
                .then_some(matching)
                .ok_or(format!("exemplar trace ids {ids:?}"))
        })
        .await;
        println!("exemplars leading to this run's traces: {exemplars}");

        // Jaeger's Monitor tab: calls, errors and latencies for each service. Jaeger adds
        // up all instances (earlier runs against this stack too): the exact counts are the
        // Prometheus checks above; these prove that Jaeger finds the series by the names the
        // Collector gives them (the worker's operation, this run's topic, is this run's alone).
        for (service, kind, operation) in [
            ("gateway", "server", "POST /api/orders"),
            ("order-service", "server", "order.v1.OrderService/CreateOrder"),
            ("worker", "consumer", process.as_str()),
        ] {
            let rate = eventually(&format!("Jaeger: calls of {service} {operation}"), || async move {
                let series = jaeger_metric(http, jaeger, "calls", service, kind, &[]).await;
                peak(&series, operation)
                    .filter(|v| *v > 0.0)
                    .ok_or(format!("{series:?}"))
            })
            .await;
            let p95 = eventually(&format!("Jaeger: latency of {service} {operation}"), || async move {
                let series = jaeger_metric(
                    http,
                    jaeger,
                    "latencies",
                    service,
                    kind,
                    &[("quantile", "0.95")],
                )
                .await;
                peak(&series, operation)
                    .filter(|v| *v > 0.0)
                    .ok_or(format!("{series:?}"))
            })
            .await;
            println!("Jaeger: {service} {operation}: peak {rate:.3} calls/s, p95 up to {p95:.1} ms");
        }
        for step in ["reserve stock", "charge payment"] {
            let error_rate = eventually(&format!("Jaeger: errors of worker {step}"), || async move {
                let series = jaeger_metric(http, jaeger, "errors", "worker", "internal", &[]).await;
                peak(&series, step)
                    .filter(|v| *v > 0.0)
                    .ok_or(format!("{series:?}"))
            })
            .await;
            println!("Jaeger: worker {step}: error ratio up to {error_rate:.2}");
        }
    });

    // scripts/red prints the same figures in the terminal, from the same Prometheus.
    let table = red_table(&prometheus_port);
    let row = |service: &str, operation: &str| {
        table
            .iter()
            .find(|row| row[0] == service && row[2] == operation)
            .unwrap_or_else(|| panic!("scripts/red lists no {service} {operation}: {table:?}"))
            .clone()
    };
    let figure = |row: &[String], column: usize| row[column].parse::<f64>().unwrap();
    // Columns: service, kind, operation, req/s, err/s, err%, p50, p95, p99.
    let post = row("gateway", "POST /api/orders");
    assert!(
        figure(&post, 3) > 0.0 && figure(&post, 4) == 0.0,
        "{post:?}"
    );
    assert!(
        figure(&post, 8) > 0.0,
        "a p99 for POST /api/orders: {post:?}"
    );
    for step in ["reserve stock", "charge payment"] {
        let failed = row("worker", step);
        assert!(figure(&failed, 4) > 0.0, "{failed:?}");
    }

    // What each process needed (for the compose memory limits), before they stop.
    for component in ["kafka", "collector", "jaeger", "prometheus"] {
        let pid = std::fs::read_to_string(stack.run_dir.join(format!("{component}.pid")))
            .unwrap_or_default();
        if let Some(mib) = peak_rss_mib(&pid) {
            println!("peak RSS {component}: {mib} MiB");
        }
    }
    for child in children_of_this_process() {
        if let (Some(mib), Ok(name)) = (
            peak_rss_mib(&child),
            std::fs::read_to_string(format!("/proc/{child}/comm")),
        ) {
            println!("peak RSS {}: {mib} MiB", name.trim());
        }
    }
    let dir = services.dir.clone();
    services.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// `scripts/red --all` against the stack's Prometheus, as rows of cells.
fn red_table(prometheus_port: &str) -> Vec<Vec<String>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/red");
    let output = std::process::Command::new(&script)
        .args(["--all", "--window", "10m"])
        .env("STACK_PROMETHEUS_PORT", prometheus_port)
        .env_remove("PROMETHEUS_URL")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/red failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("scripts/red --all --window 10m:\n{stdout}");
    // Cells are separated by at least two spaces; an operation name has single ones.
    stdout
        .lines()
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The pids of this test process' children (the three services).
fn children_of_this_process() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}
