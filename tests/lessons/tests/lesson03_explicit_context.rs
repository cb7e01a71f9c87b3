//! Lesson 03 (docs/lessons/03-explicit-context.md): context crosses gRPC and Kafka only
//! because something writes it into the carrier (gRPC metadata, Kafka record headers)
//! and something reads it back, through the process-wide W3C propagator.
//!
//! Some variants swap the process-wide propagator, so every test here holds
//! [`PropagatorLock`] for its whole run.

// Test code: a panic is how a check or a failed set-up reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use support::PropagatorLock;
use support::kafka::{GROUP, MockTopic, TOPIC};
use support::services::{Service, Stack};
use support::spans::{assert_child, assert_own_trace, id, one, trace};
use telemetry::propagation::kafka::{self, KafkaClient};
use tracing::Instrument;

const SEND: &str = "send orders";
const PROCESS: &str = "process orders";

/// The order-service's side: a PRODUCER span and a record for `key`, sent through the
/// mock cluster. `with_headers` decides whether the span's context goes into the record.
fn produce(producer: &Service, topic: &MockTopic, key: &'static str, with_headers: bool) {
    let kafka = KafkaClient::new("order-service", &topic.bootstrap_servers());
    let sender = topic.producer.clone();
    producer.run(async move {
        let span = kafka.producer_span(TOPIC, key);
        let headers = if with_headers {
            kafka::inject_headers(&span, OwnedHeaders::new())
        } else {
            OwnedHeaders::new()
        };
        let record = FutureRecord::to(TOPIC)
            .key(key)
            .payload("{}")
            .headers(headers);
        kafka::send_in_span(&sender, record, &span, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    });
}

/// The worker's side: the record as consumed, and the CONSUMER span it makes for it.
fn consume(consumer: &Service, topic: &MockTopic, key: &str) -> (OwnedMessage, SpanData) {
    let message = topic.receive(key);
    let kafka = KafkaClient::new("worker", &topic.bootstrap_servers());
    tracing::dispatcher::with_default(consumer.capture.dispatch(), || {
        drop(kafka.consumer_span(&message, GROUP));
    });
    let span = consumer.wait_for_span(PROCESS, |s| {
        telemetry::testing::attribute(s, "messaging.kafka.message.key").as_deref() == Some(key)
    });
    (message, span)
}

fn header_names(message: &OwnedMessage) -> Vec<String> {
    message
        .headers()
        .map(|h| h.iter().map(|h| h.key.to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn broken_a_record_sent_without_its_headers_starts_a_new_trace_in_the_worker() {
    let _propagator = PropagatorLock::take();
    let topic = MockTopic::new();
    let (orders, worker) = (Service::new("order-service"), Service::new("worker"));
    produce(&orders, &topic, "order-1", false);
    let (message, consumer) = consume(&worker, &topic, "order-1");

    assert!(header_names(&message).is_empty());
    let producer = one(&orders.spans(), SEND).clone();
    assert_own_trace(&consumer, &producer);
    assert!(consumer.links.is_empty(), "nothing to link to either");
}

#[test]
fn broken_with_an_empty_propagator_no_context_crosses_kafka_or_grpc() {
    let propagator = PropagatorLock::take();
    let topic = MockTopic::new();
    let (orders, worker) = (Service::new("order-service"), Service::new("worker"));
    let stack = Stack::order_service();
    let caller = Service::new("gateway");
    // The services' code unchanged; only the propagator that `init` installs is gone.
    propagator.empty();

    produce(&orders, &topic, "order-2", true);
    let (message, consumer) = consume(&worker, &topic, "order-2");
    assert!(
        !header_names(&message).contains(&"traceparent".to_owned()),
        "{:?}",
        header_names(&message)
    );
    assert_own_trace(&consumer, one(&orders.spans(), SEND));

    let mut client = caller.order_client(stack.order_service_addr);
    caller.run(async move {
        client
            .get_order(proto::order::v1::GetOrderRequest {
                order_id: "6f1c1f2e-1d55-4b8e-9d3a-1b9b8a6c2f00".into(),
            })
            .instrument(telemetry::internal_span!("handle request"))
            .await
            .unwrap_err()
    });
    let client_span = one(&caller.spans(), "order.v1.OrderService/GetOrder").clone();
    let server = stack
        .order_service
        .wait_for_span("order.v1.OrderService/GetOrder", |_| true);
    assert_own_trace(&server, &client_span);
    stack.stop();
}

#[test]
fn fixed_the_record_headers_carry_the_producer_span_to_the_consumer() {
    let _propagator = PropagatorLock::take();
    let topic = MockTopic::new();
    let (orders, worker) = (Service::new("order-service"), Service::new("worker"));
    produce(&orders, &topic, "order-3", true);
    let (message, consumer) = consume(&worker, &topic, "order-3");

    assert!(header_names(&message).contains(&"traceparent".to_owned()));
    let producer = one(&orders.spans(), SEND).clone();
    assert_child(&consumer, &producer, SpanKind::Consumer);
    assert!(consumer.parent_span_is_remote);
    // And linked, as the messaging conventions ask.
    assert!(
        consumer
            .links
            .iter()
            .any(|l| l.span_context.span_id() == id(&producer))
    );
}

#[test]
fn fixed_grpc_metadata_carries_the_client_span_to_the_server() {
    let _propagator = PropagatorLock::take();
    let stack = Stack::order_service();
    let caller = Service::new("gateway");
    let mut client = caller.order_client(stack.order_service_addr);
    caller.run(async move {
        client
            .get_order(proto::order::v1::GetOrderRequest {
                order_id: "6f1c1f2e-1d55-4b8e-9d3a-1b9b8a6c2f00".into(),
            })
            .instrument(telemetry::internal_span!("handle request"))
            .await
            .unwrap_err()
    });
    let client_span = one(&caller.spans(), "order.v1.OrderService/GetOrder").clone();
    let server = stack
        .order_service
        .wait_for_span("order.v1.OrderService/GetOrder", |s| {
            trace(s) == trace(&client_span)
        });
    assert_child(&server, &client_span, SpanKind::Server);
    stack.stop();
}
