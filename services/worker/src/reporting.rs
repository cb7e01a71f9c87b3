//! Reporting the outcome to the order-service (`CompleteOrder`) over gRPC. The traced
//! channel injects the consumer span's context, so the order-service's CompleteOrder
//! span lands in the same trace as the request that created the order.

use std::time::Duration;

use proto::client::OrderClient;
use proto::order::v1::{CompleteOrderRequest, OrderStatus};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::fulfilment::Outcome;

#[derive(Debug, Clone)]
pub struct Reporter {
    client: OrderClient,
}

/// Why an outcome was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The order-service refused it for good (unknown order, conflicting outcome):
    /// retrying cannot help.
    #[error("order-service rejected the outcome: {0}")]
    Rejected(tonic::Status),
    /// Shutdown began while the order-service was unreachable; the offset is not
    /// stored, so the event is processed again after a restart.
    #[error("shutting down before the outcome was recorded")]
    ShuttingDown,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Reporter {
    /// `client` is traced: each call is a CLIENT span, and its timeouts come from
    /// `ORDER_SERVICE_*` (see `proto::client`).
    pub fn new(client: OrderClient) -> Self {
        Self { client }
    }

    /// Records the outcome, retrying while the order-service is unavailable. Each try is
    /// a CLIENT span of its own, so retries are visible in the trace.
    pub async fn complete(
        &self,
        order_id: &str,
        outcome: &Outcome,
        shutdown: &CancellationToken,
    ) -> Result<(), ReportError> {
        let (status, failure_reason) = match outcome {
            Outcome::Fulfilled => (OrderStatus::Fulfilled, String::new()),
            Outcome::Failed(reason) => (OrderStatus::Failed, reason.clone()),
        };
        let request = CompleteOrderRequest {
            order_id: order_id.to_owned(),
            status: status.into(),
            failure_reason,
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let status = match self.client.clone().complete_order(request.clone()).await {
                Ok(_) => return Ok(()),
                Err(status) => status,
            };
            if !is_transient(status.code()) {
                return Err(ReportError::Rejected(status));
            }
            tracing::warn!(code = ?status.code(), message = status.message(), ?backoff, "order-service unavailable; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return Err(ReportError::ShuttingDown),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
    )
}
