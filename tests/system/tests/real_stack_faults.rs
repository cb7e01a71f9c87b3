//! Baggage-driven faults against the real Kafka, Collector and Jaeger (the native stack
//! of `scripts/stack`), the three services as processes with `FAULT_INJECTION=baggage`:
//! one `baggage` header sent to the gateway, as `curl -H 'baggage: demo.fault=…'` sends
//! it, changes the outcome in the worker, across gRPC, the outbox and a real Kafka topic,
//! and Jaeger shows the member on the step it changed. `scripts/test` runs it; a plain
//! `cargo test` skips it (it needs the stack).

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::jaeger::StoredSpan;
use support::native::{Order, Services, StackEnv, http_client, wait_for_spans, wait_until_final};

/// Spans of a complete order trace (README's tree).
const ORDER_SPANS: usize = 11;
const STEPS: [&str; 2] = ["reserve stock", "charge payment"];

/// An order sent with `baggage`, the status it must end in, and the step (with the
/// `demo.fault` value) that must fail.
struct Case {
    baggage: Option<&'static str>,
    status: &'static str,
    failed_step: Option<(&'static str, &'static str)>,
}

fn find<'a>(spans: &'a [StoredSpan], service: &str, name: &str) -> &'a StoredSpan {
    let found: Vec<&StoredSpan> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name:?} in {spans:?}");
    found[0]
}

#[test]
#[ignore = "needs the native stack: run scripts/test"]
fn a_fault_sent_at_the_gateway_changes_the_outcome_in_the_worker_through_kafka() {
    let stack = StackEnv::from_env();
    let (runtime, http) = http_client();
    let services = Services::start_with(
        &stack,
        "faults",
        &runtime,
        &[("FAULT_INJECTION", "baggage")],
    );
    let (gateway, topic) = (services.gateway_url.clone(), services.topic.clone());

    // The same order three times: without a fault, then with each of the worker's.
    let cases = [
        Case {
            baggage: None,
            status: "FULFILLED",
            failed_step: None,
        },
        Case {
            baggage: Some("demo.fault=payment_declined"),
            status: "FAILED",
            failed_step: Some(("charge payment", "payment_declined")),
        },
        Case {
            baggage: Some("demo.fault=stock_out"),
            status: "FAILED",
            failed_step: Some(("reserve stock", "stock_out")),
        },
    ];
    for Case {
        baggage,
        status: expected_status,
        failed_step,
    } in cases
    {
        let mut request = http
            .post(format!("{gateway}/api/orders"))
            .json(&json!({"customer_id": "alice", "items": [{"sku": "BOOK-1", "quantity": 2}]}));
        if let Some(baggage) = baggage {
            request = request.header("baggage", baggage);
        }
        let response = runtime.block_on(request.send()).unwrap();
        assert_eq!(response.status(), 201, "{baggage:?}");
        let body: Value = runtime.block_on(response.json()).unwrap();
        let order = Order {
            id: body["order_id"].as_str().unwrap().to_owned(),
            trace_id: body["trace_id"].as_str().unwrap().to_owned(),
            caller_span_id: None,
        };

        // The outcome, decided in the worker.
        let status = runtime.block_on(wait_until_final(&http, &gateway, &order));
        assert_eq!(status, expected_status, "{baggage:?}");
        let details: Value = runtime
            .block_on(async {
                http.get(format!("{gateway}/api/orders/{}", order.id))
                    .send()
                    .await?
                    .json()
                    .await
            })
            .unwrap();
        match baggage {
            Some(member) => assert!(
                details["failure_reason"].as_str().is_some_and(
                    |reason| reason.ends_with(&format!("asked for by baggage {member}"))
                ),
                "{details}"
            ),
            None => assert!(details["failure_reason"].is_null(), "{details}"),
        }

        // In Jaeger: the whole trace, the worker's part reached through the real topic
        // (its CONSUMER span a child of the order-service's PRODUCER span), and the member
        // on the step it failed, that step red and no other.
        let spans = wait_for_spans(&runtime, &http, &stack.jaeger, &order.trace_id, ORDER_SPANS);
        assert_eq!(spans.len(), ORDER_SPANS, "{spans:?}");
        let producer = find(&spans, "order-service", &format!("send {topic}"));
        let consumer = find(&spans, "worker", &format!("process {topic}"));
        assert_eq!(consumer.parent_span_id, producer.span_id);
        assert!(consumer.linked_span_ids.contains(&producer.span_id));
        for step in STEPS {
            let span = find(&spans, "worker", step);
            assert_eq!(span.parent_span_id, consumer.span_id, "{step}");
            match failed_step {
                Some((failed, value)) if failed == step => {
                    assert!(span.is_error, "{baggage:?}: {step} is red");
                    assert_eq!(span.attributes["demo.fault"], value, "{span:?}");
                }
                _ => {
                    assert!(!span.is_error, "{baggage:?}: {step}");
                    assert!(!span.attributes.contains_key("demo.fault"), "{span:?}");
                }
            }
        }
        let marked: Vec<&str> = spans
            .iter()
            .filter(|s| s.attributes.contains_key("demo.fault"))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            marked,
            failed_step
                .map(|(step, _)| step)
                .into_iter()
                .collect::<Vec<_>>(),
            "only the affected span carries the member"
        );
    }

    // And one the order-service honours: nothing is stored, the gateway answers 503.
    let response = runtime
        .block_on(
            http.post(format!("{gateway}/api/orders"))
                .header("baggage", "demo.fault=order_service_unavailable")
                .json(&json!({"customer_id": "alice", "items": [{"sku": "BOOK-1", "quantity": 2}]}))
                .send(),
        )
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = runtime.block_on(response.json()).unwrap();
    assert_eq!(body["error"]["code"], "order_service_unavailable");
    let trace_id = body["trace_id"].as_str().unwrap();
    let spans = wait_for_spans(&runtime, &http, &stack.jaeger, trace_id, 3);
    let server = find(&spans, "order-service", "order.v1.OrderService/CreateOrder");
    assert!(server.is_error);
    assert_eq!(server.attributes["demo.fault"], "order_service_unavailable");
    assert_eq!(server.attributes["rpc.response.status_code"], "UNAVAILABLE");

    services.stop();
}
