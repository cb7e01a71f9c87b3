//! The `order.v1.OrderService` gRPC API. No tracing code here: the server layer from the
//! telemetry crate has already made the SERVER span and continued the caller's trace,
//! and everything below runs inside it.

use proto::order::v1::order_service_server::OrderService;
use proto::order::v1::{
    CompleteOrderRequest, CreateOrderRequest, CreateOrderResponse, GetOrderRequest, Order,
    OrderItem, OrderStatus,
};
use proto::validation::validate_new_order;
use telemetry::propagation::stored;
use tonic::{Request, Response, Status};

use crate::events::EventPublisher;
use crate::store::{self, Store, StoreError};

#[derive(Debug, Clone)]
pub struct OrderApi {
    store: Store,
    publisher: EventPublisher,
}

impl OrderApi {
    pub fn new(store: Store, publisher: EventPublisher) -> Self {
        Self { store, publisher }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        let request = request.into_inner();
        // Checked again here: the order-service does not trust its callers.
        validate_new_order(
            &request.customer_id,
            request.items.iter().map(|i| (i.sku.as_str(), i.quantity)),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;

        let order = store::Order {
            id: uuid::Uuid::new_v4().to_string(),
            customer_id: request.customer_id,
            items: request
                .items
                .into_iter()
                .map(|i| (i.sku, i.quantity))
                .collect(),
            status: OrderStatus::Pending,
            failure_reason: None,
        };
        // The row keeps this request's trace context for a later republish.
        let trace_context = stored::capture(&tracing::Span::current());
        self.store
            .insert(order.clone(), trace_context)
            .await
            .map_err(storage_error)?;

        // The order is safe in the database; if Kafka is down now, the republisher
        // sends the event later, so the caller still gets its order id.
        match self.publisher.publish(&order).await {
            Ok(()) => {
                if let Err(error) = self.store.mark_published(order.id.clone()).await {
                    tracing::warn!(order_id = %order.id, %error, "event sent but not marked; it may be sent twice");
                }
            }
            Err(error) => {
                tracing::warn!(order_id = %order.id, %error, "event not published yet; will retry");
            }
        }
        tracing::info!(order_id = %order.id, "order created");
        Ok(Response::new(CreateOrderResponse {
            order_id: order.id,
            status: OrderStatus::Pending.into(),
        }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = parse_order_id(&request.get_ref().order_id)?;
        let order = self.store.get(id).await.map_err(storage_error)?;
        Ok(Response::new(to_proto(order)))
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
        let order = self
            .store
            .complete(id, status, reason)
            .await
            .map_err(storage_error)?;
        tracing::info!(order_id = %order.id, status = order.status.as_str_name(), "order completed");
        Ok(Response::new(to_proto(order)))
    }
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
        StoreError::Database(_) | StoreError::Task(_) => {
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), "storage failure");
            Status::unavailable("order storage is unavailable")
        }
    }
}

fn to_proto(order: store::Order) -> Order {
    Order {
        order_id: order.id,
        customer_id: order.customer_id,
        items: order
            .items
            .into_iter()
            .map(|(sku, quantity)| OrderItem { sku, quantity })
            .collect(),
        status: order.status.into(),
        failure_reason: order.failure_reason.unwrap_or_default(),
    }
}
