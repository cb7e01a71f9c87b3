//! The `order.v1.OrderService` gRPC API. No tracing code here: the server layer from the
//! telemetry crate has already made the SERVER span and continued the caller's trace,
//! and everything below runs inside it.

use faults::{FaultInjection, Step};
use proto::order::v1::order_service_server::OrderService;
use proto::order::v1::{
    CompleteOrderRequest, CreateOrderRequest, CreateOrderResponse, GetOrderRequest, Order,
    OrderStatus,
};
use proto::validation::validate_new_order;
use tonic::{Request, Response, Status};

use crate::idempotency::Claim;
use crate::metrics::OrderMetrics;
use crate::outbox::{NewEntry, Outbox};
use crate::store::{Created, Store, StoreError};

/// Longest accepted `idempotency_key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

#[derive(Debug, Clone)]
pub struct OrderApi {
    store: Store,
    outbox: Outbox,
    faults: FaultInjection,
    metrics: OrderMetrics,
}

impl OrderApi {
    pub fn new(
        store: Store,
        outbox: Outbox,
        faults: FaultInjection,
        metrics: OrderMetrics,
    ) -> Self {
        Self {
            store,
            outbox,
            faults,
            metrics,
        }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    /// Answers as soon as the order and its event are committed together: Kafka is not on
    /// the request's path, so an outage there neither slows nor fails an order.
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        let request = request.into_inner();
        // Checked again here: the order-service does not trust its callers.
        validate_new_order(&request.customer_id, &request.items)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;

        let claim = idempotency_claim(&request)?;

        // A fault the request's baggage asks for (FAULT_INJECTION=baggage), recorded on
        // this SERVER span; an injected outage stores nothing, like a real one.
        let injected = self.faults.at(Step::CreateOrder);
        injected.wait().await;
        if let Some(fault) = injected.fault {
            return Err(Status::unavailable(format!(
                "the order-service is unavailable (asked for by baggage {})",
                fault.member()
            )));
        }

        let mut order = Order {
            order_id: uuid::Uuid::new_v4().to_string(),
            customer_id: request.customer_id,
            items: request.items,
            ..Order::default()
        };
        order.set_status(OrderStatus::Pending);
        let trace_id = telemetry::current_trace_id().unwrap_or_default();
        let event = NewEntry::capture(&order);
        let created = self
            .store
            .create(order.clone(), event, claim.map(|c| (c, trace_id.clone())))
            .await
            .map_err(storage_error)?;
        let response = match created {
            Created::New => {
                self.outbox.wake();
                self.metrics.created();
                tracing::info!(order_id = %order.order_id, "order created");
                CreateOrderResponse {
                    order_id: order.order_id,
                    status: OrderStatus::Pending.into(),
                    trace_id,
                    replayed: false,
                }
            }
            Created::Replayed { order_id, trace_id } => {
                tracing::info!(%order_id, "idempotency key matched an earlier order; answering with it");
                CreateOrderResponse {
                    order_id,
                    status: OrderStatus::Pending.into(),
                    trace_id,
                    replayed: true,
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = parse_order_id(&request.get_ref().order_id)?;
        let order = self.store.get(id).await.map_err(storage_error)?;
        Ok(Response::new(order))
    }

    async fn complete_order(
        &self,
        request: Request<CompleteOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let request = request.into_inner();
        let id = parse_order_id(&request.order_id)?;
        let (status, reason) = match OrderStatus::try_from(request.status) {
            Ok(OrderStatus::Fulfilled) => (OrderStatus::Fulfilled, None),
            Ok(OrderStatus::Failed) if !request.failure_reason.trim().is_empty() => {
                (OrderStatus::Failed, Some(request.failure_reason))
            }
            Ok(OrderStatus::Failed) => {
                return Err(Status::invalid_argument(
                    "a FAILED order needs a failure_reason",
                ));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "status must be FULFILLED or FAILED",
                ));
            }
        };
        let (order, changed) = self
            .store
            .complete(id, status, reason)
            .await
            .map_err(storage_error)?;
        if changed {
            // Once per order: a redelivered event completes it again as a no-op.
            self.metrics.completed(order.status());
        }
        tracing::info!(order_id = %order.order_id, status = order.status().as_str_name(), "order completed");
        Ok(Response::new(order))
    }
}

/// The request's idempotency claim, if it has a key: 1 to 255 visible ASCII characters.
fn idempotency_claim(request: &CreateOrderRequest) -> Result<Option<Claim>, Status> {
    let key = &request.idempotency_key;
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        )));
    }
    Ok(Some(Claim::new(
        key.clone(),
        &request.customer_id,
        &request.items,
    )))
}

fn parse_order_id(raw: &str) -> Result<String, Status> {
    uuid::Uuid::parse_str(raw)
        .map(|id| id.to_string())
        .map_err(|_| Status::invalid_argument("order_id must be a UUID"))
}

/// Store errors to gRPC statuses. Internal details stay in the logs and the span.
fn storage_error(error: StoreError) -> Status {
    match error {
        StoreError::NotFound(id) => Status::not_found(format!("order {id} not found")),
        StoreError::Conflict { id, current } => {
            Status::failed_precondition(format!("order {id} is already {}", current.as_str_name()))
        }
        StoreError::KeyReused(_) => Status::already_exists(error.to_string()),
        StoreError::Sqlite(_)
        | StoreError::Postgres(_)
        | StoreError::Pool(_)
        | StoreError::Task(_) => {
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), "storage failure");
            Status::unavailable("order storage is unavailable")
        }
    }
}
