//! Faults asked for in W3C baggage (`demo.fault`, `demo.delay.*`), honoured with
//! `FAULT_INJECTION=baggage`: each key sent where a caller can send it (the gateway over
//! HTTP, the order-service over gRPC, the topic in Kafka record headers) changes the
//! step it names, hops away, and is recorded on that step's span. Off by default, and
//! never honoured when the gateway restarts a caller's trace. All three services in this
//! process, Kafka played by librdkafka's mock cluster, spans captured per service.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::SpanData;
use proto::order::v1::order_service_client::OrderServiceClient;
use proto::order::v1::{CreateOrderRequest, Order, OrderCreated, OrderItem};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use support::client::Client;
use support::spans::{attr, attr_str, is_error, of_trace, one};
use support::{Stack, TOPIC, wait_for};

const WAIT: Duration = Duration::from_secs(30);
const ON: &[(&str, &str)] = &[("FAULT_INJECTION", "baggage")];
const CREATE_ORDER: &str = "order.v1.OrderService/CreateOrder";
const ORDER: &[(&str, i64)] = &[("SKU-1", 2)];

/// A fault the worker honours, and what it does to the order.
struct WorkerFault {
    baggage: &'static str,
    /// The step span that must carry the member.
    step: &'static str,
    key: &'static str,
    value: &'static str,
    /// The order's failure reason, or `None` when it is only slowed down.
    reason: Option<&'static str>,
    /// The least the step must take.
    at_least: Duration,
}

const WORKER_FAULTS: &[WorkerFault] = &[
    WorkerFault {
        baggage: "demo.fault=stock_out",
        step: "reserve stock",
        key: "demo.fault",
        value: "stock_out",
        reason: Some("out of stock: asked for by baggage demo.fault=stock_out"),
        at_least: Duration::ZERO,
    },
    WorkerFault {
        baggage: "demo.fault=payment_declined",
        step: "charge payment",
        key: "demo.fault",
        value: "payment_declined",
        reason: Some("payment declined: asked for by baggage demo.fault=payment_declined"),
        at_least: Duration::ZERO,
    },
    WorkerFault {
        baggage: "demo.delay.reserve_stock=300ms",
        step: "reserve stock",
        key: "demo.delay.reserve_stock",
        value: "300ms",
        reason: None,
        at_least: Duration::from_millis(300),
    },
    WorkerFault {
        baggage: "demo.delay.charge_payment=1s",
        step: "charge payment",
        key: "demo.delay.charge_payment",
        value: "1s",
        reason: None,
        at_least: Duration::from_secs(1),
    },
];

/// `POST /api/orders` with a `baggage` header; the answer's status and body.
fn place(stack: &Stack, client: &Client, baggage: &str) -> (u16, Value) {
    let items: Vec<Value> = ORDER
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    let (status, _, body) = client.send(
        client
            .http
            .post(stack.url("/api/orders"))
            .header("baggage", baggage)
            .json(&json!({"customer_id": "faulty", "items": items})),
    );
    (status, body)
}

fn trace_of(body: &Value) -> TraceId {
    TraceId::from_hex(body["trace_id"].as_str().expect("trace_id")).expect("hex")
}

/// `CreateOrder` straight to the order-service, as another backend would call it, with
/// `baggage` (and a `traceparent` of its own) in the metadata.
fn create_over_grpc(stack: &Stack, baggage: &str, trace_id: &str) -> Result<String, tonic::Status> {
    // A runtime of its own, dropped at the end: that closes the connection, which the
    // order-service's graceful shutdown would otherwise wait for.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut grpc = OrderServiceClient::connect(format!("http://{}", stack.order_service_addr))
            .await
            .unwrap();
        let mut request = tonic::Request::new(CreateOrderRequest {
            customer_id: "faulty".into(),
            items: ORDER
                .iter()
                .map(|(sku, quantity)| OrderItem {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
            ..Default::default()
        });
        let metadata = request.metadata_mut();
        metadata.insert("baggage", baggage.parse().unwrap());
        metadata.insert(
            "traceparent",
            format!("00-{trace_id}-00f067aa0ba902b7-01")
                .parse()
                .unwrap(),
        );
        grpc.create_order(request)
            .await
            .map(|r| r.into_inner().order_id)
    })
}

/// An `order.created` record, written to the topic as the order-service's relay would,
/// with `traceparent` and `baggage` record headers.
fn produce(stack: &Stack, client: &Client, order_id: &str, trace_id: &str, baggage: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.kafka.bootstrap_servers())
        .create()
        .unwrap();
    let event = OrderCreated::for_order(&Order {
        order_id: order_id.to_owned(),
        customer_id: "faulty".into(),
        items: ORDER
            .iter()
            .map(|(sku, quantity)| OrderItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        ..Order::default()
    });
    client.runtime.block_on(async {
        let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some(&traceparent),
            })
            .insert(Header {
                key: "baggage",
                value: Some(baggage),
            });
        producer
            .send(
                FutureRecord::to(TOPIC)
                    .key(order_id)
                    .payload(&event.to_payload())
                    .headers(headers),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    });
}

/// The worker's `reserve stock` and `charge payment` spans of `trace_id`, once both ended.
fn worker_steps(stack: &Stack, trace_id: TraceId) -> Vec<SpanData> {
    wait_for("the worker's step spans", WAIT, || {
        let spans = of_trace(&stack.worker.capture.spans(), trace_id);
        let ended = ["reserve stock", "charge payment"]
            .iter()
            .all(|step| spans.iter().any(|s| s.name == *step));
        ended.then_some(spans)
    })
}

/// The order-service's `CreateOrder` SERVER span of `trace_id`.
fn create_order_span(stack: &Stack, trace_id: TraceId) -> SpanData {
    wait_for("the CreateOrder server span", WAIT, || {
        of_trace(&stack.order_service.capture.spans(), trace_id)
            .into_iter()
            .find(|s| s.name == CREATE_ORDER)
    })
}

fn duration(span: &SpanData) -> Duration {
    span.end_time
        .duration_since(span.start_time)
        .unwrap_or_default()
}

/// The fault changed its step, and only its step: the member and the error status (for
/// a failure) are on that span, the other step is untouched.
fn assert_worker_fault(fault: &WorkerFault, steps: &[SpanData]) {
    let step = one(steps, fault.step);
    assert_eq!(
        attr_str(step, fault.key),
        fault.value,
        "{}: the member is recorded on {:?}",
        fault.baggage,
        fault.step
    );
    assert_eq!(is_error(step), fault.reason.is_some(), "{}", fault.baggage);
    assert!(
        duration(step) >= fault.at_least,
        "{}: {:?} took {:?}",
        fault.baggage,
        fault.step,
        duration(step)
    );
    let other = if fault.step == "reserve stock" {
        "charge payment"
    } else {
        "reserve stock"
    };
    let other = one(steps, other);
    assert!(attr(other, fault.key).is_none(), "{}", fault.baggage);
    assert!(!is_error(other), "{}", fault.baggage);
}

#[test]
fn worker_faults_sent_to_the_gateway_cross_grpc_the_outbox_and_kafka() {
    let stack = Stack::start_with(ON);
    let client = Client::new();
    for fault in WORKER_FAULTS {
        let (status, body) = place(&stack, &client, &format!("tenant=acme,{}", fault.baggage));
        assert_eq!(status, 201, "{}: {body}", fault.baggage);
        let order_id = body["order_id"].as_str().unwrap();
        let final_state = client.wait_for_status(&stack, order_id);
        match fault.reason {
            Some(reason) => {
                assert_eq!(final_state["status"], "FAILED", "{final_state}");
                assert_eq!(final_state["failure_reason"], reason);
            }
            None => assert_eq!(final_state["status"], "FULFILLED", "{final_state}"),
        }
        let trace_id = trace_of(&body);
        assert_worker_fault(fault, &worker_steps(&stack, trace_id));
        // Carried through the order-service, not honoured there.
        let create = create_order_span(&stack, trace_id);
        assert!(attr(&create, fault.key).is_none(), "{}", fault.baggage);
        assert!(!is_error(&create));
    }
    stack.stop();
}

#[test]
fn worker_faults_sent_over_grpc_cross_the_outbox_and_kafka() {
    let stack = Stack::start_with(ON);
    let client = Client::new();
    for (n, fault) in WORKER_FAULTS.iter().enumerate() {
        let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e47{n:02x}");
        let order_id = create_over_grpc(&stack, fault.baggage, &trace_id)
            .unwrap_or_else(|status| panic!("{}: {status}", fault.baggage));
        let final_state = client.wait_for_status(&stack, &order_id);
        let expected = if fault.reason.is_some() {
            "FAILED"
        } else {
            "FULFILLED"
        };
        assert_eq!(final_state["status"], expected, "{final_state}");
        assert_worker_fault(
            fault,
            &worker_steps(&stack, TraceId::from_hex(&trace_id).unwrap()),
        );
    }
    stack.stop();
}

#[test]
fn worker_faults_in_kafka_record_headers_reach_the_spawned_steps() {
    let stack = Stack::start_with(ON);
    let client = Client::new();
    for (n, fault) in WORKER_FAULTS.iter().enumerate() {
        // An order the order-service does not know: the steps run before the outcome is
        // reported, and the steps are what this hop is about.
        let order_id = format!("6f1c1f2e-1d55-4b8e-9d3a-1b9b8a6c2f{n:02x}");
        let trace_id = format!("0af7651916cd43dd8448eb211c8031{n:02x}");
        produce(&stack, &client, &order_id, &trace_id, fault.baggage);
        assert_worker_fault(
            fault,
            &worker_steps(&stack, TraceId::from_hex(&trace_id).unwrap()),
        );
    }
    stack.stop();
}

#[test]
fn order_service_faults_sent_to_the_gateway_fail_or_slow_create_order() {
    let stack = Stack::start_with(ON);
    let client = Client::new();

    let (status, body) = place(&stack, &client, "demo.fault=order_service_unavailable");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "order_service_unavailable");
    let trace_id = trace_of(&body);
    let create = create_order_span(&stack, trace_id);
    assert_eq!(attr_str(&create, "demo.fault"), "order_service_unavailable");
    assert_eq!(attr_str(&create, "rpc.response.status_code"), "UNAVAILABLE");
    assert!(is_error(&create));
    let orders = of_trace(&stack.order_service.capture.spans(), trace_id);
    assert!(
        !orders.iter().any(|s| s.name == "INSERT orders"),
        "an injected outage stores nothing: {:?}",
        orders.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let gateway = wait_for("the gateway's server span", WAIT, || {
        let spans = of_trace(&stack.gateway.capture.spans(), trace_id);
        spans
            .iter()
            .any(|s| s.name == "POST /api/orders")
            .then_some(spans)
    });
    assert!(is_error(one(&gateway, CREATE_ORDER)), "the client span too");
    assert!(is_error(one(&gateway, "POST /api/orders")), "503");

    let (status, body) = place(&stack, &client, "demo.delay.create_order=300ms");
    assert_eq!(status, 201, "{body}");
    let create = create_order_span(&stack, trace_of(&body));
    assert_eq!(attr_str(&create, "demo.delay.create_order"), "300ms");
    assert!(duration(&create) >= Duration::from_millis(300));
    assert!(!is_error(&create));
    let final_state = client.wait_for_status(&stack, body["order_id"].as_str().unwrap());
    assert_eq!(final_state["status"], "FULFILLED");
    stack.stop();
}

#[test]
fn order_service_unavailable_sent_over_grpc_is_unavailable() {
    let stack = Stack::start_with(ON);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let status =
        create_over_grpc(&stack, "demo.fault=order_service_unavailable", trace_id).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .contains("demo.fault=order_service_unavailable"),
        "{status}"
    );
    let create = create_order_span(&stack, TraceId::from_hex(trace_id).unwrap());
    assert_eq!(attr_str(&create, "demo.fault"), "order_service_unavailable");
    stack.stop();
}

#[test]
fn unusable_fault_members_are_ignored_with_a_warning_on_each_step_that_read_them() {
    let stack = Stack::start_with(ON);
    let client = Client::new();
    let (status, body) = place(
        &stack,
        &client,
        "demo.fault=disk_full,demo.delay.reserve_stock=lots",
    );
    assert_eq!(status, 201, "{body}");
    let final_state = client.wait_for_status(&stack, body["order_id"].as_str().unwrap());
    assert_eq!(final_state["status"], "FULFILLED", "{final_state}");
    let trace_id = trace_of(&body);
    let create = create_order_span(&stack, trace_id);
    let steps = worker_steps(&stack, trace_id);
    for (span, delay_read) in [
        (&create, false),
        (one(&steps, "reserve stock"), true),
        (one(&steps, "charge payment"), false),
    ] {
        let ignored = attr_str(span, faults::IGNORED_ATTRIBUTE);
        assert!(
            ignored.contains("demo.fault=disk_full: unknown fault"),
            "{:?}: {ignored}",
            span.name
        );
        assert_eq!(
            ignored.contains("demo.delay.reserve_stock=lots"),
            delay_read,
            "{:?}: {ignored}",
            span.name
        );
        assert!(!is_error(span), "{:?}", span.name);
        assert!(attr(span, "demo.fault").is_none());
    }
    stack.stop();
}

/// Sends every fault member at once and checks that none had an effect or was recorded.
fn assert_nothing_honoured(stack: &Stack, client: &Client) -> TraceId {
    let (status, body) = place(
        stack,
        client,
        "demo.fault=stock_out,demo.delay.reserve_stock=2s,demo.delay.create_order=2s",
    );
    assert_eq!(status, 201, "{body}");
    let final_state = client.wait_for_status(stack, body["order_id"].as_str().unwrap());
    assert_eq!(final_state["status"], "FULFILLED", "{final_state}");
    let trace_id = trace_of(&body);
    let mut spans = worker_steps(stack, trace_id);
    spans.push(create_order_span(stack, trace_id));
    for span in &spans {
        for key in [
            "demo.fault",
            "demo.delay.reserve_stock",
            "demo.delay.create_order",
            faults::IGNORED_ATTRIBUTE,
        ] {
            assert!(attr(span, key).is_none(), "{:?} has {key}", span.name);
        }
        assert!(duration(span) < Duration::from_secs(2), "{:?}", span.name);
    }
    trace_id
}

#[test]
fn faults_are_off_by_default() {
    let stack = Stack::start();
    let client = Client::new();
    assert_nothing_honoured(&stack, &client);
    stack.stop();
}

#[test]
fn a_gateway_that_restarts_inbound_traces_lets_no_fault_through() {
    let stack = Stack::start_with(&[
        ("FAULT_INJECTION", "baggage"),
        ("INBOUND_TRACE_CONTEXT", "restart"),
    ]);
    let client = Client::new();
    let trace_id = assert_nothing_honoured(&stack, &client);
    let gateway = of_trace(&stack.gateway.capture.spans(), trace_id);
    assert_eq!(
        one(&gateway, "POST /api/orders").parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "the trace restarted at the gateway"
    );
    stack.stop();
}
