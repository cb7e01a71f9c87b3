//! Orders in SQLite. Each order row also remembers whether its event reached Kafka and
//! the trace context it was created in, so that nothing is lost when Kafka is down
//! (see `events.rs`).
//!
//! rusqlite is blocking, so every query runs on tokio's blocking pool. The span is handed
//! over explicitly: a `spawn_blocking` closure does not inherit the caller's span, and
//! without `in_scope` the database spans would float outside the trace.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use proto::order::v1::OrderStatus;
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: String,
    pub customer_id: String,
    pub items: Vec<(String, i64)>,
    pub status: OrderStatus,
    pub failure_reason: Option<String>,
}

/// An order whose event has not reached Kafka yet, with its stored trace context.
#[derive(Debug, Clone)]
pub struct Unpublished {
    pub order: Order,
    pub trace_context: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} not found")]
    NotFound(String),
    #[error("order {id} is already {current:?}")]
    Conflict { id: String, current: OrderStatus },
    #[error("database error")]
    Database(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

#[derive(Debug, Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id              TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    items           TEXT NOT NULL,   -- JSON [[sku, quantity], ...]
    status          TEXT NOT NULL,
    failure_reason  TEXT,
    created_at_ms   INTEGER NOT NULL,
    event_published INTEGER NOT NULL DEFAULT 0,
    trace_context   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS orders_unpublished ON orders (created_at_ms) WHERE event_published = 0;
";

impl Store {
    /// Opens (and creates if needed) the database. WAL and `synchronous=FULL` make each
    /// committed order survive a crash.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `query` on the blocking pool inside a database CLIENT span, child of the caller's span.
    async fn run<T, F>(&self, operation: &'static str, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let span = tracing::info_span!(
            "db query",
            otel.name = format!("{operation} orders").as_str(),
            otel.kind = "client",
            db.system.name = "sqlite",
            db.operation.name = operation,
            db.collection.name = "orders",
        );
        self.run_quietly(move |connection| span.in_scope(|| query(connection)))
            .await
    }

    /// Runs `query` on the blocking pool without a span. For background polls: a poll
    /// every few seconds would put a one-span trace in Jaeger every few seconds; the work
    /// a poll finds is traced instead.
    async fn run_quietly<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let connection = connection
                .lock()
                .map_err(|_| StoreError::Task("database lock poisoned".into()))?;
            query(&connection)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    pub async fn insert(&self, order: Order, trace_context: String) -> Result<(), StoreError> {
        self.run("INSERT", move |c| {
            c.execute(
                "INSERT INTO orders (id, customer_id, items, status, created_at_ms, trace_context)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    order.id,
                    order.customer_id,
                    items_to_json(&order.items),
                    order.status.as_str_name(),
                    now_ms(),
                    trace_context,
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn get(&self, id: String) -> Result<Order, StoreError> {
        self.run("SELECT", move |c| {
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

    pub async fn mark_published(&self, id: String) -> Result<(), StoreError> {
        self.run("UPDATE", move |c| {
            c.execute(
                "UPDATE orders SET event_published = 1 WHERE id = ?1",
                params![id],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets the final status. Completing again with the same outcome is a no-op (the
    /// worker may see an event twice); a different outcome is a conflict.
    pub async fn complete(
        &self,
        id: String,
        status: OrderStatus,
        failure_reason: Option<String>,
    ) -> Result<Order, StoreError> {
        self.run("UPDATE", move |c| {
            let tx = c.unchecked_transaction()?;
            let mut order = tx
                .query_row(
                    "SELECT id, customer_id, items, status, failure_reason FROM orders WHERE id = ?1",
                    params![id],
                    row_to_order,
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            if order.status == status {
                return Ok(order);
            }
            if order.status != OrderStatus::Pending {
                return Err(StoreError::Conflict {
                    id,
                    current: order.status,
                });
            }
            tx.execute(
                "UPDATE orders SET status = ?2, failure_reason = ?3 WHERE id = ?1",
                params![id, status.as_str_name(), failure_reason],
            )?;
            tx.commit()?;
            order.status = status;
            order.failure_reason = failure_reason;
            Ok(order)
        })
        .await
    }

    /// Orders older than `min_age_ms` whose event has not been published.
    pub async fn unpublished(
        &self,
        min_age_ms: i64,
        limit: i64,
    ) -> Result<Vec<Unpublished>, StoreError> {
        // A background poll: untraced (see `run_quietly`).
        self.run_quietly(move |c| {
            let mut statement = c.prepare(
                "SELECT id, customer_id, items, status, failure_reason, trace_context FROM orders
                 WHERE event_published = 0 AND created_at_ms <= ?1 ORDER BY created_at_ms LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now_ms() - min_age_ms, limit], |row| {
                Ok(Unpublished {
                    order: row_to_order(row)?,
                    trace_context: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// For readiness: the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run_quietly(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

fn row_to_order(row: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    let items: String = row.get(2)?;
    let status: String = row.get(3)?;
    Ok(Order {
        id: row.get(0)?,
        customer_id: row.get(1)?,
        items: serde_json::from_str(&items).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?,
        status: OrderStatus::from_str_name(&status).unwrap_or(OrderStatus::Unspecified),
        failure_reason: row.get(4)?,
    })
}

fn items_to_json(items: &[(String, i64)]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str) -> Order {
        Order {
            id: id.into(),
            customer_id: "c-1".into(),
            items: vec![("SKU-1".into(), 2)],
            status: OrderStatus::Pending,
            failure_reason: None,
        }
    }

    #[tokio::test]
    async fn orders_survive_a_reopen_and_complete_idempotently() {
        let dir = std::env::temp_dir().join(format!("order-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("orders.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .insert(order("o-1"), "traceparent: x".into())
                .await
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get("o-1".into()).await.unwrap(), order("o-1"));
        let pending = store.unpublished(0, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].trace_context, "traceparent: x");
        store.mark_published("o-1".into()).await.unwrap();
        assert!(store.unpublished(0, 10).await.unwrap().is_empty());

        let done = store
            .complete("o-1".into(), OrderStatus::Fulfilled, None)
            .await
            .unwrap();
        assert_eq!(done.status, OrderStatus::Fulfilled);
        let again = store
            .complete("o-1".into(), OrderStatus::Fulfilled, None)
            .await
            .unwrap();
        assert_eq!(again.status, OrderStatus::Fulfilled);
        let conflict = store
            .complete("o-1".into(), OrderStatus::Failed, Some("late".into()))
            .await
            .unwrap_err();
        assert!(matches!(conflict, StoreError::Conflict { .. }));
        assert!(matches!(
            store.get("missing".into()).await.unwrap_err(),
            StoreError::NotFound(_)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
