//! The Collector tier (README: "At scale") against the real Kafka and Jaeger: the three
//! services send to an agent Collector, which routes every span by trace id to one of two
//! gateway Collectors, where tail sampling keeps every failed trace, every slow trace and a
//! percentage of the rest. Checked through Jaeger's API: every failed and every slow order's
//! trace is there and complete; of the ordinary ones about the configured percentage is
//! there, each complete (never a partial trace); and both gateways took part.
//!
//! `scripts/test` starts the stack and the tier (`scripts/stack start collector-tier`) and
//! exports the tier's ports and its TAIL_SAMPLING_* settings, which this test reads; a plain
//! `cargo test` skips it (it needs the stack).

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::jaeger::StoredSpan;
use support::native::{Services, StackEnv, fetch_trace, http_client};
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
/// Spans of one order's trace (README's tree), failed or not: the failed step is red.
const ORDER_SPANS: usize = 11;
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
        }
    }
}

fn read_counters(runtime: &tokio::runtime::Runtime, http: &reqwest::Client, url: &str) -> Counters {
    let metrics = runtime.block_on(async {
        http.get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains("otelcol_process_uptime"),
        "not a Collector's metrics at {url}:\n{metrics}"
    );
    let sum = |name: &str, label: &str| metric_sum(&metrics, name, label);
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
    }
}

/// Sums a counter from a Collector's Prometheus metrics over the label sets that contain
/// `label` (`""` for all).
fn metric_sum(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

/// The spans an order's trace holds: (service, name, kind) → count; the same for a failed
/// or a slow order (real_stack.rs checks the tree of an ordinary one in detail).
fn expected_spans(topic: &str) -> BTreeMap<(String, String, String), usize> {
    let send = format!("send {topic}");
    let process = format!("process {topic}");
    let rows = [
        ("gateway", "POST /api/orders", "SERVER"),
        ("gateway", "order.v1.OrderService/CreateOrder", "CLIENT"),
        (
            "order-service",
            "order.v1.OrderService/CreateOrder",
            "SERVER",
        ),
        ("order-service", "INSERT orders", "CLIENT"),
        ("order-service", send.as_str(), "PRODUCER"),
        ("order-service", "UPDATE orders", "CLIENT"),
        ("worker", process.as_str(), "CONSUMER"),
        ("worker", "reserve stock", "INTERNAL"),
        ("worker", "charge payment", "INTERNAL"),
        ("worker", "order.v1.OrderService/CompleteOrder", "CLIENT"),
        (
            "order-service",
            "order.v1.OrderService/CompleteOrder",
            "SERVER",
        ),
    ];
    assert_eq!(rows.len(), ORDER_SPANS);
    rows.iter()
        .map(|(s, n, k)| ((s.to_string(), n.to_string(), k.to_string()), 1))
        .collect()
}

fn shape(spans: &[StoredSpan]) -> BTreeMap<(String, String, String), usize> {
    let mut shape = BTreeMap::new();
    for s in spans {
        *shape
            .entry((s.service.clone(), s.name.clone(), s.kind.clone()))
            .or_default() += 1;
    }
    shape
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
    let (topic, dir) = (services.topic.clone(), services.dir.clone());
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
    let expected = expected_spans(&topic);
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

    let mut ordinary_kept_short = 0u64;
    let mut ordinary_long = 0u64;
    for ((kind, id), spans) in kinds.iter().zip(&trace_ids).zip(&traces) {
        if spans.is_empty() {
            assert_eq!(*kind, Kind::Ordinary, "{kind:?} trace {id} was not kept");
            continue;
        }
        assert_eq!(shape(spans), expected, "{kind:?} trace {id} is not whole");
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
