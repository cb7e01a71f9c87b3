//! The consume loop: one record at a time, at least once.
//!
//! Offsets are stored only after a record is fully handled (`enable.auto.offset.store=false`)
//! and committed in the background and on shutdown, so a crash re-delivers the record
//! rather than losing it. A record that can never be handled (not an order event, or an
//! outcome the order-service refuses) is logged, marked as an error on its span, and
//! skipped, so one bad record cannot block its partition. A dead-letter topic comes later.

use std::sync::Arc;

use proto::order::v1::OrderCreated;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use telemetry::propagation::kafka::KafkaClient;
use telemetry::span::mark_error;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::fulfilment;
use crate::reporting::{ReportError, Reporter};

/// `client.id`, and `messaging.client.id` on the spans.
const CLIENT_ID: &str = "worker";

pub fn create(config: &Config) -> KafkaResult<Arc<StreamConsumer>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", CLIENT_ID)
        .set("group.id", &config.group_id)
        // Events published before this worker first joined are still processed.
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        // We store an offset only once its record is handled: at-least-once.
        .set("enable.auto.offset.store", "false")
        .create()?;
    consumer.subscribe(&[&config.topic])?;
    Ok(Arc::new(consumer))
}

enum Handled {
    /// Done with the record (processed, or skipped as poison): store its offset.
    Done,
    /// Shutdown interrupted it: leave the offset, so it is processed again.
    Interrupted,
}

/// Consumes until `shutdown` is cancelled, finishing the record in hand, then commits.
pub async fn run(
    consumer: Arc<StreamConsumer>,
    config: &Config,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> KafkaResult<()> {
    let kafka = KafkaClient::new(CLIENT_ID, &config.bootstrap_servers);
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "Kafka receive error");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        match handle(&message, &kafka, &config.group_id, &reporter, &shutdown).await {
            Handled::Done => {
                // Fails when a rebalance took the partition away meanwhile: the new owner
                // processes the record again (at least once), so this worker goes on.
                if let Err(error) = consumer.store_offset_from_message(&message) {
                    tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "offset not stored");
                }
            }
            Handled::Interrupted => break,
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        // Nothing was consumed since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => return Err(error),
    }
    Ok(())
}

/// Everything done for one record happens inside its CONSUMER span, which continues the
/// producer's trace (context from the record headers).
async fn handle(
    message: &BorrowedMessage<'_>,
    kafka: &KafkaClient,
    group_id: &str,
    reporter: &Reporter,
    shutdown: &CancellationToken,
) -> Handled {
    let span = kafka.consumer_span(message, group_id);
    let payload = message.payload().unwrap_or_default();
    async move {
        let event = match OrderCreated::from_payload(payload) {
            Ok(event) => event,
            Err(error) => {
                mark_error(&tracing::Span::current(), "malformed_message", &error.to_string());
                tracing::error!(%error, "skipping a record that is not an order event");
                return Handled::Done;
            }
        };
        let outcome = fulfilment::fulfil(&event).await;
        match reporter.complete(&event.order_id, &outcome, shutdown).await {
            Ok(()) => {
                tracing::info!(order_id = %event.order_id, ?outcome, "order processed");
                Handled::Done
            }
            Err(ReportError::Rejected(status)) => {
                mark_error(&tracing::Span::current(), "rejected", status.message());
                tracing::error!(order_id = %event.order_id, code = ?status.code(), message = status.message(), "outcome rejected; skipping record");
                Handled::Done
            }
            Err(ReportError::ShuttingDown) => {
                tracing::warn!(order_id = %event.order_id, "shutdown before the outcome was recorded; it will be redelivered");
                Handled::Interrupted
            }
        }
    }
    .instrument(span)
    .await
}
