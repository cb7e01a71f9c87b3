//! The Kafka side of the order-service: the producer, the topic, and publishing one
//! outbox entry as a record inside its PRODUCER span. What to publish and when is the
//! outbox's business (`outbox.rs`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use telemetry::propagation::kafka::{self, KafkaClient};
use telemetry::propagation::stored;

use crate::config::KafkaConfig;
use crate::outbox::Pending;

/// How long one send may wait for the broker's acknowledgement. A send that times out
/// stays in the outbox and goes again.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// `client.id`, and `messaging.client.id` on the spans.
const CLIENT_ID: &str = "order-service";

#[derive(Clone)]
pub struct EventPublisher {
    producer: FutureProducer,
    topic: String,
    kafka: KafkaClient,
}

// By hand: rdkafka's producer has no `Debug`.
impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("client.id", CLIENT_ID)
            // No duplicates from the producer's own retries; implies acks=all.
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
            .create()?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
            kafka: KafkaClient::new(CLIENT_ID, &config.bootstrap_servers),
        })
    }

    /// Sends one outbox entry in a PRODUCER span whose parent is the context stored with
    /// it (the CreateOrder request's). The span ends when the broker has the record.
    pub async fn publish(&self, entry: &Pending) -> Result<(), KafkaError> {
        let span = self.kafka.producer_span(&self.topic, &entry.order_id);
        stored::restore_parent(&span, &entry.trace_context);
        // `traceparent` in the record headers is what lets the worker join this trace.
        let headers = kafka::inject_headers(&span, OwnedHeaders::new());
        let record = FutureRecord::to(&self.topic)
            .key(&entry.order_id)
            .payload(&entry.payload)
            .headers(headers);
        kafka::send_in_span(&self.producer, record, &span, SEND_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// For readiness: the cluster answers a metadata request.
    pub async fn check_connection(&self) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// Waits for records still in flight; call on shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}

/// Creates the topic if it does not exist; safe to run at every start.
pub async fn ensure_topic(config: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .create()?;
    let admin = std::sync::Arc::new(admin);
    let lookup = std::sync::Arc::clone(&admin);
    let wanted = config.topic.clone();
    // Listing is cheap and read-only; create only what is missing.
    let exists = tokio::task::spawn_blocking(move || {
        lookup
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|metadata| metadata.topics().iter().any(|t| t.name() == wanted))
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    if exists {
        return Ok(());
    }
    let topic = NewTopic::new(
        &config.topic,
        config.topic_partitions,
        TopicReplication::Fixed(1),
    );
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&topic], &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            // Another instance created it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = %name, ?code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}
