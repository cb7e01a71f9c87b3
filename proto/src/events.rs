//! The Kafka event published when an order is created (JSON, keyed by order id).
//!
//! The trace context is not in the payload: it travels in the Kafka record headers,
//! written and read by `telemetry::propagation::kafka`.

use serde::{Deserialize, Serialize};

/// Default name of the topic that carries [`OrderCreated`] events.
pub const ORDERS_TOPIC: &str = "orders";

/// `type` of an [`OrderCreated`] event.
pub const ORDER_CREATED: &str = "order.created";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCreated {
    /// Always [`ORDER_CREATED`]; lets the topic carry other event types later.
    #[serde(rename = "type")]
    pub event_type: String,
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<EventItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventItem {
    pub sku: String,
    pub quantity: i64,
}

impl OrderCreated {
    pub fn new(order_id: String, customer_id: String, items: Vec<EventItem>) -> Self {
        Self {
            event_type: ORDER_CREATED.to_owned(),
            order_id,
            customer_id,
            items,
        }
    }

    /// Parses and checks an event from a Kafka payload; any error means the message
    /// is poison and must be set aside, not retried.
    pub fn from_payload(payload: &[u8]) -> Result<Self, EventError> {
        let event: Self = serde_json::from_slice(payload).map_err(EventError::Malformed)?;
        if event.event_type != ORDER_CREATED {
            return Err(EventError::UnknownType(event.event_type));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let event = OrderCreated::new(
            "o-1".into(),
            "c-1".into(),
            vec![EventItem {
                sku: "SKU-1".into(),
                quantity: 2,
            }],
        );
        let parsed = OrderCreated::from_payload(&event.to_payload()).unwrap();
        assert_eq!(parsed, event);
    }

    #[test]
    fn rejects_garbage_and_unknown_types() {
        assert!(matches!(
            OrderCreated::from_payload(b"not json"),
            Err(EventError::Malformed(_))
        ));
        let other = br#"{"type":"order.deleted","order_id":"o","customer_id":"c","items":[]}"#;
        assert!(matches!(
            OrderCreated::from_payload(other),
            Err(EventError::UnknownType(t)) if t == "order.deleted"
        ));
    }
}
