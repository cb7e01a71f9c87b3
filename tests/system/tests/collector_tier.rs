//! The Collector tier (README: "At scale") against the real Kafka and Jaeger: the three
//! services send to an agent Collector, which routes every span by trace id to one of two
//! gateway Collectors, where tail sampling keeps every failed trace, every slow trace and a
//! percentage of the rest. Checked through Jaeger's API: every failed and every slow order's
//! trace is there and complete; of the ordinary ones about the configured percentage is
//! there, each complete (never a partial trace); and both gateways took part. The agent's
//! metrics reach the stack's Prometheus: the RED metrics it derives from every span, before
//! sampling, count every order (not only the kept traces), and the services' own metrics
//! arrive through it.
//!
//! `scripts/test` starts the stack and the tier (`scripts/stack start collector-tier`) and
//! exports the tier's ports and its TAIL_SAMPLING_* settings, which this test reads; a plain
//! `cargo test` skips it (it needs the stack).

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::collector::SelfMetrics;
use support::jaeger::StoredSpan;
use support::native::{Services, StackEnv, fetch_trace, http_client};
use support::order_trace::{self, ORDER_SPANS};
use support::prometheus::Prometheus;
use support::wait_for;

/// Orders of each kind, placed interleaved. The ordinary ones make the sample whose kept
/// fraction is checked; failed and slow ones must all be kept.
const ORDINARY_ORDERS: usize = 300;
const FAILED_ORDERS: usize = 10;
const SLOW_ORDERS: usize = 10;
/// Ordinary orders under the latency threshold needed to measure the kept fraction.
const MIN_SAMPLE: u64 = 100;
/// Orders in flight at once.
const CONCURRENCY: usize = 16;
/// Every bound below holds with probability at least 1 - 2 x this.
const FALSE_FAILURE_PER_TAIL: f64 = 5e-7;
/// Time for the tier to take, decide and store everything once the services have stopped:
/// decision_wait (10 s by default) plus a tick, a batch and an export.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ordinary,
    /// `demo.fault=payment_declined`: `charge payment` fails, the trace has an ERROR span.
    Failed,
    /// `demo.delay.charge_payment` past the latency threshold.
    Slow,
}

/// The tier's addresses and the sampling settings it was started with.
struct Tier {
    agent_grpc: String,
    agent_http: String,
    agent_metrics: String,
    gateway_metrics: [String; 2],
    /// The stack's Prometheus, where the agent sends metrics.
    prometheus: String,
    percentage: f64,
    threshold: Duration,
}

impl Tier {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run this test through scripts/test, which starts the collector tier")
            })
        };
        let port = |name: &str| format!("127.0.0.1:{}", var(name));
        Self {
            agent_grpc: format!("http://{}", port("STACK_TIER_AGENT_GRPC_PORT")),
            agent_http: format!("http://{}", port("STACK_TIER_AGENT_HTTP_PORT")),
            agent_metrics: format!("http://{}/metrics", port("STACK_TIER_AGENT_METRICS_PORT")),
            gateway_metrics: [1, 2].map(|n| {
                format!(
                    "http://{}/metrics",
                    port(&format!("STACK_TIER_GATEWAY_{n}_METRICS_PORT"))
                )
            }),
            prometheus: format!("http://{}", port("STACK_PROMETHEUS_PORT")),
            percentage: var("TAIL_SAMPLING_PERCENTAGE").parse().unwrap(),
            threshold: Duration::from_millis(
                var("TAIL_SAMPLING_LATENCY_THRESHOLD_MS").parse().unwrap(),
            ),
        }
    }
}

/// One Collector's counters that this test reads (Collector v0.161 names them without
/// `_total`).
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    accepted: f64,
    refused: f64,
    /// Gateways: traces seen, and traces decided (kept or dropped).
    traces_received: f64,
    traces_kept: f64,
    traces_dropped: f64,
    dropped_too_early: f64,
    /// Gateways: spans sent to Jaeger.
    sent: f64,
    send_failed: f64,
    /// Agent: the services' metric points it took in or refused, and the points it failed to
    /// send to Prometheus (the services' own and span_metrics' alike).
    metric_points_accepted: f64,
    metric_points_refused: f64,
    metric_points_send_failed: f64,
}

impl std::ops::Sub for Counters {
    type Output = Self;
    fn sub(self, b: Self) -> Self {
        Self {
            accepted: self.accepted - b.accepted,
            refused: self.refused - b.refused,
            traces_received: self.traces_received - b.traces_received,
            traces_kept: self.traces_kept - b.traces_kept,
            traces_dropped: self.traces_dropped - b.traces_dropped,
            dropped_too_early: self.dropped_too_early - b.dropped_too_early,
            sent: self.sent - b.sent,
            send_failed: self.send_failed - b.send_failed,
            metric_points_accepted: self.metric_points_accepted - b.metric_points_accepted,
            metric_points_refused: self.metric_points_refused - b.metric_points_refused,
            metric_points_send_failed: self.metric_points_send_failed - b.metric_points_send_failed,
        }
    }
}

fn read_counters(runtime: &tokio::runtime::Runtime, http: &reqwest::Client, url: &str) -> Counters {
    let metrics = SelfMetrics::read(runtime, http, url);
    let sum = |name: &str, label: &str| metrics.sum(name, label);
    const SAMPLER: &str = "otelcol_processor_tail_sampling_";
    Counters {
        accepted: sum("otelcol_receiver_accepted_spans", ""),
        refused: sum("otelcol_receiver_refused_spans", ""),
        traces_received: sum(&format!("{SAMPLER}new_trace_id_received"), ""),
        traces_kept: sum(
            &format!("{SAMPLER}global_count_traces_sampled"),
            r#"sampled="true""#,
        ),
        traces_dropped: sum(
            &format!("{SAMPLER}global_count_traces_sampled"),
            r#"sampled="false""#,
        ),
        dropped_too_early: sum(&format!("{SAMPLER}sampling_trace_dropped_too_early"), ""),
        sent: sum("otelcol_exporter_sent_spans", ""),
        send_failed: sum("otelcol_exporter_send_failed_spans", ""),
        metric_points_accepted: sum("otelcol_receiver_accepted_metric_points", ""),
        metric_points_refused: sum("otelcol_receiver_refused_metric_points", ""),
        metric_points_send_failed: sum("otelcol_exporter_send_failed_metric_points", ""),
    }
}

/// ln P(X = k) for X ~ Binomial(n, p), 0 < p < 1.
fn ln_binomial_pmf(n: u64, k: u64, p: f64) -> f64 {
    let ln_factorial = |m: u64| (1..=m).map(|i| (i as f64).ln()).sum::<f64>();
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
        + k as f64 * p.ln()
        + (n - k) as f64 * (1.0 - p).ln()
}

/// The acceptance range for a count X ~ Binomial(n, p): the largest `low` with
/// P(X < low) <= `tail` and the smallest `high` with P(X > high) <= `tail`, from the exact
/// probabilities. A correct sampler then lands outside [low, high] with probability at
/// most 2 x `tail`.
fn binomial_bounds(n: u64, p: f64, tail: f64) -> (u64, u64) {
    let pmf: Vec<f64> = (0..=n).map(|k| ln_binomial_pmf(n, k, p).exp()).collect();
    let mut low = 0;
    let mut below = 0.0;
    while low < n && below + pmf[low as usize] <= tail {
        below += pmf[low as usize];
        low += 1;
    }
    let mut high = n;
    let mut above = 0.0;
    while high > 0 && above + pmf[high as usize] <= tail {
        above += pmf[high as usize];
        high -= 1;
    }
    (low, high)
}

/// First span's start to last span's end, as the latency policy measures a trace.
fn duration(spans: &[StoredSpan]) -> Duration {
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0);
    Duration::from_nanos(end.saturating_sub(start))
}

/// Places one order of `kind`; returns its trace id.
async fn place(
    http: reqwest::Client,
    gateway: String,
    n: usize,
    kind: Kind,
    slow: String,
) -> String {
    let mut request = http.post(format!("{gateway}/api/orders")).json(&json!({
        "customer_id": format!("tier-{n}"),
        "items": [{"sku": "BOOK-1", "quantity": 1}],
    }));
    match kind {
        Kind::Ordinary => {}
        Kind::Failed => request = request.header("baggage", "demo.fault=payment_declined"),
        Kind::Slow => request = request.header("baggage", slow),
    }
    let response = request.send().await.expect("gateway answers");
    assert_eq!(response.status(), 201, "{kind:?} order {n}");
    let body: Value = response.json().await.unwrap();
    body["trace_id"].as_str().unwrap().to_owned()
}

#[test]
#[ignore = "needs the native stack and the collector tier: run scripts/test"]
fn the_tier_keeps_every_failed_and_slow_trace_and_the_configured_share_of_the_rest_whole() {
    let tier = Tier::from_env();
    // The services send to the agent, not to the stack's single Collector.
    let stack = StackEnv {
        collector_grpc: tier.agent_grpc.clone(),
        collector_http: tier.agent_http.clone(),
        ..StackEnv::from_env()
    };
    let (runtime, http) = http_client();
    let read_all = || {
        let agent = read_counters(&runtime, &http, &tier.agent_metrics);
        let gateways = tier
            .gateway_metrics
            .clone()
            .map(|url| read_counters(&runtime, &http, &url));
        (agent, gateways)
    };
    // The Collectors count from their start; this run's share is what they grew by.
    let (agent_before, gateways_before) = read_all();

    let services =
        Services::start_with(&stack, "tier", &runtime, &[("FAULT_INJECTION", "baggage")]);
    let slow = format!(
        "demo.delay.charge_payment={}ms",
        (tier.threshold + Duration::from_millis(500)).as_millis()
    );
    let kinds: Vec<Kind> = (0..ORDINARY_ORDERS + FAILED_ORDERS + SLOW_ORDERS)
        .map(|n| match n % 32 {
            7 if n / 32 < FAILED_ORDERS => Kind::Failed,
            23 if n / 32 < SLOW_ORDERS => Kind::Slow,
            _ => Kind::Ordinary,
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == Kind::Ordinary).count(),
        ORDINARY_ORDERS
    );
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let trace_ids: Vec<String> = runtime.block_on(async {
        let tasks: Vec<_> = kinds
            .iter()
            .enumerate()
            .map(|(n, kind)| {
                let (http, gateway, slow) =
                    (http.clone(), services.gateway_url.clone(), slow.clone());
                let (kind, limit) = (*kind, limit.clone());
                tokio::spawn(async move {
                    let _permit = limit.acquire_owned().await.unwrap();
                    place(http, gateway, n, kind, slow).await
                })
            })
            .collect();
        let mut ids = Vec::with_capacity(tasks.len());
        for task in tasks {
            ids.push(task.await.unwrap());
        }
        ids
    });

    // Every order has run to its end once the agent has every span of every order (only
    // these orders make traces: health checks are not traced); then the services stop,
    // flushing, and say how many spans they recorded.
    let expected_spans_total = (kinds.len() * ORDER_SPANS) as f64;
    wait_for(
        "the agent to receive every span of every order",
        support::native::WAIT,
        || {
            let agent = read_counters(&runtime, &http, &tier.agent_metrics) - agent_before;
            (agent.accepted >= expected_spans_total).then_some(())
        },
    );
    let (topic, dir, services_run_id) = (
        services.topic.clone(),
        services.dir.clone(),
        services.run_id.clone(),
    );
    let recorded = services.stop() as f64;
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(
        recorded, expected_spans_total,
        "spans the services recorded"
    );

    // The tier has taken and decided everything: every span the agent accepted reached a
    // gateway, and every trace a gateway saw is decided.
    let (agent, gateways) = wait_for("the tier to settle", SETTLE, || {
        let (agent, gateways) = read_all();
        let agent = agent - agent_before;
        let gateways = [0, 1].map(|i| gateways[i] - gateways_before[i]);
        let settled = agent.accepted == recorded
            && gateways.iter().map(|g| g.accepted).sum::<f64>() == recorded
            && gateways
                .iter()
                .all(|g| g.traces_kept + g.traces_dropped == g.traces_received);
        settled.then_some((agent, gateways))
    });
    println!(
        "agent: {agent:?}\ngateway 1: {:?}\ngateway 2: {:?}",
        gateways[0], gateways[1]
    );
    assert_eq!(agent.refused, 0.0, "the agent refused spans");
    assert_eq!(
        agent.sent, recorded,
        "the agent sent every span on to the gateways"
    );
    for (i, g) in gateways.iter().enumerate() {
        let n = i + 1;
        assert!(g.accepted > 0.0, "gateway {n} received no span: no routing");
        assert_eq!(g.refused, 0.0, "gateway {n} refused spans");
        assert_eq!(
            g.dropped_too_early, 0.0,
            "gateway {n} dropped traces before deciding"
        );
        assert_eq!(g.send_failed, 0.0, "gateway {n} failed to send to Jaeger");
    }
    // Each order's trace was decided once, by one gateway: routing by trace id.
    let decided: f64 = gateways.iter().map(|g| g.traces_received).sum();
    assert_eq!(decided, kinds.len() as f64, "traces the gateways decided");
    let kept_total: f64 = gateways.iter().map(|g| g.traces_kept).sum();

    // Jaeger holds exactly the kept traces, each whole. Jaeger batches before storing, so
    // wait until it has as many of these traces as the gateways kept.
    let expected = order_trace::expected(&topic);
    let traces: Vec<Vec<StoredSpan>> =
        wait_for("Jaeger to hold every kept trace, whole", SETTLE, || {
            let traces: Vec<Vec<StoredSpan>> = runtime.block_on(async {
                let mut traces = Vec::with_capacity(trace_ids.len());
                for id in &trace_ids {
                    traces.push(fetch_trace(&http, &stack.jaeger, id).await);
                }
                traces
            });
            let whole = traces.iter().filter(|t| t.len() == ORDER_SPANS).count();
            let present = traces.iter().filter(|t| !t.is_empty()).count();
            (present as f64 == kept_total && whole == present).then_some(traces)
        });
    // And the gateways sent Jaeger exactly those spans, no more (no partial trace elsewhere).
    let (_, gateways_after) = read_all();
    let sent: f64 = [0, 1]
        .map(|i| (gateways_after[i] - gateways_before[i]).sent)
        .iter()
        .sum();
    assert_eq!(
        sent,
        kept_total * ORDER_SPANS as f64,
        "spans the gateways sent to Jaeger"
    );

    // Metrics through the agent, in the stack's Prometheus; this run's series carry its
    // service.instance.id as `instance`. The RED metrics count every order, kept or not:
    // the agent derives them before the gateways sample.
    let run = services_run_id.as_str();
    let orders = kinds.len() as f64;
    let failed = FAILED_ORDERS as f64;
    // So the counts below include traces the gateways dropped (at 20 % with 320 orders the
    // chance of keeping all is nil).
    assert!(
        kept_total < orders,
        "the gateways kept every trace: nothing to tell apart"
    );
    let calls = |matchers: &str| {
        format!(r#"traces_span_metrics_calls_total{{instance="{run}"{matchers}}}"#)
    };
    // (label, expression, what `sum by (label)` of it must be)
    let checks = [
        (
            "span_name",
            calls(r#", service_name="gateway", span_kind="SPAN_KIND_SERVER""#),
            BTreeMap::from([("POST /api/orders".to_owned(), orders)]),
        ),
        (
            "span_name",
            calls(r#", status_code="STATUS_CODE_ERROR""#),
            BTreeMap::from([("charge payment".to_owned(), failed)]),
        ),
        (
            "span_name",
            format!(
                r#"traces_span_metrics_duration_milliseconds_count{{instance="{run}", span_kind="SPAN_KIND_CONSUMER"}}"#
            ),
            BTreeMap::from([(format!("process {topic}"), orders)]),
        ),
        // The services' own metrics (their meter providers' OTLP), through the agent too.
        (
            "job",
            format!(r#"app_orders_created_total{{instance="{run}"}}"#),
            BTreeMap::from([("order-service".to_owned(), orders)]),
        ),
    ];
    let prometheus = Prometheus {
        url: tier.prometheus.clone(),
        http: http.clone(),
    };
    for (label, promql, want) in &checks {
        let mut last = BTreeMap::new();
        wait_for(
            &format!("Prometheus: sum by ({label}) ({promql}) = {want:?}"),
            support::native::WAIT,
            || {
                let seen = runtime.block_on(prometheus.by(label, promql));
                if seen != last {
                    println!("Prometheus: sum by ({label}) ({promql}) = {seen:?}");
                    last = seen.clone();
                }
                (&seen == want).then_some(())
            },
        );
    }
    let agent_metrics = read_counters(&runtime, &http, &tier.agent_metrics) - agent_before;
    assert!(
        agent_metrics.metric_points_accepted > 0.0,
        "the agent took in none of the services' metric points: {agent_metrics:?}"
    );
    assert_eq!(
        agent_metrics.metric_points_refused, 0.0,
        "the agent refused metric points"
    );
    assert_eq!(
        agent_metrics.metric_points_send_failed, 0.0,
        "the agent failed to send metric points to Prometheus"
    );
    println!(
        "agent RED metrics: {orders} POST /api/orders calls and {failed} charge payment errors \
         counted, every order, while the gateways kept {kept_total} of {orders} traces"
    );

    let mut ordinary_kept_short = 0u64;
    let mut ordinary_long = 0u64;
    for ((kind, id), spans) in kinds.iter().zip(&trace_ids).zip(&traces) {
        if spans.is_empty() {
            assert_eq!(*kind, Kind::Ordinary, "{kind:?} trace {id} was not kept");
            continue;
        }
        assert_eq!(
            order_trace::shape(spans),
            expected,
            "{kind:?} trace {id} is not whole"
        );
        let red: Vec<&str> = spans
            .iter()
            .filter(|s| s.is_error)
            .map(|s| s.name.as_str())
            .collect();
        match kind {
            Kind::Failed => assert_eq!(red, ["charge payment"], "failed trace {id}"),
            Kind::Slow => {
                assert!(red.is_empty(), "slow trace {id}: {red:?}");
                assert!(duration(spans) >= tier.threshold, "slow trace {id}");
            }
            Kind::Ordinary => {
                assert!(red.is_empty(), "ordinary trace {id}: {red:?}");
                // A trace that took the threshold or longer is kept by the latency
                // policy whatever its hash, so it is no sample of the percentage.
                if duration(spans) >= tier.threshold {
                    ordinary_long += 1;
                } else {
                    ordinary_kept_short += 1;
                }
            }
        }
    }

    // Among the ordinary orders that finished under the threshold, the probabilistic
    // policy alone decides, by a hash of the (random) trace id: the number kept is
    // Binomial(n, p). The bounds come from its exact distribution, each tail at most
    // FALSE_FAILURE_PER_TAIL, so a correct tier fails this with probability below 1e-6
    // (n = 300, p = 20 %: mean 60, accepted 29..=96).
    // Under load some ordinary orders take longer than the threshold (in 20 runs on a busy
    // 2-core machine, up to 104 of 300); fewer than MIN_SAMPLE left would say little.
    let n = ORDINARY_ORDERS as u64 - ordinary_long;
    assert!(
        n >= MIN_SAMPLE,
        "{ordinary_long} of {ORDINARY_ORDERS} ordinary orders took {:?} or longer: too few left to measure the percentage",
        tier.threshold
    );
    let p = tier.percentage / 100.0;
    let (low, high) = binomial_bounds(n, p, FALSE_FAILURE_PER_TAIL);
    println!(
        "tier: {} orders ({FAILED_ORDERS} failed, {SLOW_ORDERS} slow, {ORDINARY_ORDERS} ordinary); \
         kept {kept_total} traces, all whole; ordinary: {ordinary_long} over {:?} (kept by latency), \
         {ordinary_kept_short} of the other {n} kept = {:.1} % (configured {} %, accepted {low}..={high})",
        kinds.len(),
        tier.threshold,
        100.0 * ordinary_kept_short as f64 / n as f64,
        tier.percentage
    );
    assert!(
        (low..=high).contains(&ordinary_kept_short),
        "{ordinary_kept_short} of {n} ordinary traces kept; at {} % expected {low}..={high}",
        tier.percentage
    );
}

#[test]
fn binomial_bounds_match_known_tails() {
    // Binomial(10, 0.5): P(X = 0) = P(X = 10) = 1/1024.
    assert_eq!(binomial_bounds(10, 0.5, 0.5 / 1024.0), (0, 10));
    assert_eq!(binomial_bounds(10, 0.5, 1.0001 / 1024.0), (1, 9));
    // P(X <= 1) = 11/1024: a tail of 11/1024 drops 0 and 1 from the range.
    assert_eq!(binomial_bounds(10, 0.5, 11.0001 / 1024.0), (2, 8));
    let (low, high) = binomial_bounds(300, 0.2, 5e-7);
    assert!(
        low < 60 && 60 < high && high - 60 > 60 - low,
        "({low}, {high})"
    );
}

fn repo_yaml(path: &str) -> serde_yaml_ng::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The agent's span_metrics must be the single Collector's: the same names, units, buckets
/// and dimensions, or Jaeger's Monitor tab, PromQL and scripts/red read other series in the
/// tier than in compose. The two files keep a copy each (otel-collector.yaml stands alone,
/// as docker compose mounts it), and this test is what keeps the copies one.
#[test]
fn the_agent_derives_red_metrics_as_the_single_collector_does() {
    let single = repo_yaml("otel-collector.yaml");
    let agent = repo_yaml("collector/agent.yaml");
    let span_metrics = |config: &serde_yaml_ng::Value| config["connectors"]["span_metrics"].clone();
    assert!(
        span_metrics(&single).is_mapping(),
        "otel-collector.yaml has no span_metrics connector"
    );
    assert_eq!(
        span_metrics(&agent),
        span_metrics(&single),
        "collector/agent.yaml's span_metrics differs from otel-collector.yaml's"
    );
    // Where each sends metrics: Prometheus' OTLP receiver, under the same variable.
    let prometheus = |config: &serde_yaml_ng::Value| {
        config["exporters"]["otlp_http/prometheus"]["endpoint"]
            .as_str()
            .map(|endpoint| endpoint.split(":-").next().unwrap_or_default().to_owned())
    };
    assert_eq!(
        prometheus(&agent),
        Some("${env:PROMETHEUS_OTLP_ENDPOINT".to_owned())
    );
    assert_eq!(prometheus(&agent), prometheus(&single));

    // The agent derives RED from every span it receives (the traces pipeline, before any
    // sampling) and sends them with the services' own metrics.
    let pipeline = |name: &str, part: &str| -> Vec<String> {
        agent["service"]["pipelines"][name][part]
            .as_sequence()
            .unwrap_or_else(|| panic!("agent pipeline {name} has no {part}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(pipeline("traces", "exporters").contains(&"span_metrics".to_owned()));
    assert_eq!(pipeline("metrics", "receivers"), ["otlp", "span_metrics"]);
    assert_eq!(pipeline("metrics", "exporters"), ["otlp_http/prometheus"]);
    assert_eq!(pipeline("metrics", "processors")[0], "memory_limiter");
}
