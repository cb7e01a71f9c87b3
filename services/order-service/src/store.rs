//! Orders in SQLite, and the one transaction that stores a new order together with its
//! outbox entry (see `outbox.rs`), so an order is never stored without its event.
//!
//! rusqlite is blocking, so no query runs on an async thread: writes go to the writer
//! thread, which commits concurrent ones together, and reads to the blocking pool
//! (`db.rs`). Each query's CLIENT span is made on the async side, where the caller's span
//! is current, so its parent is already fixed; it is entered where the query runs
//! (`in_scope`), which is what puts the events logged during the query inside it (with
//! its trace id) and lets a failed query mark it.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::order::v1::{Order, OrderItem, OrderStatus};
use rusqlite::{Connection, OptionalExtension, params};
use telemetry::span::db_client;

use crate::db::Database;
use crate::idempotency::{self, Claim, Earlier};
use crate::outbox::{self, NewEntry};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} not found")]
    NotFound(String),
    #[error("order {id} is already {}", current.as_str_name())]
    Conflict { id: String, current: OrderStatus },
    #[error("idempotency key {0:?} was used for a different order")]
    KeyReused(String),
    #[error("database error")]
    Database(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

/// What [`Store::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Stored this order and its event.
    New,
    /// Stored nothing: the idempotency key stands for this earlier order.
    Replayed { order_id: String, trace_id: String },
}

#[derive(Debug, Clone)]
pub struct Store {
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
";

impl Store {
    /// Opens (and creates if needed) the database. WAL and `synchronous=FULL` make each
    /// committed order survive a crash; see `db.rs` for how writes share commits.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let schema = [SCHEMA, outbox::SCHEMA, idempotency::SCHEMA].concat();
        Ok(Self {
            db: Database::open(path, &schema)?,
        })
    }

    /// Runs `query` as a write (see `db.rs`) inside a database CLIENT span
    /// (`{operation} {table}`), a child of the caller's span, which ends after the commit.
    /// Its changes are kept only if it returns `Ok`: it is atomic, like a transaction.
    pub(crate) async fn write<T, F>(
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
    pub(crate) async fn read<T, F>(
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
    pub(crate) async fn write_untraced<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.write(None, query).await
    }

    pub(crate) async fn read_untraced<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.read(None, query).await
    }

    /// Stores a new order and its outbox entry in one transaction: both or neither. With
    /// an idempotency `claim`, the key is checked and recorded in the same transaction,
    /// so a retried request finds the order its first attempt stored.
    pub async fn create(
        &self,
        order: Order,
        event: NewEntry,
        claim: Option<(Claim, String)>,
    ) -> Result<Created, StoreError> {
        // One write: the key, the order and its entry are kept together or not at all.
        self.write("INSERT", "orders", move |c| {
            if let Some((claim, trace_id)) = &claim {
                match idempotency::find(c, claim)? {
                    Earlier::None => idempotency::record(c, claim, &order.order_id, trace_id)?,
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
            outbox::insert(c, &event)?;
            Ok(Created::New)
        })
        .await
    }

    /// Forgets idempotency keys past their time; returns how many.
    pub async fn forget_expired_keys(&self) -> Result<usize, StoreError> {
        self.write_untraced(|c| Ok(idempotency::forget_expired(c)?))
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

    /// Sets the final status; `true` when this call changed it. Completing again with the
    /// same outcome is a no-op (the worker may see an event twice); a different outcome
    /// is a conflict.
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
            if order.status() == status {
                return Ok((order, false));
            }
            if order.status() != OrderStatus::Pending {
                return Err(StoreError::Conflict {
                    id,
                    current: order.status(),
                });
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

    /// For readiness: the database answers through the writer (which every order needs).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.write_untraced(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

fn row_to_order(row: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    let items: String = row.get(2)?;
    let status: String = row.get(3)?;
    let mut order = Order {
        order_id: row.get(0)?,
        customer_id: row.get(1)?,
        items: items_from_json(&items).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?,
        failure_reason: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
        ..Order::default()
    };
    order.set_status(OrderStatus::from_str_name(&status).unwrap_or(OrderStatus::Unspecified));
    Ok(order)
}

/// Items as stored: `[{"sku", "quantity"}, ...]`, or `[[sku, quantity], ...]` as
/// databases written before the contract's item type was used here have them.
fn items_from_json(json: &str) -> serde_json::Result<Vec<OrderItem>> {
    serde_json::from_str(json).or_else(|error| {
        serde_json::from_str::<Vec<(String, i64)>>(json)
            .map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(sku, quantity)| OrderItem { sku, quantity })
                    .collect()
            })
            .map_err(|_| error)
    })
}

fn items_to_json(items: &[OrderItem]) -> String {
    // Serialising plain strings and integers cannot fail.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn order(id: &str) -> Order {
        let mut order = Order {
            order_id: id.into(),
            customer_id: "c-1".into(),
            items: vec![OrderItem {
                sku: "SKU-1".into(),
                quantity: 2,
            }],
            ..Order::default()
        };
        order.set_status(OrderStatus::Pending);
        order
    }

    pub(crate) fn temp_store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("order-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        (Store::open(&dir.join("orders.db")).unwrap(), dir)
    }

    #[tokio::test]
    async fn orders_survive_a_reopen_and_complete_idempotently() {
        let (store, dir) = temp_store();
        store
            .create(
                order("o-1"),
                NewEntry::order_created(&order("o-1"), "traceparent: x".into()),
                None,
            )
            .await
            .unwrap();
        drop(store);
        let store = Store::open(&dir.join("orders.db")).unwrap();
        assert_eq!(store.get("o-1".into()).await.unwrap(), order("o-1"));

        let (done, changed) = store
            .complete("o-1".into(), OrderStatus::Fulfilled, None)
            .await
            .unwrap();
        assert_eq!((done.status(), changed), (OrderStatus::Fulfilled, true));
        let (again, changed) = store
            .complete("o-1".into(), OrderStatus::Fulfilled, None)
            .await
            .unwrap();
        assert_eq!((again.status(), changed), (OrderStatus::Fulfilled, false));
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

    #[tokio::test]
    async fn an_order_and_its_event_are_stored_together_or_not_at_all() {
        let (store, dir) = temp_store();
        let first = order("o-1");
        store
            .create(
                first.clone(),
                NewEntry::order_created(&first, String::new()),
                None,
            )
            .await
            .unwrap();
        // The same id again: the order's INSERT fails, and the second event with it.
        let error = store
            .create(
                first.clone(),
                NewEntry::order_created(&first, String::new()),
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Database(_)));
        assert_eq!(outbox::tests::pending_count(&store).await, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn items_read_in_both_stored_forms() {
        let item = |sku: &str, quantity| OrderItem {
            sku: sku.into(),
            quantity,
        };
        let expected = vec![item("A", 1), item("B", 2)];
        assert_eq!(
            items_from_json(&items_to_json(&expected)).unwrap(),
            expected
        );
        assert_eq!(items_from_json(r#"[["A",1],["B",2]]"#).unwrap(), expected);
        assert!(items_from_json("{}").is_err());
    }

    #[tokio::test]
    async fn one_key_creates_one_order_and_refuses_another_order() {
        let (store, dir) = temp_store();
        let claim = |o: &Order| {
            let claim = Claim::new("k-1".into(), &o.customer_id, &o.items);
            Some((claim, "t-1".to_owned()))
        };
        let entry = |o: &Order| NewEntry::order_created(o, String::new());
        let first = order("o-1");
        let created = store.create(first.clone(), entry(&first), claim(&first));
        assert_eq!(created.await.unwrap(), Created::New);
        // A retry: a new order id, the same request. Nothing new is stored.
        let retry = order("o-2");
        let replayed = store.create(retry.clone(), entry(&retry), claim(&retry));
        assert_eq!(
            replayed.await.unwrap(),
            Created::Replayed {
                order_id: "o-1".into(),
                trace_id: "t-1".into()
            }
        );
        assert!(matches!(
            store.get("o-2".into()).await.unwrap_err(),
            StoreError::NotFound(_)
        ));
        assert_eq!(outbox::tests::pending_count(&store).await, 1);
        // The same key for another order is refused.
        let mut other = order("o-3");
        other.items[0].quantity = 3;
        let refused = store.create(other.clone(), entry(&other), claim(&other));
        assert!(matches!(
            refused.await.unwrap_err(),
            StoreError::KeyReused(key) if key == "k-1"
        ));
        // Young keys are kept.
        assert_eq!(store.forget_expired_keys().await.unwrap(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
