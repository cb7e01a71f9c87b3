//! All three services in one process, Kafka played by librdkafka's mock cluster, spans
//! captured in memory per service. Proves the trace is whole: one trace id from the HTTP
//! request to the last gRPC call the worker makes, with an unbroken parent chain.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use support::client::Client;
use support::spans::{assert_child, attr_i64, attr_str, id, is_error, of_trace, one};
use support::{Stack, TOPIC, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// Waits until the worker has finished its consumer span for `trace_id`: the last span
/// of the trace to end.
fn wait_for_trace(
    stack: &Stack,
    trace_id: TraceId,
) -> (Vec<SpanData>, Vec<SpanData>, Vec<SpanData>) {
    wait_for("the worker's consumer span", WAIT, || {
        let worker = of_trace(&stack.worker.capture.spans(), trace_id);
        worker
            .iter()
            .any(|s| s.name == "process orders")
            .then_some(())
    });
    (
        of_trace(&stack.gateway.capture.spans(), trace_id),
        of_trace(&stack.order_service.capture.spans(), trace_id),
        of_trace(&stack.worker.capture.spans(), trace_id),
    )
}

#[test]
fn one_order_makes_one_unbroken_trace_across_http_grpc_and_kafka() {
    let stack = Stack::start();
    let client = Client::new();

    let (order_id, trace_id, headers) = client.place_order(&stack, None);
    let body = client.wait_for_status(&stack, &order_id);
    assert_eq!(body["status"], "FULFILLED", "{body}");
    let traceresponse = headers["traceresponse"].to_str().unwrap();
    assert!(
        traceresponse.starts_with(&format!("00-{trace_id}-")),
        "{traceresponse}"
    );

    let (gateway, orders, worker) = wait_for_trace(&stack, trace_id);

    // gateway: HTTP server → gRPC client
    let http_server = one(&gateway, "POST /api/orders");
    assert_eq!(http_server.span_kind, SpanKind::Server);
    assert_eq!(
        http_server.parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "the trace starts here"
    );
    assert_eq!(attr_str(http_server, "http.request.method"), "POST");
    assert_eq!(attr_str(http_server, "http.route"), "/api/orders");
    assert_eq!(attr_i64(http_server, "http.response.status_code"), 201);
    assert!(traceresponse.contains(&id(http_server).to_string()));
    let create_client = one(&gateway, "order.v1.OrderService/CreateOrder");
    assert_child(create_client, http_server, SpanKind::Client);
    // The current RPC conventions (semconv 1.45).
    assert_eq!(attr_str(create_client, "rpc.system.name"), "grpc");
    assert_eq!(
        attr_str(create_client, "rpc.method"),
        "order.v1.OrderService/CreateOrder"
    );
    assert_eq!(attr_str(create_client, "rpc.response.status_code"), "OK");
    assert_eq!(attr_str(create_client, "server.address"), "127.0.0.1");

    // order-service: gRPC server → (database) → Kafka producer
    let create_server = one(&orders, "order.v1.OrderService/CreateOrder");
    assert_child(create_server, create_client, SpanKind::Server);
    assert!(create_server.parent_span_is_remote);
    assert_eq!(attr_str(create_server, "rpc.response.status_code"), "OK");
    let insert = one(&orders, "INSERT orders");
    assert_child(insert, create_server, SpanKind::Client);
    assert_eq!(attr_str(insert, "db.system.name"), "sqlite");
    assert_eq!(attr_str(insert, "db.query.summary"), "INSERT orders");
    // Sent by the outbox relay, after the request answered, in the request's trace.
    let producer = one(&orders, &format!("send {TOPIC}"));
    assert_child(producer, create_server, SpanKind::Producer);
    assert_eq!(attr_str(producer, "messaging.system"), "kafka");
    assert_eq!(attr_str(producer, "messaging.client.id"), "order-service");
    assert_eq!(attr_str(producer, "messaging.operation.type"), "send");
    assert_eq!(attr_str(producer, "messaging.destination.name"), TOPIC);
    assert_eq!(attr_str(producer, "messaging.kafka.message.key"), order_id);
    assert!(producer.end_time >= producer.start_time);

    // worker: Kafka consumer (child of and linked to the producer) → spawned tasks, gRPC client
    let consumer = one(&worker, &format!("process {TOPIC}"));
    assert_child(consumer, producer, SpanKind::Consumer);
    assert_eq!(attr_str(consumer, "messaging.operation.type"), "process");
    assert_eq!(
        attr_str(consumer, "messaging.consumer.group.name"),
        support::GROUP
    );
    assert_eq!(attr_str(consumer, "messaging.kafka.message.key"), order_id);
    assert_eq!(attr_str(consumer, "messaging.client.id"), "worker");
    assert!(
        consumer
            .links
            .iter()
            .any(|l| l.span_context.span_id() == id(producer)),
        "the consumer span links to the producer span"
    );
    for step in ["reserve stock", "charge payment"] {
        let span = one(&worker, step);
        assert_child(span, consumer, SpanKind::Internal);
        // A span ends after the work it covers, and within its parent.
        assert!(
            span.end_time <= consumer.end_time,
            "{step} ends inside the consumer span"
        );
    }
    let complete_client = one(&worker, "order.v1.OrderService/CompleteOrder");
    assert_child(complete_client, consumer, SpanKind::Client);

    // order-service again: the CompleteOrder server span closes the loop.
    let complete_server = one(&orders, "order.v1.OrderService/CompleteOrder");
    assert_child(complete_server, complete_client, SpanKind::Server);

    // Every span of the trace has its parent in the trace (except the root), and none failed.
    let all: Vec<&SpanData> = gateway.iter().chain(&orders).chain(&worker).collect();
    for span in &all {
        assert!(
            !is_error(span),
            "unexpected error status on {:?}",
            span.name
        );
        if span.span_context.span_id() != id(http_server) {
            assert!(
                all.iter().any(|p| id(p) == span.parent_span_id),
                "{:?} has a parent outside the trace",
                span.name
            );
        }
    }

    // Nothing any service recorded stands outside a trace that starts at the gateway: no
    // background job (the outbox relay polls every 500 ms here) makes traces of its own.
    let gateway_traces: std::collections::HashSet<TraceId> = stack
        .gateway
        .capture
        .spans()
        .iter()
        .map(|s| s.span_context.trace_id())
        .collect();
    for service in [&stack.order_service, &stack.worker] {
        for span in service.capture.spans() {
            assert!(
                gateway_traces.contains(&span.span_context.trace_id()),
                "{} recorded {:?} outside any request's trace",
                service.capture.name(),
                span.name
            );
        }
    }

    stack.stop();
}

/// The worker handles records of different orders concurrently (`WORKER_MAX_IN_FLIGHT`):
/// under that concurrency each order's trace still has its whole parent chain, and no
/// span strays into another order's trace.
#[test]
fn concurrent_orders_each_keep_their_parent_chain() {
    const THREADS: usize = 8;
    const ORDERS_PER_THREAD: usize = 15;
    let stack = Stack::start();
    let url = stack.url("/api/orders");
    let placed: Vec<(String, TraceId)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let client = Client::new();
                    (0..ORDERS_PER_THREAD)
                        .map(|_| {
                            let (order_id, trace_id, _) = client.place_order_at(&url, None);
                            (order_id, trace_id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    assert_eq!(placed.len(), THREADS * ORDERS_PER_THREAD);
    wait_for("every order's consumer span", WAIT, || {
        let done = stack
            .worker
            .capture
            .spans()
            .iter()
            .filter(|s| s.name == format!("process {TOPIC}"))
            .count();
        (done >= placed.len()).then_some(())
    });
    let client = Client::new();
    for (order_id, _) in &placed {
        let body = client.wait_for_status(&stack, order_id);
        assert_eq!(body["status"], "FULFILLED", "{body}");
    }

    let (order_spans, worker_spans) = (
        stack.order_service.capture.spans(),
        stack.worker.capture.spans(),
    );
    let mut consumers = Vec::new();
    for (order_id, trace_id) in &placed {
        let orders = of_trace(&order_spans, *trace_id);
        let worker = of_trace(&worker_spans, *trace_id);
        let producer = one(&orders, &format!("send {TOPIC}"));
        let consumer = one(&worker, &format!("process {TOPIC}"));
        assert_child(consumer, producer, SpanKind::Consumer);
        assert_eq!(attr_str(consumer, "messaging.kafka.message.key"), *order_id);
        for step in ["reserve stock", "charge payment"] {
            let span = one(&worker, step);
            assert_child(span, consumer, SpanKind::Internal);
            assert!(span.end_time <= consumer.end_time, "{step} ends inside");
        }
        let complete_client = one(&worker, "order.v1.OrderService/CompleteOrder");
        assert_child(complete_client, consumer, SpanKind::Client);
        let complete_server = one(&orders, "order.v1.OrderService/CompleteOrder");
        assert_child(complete_server, complete_client, SpanKind::Server);
        // Exactly the worker's own spans of this order: none borrowed from another.
        assert_eq!(worker.len(), 4, "{order_id}: {:?}", names(&worker));
        consumers.push((consumer.start_time, consumer.end_time));
    }
    // The orders really were handled at the same time: some consumer spans overlap.
    let most_at_once = consumers
        .iter()
        .map(|(start, _)| {
            consumers
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most_at_once >= 2,
        "no two orders were processed at once: the worker is serial"
    );
    stack.stop();
}

fn names(spans: &[SpanData]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_ref()).collect()
}

#[test]
fn an_incoming_traceparent_is_continued_and_an_invalid_one_starts_a_fresh_trace() {
    let stack = Stack::start();
    let client = Client::new();

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (order_id, trace_id, headers) =
        client.place_order(&stack, Some(&format!("00-{caller_trace}-{caller_span}-01")));
    assert_eq!(trace_id.to_string(), caller_trace);
    assert!(
        headers["traceresponse"]
            .to_str()
            .unwrap()
            .contains(caller_trace)
    );
    client.wait_for_status(&stack, &order_id);
    let (gateway, _, worker) = wait_for_trace(&stack, trace_id);
    let http_server = one(&gateway, "POST /api/orders");
    assert_eq!(http_server.parent_span_id.to_string(), caller_span);
    assert!(http_server.parent_span_is_remote);
    assert!(!worker.is_empty(), "the worker joined the caller's trace");

    // A malformed traceparent never fails the request; the gateway starts a new trace.
    let (order_id, trace_id, _) = client.place_order(&stack, Some("00-not-a-valid-header-01"));
    assert_ne!(trace_id.to_string(), caller_trace);
    client.wait_for_status(&stack, &order_id);
    let (gateway, _, _) = wait_for_trace(&stack, trace_id);
    assert_eq!(
        one(&gateway, "POST /api/orders").parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );

    stack.stop();
}

#[test]
fn business_failures_fail_the_order_not_the_trace() {
    let stack = Stack::start();
    let client = Client::new();
    let (status, _, body) =
        client.send(client.http.post(stack.url("/api/orders")).json(
            &json!({"customer_id": "customer-2", "items": [{"sku": "OOS-1", "quantity": 1}]}),
        ));
    assert_eq!(status, 201, "{body}");
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    let trace_id = TraceId::from_hex(body["trace_id"].as_str().unwrap()).unwrap();
    let body = client.wait_for_status(&stack, &order_id);
    assert_eq!(body["status"], "FAILED");
    assert_eq!(body["failure_reason"], "out of stock: OOS-1");
    let (_, _, worker) = wait_for_trace(&stack, trace_id);
    assert!(
        is_error(one(&worker, "reserve stock")),
        "the failing step is marked"
    );
    assert!(
        !is_error(one(&worker, "process orders")),
        "the message itself was handled"
    );
    stack.stop();
}

#[test]
fn unknown_orders_are_404_and_bad_orders_are_400_at_both_layers() {
    let stack = Stack::start();
    let client = Client::new();
    let (status, _, body) = client.send(
        client
            .http
            .get(stack.url("/api/orders/6f1c1f2e-1d55-4b8e-9d3a-1b9b8a6c2f00")),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["trace_id"].as_str().map(str::len), Some(32));

    // The order-service validates again: a caller that skips the gateway gets INVALID_ARGUMENT.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(async {
        let mut grpc = proto::order::v1::order_service_client::OrderServiceClient::connect(
            format!("http://{}", stack.order_service_addr),
        )
        .await
        .unwrap();
        grpc.create_order(proto::order::v1::CreateOrderRequest {
            customer_id: "c".into(),
            items: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code()
    });
    assert_eq!(code, tonic::Code::InvalidArgument);
    // Its connection must close, or the order-service's graceful shutdown waits for it.
    drop(runtime);
    stack.stop();
}

#[test]
fn a_poison_message_is_recorded_dead_lettered_and_does_not_stop_the_worker() {
    let stack = Stack::start();
    let client = Client::new();

    // A record that is not an order event, carrying a trace context of its own.
    let poison_trace = "0af7651916cd43dd8448eb211c80319c";
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.kafka.bootstrap_servers())
        .create()
        .unwrap();
    client.runtime.block_on(async {
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(&format!("00-{poison_trace}-b7ad6b7169203331-01")),
        });
        producer
            .send(
                FutureRecord::to(TOPIC)
                    .key("poison")
                    .payload("{not json")
                    .headers(headers),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    });

    let consumer = wait_for("the poison record's consumer span", WAIT, || {
        let spans = of_trace(
            &stack.worker.capture.spans(),
            TraceId::from_hex(poison_trace).unwrap(),
        );
        spans.into_iter().find(|s| s.name == "process orders")
    });
    assert!(
        is_error(&consumer),
        "the poison record's span has error status"
    );
    assert_eq!(attr_str(&consumer, "error.type"), "malformed_message");

    // The worker goes on with the next order.
    let (order_id, _, _) = client.place_order(&stack, None);
    assert_eq!(
        client.wait_for_status(&stack, &order_id)["status"],
        "FULFILLED"
    );
    stack.stop();
}
