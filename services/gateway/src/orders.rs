//! `POST /api/orders` and `GET /api/orders/{id}`. No tracing code here: the HTTP layer
//! made the server span and the gRPC client layer makes the client span and injects the
//! context into the call.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use proto::client::OrderClient;
use proto::order::v1::{CreateOrderRequest, GetOrderRequest, OrderItem, OrderStatus};
use proto::validation::validate_new_order;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;

/// The body of `POST /api/orders`; the items are the contract's own type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub customer_id: String,
    pub items: Vec<OrderItem>,
}

pub async fn create(
    State(client): State<OrderClient>,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(order) = body?;
    validate_new_order(&order.customer_id, &order.items).map_err(ApiError::validation)?;

    let request = CreateOrderRequest {
        customer_id: order.customer_id,
        items: order.items,
    };
    let created = client.clone().create_order(request).await?.into_inner();
    let location = format!("/api/orders/{}", created.order_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(json!({
            "order_id": created.order_id,
            "status": status_name(created.status()),
            "trace_id": telemetry::current_trace_id(),
        })),
    ))
}

pub async fn get(
    State(client): State<OrderClient>,
    Path(order_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    // An id that cannot exist is simply not found: no need to ask the order-service.
    if uuid::Uuid::parse_str(&order_id).is_err() {
        return Err(ApiError::not_found(format!("order {order_id} not found")));
    }
    let order = client
        .clone()
        .get_order(GetOrderRequest { order_id })
        .await?
        .into_inner();
    let failure_reason = (!order.failure_reason.is_empty()).then_some(&order.failure_reason);
    Ok(Json(json!({
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "items": order.items,
        "status": status_name(order.status()),
        "failure_reason": failure_reason,
        "trace_id": telemetry::current_trace_id(),
    })))
}

/// `ORDER_STATUS_FULFILLED` → `FULFILLED`.
fn status_name(status: OrderStatus) -> &'static str {
    let name = status.as_str_name();
    name.strip_prefix("ORDER_STATUS_").unwrap_or(name)
}

pub async fn unknown_route() -> ApiError {
    ApiError::not_found("no such route")
}
