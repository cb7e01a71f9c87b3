//! The PostgreSQL backend, for several replicas on one database.
//!
//! Each operation is one transaction on a pooled connection, and the database keeps
//! the replicas apart:
//!
//! - **Idempotency keys**: the key's insert is `ON CONFLICT DO NOTHING`; a second
//!   request with the key waits for the first's transaction, inserts nothing, and reads
//!   the winner (→ Replayed, or KeyReused for another order).
//! - **CompleteOrder** reads the order `FOR UPDATE`: two completions queue up.
//! - **The outbox relay** claims its round `FOR UPDATE SKIP LOCKED` and holds the rows
//!   in an open transaction until they are marked ([`Lease`]): another relay passes them
//!   by, and a replica that dies mid-round takes its locks with its connection.
//! - **Reconciliation** touches only rows no relay holds (`SKIP LOCKED`), and re-checks
//!   each row it locks, so two replicas reconciling at once send an event again once.
//! - **The schema** is created at start under an advisory lock, so replicas starting
//!   together do not race on `CREATE … IF NOT EXISTS`.
//!
//! Queries are traced like SQLite's: a CLIENT span `{operation} {table}`, here with
//! `db.system.name=postgresql`, `db.namespace` (`{database}.{schema}`) and the server's
//! address and port.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use proto::order::v1::{Order, OrderStatus};
use telemetry::span::{db_client, mark_error, record_db_server};
use tokio_postgres::config::Host;
use tokio_postgres::{NoTls, Row};
use tracing::Instrument as _;

use super::{
    Claimed, Created, Lease as Leased, PENDING, QuarantinedIds, Settlement, StoreError, completion,
    items_to_json, now_ms, order_from_columns,
};
use crate::idempotency::{self, Claim, Earlier};
use crate::outbox::{NewEntry, Pending};

/// `DATABASE_URL` and the pool's settings.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// From `DATABASE_URL` (`postgres://user:password@host:port/database`).
    pub connection: tokio_postgres::Config,
    /// `DATABASE_MAX_CONNECTIONS`: the pool's size per replica.
    pub max_connections: usize,
    /// `DATABASE_CONNECT_TIMEOUT_MS`: how long to wait to connect, or for a free
    /// connection from the pool.
    pub connect_timeout: Duration,
}

impl PostgresSettings {
    /// `Some` for a `postgres://` or `postgresql://` URL with a host; the reason otherwise.
    pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "expected a postgres:// or postgresql:// URL (unset: SQLite at DATABASE_PATH)"
                    .into(),
            );
        }
        let config = tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
        if config.get_hosts().is_empty() {
            return Err("the URL names no host".into());
        }
        if config.get_dbname().is_none() {
            return Err("the URL names no database".into());
        }
        Ok(config)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id              TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    items           TEXT NOT NULL,   -- JSON [{\"sku\", \"quantity\"}, ...]
    status          TEXT NOT NULL,
    failure_reason  TEXT,
    created_at_ms   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id              BIGSERIAL PRIMARY KEY,
    order_id        TEXT NOT NULL,   -- the record key
    payload         BYTEA NOT NULL,  -- the event, as it goes on the wire
    trace_context   TEXT NOT NULL,   -- W3C headers of the request that created it
    created_at_ms   BIGINT NOT NULL,
    sent_at_ms      BIGINT,          -- set on the broker's acknowledgement
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
    created_at_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_age ON idempotency_keys (created_at_ms);
";

/// The advisory lock the schema is created under (any number the application owns).
const SCHEMA_LOCK: i64 = 0x6f72_6465_7273; // "orders"

const ORDER_COLUMNS: &str = "id, customer_id, items, status, failure_reason";

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool,
    server: Arc<Server>,
}

/// Where the database is, for the spans' attributes and the log.
#[derive(Debug)]
struct Server {
    /// `{database}.{schema}`, as the semantic conventions ask for PostgreSQL.
    namespace: String,
    address: String,
    port: u16,
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => Self::Postgres(error),
            other => Self::Pool(other.to_string()),
        }
    }
}

impl PostgresStore {
    /// Connects (failing after the connect timeout) and creates the schema if needed.
    pub async fn open(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let mut connection = settings.connection.clone();
        connection.connect_timeout(settings.connect_timeout);
        let (address, port) = server_of(&connection);
        let manager = Manager::from_config(
            connection,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections)
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let mut client = pool.get().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        transaction.batch_execute(SCHEMA).await?;
        let row = transaction
            .query_one("SELECT current_database(), current_schema()", &[])
            .await?;
        let database: String = row.try_get(0)?;
        let schema: Option<String> = row.try_get(1)?;
        transaction.commit().await?;
        let namespace = match schema {
            Some(schema) => format!("{database}.{schema}"),
            None => database,
        };
        Ok(Self {
            pool,
            server: Arc::new(Server {
                namespace,
                address,
                port,
            }),
        })
    }

    pub fn describe(&self) -> String {
        let server = &self.server;
        format!(
            "PostgreSQL {}:{} {}",
            server.address, server.port, server.namespace
        )
    }

    /// Runs `query` inside a database CLIENT span, a child of the caller's span, marked
    /// if it fails.
    async fn traced<T>(
        &self,
        operation: &'static str,
        table: &'static str,
        query: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let span = db_client("postgresql", operation, table);
        let server = &self.server;
        record_db_server(&span, &server.namespace, &server.address, server.port);
        let result = query.instrument(span.clone()).await;
        if let Err(error) = &result {
            mark_failed(&span, error);
        }
        result
    }

    pub async fn create(
        &self,
        order: Order,
        event: NewEntry,
        claim: Option<(Claim, String)>,
    ) -> Result<Created, StoreError> {
        self.traced("INSERT", "orders", async {
            let mut client = self.pool.get().await?;
            // Dropped without a commit (an early return, a cancelled request): rolled back.
            let transaction = client.transaction().await?;
            if let Some((claim, trace_id)) = &claim {
                let claimed = transaction
                    .execute(
                        "INSERT INTO idempotency_keys (key, request, order_id, trace_id, created_at_ms)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
                        &[&claim.key(), &claim.request(), &order.order_id, trace_id, &now_ms()],
                    )
                    .await?;
                if claimed == 0 {
                    let row = transaction
                        .query_opt(
                            "SELECT request, order_id, trace_id FROM idempotency_keys WHERE key = $1",
                            &[&claim.key()],
                        )
                        .await?;
                    let stored = match row {
                        Some(row) => Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)),
                        None => None,
                    };
                    return match Earlier::of(claim, stored) {
                        Earlier::SameOrder { order_id, trace_id } => {
                            Ok(Created::Replayed { order_id, trace_id })
                        }
                        Earlier::DifferentOrder => Err(StoreError::KeyReused(claim.key().to_owned())),
                        // Forgotten (expired) between the two statements: the client retries.
                        Earlier::None => Err(StoreError::Task(format!(
                            "idempotency key {:?} was forgotten while in use; retry",
                            claim.key()
                        ))),
                    };
                }
            }
            transaction
                .execute(
                    "INSERT INTO orders (id, customer_id, items, status, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &order.order_id,
                        &order.customer_id,
                        &items_to_json(&order.items),
                        &order.status().as_str_name(),
                        &now_ms(),
                    ],
                )
                .await?;
            transaction
                .execute(
                    "INSERT INTO outbox (order_id, payload, trace_context, created_at_ms)
                     VALUES ($1, $2, $3, $4)",
                    &[&event.order_id, &event.payload, &event.trace_context, &now_ms()],
                )
                .await?;
            transaction.commit().await?;
            Ok(Created::New)
        })
        .await
    }

    pub async fn forget_expired_keys(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let forgotten = client
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at_ms < $1",
                &[&idempotency::expired_before()],
            )
            .await?;
        Ok(forgotten)
    }

    pub async fn get(&self, id: String) -> Result<Order, StoreError> {
        self.traced("SELECT", "orders", async {
            let client = self.pool.get().await?;
            let row = client
                .query_opt(
                    &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"),
                    &[&id],
                )
                .await?;
            match row {
                Some(row) => row_to_order(&row),
                None => Err(StoreError::NotFound(id)),
            }
        })
        .await
    }

    pub async fn complete(
        &self,
        id: String,
        status: OrderStatus,
        failure_reason: Option<String>,
    ) -> Result<(Order, bool), StoreError> {
        self.traced("UPDATE", "orders", async {
            let mut client = self.pool.get().await?;
            let transaction = client.transaction().await?;
            // Locked until the commit: a concurrent completion waits, then sees this one's.
            let row = transaction
                .query_opt(
                    &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )
                .await?;
            let mut order = match row {
                Some(row) => row_to_order(&row)?,
                None => return Err(StoreError::NotFound(id)),
            };
            if !completion(&order, status)? {
                return Ok((order, false));
            }
            transaction
                .execute(
                    "UPDATE orders SET status = $2, failure_reason = $3 WHERE id = $1",
                    &[&id, &status.as_str_name(), &failure_reason],
                )
                .await?;
            transaction.commit().await?;
            order.set_status(status);
            order.failure_reason = failure_reason.unwrap_or_default();
            Ok((order, true))
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// The oldest pending entries that no other relay holds, locked until settled.
    pub async fn claim_pending(&self, limit: usize) -> Result<Claimed, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        client.batch_execute("BEGIN").await?;
        let lease = Lease {
            client: Some(client),
        };
        let rows = lease
            .client()?
            .query(
                "SELECT id, order_id, payload, trace_context FROM outbox
                 WHERE sent_at_ms IS NULL AND quarantined IS NULL
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit],
            )
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let entry = (|| {
                Ok::<_, tokio_postgres::Error>(Pending {
                    id,
                    order_id: row.try_get(1)?,
                    payload: row.try_get(2)?,
                    trace_context: row.try_get(3)?,
                })
            })();
            match entry {
                Ok(entry) => entries.push(entry),
                Err(error) => unreadable.push((id, format!("unreadable row: {error}"))),
            }
        }
        Ok(Claimed {
            entries,
            unreadable,
            lease: Leased::Postgres(Box::new(lease)),
        })
    }

    /// Marks the round in the claim's transaction and commits it, which lets the rows go.
    pub(super) async fn settle(
        &self,
        lease: Lease,
        settlement: Settlement,
    ) -> Result<Vec<QuarantinedIds>, StoreError> {
        let client = lease.client()?;
        if !settlement.sent.is_empty() {
            client
                .execute(
                    "UPDATE outbox SET sent_at_ms = $2 WHERE id = ANY($1)",
                    &[&settlement.sent, &now_ms()],
                )
                .await?;
        }
        if !settlement.failed.is_empty() {
            client
                .execute(
                    "UPDATE outbox SET send_failures = send_failures + 1 WHERE id = ANY($1)",
                    &[&settlement.failed],
                )
                .await?;
        }
        let mut quarantined = Vec::with_capacity(settlement.quarantined.len());
        for (id, reason) in &settlement.quarantined {
            let row = client
                .query_opt(
                    "UPDATE outbox SET quarantined = $2 WHERE id = $1
                     RETURNING order_id, trace_context",
                    &[id, reason],
                )
                .await?;
            quarantined.push(QuarantinedIds {
                id: *id,
                order_id: row.as_ref().and_then(|r| r.try_get(0).ok()),
                trace_context: row.as_ref().and_then(|r| r.try_get(1).ok()),
            });
        }
        client.batch_execute("COMMIT").await?;
        lease.release();
        Ok(quarantined)
    }

    pub async fn count_pending(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL AND quarantined IS NULL",
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn reconcile(&self, before_ms: i64, max_republish: u32) -> Result<u64, StoreError> {
        let max_republish = i32::try_from(max_republish).unwrap_or(i32::MAX);
        let client = self.pool.get().await?;
        let again = client
            .execute(
                "UPDATE outbox SET sent_at_ms = NULL, republished = republished + 1
                 WHERE id IN (
                     SELECT outbox.id FROM outbox JOIN orders ON orders.id = outbox.order_id
                     WHERE outbox.sent_at_ms < $1 AND outbox.republished < $2
                       AND outbox.quarantined IS NULL AND orders.status = $3
                     FOR UPDATE OF outbox SKIP LOCKED)",
                &[&before_ms, &max_republish, &PENDING],
            )
            .await?;
        client
            .execute(
                "DELETE FROM outbox WHERE id IN (
                     SELECT outbox.id FROM outbox JOIN orders ON orders.id = outbox.order_id
                     WHERE outbox.sent_at_ms < $1 AND orders.status != $2
                     FOR UPDATE OF outbox SKIP LOCKED)",
                &[&before_ms, &PENDING],
            )
            .await?;
        Ok(again)
    }
}

/// A relay's claimed round: a pooled connection inside the transaction that holds the
/// rows' locks. Settled, it commits and the connection goes back to the pool; dropped
/// unsettled, the connection is closed (not returned mid-transaction), which rolls the
/// transaction back and frees the rows.
#[derive(Debug)]
pub struct Lease {
    client: Option<Object>,
}

impl Lease {
    fn client(&self) -> Result<&Object, StoreError> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Task("the outbox claim was already settled".into()))
    }

    /// After the commit: the connection is clean and goes back to the pool.
    fn release(mut self) {
        drop(self.client.take());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// The first host and port of the connection settings (5432 unless given).
fn server_of(config: &tokio_postgres::Config) -> (String, u16) {
    let address = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    (address, config.get_ports().first().copied().unwrap_or(5432))
}

fn row_to_order(row: &Row) -> Result<Order, StoreError> {
    let id: String = row.try_get(0)?;
    let items: String = row.try_get(2)?;
    let status: String = row.try_get(3)?;
    order_from_columns(
        id.clone(),
        row.try_get(1)?,
        &items,
        &status,
        row.try_get(4)?,
    )
    .map_err(|e| StoreError::Task(format!("order {id} has unreadable items: {e}")))
}

/// Marks `span` for a database failure: `error.type` and `db.response.status_code` are
/// the SQLSTATE when the server gave one.
fn mark_failed(span: &tracing::Span, error: &StoreError) {
    match error {
        StoreError::Postgres(error) => {
            let code = error.code().map(|c| c.code().to_owned());
            if let Some(code) = &code {
                span.record("db.response.status_code", code.as_str());
            }
            mark_error(
                span,
                code.as_deref().unwrap_or("database"),
                &error.to_string(),
            );
        }
        StoreError::Pool(reason) => mark_error(span, "pool", reason),
        _ => {}
    }
}

/// Test access to the database behind the API's back.
#[cfg(test)]
impl PostgresStore {
    pub(crate) async fn execute(&self, sql: &'static str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        Ok(client.batch_execute(sql).await?)
    }

    pub(crate) async fn count(&self, sql: &'static str) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.query_one(sql, &[]).await?.try_get(0)?)
    }
}
