//! Publishing `order.created` events to Kafka.
//!
//! The order is committed to SQLite first; then the event is sent. If Kafka is down, the
//! order stays marked unpublished and [`Republisher`] sends it later, inside the trace of
//! the request that created it (restored from the row). Nothing is lost, and consumers
//! may see an event twice, which the worker tolerates.

use std::time::Duration;

use proto::events::{EventItem, OrderCreated};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use telemetry::propagation::{kafka, stored};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::KafkaConfig;
use crate::store::{Order, Store};

/// How long one send may wait for the broker's acknowledgement.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct EventPublisher {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("topic", &self.topic)
            .finish()
    }
}

impl EventPublisher {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            // No duplicates from the producer's own retries; implies acks=all.
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
            .create()?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
        })
    }

    /// Sends the event for `order` inside a PRODUCER span, a child of the current span
    /// (the CreateOrder server span). The span ends when the broker has the record.
    pub async fn publish(&self, order: &Order) -> Result<(), KafkaError> {
        let span = kafka::producer_span(&self.topic, &order.id);
        self.send(order, span).await
    }

    /// Like [`EventPublisher::publish`], for an order stored earlier: the PRODUCER span
    /// continues the trace saved with the order.
    pub async fn publish_stored(
        &self,
        order: &Order,
        trace_context: &str,
    ) -> Result<(), KafkaError> {
        let span = kafka::producer_span(&self.topic, &order.id);
        stored::restore_parent(&span, trace_context);
        self.send(order, span).await
    }

    async fn send(&self, order: &Order, span: tracing::Span) -> Result<(), KafkaError> {
        let payload = event_for(order).to_payload();
        // `traceparent` in the record headers is what lets the worker join this trace.
        let headers = kafka::inject_headers(&span, OwnedHeaders::new());
        let record = FutureRecord::to(&self.topic)
            .key(&order.id)
            .payload(&payload)
            .headers(headers);
        match self
            .producer
            .send(record, Timeout::After(SEND_TIMEOUT))
            .instrument(span.clone())
            .await
        {
            Ok(delivery) => {
                kafka::record_delivery(&span, delivery.partition, delivery.offset);
                Ok(())
            }
            Err((error, _record)) => {
                kafka::record_failure(&span, "kafka", &error.to_string());
                Err(error)
            }
        }
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

fn event_for(order: &Order) -> OrderCreated {
    OrderCreated::new(
        order.id.clone(),
        order.customer_id.clone(),
        order
            .items
            .iter()
            .map(|(sku, quantity)| EventItem {
                sku: sku.clone(),
                quantity: *quantity,
            })
            .collect(),
    )
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

/// Sends the events that could not be sent when their order was created.
#[derive(Debug)]
pub struct Republisher {
    pub store: Store,
    pub publisher: EventPublisher,
    pub interval: Duration,
}

impl Republisher {
    /// Orders younger than this are left to the request that is still publishing them.
    const MIN_AGE_MS: i64 = 2_000;
    const BATCH: i64 = 100;

    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => self.republish_once().await,
            }
        }
    }

    async fn republish_once(&self) {
        let pending = match self.store.unpublished(Self::MIN_AGE_MS, Self::BATCH).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(error = %error, "cannot read unpublished orders");
                return;
            }
        };
        for entry in pending {
            match self
                .publisher
                .publish_stored(&entry.order, &entry.trace_context)
                .await
            {
                Ok(()) => {
                    if let Err(error) = self.store.mark_published(entry.order.id.clone()).await {
                        tracing::warn!(order_id = %entry.order.id, %error, "published, but not marked");
                    }
                    tracing::info!(order_id = %entry.order.id, "republished order event");
                }
                Err(error) => {
                    tracing::warn!(%error, "Kafka still unavailable; will retry");
                    return;
                }
            }
        }
    }
}
