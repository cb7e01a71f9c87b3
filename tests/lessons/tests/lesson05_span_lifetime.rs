//! Lesson 05 (docs/lessons/05-span-lifetime.md): a span ends after the async work it
//! covers. One that ends first still has the right parent, but its time is wrong: in
//! Jaeger its children stick out past its end, and what happens later (the broker's
//! answer, an error) is never recorded on it.

// Test code: a panic is how a check or a failed set-up reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::SystemTime;

use opentelemetry::trace::{SpanKind, Status};
use proto::order::v1::order_service_client::OrderServiceClient;
use proto::order::v1::{CreateOrderRequest, Order, OrderCreated, OrderItem};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;
use support::kafka::{MockTopic, TOPIC};
use support::services::{Service, Stack};
use support::spans::{assert_child, attribute, one, trace};
use telemetry::propagation::kafka::{self, KafkaClient};
use telemetry::span::mark_error;
use tokio::sync::oneshot;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const CREATE_ORDER: &str = "order.v1.OrderService/CreateOrder";
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[test]
fn broken_a_span_closed_before_its_task_runs_records_neither_its_time_nor_its_failure() {
    let worker = Service::new("worker");
    let (open, gate) = oneshot::channel::<()>();
    // On the test's thread, recording into the worker's spans; the task runs on its runtime.
    let _runtime = worker.runtime.enter();
    let task = tracing::dispatcher::with_default(worker.capture.dispatch(), || {
        let consumer = telemetry::internal_span!("process orders");
        let _entered = consumer.enter();
        let step = telemetry::internal_span!("reserve stock");
        // `in_scope` covers the call to `spawn`, not the task: the step span closes as
        // soon as the task is handed to the scheduler.
        step.in_scope(|| {
            tokio::spawn(async move {
                let _ = gate.await;
                // The step fails, and marks whatever span is current: none.
                mark_error(
                    &tracing::Span::current(),
                    "out_of_stock",
                    "out of stock: OOS-1",
                );
                SystemTime::now()
            })
        })
    });
    // The step's span is finished and exported while its work has not even begun.
    let step = worker.wait_for_span("reserve stock", |_| true);
    open.send(()).unwrap();
    let work_done = worker.runtime.block_on(task).unwrap();
    let consumer = worker.wait_for_span("process orders", |_| true);

    assert_child(&step, &consumer, SpanKind::Internal);
    assert!(step.end_time < work_done, "the span ended before its work");
    assert_eq!(step.status, Status::Unset, "the failure never reached it");
}

#[test]
fn fixed_a_step_span_attached_with_instrument_covers_its_task_and_records_its_failure() {
    let worker = Service::new("worker");
    let event = OrderCreated::for_order(&Order {
        order_id: "order-5".into(),
        customer_id: "alice".into(),
        items: vec![OrderItem {
            sku: "OOS-1".into(),
            quantity: 1,
        }],
        ..Order::default()
    });
    let outcome = worker.run(async move {
        let consumer = telemetry::internal_span!("process orders");
        worker::fulfilment::fulfil(&event, faults::FaultInjection::Off)
            .instrument(consumer)
            .await
    });
    assert_eq!(
        outcome,
        worker::fulfilment::Outcome::Failed("out of stock: OOS-1".into())
    );
    let spans = worker.spans();
    let parent = one(&spans, "process orders");
    for name in ["reserve stock", "charge payment"] {
        let step = one(&spans, name);
        assert_child(step, parent, SpanKind::Internal);
        assert!(step.start_time >= parent.start_time, "{name}");
        assert!(
            step.end_time <= parent.end_time,
            "{name} ends inside its parent"
        );
    }
    // The step's span was open when the step failed: the failure is on it.
    assert!(matches!(
        one(&spans, "reserve stock").status,
        Status::Error { .. }
    ));
}

#[test]
fn broken_a_producer_span_ended_at_enqueue_misses_the_brokers_answer() {
    let topic = MockTopic::new();
    let orders = Service::new("order-service");
    let kafka_client = KafkaClient::new("order-service", &topic.bootstrap_servers());
    let producer = topic.producer.clone();
    let acked = orders.run(async move {
        let span = kafka_client.producer_span(TOPIC, "order-5");
        let headers = kafka::inject_headers(&span, OwnedHeaders::new());
        let record = FutureRecord::to(TOPIC)
            .key("order-5")
            .payload("{}")
            .headers(headers);
        // `send` hands the record to librdkafka's queue; the span ends here, before
        // the broker has answered.
        let delivery = span.in_scope(|| producer.send(record, SEND_TIMEOUT));
        drop(span);
        delivery.await.unwrap();
        SystemTime::now()
    });
    let send = orders.wait_for_span("send orders", |_| true);
    assert!(
        send.end_time < acked,
        "the span ended before the broker answered"
    );
    assert_eq!(attribute(&send, "messaging.kafka.offset"), None);
    assert_eq!(attribute(&send, "messaging.destination.partition.id"), None);
}

#[test]
fn fixed_send_in_span_keeps_the_producer_span_open_until_the_broker_answers() {
    let topic = MockTopic::new();
    let orders = Service::new("order-service");
    let kafka_client = KafkaClient::new("order-service", &topic.bootstrap_servers());
    let producer = topic.producer.clone();
    let (partition, offset) = orders.run(async move {
        let span = kafka_client.producer_span(TOPIC, "order-5");
        let headers = kafka::inject_headers(&span, OwnedHeaders::new());
        let record = FutureRecord::to(TOPIC)
            .key("order-5")
            .payload("{}")
            .headers(headers);
        kafka::send_in_span(&producer, record, &span, SEND_TIMEOUT)
            .await
            .unwrap()
    });
    let send = orders.wait_for_span("send orders", |_| true);
    // Recorded from the broker's answer: the span was still open when it came.
    assert_eq!(
        attribute(&send, "messaging.kafka.offset"),
        Some(offset.to_string())
    );
    assert_eq!(
        attribute(&send, "messaging.destination.partition.id"),
        Some(partition.to_string())
    );
}

/// A gRPC client layer that ends its CLIENT span when the response headers arrive: what
/// `GrpcClientLayer` would be without `TracedBody`. For a call that succeeds, gRPC sends
/// `grpc-status` in the trailers, after the body.
#[derive(Debug, Clone)]
struct EndsAtHeaders<S>(S);

impl<S, B, R> tower::Service<http::Request<B>> for EndsAtHeaders<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let span = tracing::info_span!(
            "gRPC call",
            otel.name = method.as_str(),
            otel.kind = "client",
            rpc.response.status_code = tracing::field::Empty,
        );
        telemetry::propagation::inject(&span.context(), &mut HeaderInjector(request.headers_mut()));
        let future = span.in_scope(|| self.0.call(request));
        Box::pin(async move {
            let response = future.instrument(span.clone()).await?;
            if let Some(status) = response.headers().get("grpc-status") {
                span.record(
                    "rpc.response.status_code",
                    status.to_str().unwrap_or_default(),
                );
            }
            // `span` ends here, with the headers; the body and its trailers come later.
            Ok(response)
        })
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

fn create_order() -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: "alice".into(),
        items: vec![OrderItem {
            sku: "BOOK-1".into(),
            quantity: 1,
        }],
        ..CreateOrderRequest::default()
    }
}

#[test]
fn broken_a_grpc_client_span_ended_at_the_headers_never_sees_the_status() {
    let stack = Stack::order_service();
    let caller = Service::new("gateway");
    let url = format!("http://{}", stack.order_service_addr);
    caller.run(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect_lazy();
        let mut client = OrderServiceClient::new(EndsAtHeaders(channel));
        client.create_order(create_order()).await.unwrap()
    });
    let spans = caller.spans();
    let client_span = one(&spans, CREATE_ORDER);
    let server = stack
        .order_service
        .wait_for_span(CREATE_ORDER, |s| trace(s) == trace(client_span));
    assert_eq!(
        attribute(&server, "rpc.response.status_code").as_deref(),
        Some("OK")
    );
    assert_eq!(
        attribute(client_span, "rpc.response.status_code"),
        None,
        "the status came in the trailers, after the span had ended"
    );
    stack.stop();
}

#[test]
fn fixed_the_grpc_client_span_ends_with_the_response_body_and_records_its_status() {
    let stack = Stack::order_service();
    let caller = Service::new("gateway");
    let mut client = caller.order_client(stack.order_service_addr);
    caller.run(async move { client.create_order(create_order()).await.unwrap() });
    let spans = caller.spans();
    let client_span = one(&spans, CREATE_ORDER);
    assert_eq!(
        attribute(client_span, "rpc.response.status_code").as_deref(),
        Some("OK")
    );
    stack.stop();
}
