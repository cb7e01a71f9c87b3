//! `POST /api/orders` and `GET /api/orders/{id}`. No tracing code here: the HTTP layer
//! made the server span and the gRPC client layer makes the client span and injects the
//! context into the call.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use proto::order::v1::{CreateOrderRequest, GetOrderRequest, OrderItem, OrderStatus};
use proto::validation::validate_new_order;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::replicas::Replicas;

/// The body of `POST /api/orders`; the items are the contract's own type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub customer_id: String,
    pub items: Vec<OrderItem>,
}

/// Makes `POST /api/orders` safe to retry: the same key with the same order answers
/// with the order the first attempt created (IETF draft "The Idempotency-Key HTTP
/// Header Field").
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer that replays an earlier one.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

pub async fn create(
    State(order_service): State<Replicas>,
    headers: HeaderMap,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(order) = body?;
    validate_new_order(&order.customer_id, &order.items).map_err(ApiError::validation)?;
    let idempotency_key = idempotency_key(&headers)?;

    let request = CreateOrderRequest {
        customer_id: order.customer_id,
        items: order.items,
        idempotency_key,
    };
    let created = order_service
        .create_order(request)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::AlreadyExists => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different order",
            ),
            _ => ApiError::from(status),
        })?;
    let mut response_headers = HeaderMap::new();
    if let Ok(location) = format!("/api/orders/{}", created.order_id).parse() {
        response_headers.insert(header::LOCATION, location);
    }
    if created.replayed {
        response_headers.insert(
            IDEMPOTENT_REPLAYED,
            header::HeaderValue::from_static("true"),
        );
    }
    Ok((
        StatusCode::CREATED,
        response_headers,
        Json(json!({
            "order_id": created.order_id,
            "status": status_name(created.status()),
            // The trace of the request that created the order (on a replay, the first one).
            "trace_id": created.trace_id,
        })),
    ))
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters, sent once",
        )
    };
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(String::new());
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(key.to_owned())
}

pub async fn get(
    State(order_service): State<Replicas>,
    Path(order_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    // An id that cannot exist is simply not found: no need to ask the order-service.
    if uuid::Uuid::parse_str(&order_id).is_err() {
        return Err(ApiError::not_found(format!("order {order_id} not found")));
    }
    let order = order_service
        .get_order(GetOrderRequest { order_id })
        .await?;
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
