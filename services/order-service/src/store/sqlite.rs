//! The SQLite backend: one file, one replica. The one transaction that stores a new
//! order together with its outbox entry (see `outbox.rs`) is one write, so an order is
//! never stored without its event.
//!
//! rusqlite is blocking, so no query runs on an async thread: writes go to the writer
//! thread, which commits concurrent ones together, and reads to the blocking pool
//! (`db.rs`). Each query's CLIENT span is made on the async side, where the caller's span
//! is current, so its parent is already fixed; it is entered where the query runs
//! (`in_scope`), which is what puts the events logged during the query inside it (with
//! its trace id) and lets a failed query mark it.

use std::path::Path;

use proto::order::v1::{Order, OrderStatus};
use rusqlite::{Connection, OptionalExtension, params};
use telemetry::span::db_client;

use super::{
    Claimed, Created, Lease, PENDING, QuarantinedIds, Settlement, StoreError, completion,
    items_to_json, now_ms, order_from_columns,
};
use crate::db::Database;
use crate::idempotency::{self, Claim, Earlier};
use crate::outbox::{NewEntry, Pending};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: String,
    db: Database,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id              TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    items           TEXT NOT NULL,   -- JSON [{\"sku\", \"quantity\"}, ...]
    status          TEXT NOT NULL,
    failure_reason  TEXT,
    created_at_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id        TEXT NOT NULL,   -- the record key
    payload         BLOB NOT NULL,   -- the event, as it goes on the wire
    trace_context   TEXT NOT NULL,   -- W3C headers of the request that created it
    created_at_ms   INTEGER NOT NULL,
    sent_at_ms      INTEGER,         -- set on the broker's acknowledgement
    send_failures   INTEGER NOT NULL DEFAULT 0,
    republished     INTEGER NOT NULL DEFAULT 0,
    quarantined     TEXT             -- why the relay set it aside
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id)
    WHERE sent_at_ms IS NULL AND quarantined IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at_ms)
    WHERE sent_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key             TEXT PRIMARY KEY,
    request         TEXT NOT NULL,   -- the order asked for, as canonical JSON
    order_id        TEXT NOT NULL,
    trace_id        TEXT NOT NULL,   -- of the request that created the order
    created_at_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_age ON idempotency_keys (created_at_ms);
";

impl SqliteStore {
    /// Opens (and creates if needed) the database. WAL and `synchronous=FULL` make each
    /// committed order survive a crash; see `db.rs` for how writes share commits.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            path: path.display().to_string(),
            db: Database::open(path, SCHEMA)?,
        })
    }

    /// Runs `query` as a write (see `db.rs`) inside a database CLIENT span
    /// (`{operation} {table}`), a child of the caller's span, which ends after the commit.
    /// Its changes are kept only if it returns `Ok`: it is atomic, like a transaction.
    async fn write<T, F>(
        &self,
        operation: &'static str,
        table: &'static str,
        query: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let span = db_client("sqlite", operation, table);
        self.db.write(Some(span), query).await
    }

    /// Transactions committed so far (fewer than writes when group commit works).
    pub fn commits(&self) -> u64 {
        self.db.commits()
    }

    /// Runs `query` on the reading connection inside a database CLIENT span.
    async fn read<T, F>(
        &self,
        operation: &'static str,
        table: &'static str,
        query: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let span = db_client("sqlite", operation, table);
        self.db.read(Some(span), query).await
    }

    /// `write` without a span, and `read_untraced` likewise. For background work: a poll
    /// every second would put a one-span trace in Jaeger every second; the work a poll
    /// finds is traced instead.
    async fn write_untraced<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.write(None, query).await
    }

    async fn read_untraced<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.read(None, query).await
    }

    pub fn describe(&self) -> String {
        format!("SQLite file {}", self.path)
    }

    pub async fn create(
        &self,
        order: Order,
        event: NewEntry,
        claim: Option<(Claim, String)>,
    ) -> Result<Created, StoreError> {
        // One write: the key, the order and its entry are kept together or not at all.
        self.write("INSERT", "orders", move |c| {
            if let Some((claim, trace_id)) = &claim {
                match find_key(c, claim)? {
                    Earlier::None => record_key(c, claim, &order.order_id, trace_id)?,
                    Earlier::SameOrder { order_id, trace_id } => {
                        return Ok(Created::Replayed { order_id, trace_id });
                    }
                    Earlier::DifferentOrder => {
                        return Err(StoreError::KeyReused(claim.key().to_owned()));
                    }
                }
            }
            c.execute(
                "INSERT INTO orders (id, customer_id, items, status, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    order.order_id,
                    order.customer_id,
                    items_to_json(&order.items),
                    order.status().as_str_name(),
                    now_ms(),
                ],
            )?;
            c.execute(
                "INSERT INTO outbox (order_id, payload, trace_context, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![event.order_id, event.payload, event.trace_context, now_ms()],
            )?;
            Ok(Created::New)
        })
        .await
    }

    pub async fn forget_expired_keys(&self) -> Result<u64, StoreError> {
        let before = idempotency::expired_before();
        self.write_untraced(move |c| {
            let forgotten = c.execute(
                "DELETE FROM idempotency_keys WHERE created_at_ms < ?1",
                params![before],
            )?;
            Ok(forgotten as u64)
        })
        .await
    }

    pub async fn get(&self, id: String) -> Result<Order, StoreError> {
        self.read("SELECT", "orders", move |c| {
            c.query_row(
                "SELECT id, customer_id, items, status, failure_reason FROM orders WHERE id = ?1",
                params![id],
                row_to_order,
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))
        })
        .await
    }

    pub async fn complete(
        &self,
        id: String,
        status: OrderStatus,
        failure_reason: Option<String>,
    ) -> Result<(Order, bool), StoreError> {
        self.write("UPDATE", "orders", move |c| {
            let mut order = c
                .query_row(
                    "SELECT id, customer_id, items, status, failure_reason FROM orders WHERE id = ?1",
                    params![id],
                    row_to_order,
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            if !completion(&order, status)? {
                return Ok((order, false));
            }
            c.execute(
                "UPDATE orders SET status = ?2, failure_reason = ?3 WHERE id = ?1",
                params![id, status.as_str_name(), failure_reason],
            )?;
            order.set_status(status);
            order.failure_reason = failure_reason.unwrap_or_default();
            Ok((order, true))
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.write_untraced(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    /// The oldest pending entries. One relay per file, so nothing is locked: the
    /// round is the relay's until it settles it.
    pub async fn claim_pending(&self, limit: usize) -> Result<Claimed, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (entries, unreadable) = self
            .read_untraced(move |c| {
                let mut statement = c.prepare(
                    "SELECT id, order_id, payload, trace_context FROM outbox
                     WHERE sent_at_ms IS NULL AND quarantined IS NULL ORDER BY id LIMIT ?1",
                )?;
                let mut rows = statement.query(params![limit])?;
                let mut entries = Vec::new();
                let mut unreadable = Vec::new();
                while let Some(row) = rows.next()? {
                    let id: i64 = row.get(0)?;
                    let entry = (|| {
                        Ok::<_, rusqlite::Error>(Pending {
                            id,
                            order_id: row.get(1)?,
                            payload: row.get(2)?,
                            trace_context: row.get(3)?,
                        })
                    })();
                    match entry {
                        Ok(entry) => entries.push(entry),
                        Err(error) => unreadable.push((id, format!("unreadable row: {error}"))),
                    }
                }
                Ok((entries, unreadable))
            })
            .await?;
        Ok(Claimed {
            entries,
            unreadable,
            lease: Lease::None,
        })
    }

    pub async fn settle(&self, settlement: Settlement) -> Result<Vec<QuarantinedIds>, StoreError> {
        if settlement.sent.is_empty()
            && settlement.failed.is_empty()
            && settlement.quarantined.is_empty()
        {
            return Ok(Vec::new());
        }
        self.write_untraced(move |c| {
            let now = now_ms();
            for id in &settlement.sent {
                c.execute(
                    "UPDATE outbox SET sent_at_ms = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
            }
            for id in &settlement.failed {
                c.execute(
                    "UPDATE outbox SET send_failures = send_failures + 1 WHERE id = ?1",
                    params![id],
                )?;
            }
            let mut quarantined = Vec::with_capacity(settlement.quarantined.len());
            for (id, reason) in &settlement.quarantined {
                c.execute(
                    "UPDATE outbox SET quarantined = ?2 WHERE id = ?1",
                    params![id, reason],
                )?;
                // The order and trace ids, if they can be read, for the log line.
                let (order_id, trace_context) = c
                    .query_row(
                        "SELECT CAST(order_id AS TEXT), CAST(trace_context AS TEXT) FROM outbox WHERE id = ?1",
                        params![id],
                        |row| Ok((row.get::<_, Option<String>>(0)?, row.get::<_, Option<String>>(1)?)),
                    )
                    .unwrap_or_default();
                quarantined.push(QuarantinedIds {
                    id: *id,
                    order_id,
                    trace_context,
                });
            }
            Ok(quarantined)
        })
        .await
    }

    pub async fn count_pending(&self) -> Result<i64, StoreError> {
        self.read_untraced(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL AND quarantined IS NULL",
                [],
                |row| row.get::<_, i64>(0),
            )?)
        })
        .await
    }

    pub async fn reconcile(&self, before_ms: i64, max_republish: u32) -> Result<u64, StoreError> {
        self.write_untraced(move |c| {
            let again = c.execute(
                "UPDATE outbox SET sent_at_ms = NULL, republished = republished + 1
                 WHERE sent_at_ms < ?1 AND republished < ?2 AND quarantined IS NULL
                   AND order_id IN (SELECT id FROM orders WHERE status = ?3)",
                params![before_ms, max_republish, PENDING],
            )?;
            c.execute(
                "DELETE FROM outbox WHERE sent_at_ms < ?1
                   AND order_id IN (SELECT id FROM orders WHERE status != ?2)",
                params![before_ms, PENDING],
            )?;
            Ok(again as u64)
        })
        .await
    }
}

/// Part of `create`'s atomic write: what the key already stands for.
fn find_key(connection: &Connection, claim: &Claim) -> rusqlite::Result<Earlier> {
    let stored = connection
        .query_row(
            "SELECT request, order_id, trace_id FROM idempotency_keys WHERE key = ?1",
            params![claim.key()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    Ok(Earlier::of(claim, stored))
}

/// Part of `create`'s atomic write: the key now stands for `order_id`.
fn record_key(
    connection: &Connection,
    claim: &Claim,
    order_id: &str,
    trace_id: &str,
) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO idempotency_keys (key, request, order_id, trace_id, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![claim.key(), claim.request(), order_id, trace_id, now_ms()],
    )?;
    Ok(())
}

fn row_to_order(row: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    let items: String = row.get(2)?;
    let status: String = row.get(3)?;
    order_from_columns(row.get(0)?, row.get(1)?, &items, &status, row.get(4)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Test access to the file behind the API's back.
#[cfg(test)]
impl SqliteStore {
    pub(crate) async fn execute(&self, sql: &'static str) -> Result<(), StoreError> {
        self.write_untraced(move |c| Ok(c.execute_batch(sql)?))
            .await
    }

    pub(crate) async fn count(&self, sql: &'static str) -> Result<i64, StoreError> {
        self.read_untraced(move |c| Ok(c.query_row(sql, [], |row| row.get(0))?))
            .await
    }
}
