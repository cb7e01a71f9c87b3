//! Lesson 04 (docs/lessons/04-spawned-tasks.md): context does not follow `tokio::spawn`
//! or `spawn_blocking` by itself. A span made *inside* the task has no parent; a span
//! made by the caller, in its context, and attached to the task keeps the trace whole.

// Test code: a panic is how a check or a failed set-up reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use opentelemetry::trace::SpanKind;
use proto::order::v1::{GetOrderRequest, Order, OrderCreated, OrderItem};
use support::services::{Service, Stack};
use support::spans::{assert_child, assert_own_trace, id, one, trace};
use tracing::Instrument;

fn event() -> OrderCreated {
    OrderCreated::for_order(&Order {
        order_id: "order-4".into(),
        customer_id: "alice".into(),
        items: vec![OrderItem {
            sku: "BOOK-1".into(),
            quantity: 1,
        }],
        ..Order::default()
    })
}

#[test]
fn broken_a_span_made_inside_a_spawned_task_starts_a_trace_of_its_own() {
    let worker = Service::new("worker");
    worker.run(async {
        let consumer = telemetry::internal_span!("process orders");
        async {
            // The task starts with no current span: whatever it makes is a root.
            tokio::spawn(async {
                async { tokio::time::sleep(Duration::from_millis(10)).await }
                    .instrument(telemetry::internal_span!("reserve stock"))
                    .await;
            })
            .await
            .unwrap();
        }
        .instrument(consumer)
        .await;
    });
    let spans = worker.spans();
    assert_own_trace(one(&spans, "reserve stock"), one(&spans, "process orders"));
}

#[test]
fn broken_a_span_made_inside_spawn_blocking_starts_a_trace_of_its_own() {
    let orders = Service::new("order-service");
    orders.run(async {
        let request = telemetry::internal_span!("GetOrder");
        async {
            tokio::task::spawn_blocking(|| {
                // A blocking-pool thread has no current span either.
                telemetry::span::db_client("sqlite", "SELECT", "orders").in_scope(|| ());
            })
            .await
            .unwrap();
        }
        .instrument(request)
        .await;
    });
    let spans = orders.spans();
    assert_own_trace(one(&spans, "SELECT orders"), one(&spans, "GetOrder"));
}

#[test]
fn fixed_the_workers_spawned_steps_stay_in_the_consumers_trace() {
    let worker = Service::new("worker");
    let outcome = worker.run(async {
        let consumer = telemetry::internal_span!("process orders");
        worker::fulfilment::fulfil(&event(), faults::FaultInjection::Off)
            .instrument(consumer)
            .await
    });
    assert_eq!(outcome, worker::fulfilment::Outcome::Fulfilled);
    let spans = worker.spans();
    let parent = one(&spans, "process orders");
    for step in ["reserve stock", "charge payment"] {
        assert_child(one(&spans, step), parent, SpanKind::Internal);
    }
}

#[test]
fn fixed_the_stores_blocking_queries_stay_in_the_requests_trace() {
    let stack = Stack::order_service();
    let caller = Service::new("gateway");
    let mut client = caller.order_client(stack.order_service_addr);
    caller.run(async move {
        client
            .get_order(GetOrderRequest {
                order_id: "6f1c1f2e-1d55-4b8e-9d3a-1b9b8a6c2f00".into(),
            })
            .await
            .unwrap_err()
    });
    let client_span = one(&caller.spans(), "order.v1.OrderService/GetOrder").clone();
    let server = stack
        .order_service
        .wait_for_span("order.v1.OrderService/GetOrder", |s| {
            trace(s) == trace(&client_span)
        });
    // The query ran on tokio's blocking pool (`Store::run`), in the request's trace.
    let query = stack
        .order_service
        .wait_for_span("SELECT orders", |s| s.parent_span_id == id(&server));
    assert_child(&query, &server, SpanKind::Client);
    stack.stop();
}
