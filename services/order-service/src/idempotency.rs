//! Idempotent order creation: a client that retries `POST /api/orders` with the same
//! `Idempotency-Key` (after a timeout, a dropped connection, a 503) gets the order its
//! first attempt created, never a second one.
//!
//! The key is claimed in the same transaction that stores the order (see
//! `Store::create`), and the key is the table's primary key, so two concurrent requests
//! with one key cannot both create, even on two replicas: the second finds the first's
//! claim (on PostgreSQL its insert waits for the first's transaction, then reads it). The request is
//! kept with the key, so the same key with a different order is refused instead of
//! silently answered with an order the client did not ask for.

use std::time::Duration;

use proto::order::v1::OrderItem;

use crate::store::now_ms;

/// How long a key is remembered at least.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A client's key, with the order it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    key: String,
    request: String,
}

impl Claim {
    pub fn new(key: String, customer_id: &str, items: &[OrderItem]) -> Self {
        // Serialising plain strings and integers cannot fail.
        let request = serde_json::to_string(&(customer_id, items)).unwrap_or_default();
        Self { key, request }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The order asked for, as canonical JSON: stored with the key.
    pub(crate) fn request(&self) -> &str {
        &self.request
    }
}

/// What an earlier request with the same key created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// Nothing: this request creates the order.
    None,
    /// The same order: answer with it.
    SameOrder { order_id: String, trace_id: String },
    /// Another order: refuse.
    DifferentOrder,
}

impl Earlier {
    /// What the key stands for, from its stored row (request, order id, trace id), if any.
    pub(crate) fn of(claim: &Claim, stored: Option<(String, String, String)>) -> Self {
        match stored {
            None => Self::None,
            Some((request, order_id, trace_id)) if request == claim.request => {
                Self::SameOrder { order_id, trace_id }
            }
            Some(_) => Self::DifferentOrder,
        }
    }
}

/// Keys created before this time (ms since the epoch) are past [`KEY_TTL`].
pub(crate) fn expired_before() -> i64 {
    now_ms() - i64::try_from(KEY_TTL.as_millis()).unwrap_or(i64::MAX)
}
