//! End to end against the real Apache Kafka, OpenTelemetry Collector and Jaeger (the
//! native stack of `scripts/stack`), with gateway, order-service and worker running as
//! separate processes configured only through environment variables, as in containers.
//!
//! Proves through Jaeger's own API that every order makes one complete trace, and that
//! no span is lost between the services and Jaeger. `scripts/test` starts the stack and
//! runs this test; a plain `cargo test` skips it (it needs the stack).

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::collector::SelfMetrics;
use support::jaeger::{StoredSpan, parse};
use support::native::{
    Order, Services, StackEnv, WAIT, fetch_trace, place_order, wait_until_final,
};
use support::order_trace;

const SEQUENTIAL_ORDERS: usize = 20;
const BURST_ORDERS: usize = 200;
/// The exporter in otel-collector.yaml that sends to Jaeger.
const JAEGER_EXPORTER: &str = r#"exporter="otlp_grpc/jaeger""#;

fn find<'a>(spans: &'a [StoredSpan], service: &str, name: &str) -> &'a StoredSpan {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name)
        .unwrap_or_else(|| panic!("no {service} span {name:?}"))
}

/// Everything one order's trace must show.
fn check_trace(order: &Order, spans: &[StoredSpan], topic: &str) {
    assert_eq!(
        order_trace::shape(spans),
        order_trace::expected(topic),
        "trace {} has the wrong spans",
        order.trace_id
    );
    assert!(spans.iter().all(|s| s.trace_id == order.trace_id));
    for span in spans {
        assert!(
            !span.is_error,
            "unexpected error status on {} {}",
            span.service, span.name
        );
    }

    let http = find(spans, "gateway", "POST /api/orders");
    match &order.caller_span_id {
        Some(caller) => assert_eq!(&http.parent_span_id, caller, "continues the caller's span"),
        None => assert!(
            http.parent_span_id.is_empty(),
            "the trace starts at the gateway"
        ),
    }
    assert_eq!(http.attributes["http.response.status_code"], 201);
    assert_eq!(http.attributes["http.route"], "/api/orders");

    let chain = [
        (
            ("gateway", "order.v1.OrderService/CreateOrder"),
            ("gateway", "POST /api/orders"),
        ),
        (
            ("order-service", "order.v1.OrderService/CreateOrder"),
            ("gateway", "order.v1.OrderService/CreateOrder"),
        ),
        (
            ("order-service", &format!("send {topic}")),
            ("order-service", "order.v1.OrderService/CreateOrder"),
        ),
        (
            ("worker", &format!("process {topic}")),
            ("order-service", &format!("send {topic}")),
        ),
        (
            ("worker", "reserve stock"),
            ("worker", &format!("process {topic}")),
        ),
        (
            ("worker", "charge payment"),
            ("worker", &format!("process {topic}")),
        ),
        (
            ("worker", "order.v1.OrderService/CompleteOrder"),
            ("worker", &format!("process {topic}")),
        ),
        (
            ("order-service", "order.v1.OrderService/CompleteOrder"),
            ("worker", "order.v1.OrderService/CompleteOrder"),
        ),
    ];
    for ((child_service, child), (parent_service, parent)) in chain {
        let child_span = find(spans, child_service, child);
        let parent_span = find(spans, parent_service, parent);
        assert_eq!(
            child_span.parent_span_id, parent_span.span_id,
            "{child_service} {child:?} should be a child of {parent_service} {parent:?} in trace {}",
            order.trace_id
        );
    }
    // Every span but the root hangs off another span of the trace: no break anywhere.
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for span in spans.iter().filter(|s| s.span_id != http.span_id) {
        assert!(
            ids.contains(span.parent_span_id.as_str()),
            "{} {} has no parent in the trace",
            span.service,
            span.name
        );
    }

    let producer = find(spans, "order-service", &format!("send {topic}"));
    let consumer = find(spans, "worker", &format!("process {topic}"));
    assert!(
        consumer.linked_span_ids.contains(&producer.span_id),
        "the consumer links to the producer"
    );
    assert_eq!(producer.attributes["messaging.system"], "kafka");
    assert_eq!(consumer.attributes["messaging.destination.name"], topic);
    assert_eq!(
        consumer.attributes["messaging.kafka.message.key"],
        order.id.as_str()
    );
    // The current RPC conventions on all four gRPC spans; the pre-stable names are gone.
    for (service, method) in [
        ("gateway", "order.v1.OrderService/CreateOrder"),
        ("order-service", "order.v1.OrderService/CreateOrder"),
        ("worker", "order.v1.OrderService/CompleteOrder"),
        ("order-service", "order.v1.OrderService/CompleteOrder"),
    ] {
        let grpc = find(spans, service, method);
        assert_eq!(
            grpc.attributes["rpc.system.name"], "grpc",
            "{service} {method}"
        );
        assert_eq!(grpc.attributes["rpc.method"], method, "{service} {method}");
        assert_eq!(
            grpc.attributes["rpc.response.status_code"], "OK",
            "{service} {method}"
        );
        for old in ["rpc.system", "rpc.service", "rpc.grpc.status_code"] {
            assert!(
                !grpc.attributes.contains_key(old),
                "{service} {method} has {old}"
            );
        }
    }
    for service in ["gateway", "worker"] {
        let client = spans
            .iter()
            .find(|s| s.service == service && s.kind == "CLIENT" && s.name.starts_with("order.v1"))
            .unwrap();
        assert_eq!(
            client.attributes["server.address"], "127.0.0.1",
            "{service}"
        );
    }
}

/// The order-service's database spans name the backend it ran on: PostgreSQL when
/// `STACK_DATABASE_URL` is set (scripts/test runs this test so), SQLite otherwise.
fn check_database_spans(spans: &[StoredSpan], on_postgres: bool) {
    for name in ["INSERT orders", "UPDATE orders"] {
        let span = find(spans, "order-service", name);
        let attribute = |key: &str| span.attributes.get(key).cloned().unwrap_or_default();
        if on_postgres {
            assert_eq!(attribute("db.system.name"), "postgresql", "{name}");
            // `{database}.{schema}`, as the PostgreSQL conventions define it.
            assert_eq!(attribute("db.namespace"), "orders.public", "{name}");
            assert_eq!(attribute("server.address"), "127.0.0.1", "{name}");
            assert!(
                !attribute("server.port").is_null(),
                "{name} has no server.port"
            );
        } else {
            assert_eq!(attribute("db.system.name"), "sqlite", "{name}");
            assert!(attribute("server.address").is_null(), "{name}");
        }
    }
}

/// The Collector's own span counters (Collector v0.161 names them without `_total`).
struct CollectorCounters {
    accepted: f64,
    refused: f64,
    sent: f64,
    send_failed: f64,
}

impl CollectorCounters {
    fn read(runtime: &tokio::runtime::Runtime, http: &reqwest::Client, stack: &StackEnv) -> Self {
        let metrics = SelfMetrics::read(runtime, http, &stack.collector_metrics);
        Self {
            accepted: metrics.sum("otelcol_receiver_accepted_spans", ""),
            refused: metrics.sum("otelcol_receiver_refused_spans", ""),
            sent: metrics.sum("otelcol_exporter_sent_spans", JAEGER_EXPORTER),
            send_failed: metrics.sum("otelcol_exporter_send_failed_spans", JAEGER_EXPORTER),
        }
    }
}

/// `2026-11-24T09:30:00Z`, as Jaeger's search wants its time bounds.
fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
#[ignore = "needs the native stack: run scripts/test"]
fn every_order_makes_one_complete_trace_in_jaeger_and_no_span_is_lost() {
    let stack = StackEnv::from_env();
    let (runtime, http) = support::native::http_client();
    let run_started = SystemTime::now();
    let before = CollectorCounters::read(&runtime, &http, &stack);
    let services = Services::start(&stack, "e2e", &runtime);
    let (gateway_url, topic) = (services.gateway_url.clone(), services.topic.clone());
    let (dir, run_id) = (services.dir.clone(), services.run_id.clone());

    let orders: Vec<Order> = runtime.block_on(async {
        let mut orders = Vec::new();
        // One at a time, each to its final status...
        for n in 0..SEQUENTIAL_ORDERS {
            let order = place_order(&http, &gateway_url, n).await;
            assert_eq!(
                wait_until_final(&http, &gateway_url, &order).await,
                "FULFILLED"
            );
            orders.push(order);
        }
        // ...then a burst, all at once.
        let mut burst = tokio::task::JoinSet::new();
        for n in SEQUENTIAL_ORDERS..SEQUENTIAL_ORDERS + BURST_ORDERS {
            let (http, gateway_url) = (http.clone(), gateway_url.clone());
            burst.spawn(async move { place_order(&http, &gateway_url, n).await });
        }
        let mut placed = Vec::new();
        while let Some(order) = burst.join_next().await {
            placed.push(order.unwrap());
        }
        for order in &placed {
            assert_eq!(
                wait_until_final(&http, &gateway_url, order).await,
                "FULFILLED"
            );
        }
        orders.extend(placed);
        orders
    });
    assert_eq!(orders.len(), SEQUENTIAL_ORDERS + BURST_ORDERS);

    // Graceful stop, intake first: every service flushes and reports what it recorded.
    let recorded = services.stop();

    // Every order: one complete trace, as Jaeger stored it.
    let expected_per_trace: usize = order_trace::expected(&topic).values().sum();
    let mut stored_for_orders = 0;
    for order in &orders {
        let deadline = Instant::now() + WAIT;
        let spans = loop {
            let spans = runtime.block_on(fetch_trace(&http, &stack.jaeger, &order.trace_id));
            if spans.len() >= expected_per_trace {
                break spans;
            }
            // Say what is there and what is missing, not only that the wait ran out.
            assert!(
                Instant::now() < deadline,
                "trace {} (order {}) incomplete in Jaeger after {WAIT:?}: {:?}",
                order.trace_id,
                order.id,
                order_trace::shape(&spans)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        check_trace(order, &spans, &topic);
        check_database_spans(&spans, stack.database_url.is_some());
        stored_for_orders += spans.len();
    }
    assert_eq!(stored_for_orders, orders.len() * expected_per_trace);

    // No span lost: everything the services recorded reached the Collector, left it, and
    // is stored in Jaeger. Jaeger is searched by each service over the run's time window,
    // the spans of this run's processes kept (`service.instance.id`: an earlier run
    // against the same Jaeger may have ended moments ago), and merged by span id.
    let window = format!(
        "query.start_time_min={}&query.start_time_max={}&query.num_traces=100000",
        rfc3339(run_started - Duration::from_secs(5)),
        rfc3339(SystemTime::now() + Duration::from_secs(60))
    );
    let stored_spans = || {
        let mut spans: HashMap<String, StoredSpan> = HashMap::new();
        for service in ["gateway", "order-service", "worker"] {
            let url = format!(
                "{}/api/v3/traces?query.service_name={service}&{window}",
                stack.jaeger
            );
            let answer: Value = runtime
                .block_on(async { http.get(&url).send().await.unwrap().json().await.unwrap() });
            for span in parse(&answer).into_iter().filter(|s| s.instance == run_id) {
                spans.insert(span.span_id.clone(), span);
            }
        }
        spans
    };
    let deadline = Instant::now() + WAIT;
    let stored = loop {
        let stored = stored_spans();
        if stored.len() as u64 >= recorded || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let stored_in_run = stored.len() as u64;
    // One trace per request: every trace of the run reaches back to the gateway. A trace
    // without a gateway span would be a hop that lost its context.
    let mut by_trace: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for span in stored.values() {
        by_trace
            .entry(&span.trace_id)
            .or_default()
            .push(format!("{} {}", span.service, span.name));
    }
    let orphans: Vec<_> = by_trace
        .iter()
        .filter(|(_, spans)| !spans.iter().any(|s| s.starts_with("gateway ")))
        .collect();
    assert!(
        orphans.is_empty(),
        "traces that do not start at the gateway: {orphans:?}"
    );
    // The Collector's counters count from its start: this run's share is what they grew
    // by since the run began (the stack may have served runs before).
    let after = CollectorCounters::read(&runtime, &http, &stack);
    let (accepted, sent) = (after.accepted - before.accepted, after.sent - before.sent);
    println!(
        "orders: {}; spans per order trace: {expected_per_trace}; recorded by the services: {recorded}; \
         Collector accepted: {accepted}, sent: {sent}; stored in Jaeger: {stored_in_run}",
        orders.len()
    );
    assert_eq!(after.refused, before.refused, "the Collector refused spans");
    assert_eq!(
        after.send_failed, before.send_failed,
        "the Collector failed to send spans to Jaeger"
    );
    assert_eq!(
        accepted, recorded as f64,
        "the Collector accepted every span the services recorded"
    );
    assert_eq!(
        sent, accepted,
        "the Collector sent on every span it accepted"
    );
    assert_eq!(
        stored_in_run, recorded,
        "Jaeger holds exactly the spans the services recorded"
    );
    let _ = std::fs::remove_dir_all(dir);
}
