//! Nothing lost, nothing skipped: records the worker can never handle go to the
//! dead-letter topic whole, in their trace (PRODUCER span `send orders.dlq` under the
//! CONSUMER span); failures that are not about the record are waited out. In one process,
//! Kafka played by librdkafka's mock cluster, spans captured per service.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;
use proto::order::v1::order_service_client::OrderServiceClient;
use proto::order::v1::{CreateOrderRequest, GetOrderRequest, Order, OrderCreated, OrderItem};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::spans::{assert_child, attr_str, id, is_error, of_trace, one};
use support::{GROUP, Service, Stack, TOPIC, wait_for};
use telemetry::testing::CapturedService;
use tokio_util::sync::CancellationToken;

const DLQ: &str = "orders.dlq";
const WAIT: Duration = Duration::from_secs(30);

/// A runtime for the test's own calls (not one of the services').
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A record produced straight to `orders`, as a buggy or future producer might.
struct Sent {
    key: String,
    payload: Vec<u8>,
    trace_id: TraceId,
    traceparent: String,
    partition: i32,
    offset: i64,
}

fn produce(bootstrap: &str, key: &str, payload: &[u8], trace_id: &str) -> Sent {
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some(&traceparent),
        })
        .insert(Header {
            key: "app.source",
            value: Some("dead-letter-test"),
        });
    let delivery = runtime()
        .block_on(
            producer.send(
                FutureRecord::to(TOPIC)
                    .key(key)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(5),
            ),
        )
        .unwrap();
    Sent {
        key: key.to_owned(),
        payload: payload.to_vec(),
        trace_id: TraceId::from_hex(trace_id).unwrap(),
        traceparent,
        partition: delivery.partition,
        offset: delivery.offset,
    }
}

/// Reads the dead-letter topic from the start until it holds a record for every key.
fn read_dead_letters(bootstrap: &str, keys: &[&str]) -> HashMap<String, OwnedMessage> {
    // A consumer needs a group even to read an assigned partition; this one never
    // subscribes or commits.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dead-letter-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut from_start = TopicPartitionList::new();
    from_start
        .add_partition_offset(DLQ, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&from_start).unwrap();
    let mut found = HashMap::new();
    wait_for("the dead letters", WAIT, || {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            found.insert(key, message.detach());
        }
        keys.iter().all(|k| found.contains_key(*k)).then_some(())
    });
    found
}

fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .filter(|h| h.key == key)
        .find_map(|h| Some(String::from_utf8_lossy(h.value?).into_owned()))
}

/// Reads what the worker's group has committed. Never subscribes, so never joins the
/// group.
fn offsets_reader(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .create()
        .unwrap()
}

/// The offset the worker's group has committed for `partition` of `orders`.
fn committed(reader: &BaseConsumer, partition: i32) -> Option<i64> {
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(TOPIC, partition);
    let offsets = reader
        .committed_offsets(wanted, Duration::from_secs(5))
        .ok()?;
    match offsets.find_partition(TOPIC, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

/// The worker's spans of `trace_id`, once its CONSUMER span has ended (the last of them).
fn worker_trace(stack: &Stack, trace_id: TraceId) -> Vec<SpanData> {
    wait_for("the worker's consumer span", WAIT, || {
        let spans = of_trace(&stack.worker.capture.spans(), trace_id);
        spans
            .iter()
            .any(|s| s.name == format!("process {TOPIC}"))
            .then_some(spans)
    })
}

/// Checks the dead letter of `sent`: the record whole, why, where from, and its place in
/// the trace.
fn assert_dead_lettered(stack: &Stack, sent: &Sent, letter: &OwnedMessage, error_type: &str) {
    assert_eq!(letter.payload(), Some(sent.payload.as_slice()));
    assert_eq!(letter.key(), Some(sent.key.as_bytes()));
    assert_eq!(
        header(letter, "app.source").as_deref(),
        Some("dead-letter-test")
    );
    assert_eq!(
        header(letter, "dlq.original.traceparent").as_deref(),
        Some(sent.traceparent.as_str())
    );
    assert_eq!(
        header(letter, "dlq.error.type").as_deref(),
        Some(error_type)
    );
    assert!(header(letter, "dlq.error.reason").is_some_and(|r| !r.is_empty()));
    assert_eq!(header(letter, "dlq.original.topic").as_deref(), Some(TOPIC));
    assert_eq!(
        header(letter, "dlq.original.partition"),
        Some(sent.partition.to_string())
    );
    assert_eq!(
        header(letter, "dlq.original.offset"),
        Some(sent.offset.to_string())
    );

    let spans = worker_trace(stack, sent.trace_id);
    let consumer = one(&spans, &format!("process {TOPIC}"));
    assert!(is_error(consumer), "the record's span is marked failed");
    assert_eq!(attr_str(consumer, "error.type"), error_type);
    let producer = one(&spans, &format!("send {DLQ}"));
    assert_child(producer, consumer, SpanKind::Producer);
    assert_eq!(attr_str(producer, "messaging.destination.name"), DLQ);
    assert_eq!(attr_str(producer, "messaging.kafka.message.key"), sent.key);
    assert_eq!(attr_str(producer, "messaging.client.id"), "worker");
    assert!(!is_error(producer));
    // A reader of the dead letter continues the trace from the write that made it.
    assert_eq!(
        header(letter, "traceparent"),
        Some(format!("00-{}-{}-01", sent.trace_id, id(producer)))
    );
}

#[test]
fn unreadable_records_are_dead_lettered_whole_and_their_partition_moves_on() {
    let stack = Stack::start();
    stack.kafka.create_topic(DLQ, 1, 1).unwrap();
    let bootstrap = stack.kafka.bootstrap_servers();

    let poison = produce(
        &bootstrap,
        "poison-1",
        b"{not json",
        "0af7651916cd43dd8448eb211c80319c",
    );
    let future_version = produce(
        &bootstrap,
        "version-2",
        br#"{"type":"order.created","version":2,"order_id":"o","customer_id":"c","items":[]}"#,
        "1af7651916cd43dd8448eb211c80319c",
    );
    let letters = read_dead_letters(&bootstrap, &["poison-1", "version-2"]);
    assert_dead_lettered(&stack, &poison, &letters["poison-1"], "malformed_message");
    assert_dead_lettered(
        &stack,
        &future_version,
        &letters["version-2"],
        "unknown_event_version",
    );

    // Their offsets are committed (auto-commit, every 5 s): the partitions move on.
    let reader = offsets_reader(&bootstrap);
    for sent in [&poison, &future_version] {
        wait_for("the offset past the dead letter", WAIT, || {
            committed(&reader, sent.partition)
                .filter(|offset| *offset > sent.offset)
                .map(|_| ())
        });
    }

    // And the worker goes on with the next order.
    let http = reqwest::Client::new();
    let client = runtime();
    let order_id = client.block_on(async {
        let body: serde_json::Value = http
            .post(stack.url("/api/orders"))
            .json(&serde_json::json!({"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 1}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["order_id"].as_str().unwrap().to_owned()
    });
    wait_for("the next order to be fulfilled", WAIT, || {
        let status = client.block_on(async {
            let body: serde_json::Value = http
                .get(stack.url(&format!("/api/orders/{order_id}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["status"].clone()
        });
        (status == "FULFILLED").then_some(())
    });
    // Its connections must close, or the gateway's graceful shutdown waits for them.
    drop(client);
    stack.stop();
}

#[test]
fn a_record_for_an_unknown_order_is_dead_lettered_after_a_bounded_recheck() {
    let stack = Stack::start();
    stack.kafka.create_topic(DLQ, 1, 1).unwrap();
    let bootstrap = stack.kafka.bootstrap_servers();

    // A well-formed event for an order the order-service has never stored.
    let order_id = "7d1c1f2e-1d55-4b8e-9d3a-1b9b8a6c2f01";
    let event = OrderCreated::for_order(&Order {
        order_id: order_id.into(),
        customer_id: "c-1".into(),
        items: vec![OrderItem {
            sku: "SKU-1".into(),
            quantity: 1,
        }],
        ..Order::default()
    });
    let sent = produce(
        &bootstrap,
        order_id,
        &event.to_payload(),
        "2af7651916cd43dd8448eb211c80319c",
    );
    let letters = read_dead_letters(&bootstrap, &[order_id]);
    assert_dead_lettered(&stack, &sent, &letters[order_id], "not_found");

    // Asked once and re-checked a bounded number of times, with waits between.
    let spans = worker_trace(&stack, sent.trace_id);
    let consumer = one(&spans, &format!("process {TOPIC}"));
    let mut calls: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "order.v1.OrderService/CompleteOrder")
        .collect();
    calls.sort_by_key(|s| s.start_time);
    let rechecks = worker::RetryPolicy::default().rechecks as usize;
    assert_eq!(calls.len(), 1 + rechecks);
    for call in &calls {
        assert_child(call, consumer, SpanKind::Client);
        assert_eq!(attr_str(call, "rpc.response.status_code"), "NOT_FOUND");
    }
    // Each wait is at least half its step: 125 + 250 + 500 ms.
    let waited = calls[rechecks]
        .start_time
        .duration_since(calls[0].end_time)
        .unwrap();
    assert!(waited >= Duration::from_millis(875), "{waited:?}");
    stack.stop();
}

/// The order-service, the worker and Kafka, each started and stopped on the test's cue.
struct Parts {
    kafka: MockCluster<'static, DefaultProducerContext>,
    order_service: Service,
    worker: Service,
    data_dir: std::path::PathBuf,
}

fn service(name: &str) -> Service {
    let capture = CapturedService::new(name);
    let runtime = capture.runtime().unwrap();
    Service {
        capture,
        runtime,
        handle: None,
    }
}

fn start_order_service(
    service: &mut Service,
    bootstrap: &str,
    data_dir: &Path,
    addr: SocketAddr,
) -> CancellationToken {
    let config = support::order_service_config(bootstrap, data_dir, addr);
    let app = service
        .runtime
        .block_on(order_service::Application::build(config))
        .unwrap();
    let stop = CancellationToken::new();
    service.handle = Some(service.runtime.spawn(app.run_until_stopped(stop.clone())));
    stop
}

/// Cancels `stop` and checks the service exits cleanly.
fn stop(service: &mut Service, stop: &CancellationToken) {
    stop.cancel();
    let handle = service.handle.take().unwrap();
    let result = service
        .runtime
        .block_on(async { tokio::time::timeout(WAIT, handle).await });
    match result {
        Ok(Ok(Ok(()))) => {}
        other => panic!("{} did not stop cleanly: {other:?}", service.capture.name()),
    }
}

fn order_status(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    order_id: &str,
) -> Option<i32> {
    runtime.block_on(async {
        let mut client = OrderServiceClient::connect(format!("http://{addr}"))
            .await
            .ok()?;
        let order = client
            .get_order(GetOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await
            .ok()?;
        Some(order.into_inner().status)
    })
}

/// The bug this guards against: tonic reports its own timeout as CANCELLED, which the
/// worker once took for a refusal, logging and skipping the record. Now a silent
/// order-service (paused), then a missing one (restarting), are waited out.
#[test]
fn an_order_service_that_is_silent_then_gone_is_waited_out_and_the_order_completes() {
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic(TOPIC, 3, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let data_dir = support::fresh_data_dir("dead-letters-test");
    let mut parts = Parts {
        kafka,
        order_service: service("order-service"),
        worker: service("worker"),
        data_dir,
    };
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_ports(1)[0])
        .parse()
        .unwrap();

    // 1. The order is created and its event published; then the order-service goes away.
    let first = start_order_service(&mut parts.order_service, &bootstrap, &parts.data_dir, addr);
    let order_id = runtime().block_on(async {
        let mut client = OrderServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let request = CreateOrderRequest {
            customer_id: "c-1".into(),
            items: vec![OrderItem {
                sku: "SKU-1".into(),
                quantity: 1,
            }],
            ..Default::default()
        };
        client
            .create_order(request)
            .await
            .unwrap()
            .into_inner()
            .order_id
    });
    let published = wait_for("the order's event on Kafka", WAIT, || {
        parts
            .order_service
            .capture
            .spans()
            .into_iter()
            .find(|s| s.name == format!("send {TOPIC}"))
    });
    let trace_id = published.span_context.trace_id();
    stop(&mut parts.order_service, &first);

    // 2. Something accepts connections on its port and never answers: a paused process.
    // Bound before the worker starts, so its first calls already meet it.
    let listener = parts
        .order_service
        .runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .unwrap();
    let silent = parts.order_service.runtime.spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });

    // 3. The worker starts, with short timeouts and waits so the test is quick.
    let mut config = worker::Config::from_env(&|_: &str| None).unwrap();
    config.bootstrap_servers = bootstrap.clone();
    config.topic = TOPIC.into();
    config.group_id = "dead-letters-transient".into();
    config.order_service = proto::client::ClientConfig {
        request_timeout: Duration::from_millis(500),
        ..proto::client::ClientConfig::for_url(format!("http://{addr}"))
    };
    config.health_addr = "127.0.0.1:0".parse().unwrap();
    config.retry.max_backoff = Duration::from_millis(200);
    let app = parts
        .worker
        .runtime
        .block_on(worker::Application::build(config))
        .unwrap();
    let worker_stop = CancellationToken::new();
    parts.worker.handle = Some(
        parts
            .worker
            .runtime
            .spawn(app.run_until_stopped(worker_stop.clone())),
    );
    let failed_calls = |parts: &Parts| {
        of_trace(&parts.worker.capture.spans(), trace_id)
            .iter()
            .filter(|s| s.name == "order.v1.OrderService/CompleteOrder" && is_error(s))
            .count()
    };
    wait_for("calls timed out by tonic", WAIT, || {
        (failed_calls(&parts) >= 3).then_some(())
    });
    let unfinished = of_trace(&parts.worker.capture.spans(), trace_id);
    assert!(
        !unfinished
            .iter()
            .any(|s| s.name == format!("process {TOPIC}")),
        "the record is still in hand, not skipped"
    );

    // 4. The port closes (refused connections), then the order-service is back.
    silent.abort();
    // Aborted means dropped: the port is free again.
    assert!(
        parts
            .order_service
            .runtime
            .block_on(silent)
            .unwrap_err()
            .is_cancelled()
    );
    let before = failed_calls(&parts);
    wait_for("calls refused", WAIT, || {
        (failed_calls(&parts) >= before + 2).then_some(())
    });
    let second = start_order_service(&mut parts.order_service, &bootstrap, &parts.data_dir, addr);
    let client = runtime();
    wait_for("the order to be fulfilled", WAIT, || {
        (order_status(&client, addr, &order_id)
            == Some(proto::order::v1::OrderStatus::Fulfilled as i32))
        .then_some(())
    });

    // One record, retried inside its one CONSUMER span, never dead-lettered.
    let spans = wait_for("the worker's consumer span", WAIT, || {
        let spans = of_trace(&parts.worker.capture.spans(), trace_id);
        spans
            .iter()
            .any(|s| s.name == format!("process {TOPIC}"))
            .then_some(spans)
    });
    let consumer = spans
        .iter()
        .find(|s| s.name == format!("process {TOPIC}"))
        .unwrap();
    assert!(!is_error(consumer));
    let calls: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.name == "order.v1.OrderService/CompleteOrder" && s.parent_span_id == id(consumer)
        })
        .collect();
    assert!(calls.len() >= 6, "{} calls", calls.len());
    assert_eq!(calls.iter().filter(|s| !is_error(s)).count(), 1);
    assert!(
        !parts
            .worker
            .capture
            .spans()
            .iter()
            .any(|s| s.name == format!("send {DLQ}")),
        "nothing was dead-lettered"
    );

    // Its connections must close, or the order-service's graceful shutdown waits for them.
    drop(client);
    stop(&mut parts.worker, &worker_stop);
    stop(&mut parts.order_service, &second);
    parts.worker.capture.shutdown();
    parts.order_service.capture.shutdown();
    let _ = std::fs::remove_dir_all(&parts.data_dir);
    drop(parts.kafka);
}
