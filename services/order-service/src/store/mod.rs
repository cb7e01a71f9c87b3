//! Where orders are kept: one interface, two backends.
//!
//! - **SQLite** (`sqlite.rs`, the default): one file, for a single replica (the demo,
//!   a laptop). Concurrent writes share commits (`db.rs`).
//! - **PostgreSQL** (`postgres.rs`, `DATABASE_URL=postgres://…`): for several replicas
//!   on one database. Each operation is one transaction on a pooled connection, and the
//!   database's locks, not the process, keep the replicas apart.
//!
//! Both keep the same promises, which the one test suite (`tests.rs`) checks on each: an
//! order is stored with its outbox entry or not at all; one idempotency key makes one
//! order; a final status is set once. Each query is a database CLIENT span named
//! `{operation} {table}` with `db.system.name` for its backend.

mod postgres;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

use std::time::{SystemTime, UNIX_EPOCH};

use proto::order::v1::{Order, OrderItem, OrderStatus};

use crate::config::Config;
use crate::idempotency::Claim;
use crate::outbox::{NewEntry, Pending};

pub use postgres::PostgresSettings;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} not found")]
    NotFound(String),
    #[error("order {id} is already {}", current.as_str_name())]
    Conflict { id: String, current: OrderStatus },
    #[error("idempotency key {0:?} was used for a different order")]
    KeyReused(String),
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no database connection: {0}")]
    Pool(String),
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

/// Pending outbox entries the relay took for one round (see `outbox.rs`). On
/// PostgreSQL their rows stay locked (`FOR UPDATE SKIP LOCKED`) until [`Store::settle`],
/// so another replica's relay passes them by; dropped unsettled, the lock's connection
/// is closed and the entries are free again.
#[derive(Debug)]
pub struct Claimed {
    pub entries: Vec<Pending>,
    /// Rows that cannot be read back, with the reason: to quarantine.
    pub unreadable: Vec<(i64, String)>,
    lease: Lease,
}

#[derive(Debug)]
enum Lease {
    /// SQLite: one relay per database file, nothing to hold.
    None,
    Postgres(Box<postgres::Lease>),
}

/// What became of a claimed round.
#[derive(Debug, Default)]
pub struct Settlement {
    /// Acknowledged by the broker.
    pub sent: Vec<i64>,
    /// Not sent: tried again later.
    pub failed: Vec<i64>,
    /// Set aside for good, with the reason.
    pub quarantined: Vec<(i64, String)>,
}

/// A quarantined entry's ids, as far as they can be read, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantinedIds {
    pub id: i64,
    pub order_id: Option<String>,
    pub trace_context: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

/// The same call on whichever backend this is.
macro_rules! on_backend {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// PostgreSQL when `DATABASE_URL` is set, else the SQLite file at `DATABASE_PATH`.
    /// Creates the schema if needed.
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        match &config.postgres {
            Some(settings) => Ok(Self::Postgres(
                postgres::PostgresStore::open(settings).await?,
            )),
            None => Ok(Self::Sqlite(sqlite::SqliteStore::open(
                &config.database_path,
            )?)),
        }
    }

    /// Where the orders are, for the log: the SQLite file, or PostgreSQL's server and
    /// database (never the password).
    pub fn describe(&self) -> String {
        on_backend!(self, s => s.describe())
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
        on_backend!(self, s => s.create(order, event, claim).await)
    }

    pub async fn get(&self, id: String) -> Result<Order, StoreError> {
        on_backend!(self, s => s.get(id).await)
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
        on_backend!(self, s => s.complete(id, status, failure_reason).await)
    }

    /// Forgets idempotency keys past their time; returns how many.
    pub async fn forget_expired_keys(&self) -> Result<u64, StoreError> {
        on_backend!(self, s => s.forget_expired_keys().await)
    }

    /// For readiness: the database answers (through the SQLite writer, or a pooled
    /// PostgreSQL connection).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, s => s.ping().await)
    }

    /// SQLite's group commit: transactions committed so far (fewer than writes when it
    /// works). `None` on PostgreSQL, which commits each write on its own.
    pub fn commits(&self) -> Option<u64> {
        match self {
            Self::Sqlite(s) => Some(s.commits()),
            Self::Postgres(_) => None,
        }
    }

    /// The oldest pending outbox entries, at most `limit`, that no other relay holds.
    pub async fn claim_pending(&self, limit: usize) -> Result<Claimed, StoreError> {
        on_backend!(self, s => s.claim_pending(limit).await)
    }

    /// Records a claimed round's outcome in one transaction and lets its entries go.
    pub async fn settle(
        &self,
        claimed: Claimed,
        settlement: Settlement,
    ) -> Result<Vec<QuarantinedIds>, StoreError> {
        match (self, claimed.lease) {
            (Self::Sqlite(s), _) => s.settle(settlement).await,
            (Self::Postgres(s), Lease::Postgres(lease)) => s.settle(*lease, settlement).await,
            (Self::Postgres(_), Lease::None) => Err(StoreError::Task(
                "a round claimed elsewhere was settled on PostgreSQL".into(),
            )),
        }
    }

    /// Outbox entries still to send.
    pub async fn count_pending(&self) -> Result<i64, StoreError> {
        on_backend!(self, s => s.count_pending().await)
    }

    /// Reconciliation: entries sent before `before_ms` whose order is still PENDING are
    /// made pending again (at most `max_republish` times each); entries of orders in a
    /// final state are deleted. Returns how many are sent again.
    pub async fn reconcile(&self, before_ms: i64, max_republish: u32) -> Result<u64, StoreError> {
        on_backend!(self, s => s.reconcile(before_ms, max_republish).await)
    }
}

pub(crate) const PENDING: &str = "ORDER_STATUS_PENDING";

/// An order from its stored columns.
fn order_from_columns(
    id: String,
    customer_id: String,
    items: &str,
    status: &str,
    failure_reason: Option<String>,
) -> serde_json::Result<Order> {
    let mut order = Order {
        order_id: id,
        customer_id,
        items: items_from_json(items)?,
        failure_reason: failure_reason.unwrap_or_default(),
        ..Order::default()
    };
    order.set_status(OrderStatus::from_str_name(status).unwrap_or(OrderStatus::Unspecified));
    Ok(order)
}

/// What completing `order` with `status` does: `Ok(false)` when it already has it,
/// `Ok(true)` when it moves from PENDING, a conflict otherwise.
fn completion(order: &Order, status: OrderStatus) -> Result<bool, StoreError> {
    if order.status() == status {
        return Ok(false);
    }
    if order.status() != OrderStatus::Pending {
        return Err(StoreError::Conflict {
            id: order.order_id.clone(),
            current: order.status(),
        });
    }
    Ok(true)
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
