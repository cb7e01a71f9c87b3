//! Idempotent order creation: a client that retries `POST /api/orders` with the same
//! `Idempotency-Key` (after a timeout, a dropped connection, a 503) gets the order its
//! first attempt created, never a second one.
//!
//! The key is claimed in the same SQLite transaction that stores the order (see
//! `Store::create`), and the key is the table's primary key, so two concurrent requests
//! with one key cannot both create: the second finds the first's claim. The request is
//! kept with the key, so the same key with a different order is refused instead of
//! silently answered with an order the client did not ask for.

use std::time::Duration;

use proto::order::v1::OrderItem;
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::now_ms;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key             TEXT PRIMARY KEY,
    request         TEXT NOT NULL,   -- the order asked for, as canonical JSON
    order_id        TEXT NOT NULL,
    trace_id        TEXT NOT NULL,   -- of the request that created the order
    created_at_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_age ON idempotency_keys (created_at_ms);
";

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

/// Part of `Store::create`'s atomic write: what the key already stands for.
pub(crate) fn find(connection: &Connection, claim: &Claim) -> rusqlite::Result<Earlier> {
    let earlier = connection
        .query_row(
            "SELECT request, order_id, trace_id FROM idempotency_keys WHERE key = ?1",
            params![claim.key],
            |row| Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    Ok(match earlier {
        None => Earlier::None,
        Some((request, order_id, trace_id)) if request == claim.request => {
            Earlier::SameOrder { order_id, trace_id }
        }
        Some(_) => Earlier::DifferentOrder,
    })
}

/// Part of `Store::create`'s atomic write: the key now stands for `order_id`.
pub(crate) fn record(
    connection: &Connection,
    claim: &Claim,
    order_id: &str,
    trace_id: &str,
) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO idempotency_keys (key, request, order_id, trace_id, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![claim.key, claim.request, order_id, trace_id, now_ms()],
    )?;
    Ok(())
}

/// Forgets keys older than [`KEY_TTL`]; returns how many.
pub(crate) fn forget_expired(connection: &rusqlite::Connection) -> rusqlite::Result<usize> {
    let before = now_ms() - i64::try_from(KEY_TTL.as_millis()).unwrap_or(i64::MAX);
    connection.execute(
        "DELETE FROM idempotency_keys WHERE created_at_ms < ?1",
        params![before],
    )
}
