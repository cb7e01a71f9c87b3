//! The dead-letter topic (`KAFKA_DLQ_TOPIC`, default `orders.dlq`): a record that can
//! never be handled is written there whole (key, payload, headers) with why it failed and
//! where it came from, so nothing is lost and a person or a tool can replay it. Hop:
//! worker → dead-letter topic, a PRODUCER span `send orders.dlq`, child of the record's
//! CONSUMER span.
//!
//! Headers of a dead letter, besides the original record's own:
//!
//! | header                      | value                                              |
//! |-----------------------------|----------------------------------------------------|
//! | `dlq.error.type`            | the failure's class, as `error.type` on the CONSUMER span: `malformed_message`, `unknown_event_type`, `unknown_event_version`, `not_found`, `invalid_argument`, `failed_precondition`, `already_exists`, `out_of_range` |
//! | `dlq.error.reason`          | what happened, for a person                        |
//! | `dlq.original.topic`        | where the record was consumed                      |
//! | `dlq.original.partition`    | its partition, in decimal                          |
//! | `dlq.original.offset`       | its offset, in decimal                             |
//! | `dlq.original.traceparent`  | the record's own `traceparent`; likewise `dlq.original.tracestate` and `dlq.original.baggage` when the propagator writes those for the DLQ span too |
//!
//! `traceparent` itself is the DLQ PRODUCER span's, as on any record sent: whoever
//! consumes the dead letter continues the trace from the write that put it there, a
//! child of the CONSUMER span that failed, so the failure and any replay sit in one
//! trace. Two `traceparent` headers would be invalid (W3C), hence the original's new name.
//!
//! The topic is not created here: Kafka's `auto.create.topics.enable` (on by default, as
//! in `docker-compose.yml`) creates it on the first write; where that is off, the operator
//! creates it. Until it exists the write fails and is retried, and the record waits.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use telemetry::propagation::kafka::{self, KafkaClient};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumer::CLIENT_ID;
use crate::failure::{Failure, GaveUp, RetryPolicy, retry};

const ERROR_TYPE: &str = "dlq.error.type";
const ERROR_REASON: &str = "dlq.error.reason";
const ORIGINAL_TOPIC: &str = "dlq.original.topic";
const ORIGINAL_PARTITION: &str = "dlq.original.partition";
const ORIGINAL_OFFSET: &str = "dlq.original.offset";
/// Prefix of the original values of the propagation headers a dead letter replaces.
const ORIGINAL: &str = "dlq.original.";

/// How long one write may wait for the broker's acknowledgement before it is tried again.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    kafka: KafkaClient,
    retry: RetryPolicy,
}

// By hand: rdkafka's producer has no `Debug`.
impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(config: &Config) -> KafkaResult<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("client.id", CLIENT_ID)
            // No duplicates from the producer's own retries; implies acks=all, so the
            // acknowledgement that lets the original offset be stored means replicated.
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
            .create()?;
        Ok(Self {
            producer,
            topic: config.dlq_topic.clone(),
            kafka: KafkaClient::new(CLIENT_ID, &config.bootstrap_servers),
            retry: config.retry,
        })
    }

    /// Writes `record` to the dead-letter topic, trying again like any transient failure
    /// until the broker acknowledges it: only then may the original offset be stored.
    /// Gives up only when `stop` is cancelled, leaving the record for redelivery.
    pub async fn send(
        &self,
        record: &OwnedMessage,
        failure: &Failure,
        stop: &CancellationToken,
    ) -> Result<(), GaveUp> {
        retry(&self.retry, stop, "dead-letter write", || {
            self.send_once(record, failure)
        })
        .await
    }

    /// One write, in a PRODUCER span of its own that ends when the broker answers.
    async fn send_once(&self, record: &OwnedMessage, failure: &Failure) -> Result<(), Failure> {
        let key = record
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        // Created inside the CONSUMER span, so it is its child.
        let span = self.kafka.producer_span(&self.topic, &key);
        let dead_letter: FutureRecord<'_, [u8], [u8]> = FutureRecord {
            topic: &self.topic,
            partition: None,
            payload: record.payload(),
            key: record.key(),
            timestamp: None,
            headers: Some(headers(record, failure, &span)),
        };
        match kafka::send_in_span(&self.producer, dead_letter, &span, SEND_TIMEOUT).await {
            Ok((partition, offset)) => {
                tracing::info!(topic = %self.topic, partition, offset, "record dead-lettered");
                Ok(())
            }
            Err(error) => Err(Failure::transient(
                "dead_letter_write",
                format!("writing to {}: {error}", self.topic),
            )),
        }
    }

    /// Waits for writes still in flight; call on shutdown.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(Timeout::After(timeout))
    }
}

/// The original headers, then the `dlq.*` ones, then the context of `span` (the DLQ
/// PRODUCER span): what the propagator writes, `traceparent` at least. An original
/// header the propagator writes too is kept as `dlq.original.<key>`.
fn headers(record: &OwnedMessage, failure: &Failure, span: &tracing::Span) -> OwnedHeaders {
    let propagation = kafka::inject_headers(span, OwnedHeaders::new());
    let replaced = |key: &str| propagation.iter().any(|h| h.key.eq_ignore_ascii_case(key));
    let mut headers = OwnedHeaders::new();
    for header in record.headers().into_iter().flat_map(|h| h.iter()) {
        let key = if replaced(header.key) {
            format!("{ORIGINAL}{}", header.key.to_ascii_lowercase())
        } else {
            header.key.to_owned()
        };
        headers = headers.insert(Header {
            key: &key,
            value: header.value,
        });
    }
    for (key, value) in [
        (ERROR_TYPE, failure.error_type.to_owned()),
        (ERROR_REASON, failure.reason.clone()),
        (ORIGINAL_TOPIC, record.topic().to_owned()),
        (ORIGINAL_PARTITION, record.partition().to_string()),
        (ORIGINAL_OFFSET, record.offset().to_string()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(&value),
        });
    }
    for header in propagation.iter() {
        headers = headers.insert(Header {
            key: header.key,
            value: header.value,
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Class;
    use rdkafka::message::Timestamp;
    use telemetry::testing::CapturedService;

    const ORIGINAL_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn record() -> OwnedMessage {
        let headers = [
            ("traceparent", ORIGINAL_TRACEPARENT),
            ("tracestate", "vendor=value"),
            ("app.source", "test"),
        ]
        .iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(*value),
            })
        });
        OwnedMessage::new(
            Some(b"{not json".to_vec()),
            Some(b"order-1".to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            2,
            41,
            Some(headers),
        )
    }

    fn values<'h>(headers: &'h OwnedHeaders, key: &str) -> Vec<&'h str> {
        headers
            .iter()
            .filter(|h| h.key == key)
            .filter_map(|h| std::str::from_utf8(h.value?).ok())
            .collect()
    }

    #[test]
    fn a_dead_letter_keeps_the_record_and_says_why_and_where_from() {
        let service = CapturedService::new("dead-letter-test");
        let failure = Failure {
            class: Class::Permanent,
            error_type: "malformed_message",
            reason: "malformed order event: key must be a string".into(),
        };
        let kafka = KafkaClient::new(CLIENT_ID, "localhost:9092");
        let record = record();
        // As in the worker: the write happens inside the record's CONSUMER span.
        let headers = tracing::dispatcher::with_default(service.dispatch(), || {
            let consumer = kafka.consumer_span(&record, "worker");
            let _inside = consumer.enter();
            let span = kafka.producer_span("orders.dlq", "order-1");
            headers(&record, &failure, &span)
        });
        assert_eq!(values(&headers, "app.source"), ["test"]);
        assert_eq!(values(&headers, "dlq.error.type"), ["malformed_message"]);
        assert_eq!(
            values(&headers, "dlq.error.reason"),
            [failure.reason.as_str()]
        );
        assert_eq!(values(&headers, "dlq.original.topic"), ["orders"]);
        assert_eq!(values(&headers, "dlq.original.partition"), ["2"]);
        assert_eq!(values(&headers, "dlq.original.offset"), ["41"]);
        assert_eq!(
            values(&headers, "dlq.original.traceparent"),
            [ORIGINAL_TRACEPARENT]
        );
        assert_eq!(
            values(&headers, "dlq.original.tracestate"),
            ["vendor=value"]
        );
        // One traceparent: the DLQ PRODUCER span's, in the record's trace.
        let spans = service.spans();
        let producer = spans
            .iter()
            .find(|s| s.name == "send orders.dlq")
            .expect("the producer span ended");
        assert_eq!(
            values(&headers, "traceparent"),
            [format!(
                "00-0af7651916cd43dd8448eb211c80319c-{}-01",
                producer.span_context.span_id()
            )]
        );
    }
}
