//! The Kafka event published when an order is created: [`OrderCreated`], defined in
//! `order/v1/events.proto` with the rest of the contract, carried as JSON.
//!
//! The trace context is not in the payload: it travels in the Kafka record headers,
//! written and read by `telemetry::propagation::kafka`.

use crate::order::v1::{Order, OrderCreated};

/// Default name of the topic that carries [`OrderCreated`] events.
pub const ORDERS_TOPIC: &str = "orders";

/// `type` of an [`OrderCreated`] event.
pub const ORDER_CREATED: &str = "order.created";

/// The major version this code writes and reads.
pub const ORDER_CREATED_VERSION: u32 = 1;

impl OrderCreated {
    /// The event for a stored order.
    pub fn for_order(order: &Order) -> Self {
        Self {
            r#type: ORDER_CREATED.to_owned(),
            version: ORDER_CREATED_VERSION,
            order_id: order.order_id.clone(),
            customer_id: order.customer_id.clone(),
            items: order.items.clone(),
        }
    }

    /// Parses and checks an event from a Kafka payload. Fields this version does not know
    /// are ignored (a newer producer may add some); any error means the record can never
    /// be handled by this reader and belongs in the dead-letter topic, not in a retry.
    pub fn from_payload(payload: &[u8]) -> Result<Self, EventError> {
        let event: Self = serde_json::from_slice(payload).map_err(EventError::Malformed)?;
        if event.r#type != ORDER_CREATED {
            return Err(EventError::UnknownType(event.r#type));
        }
        // 0: written before the field existed, the same schema as version 1.
        if !matches!(event.version, 0 | ORDER_CREATED_VERSION) {
            return Err(EventError::UnknownVersion(event.version));
        }
        Ok(event)
    }

    pub fn to_payload(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("malformed order event: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error(
        "unknown major version {0} of the order event (this reader knows {ORDER_CREATED_VERSION})"
    )]
    UnknownVersion(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::v1::OrderItem;

    fn event() -> OrderCreated {
        OrderCreated::for_order(&Order {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            items: vec![OrderItem {
                sku: "SKU-1".into(),
                quantity: 2,
            }],
            ..Order::default()
        })
    }

    #[test]
    fn round_trips_through_json() {
        let event = event();
        let payload = event.to_payload();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["type"],
            "order.created"
        );
        assert_eq!(OrderCreated::from_payload(&payload).unwrap(), event);
    }

    #[test]
    fn unknown_fields_are_ignored_and_a_missing_version_reads_as_the_first() {
        let newer = br#"{"type":"order.created","version":1,"order_id":"o","customer_id":"c",
            "items":[{"sku":"A","quantity":1,"gift_wrap":true}],"channel":"web"}"#;
        assert_eq!(OrderCreated::from_payload(newer).unwrap().items[0].sku, "A");
        let older = br#"{"type":"order.created","order_id":"o","customer_id":"c","items":[]}"#;
        assert_eq!(OrderCreated::from_payload(older).unwrap().version, 0);
    }

    #[test]
    fn rejects_garbage_unknown_types_and_unknown_major_versions() {
        assert!(matches!(
            OrderCreated::from_payload(b"not json"),
            Err(EventError::Malformed(_))
        ));
        let other = br#"{"type":"order.deleted","order_id":"o","customer_id":"c","items":[]}"#;
        assert!(matches!(
            OrderCreated::from_payload(other),
            Err(EventError::UnknownType(t)) if t == "order.deleted"
        ));
        let v2 =
            br#"{"type":"order.created","version":2,"order_id":"o","customer_id":"c","items":[]}"#;
        assert!(matches!(
            OrderCreated::from_payload(v2),
            Err(EventError::UnknownVersion(2))
        ));
    }
}
