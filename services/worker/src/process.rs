//! Handling one `orders` record, all inside its CONSUMER span `process orders`, which
//! continues the producer's trace: read the event, fulfil the order, report the outcome
//! (CLIENT span per try), and dead-letter the record if it can never be handled (PRODUCER
//! span `send orders.dlq`). Failures are classified and retried by `failure.rs`.

use faults::FaultInjection;
use std::sync::Arc;
use std::time::Instant;

use proto::order::v1::OrderCreated;
use rdkafka::message::{Message, OwnedMessage};
use telemetry::propagation::kafka::KafkaClient;
use telemetry::span::mark_error;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dead_letter::DeadLetters;
use crate::dispatch::Handled;
use crate::failure::{Failure, GaveUp, RetryPolicy, retry};
use crate::fulfilment;
use crate::metrics::WorkerMetrics;
use crate::reporting::Reporter;

#[derive(Debug, Clone)]
pub struct Processor {
    pub kafka: KafkaClient,
    pub group_id: String,
    pub reporter: Reporter,
    pub dead_letters: DeadLetters,
    pub retry: RetryPolicy,
    pub faults: FaultInjection,
    pub metrics: Arc<WorkerMetrics>,
}

impl Processor {
    /// Done when the order is completed or the record dead-lettered; interrupted when
    /// `stop` cut a retry short.
    pub async fn handle(&self, record: OwnedMessage, stop: CancellationToken) -> Handled {
        let span = self.kafka.consumer_span(&record, &self.group_id);
        let started = Instant::now();
        async move {
            let failure = match self.process(&record, &stop).await {
                Ok(()) => {
                    self.metrics.processed(started, record.topic(), None);
                    return Handled::Done;
                }
                Err(GaveUp::Stopped) => return interrupted(),
                Err(GaveUp::Permanent(failure)) => failure,
            };
            mark_error(
                &tracing::Span::current(),
                failure.error_type,
                &failure.reason,
            );
            tracing::error!(error.type = failure.error_type, reason = %failure.reason, "record cannot be handled; dead-lettering it");
            match self.dead_letters.send(&record, &failure, &stop).await {
                Ok(()) => {
                    let error_type = Some(failure.error_type);
                    self.metrics.processed(started, record.topic(), error_type);
                    Handled::Done
                }
                // Every failed write is transient: only `stop` ends the retries.
                Err(_) => interrupted(),
            }
        }
        .instrument(span)
        .await
    }

    async fn process(&self, record: &OwnedMessage, stop: &CancellationToken) -> Result<(), GaveUp> {
        let event = OrderCreated::from_payload(record.payload().unwrap_or_default())
            .map_err(|error| GaveUp::Permanent(Failure::from(error)))?;
        let outcome = fulfilment::fulfil(&event, self.faults).await;
        retry(&self.retry, stop, "reporting the outcome", || {
            self.reporter.complete(&event.order_id, &outcome)
        })
        .await?;
        tracing::info!(order_id = %event.order_id, ?outcome, "order processed");
        Ok(())
    }
}

fn interrupted() -> Handled {
    tracing::warn!("stopped before the record was handled; it will be delivered again");
    Handled::Interrupted
}
