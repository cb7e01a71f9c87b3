//! Nothing lost, nothing doubled, in process (Kafka played by librdkafka's mock cluster):
//! an order is answered on commit and reaches its final state after a broker outage, in
//! its original trace; a retried request with the same `Idempotency-Key` never creates a
//! second order.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, TraceId};
use serde_json::{Value, json};
use support::client::Client;
use support::spans::{assert_child, is_error, of_trace, one};
use support::{Stack, TOPIC, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn order_body(quantity: i64) -> Value {
    json!({"customer_id": "customer-1", "items": [{"sku": "SKU-1", "quantity": quantity}]})
}

/// POSTs an order with `key`; (status, headers, body).
fn post_with_key(
    client: &Client,
    stack: &Stack,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    client.send(
        client
            .http
            .post(stack.url("/api/orders"))
            .header("idempotency-key", key)
            .json(body),
    )
}

#[test]
fn orders_are_answered_during_a_broker_outage_and_fulfilled_after_it_in_their_trace() {
    let stack = Stack::start();
    let client = Client::new();
    // A first order proves the path works before the outage.
    let (first, _, _) = client.place_order(&stack, None);
    assert_eq!(
        client.wait_for_status(&stack, &first)["status"],
        "FULFILLED"
    );

    stack.kafka.broker_down(1).unwrap();
    let during: Vec<(String, TraceId)> = (0..3)
        .map(|_| {
            let (order_id, trace_id, _) = client.place_order(&stack, None);
            (order_id, trace_id)
        })
        .collect();
    // Answered (201, PENDING: `place_order` checks both) without Kafka; still pending.
    for (order_id, _) in &during {
        let (_, _, body) = client.send(
            client
                .http
                .get(stack.url(&format!("/api/orders/{order_id}"))),
        );
        assert_eq!(body["status"], "PENDING", "{body}");
    }
    // Keep the broker away until the relay has seen a send fail (the producer gives up
    // after its 5 s message timeout), so what follows is a retry from the outbox.
    wait_for("a failed send during the outage", WAIT, || {
        let spans = stack.order_service.capture.spans();
        during
            .iter()
            .flat_map(|(_, trace_id)| of_trace(&spans, *trace_id))
            .any(|s| s.name == format!("send {TOPIC}") && is_error(&s))
            .then_some(())
    });
    stack.kafka.broker_up(1).unwrap();

    for (order_id, trace_id) in &during {
        let body = client.wait_for_status(&stack, order_id);
        assert_eq!(body["status"], "FULFILLED", "{body}");
        // The relay's send, however late, is a child of the request's CreateOrder span,
        // and the worker's processing continues it.
        let (orders, worker) = wait_for("the worker's spans of the order", WAIT, || {
            let orders = of_trace(&stack.order_service.capture.spans(), *trace_id);
            let worker = of_trace(&stack.worker.capture.spans(), *trace_id);
            let done = worker
                .iter()
                .any(|s| s.name == "order.v1.OrderService/CompleteOrder");
            done.then_some((orders, worker))
        });
        let create = one(&orders, "order.v1.OrderService/CreateOrder");
        let sends: Vec<_> = orders
            .iter()
            .filter(|s| s.name == format!("send {TOPIC}"))
            .collect();
        assert!(!sends.is_empty());
        for send in &sends {
            assert_child(send, create, SpanKind::Producer);
        }
        // Failed tries are marked; one succeeded.
        assert!(
            sends.iter().any(|s| !is_error(s)),
            "a successful send in trace {trace_id}"
        );
        let consumer = worker
            .iter()
            .find(|s| s.name == format!("process {TOPIC}"))
            .unwrap();
        assert!(
            sends
                .iter()
                .any(|s| s.span_context.span_id() == consumer.parent_span_id),
            "the consumer continues a send of trace {trace_id}"
        );
    }
    stack.stop();
}

#[test]
fn one_idempotency_key_makes_one_order() {
    let stack = Stack::start();
    let client = Client::new();
    let body = order_body(2);

    let (status, headers, first) = post_with_key(&client, &stack, "key-1", &body);
    assert_eq!(status, 201, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = post_with_key(&client, &stack, "key-1", &body);
    assert_eq!(status, 201, "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(
        again["trace_id"], first["trace_id"],
        "the first request's trace"
    );

    // The same key for a different order is refused, with the JSON error.
    let (status, _, refused) = post_with_key(&client, &stack, "key-1", &order_body(3));
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "idempotency_key_reused");
    assert!(refused["trace_id"].is_string());

    // Without the header, nothing changes: each request is an order.
    let (a, _, _) = client.place_order(&stack, None);
    let (b, _, _) = client.place_order(&stack, None);
    assert_ne!(a, b);

    // A malformed key is the caller's mistake.
    let (status, _, bad) = post_with_key(&client, &stack, "has space", &body);
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_idempotency_key");
    stack.stop();
}

#[test]
fn concurrent_requests_with_one_key_make_one_order() {
    let stack = Stack::start();
    let client = Client::new();
    let body = order_body(1);
    let answers: Vec<Value> = client.runtime.block_on(async {
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let request = client
                .http
                .post(stack.url("/api/orders"))
                .header("idempotency-key", "concurrent-key")
                .json(&body);
            requests.spawn(async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 201);
                response.json::<Value>().await.unwrap()
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = requests.join_next().await {
            answers.push(answer.unwrap());
        }
        answers
    });
    let ids: HashSet<&str> = answers
        .iter()
        .map(|a| a["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one order for one key: {ids:?}");
    let order_id = ids.into_iter().next().unwrap();
    assert_eq!(
        client.wait_for_status(&stack, order_id)["status"],
        "FULFILLED"
    );
    stack.stop();
}
