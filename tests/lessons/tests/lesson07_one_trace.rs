//! Lesson 07 (docs/lessons/07-one-trace.md): one trace id from the first request to the
//! last consumer. The whole stack in this process (gateway, order-service, worker, Kafka
//! played by librdkafka's mock cluster), and the outbox's stored context on its own.
//!
//! One variant empties the process-wide propagator, so every test here holds
//! [`PropagatorLock`] for its whole run.

// Test code: a panic is how a check or a failed set-up reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;
use support::services::{Service, Stack};
use support::spans::{assert_child, assert_own_trace, attribute, is_root, of_trace, one, trace};
use support::{PropagatorLock, wait_for};
use telemetry::propagation::kafka::KafkaClient;
use telemetry::propagation::stored;
use tracing::Instrument;

/// Places an order at the gateway and waits until the worker has reported it; returns
/// the order id and the trace id the gateway answered with.
fn place_an_order(stack: &Stack) -> (String, TraceId) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let created: serde_json::Value = runtime.block_on(async {
        let response = http
            .post(stack.gateway_url("/api/orders"))
            .json(&serde_json::json!({
                "customer_id": "alice",
                "items": [{"sku": "BOOK-1", "quantity": 2}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    });
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    let trace_id = TraceId::from_hex(created["trace_id"].as_str().unwrap()).unwrap();
    let url = stack.gateway_url(&format!("/api/orders/{order_id}"));
    wait_for("the order to be fulfilled", Duration::from_secs(30), || {
        let order: serde_json::Value = runtime
            .block_on(async { http.get(&url).send().await?.json().await })
            .ok()?;
        (order["status"] == "FULFILLED").then_some(())
    });
    (order_id, trace_id)
}

/// The spans of one order in one service: those of its trace, or, when context was lost,
/// those that name it.
fn about(service: &Service, name: &str, order_id: &str) -> SpanData {
    service.wait_for_span(name, |s| {
        ["app.order.id", "messaging.kafka.message.key"]
            .iter()
            .any(|key| attribute(s, key).as_deref() == Some(order_id))
    })
}

#[test]
fn broken_with_an_empty_propagator_one_order_splits_into_five_traces() {
    let propagator = PropagatorLock::take();
    let stack = Stack::full();
    // Every service as it is, minus the propagator `init` installs.
    propagator.empty();
    let (order_id, _) = place_an_order(&stack);

    let gateway = one(&stack.gateway().spans(), "POST /api/orders").clone();
    let orders = &stack.order_service;
    // Waited for: a server span can end a moment after the order reads FULFILLED.
    let create = orders.wait_for_span("order.v1.OrderService/CreateOrder", |_| true);
    let send = about(orders, "send orders", &order_id);
    let process = about(stack.worker(), "process orders", &order_id);
    let complete = orders.wait_for_span("order.v1.OrderService/CompleteOrder", |_| true);
    // Each hop that needs the propagator starts a trace of its own.
    for span in [&create, &send, &process, &complete] {
        assert!(is_root(span), "{:?} should be a root", span.name);
    }
    let traces: HashSet<TraceId> = [&gateway, &create, &send, &process, &complete]
        .into_iter()
        .map(trace)
        .collect();
    assert_eq!(traces.len(), 5, "{traces:?}");
    stack.stop();
}

#[test]
fn fixed_one_order_is_one_trace_from_the_gateway_to_the_last_complete_order() {
    let _propagator = PropagatorLock::take();
    let stack = Stack::full();
    let (_, trace_id) = place_an_order(&stack);
    // Each span of the order's trace, waited for (a server span can end a moment after
    // the order reads FULFILLED), and only one of each.
    let in_trace = |service: &Service, name: &str| -> SpanData {
        service.wait_for_span(name, |s| trace(s) == trace_id);
        let found = of_trace(&service.spans(), trace_id);
        one(&found, name).clone()
    };
    let (gateway, orders, worker) = (stack.gateway(), &stack.order_service, stack.worker());
    let http = in_trace(gateway, "POST /api/orders");
    assert!(is_root(&http), "the trace starts at the gateway");
    let create_client = in_trace(gateway, "order.v1.OrderService/CreateOrder");
    let create_server = in_trace(orders, "order.v1.OrderService/CreateOrder");
    let send = in_trace(orders, "send orders");
    let process = in_trace(worker, "process orders");
    let complete_client = in_trace(worker, "order.v1.OrderService/CompleteOrder");
    let complete_server = in_trace(orders, "order.v1.OrderService/CompleteOrder");
    let update = in_trace(orders, "UPDATE orders");
    assert_child(&create_client, &http, SpanKind::Client);
    assert_child(&create_server, &create_client, SpanKind::Server);
    assert_child(&send, &create_server, SpanKind::Producer);
    assert_child(&process, &send, SpanKind::Consumer);
    assert_child(&complete_client, &process, SpanKind::Client);
    assert_child(&complete_server, &complete_client, SpanKind::Server);
    assert_child(&update, &complete_server, SpanKind::Client);
    stack.stop();
}

/// The relay's side: a PRODUCER span made by a background task, long after the request
/// that created the order has gone; `stored` is the context saved with the order, if
/// the relay uses it.
fn send_later(orders: &Service, stored_context: Option<String>) {
    let kafka = KafkaClient::new("order-service", "localhost:9092");
    orders.run(async move {
        // A task of its own, as the relay is: no request's span is current here.
        tokio::spawn(async move {
            let span = kafka.producer_span("orders", "order-7");
            if let Some(stored_context) = &stored_context {
                stored::restore_parent(&span, stored_context);
            }
            drop(span);
        })
        .await
        .unwrap();
    });
}

/// The request's side: a CreateOrder span that stores its context with the order.
fn create_order(orders: &Service) -> String {
    orders.run(async {
        let span = telemetry::internal_span!("CreateOrder");
        async { stored::capture(&tracing::Span::current()) }
            .instrument(span)
            .await
    })
}

#[test]
fn broken_a_relay_that_ignores_the_stored_context_sends_in_a_trace_of_its_own() {
    let _propagator = PropagatorLock::take();
    let orders = Service::new("order-service");
    create_order(&orders);
    send_later(&orders, None);
    let spans = orders.spans();
    assert_own_trace(one(&spans, "send orders"), one(&spans, "CreateOrder"));
}

#[test]
fn fixed_the_stored_context_puts_a_late_send_in_the_orders_trace() {
    let _propagator = PropagatorLock::take();
    let orders = Service::new("order-service");
    let stored_context = create_order(&orders);
    assert!(
        stored_context.starts_with("traceparent: 00-"),
        "{stored_context}"
    );
    send_later(&orders, Some(stored_context));
    let spans = orders.spans();
    assert_child(
        one(&spans, "send orders"),
        one(&spans, "CreateOrder"),
        SpanKind::Producer,
    );
}
