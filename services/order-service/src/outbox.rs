//! The transactional outbox: how an order's event reaches Kafka without the request
//! waiting for Kafka, and without being lost when Kafka is down.
//!
//! 1. **Entry.** CreateOrder stores the order and a [`NewEntry`] (the event's payload and
//!    the request's trace context, captured here) in one SQLite transaction
//!    (`Store::create`), then answers at once. Kafka is not on the request's path.
//! 2. **Relay.** [`Relay`] sends pending entries: woken right after each commit (commit
//!    to send in milliseconds), and on a timer for what a failed send left behind (after
//!    an outage). Each send is a PRODUCER span `send orders` whose parent is restored from
//!    the entry, so it stays in the order's trace however late it goes out.
//! 3. **Marking.** An entry is marked sent only after the broker's acknowledgement; until
//!    then it is sent again. The worker may therefore see an event twice, and tolerates it.
//! 4. **Reconciliation.** An entry whose order is still PENDING long after it was sent is
//!    sent again (a bounded number of times): the event may have been dead-lettered by a
//!    worker that could not handle it then, or lost with a broker's data.
//! 5. **Quarantine.** An entry that cannot be read back, or whose payload is no event, is
//!    set aside with the reason, logged with its order and trace id, and never blocks the
//!    others.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use proto::order::v1::{Order, OrderCreated};
use rusqlite::{Connection, params};
use telemetry::propagation::stored;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;
use crate::store::{Store, StoreError, now_ms};

pub(crate) const SCHEMA: &str = "
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
";

/// An event to store with the order it belongs to.
#[derive(Debug, Clone)]
pub struct NewEntry {
    order_id: String,
    payload: Vec<u8>,
    trace_context: String,
}

impl NewEntry {
    /// The `order.created` event for `order`, carrying the context of the current span
    /// (the CreateOrder SERVER span), so its eventual send joins the request's trace.
    pub fn capture(order: &Order) -> Self {
        Self::order_created(order, stored::capture(&tracing::Span::current()))
    }

    pub(crate) fn order_created(order: &Order, trace_context: String) -> Self {
        Self {
            order_id: order.order_id.clone(),
            payload: OrderCreated::for_order(order).to_payload(),
            trace_context,
        }
    }
}

/// Part of [`crate::store::Store::create`]'s atomic write.
pub(crate) fn insert(connection: &Connection, entry: &NewEntry) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO outbox (order_id, payload, trace_context, created_at_ms)
         VALUES (?1, ?2, ?3, ?4)",
        params![entry.order_id, entry.payload, entry.trace_context, now_ms()],
    )?;
    Ok(())
}

/// An entry waiting to be sent.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub order_id: String,
    pub payload: Vec<u8>,
    pub trace_context: String,
}

/// How the relay paces itself (`OUTBOX_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// `OUTBOX_POLL_INTERVAL_MS`: how often it looks for entries a failed send left
    /// behind (default 1000). New entries do not wait for it: each commit wakes it.
    pub poll_interval: Duration,
    /// `OUTBOX_RECONCILE_AFTER_MS`: an order still PENDING this long after its event was
    /// sent gets the event again (default 60000).
    pub reconcile_after: Duration,
    /// `OUTBOX_MAX_REPUBLISH`: how many times at most (default 3).
    pub max_republish: u32,
}

/// Entries read and sent per round.
const BATCH: usize = 256;

/// The handle the API holds: wakes the relay after a commit.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    wake: Arc<Notify>,
    /// Entries waiting to be sent, as the relay last counted them (every poll interval).
    backlog: Arc<AtomicI64>,
}

impl Outbox {
    /// The backlog the relay keeps counting, for the `app.outbox.backlog` metric.
    pub fn backlog(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.backlog)
    }

    /// Call after the transaction that stored an entry has committed.
    pub fn wake(&self) {
        // A permit is kept if the relay is busy, so it runs another round.
        self.wake.notify_one();
    }
}

#[derive(Debug)]
pub struct Relay {
    outbox: Outbox,
    store: Store,
    publisher: EventPublisher,
    settings: RelaySettings,
}

impl Relay {
    pub fn new(
        outbox: Outbox,
        store: Store,
        publisher: EventPublisher,
        settings: RelaySettings,
    ) -> Self {
        Self {
            outbox,
            store,
            publisher,
            settings,
        }
    }

    /// Sends entries until `shutdown`; then makes one last round, so what was committed
    /// before the signal goes out if Kafka can take it (what it cannot take waits in the
    /// database for the next start).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.outbox.wake.notified() => {}
                _ = ticker.tick() => {
                    self.reconcile().await;
                    self.count_backlog().await;
                }
            }
            self.send_pending().await;
        }
        self.send_pending().await;
    }

    /// Sends what is pending, round after round, until nothing is or a round fails.
    pub(crate) async fn send_pending(&self) {
        loop {
            let (pending, unreadable) = match self.read_pending().await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the outbox");
                    return;
                }
            };
            for (id, reason) in unreadable {
                self.quarantine(id, reason).await;
            }
            if pending.is_empty() {
                return;
            }
            let full_round = pending.len() == BATCH;
            let sent = self.send(pending).await;
            if !sent || !full_round {
                return;
            }
        }
    }

    /// Sends a round concurrently and marks what the broker acknowledged. `false` when
    /// any send failed (the broker is likely away: wait for the timer).
    async fn send(&self, pending: Vec<Pending>) -> bool {
        // Concurrently: each send waits on the broker's acknowledgement, and rdkafka
        // batches what is in flight together.
        let sends = pending.iter().map(|entry| self.publisher.publish(entry));
        let results = join_all(sends).await;
        let mut sent = Vec::new();
        let mut failed = Vec::new();
        for (entry, result) in pending.iter().zip(results) {
            match result {
                Ok(()) => sent.push(entry.id),
                Err(error) => {
                    tracing::warn!(order_id = %entry.order_id, %error, "event not sent yet; it stays in the outbox");
                    failed.push(entry.id);
                }
            }
        }
        let all_sent = failed.is_empty();
        let marked = self
            .store
            .write_untraced(move |c| {
                let now = now_ms();
                for id in &sent {
                    c.execute(
                        "UPDATE outbox SET sent_at_ms = ?2 WHERE id = ?1",
                        params![id, now],
                    )?;
                }
                for id in &failed {
                    c.execute(
                        "UPDATE outbox SET send_failures = send_failures + 1 WHERE id = ?1",
                        params![id],
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(error) = marked {
            // The events went out; unmarked, they go out again: a duplicate, never a loss.
            tracing::warn!(%error, "sent events not marked; they will be sent again");
        }
        all_sent
    }

    /// The oldest pending entries, and the ids of rows that cannot be read back or whose
    /// payload is no event (with the reason), which must not block the rest.
    async fn read_pending(&self) -> Result<(Vec<Pending>, Vec<(i64, String)>), StoreError> {
        self.store
            .read_untraced(|c| {
                let mut statement = c.prepare(
                    "SELECT id, order_id, payload, trace_context FROM outbox
                     WHERE sent_at_ms IS NULL AND quarantined IS NULL ORDER BY id LIMIT ?1",
                )?;
                let mut rows = statement.query(params![BATCH as i64])?;
                let mut pending = Vec::new();
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
                        Ok(entry) => match OrderCreated::from_payload(&entry.payload) {
                            Ok(_) => pending.push(entry),
                            Err(error) => unreadable.push((id, error.to_string())),
                        },
                        Err(error) => unreadable.push((id, format!("unreadable row: {error}"))),
                    }
                }
                Ok((pending, unreadable))
            })
            .await
    }

    async fn quarantine(&self, id: i64, reason: String) {
        let logged = reason.clone();
        let result = self
            .store
            .write_untraced(move |c| {
                c.execute(
                    "UPDATE outbox SET quarantined = ?2 WHERE id = ?1",
                    params![id, reason],
                )?;
                // The order and trace ids, if they can be read, for the log line.
                let ids = c
                    .query_row(
                        "SELECT CAST(order_id AS TEXT), CAST(trace_context AS TEXT) FROM outbox WHERE id = ?1",
                        params![id],
                        |row| Ok((row.get::<_, Option<String>>(0)?, row.get::<_, Option<String>>(1)?)),
                    )
                    .unwrap_or_default();
                Ok(ids)
            })
            .await;
        match result {
            Ok((order_id, trace_context)) => tracing::error!(
                outbox_id = id,
                order_id = order_id.as_deref().unwrap_or("?"),
                trace_id = trace_context.as_deref().and_then(stored::trace_id).as_deref().unwrap_or("?"),
                reason = %logged,
                "outbox entry quarantined; it will not be sent"
            ),
            Err(error) => {
                tracing::error!(outbox_id = id, %error, "cannot quarantine an outbox entry")
            }
        }
    }

    /// Counts the entries still to send, for the backlog metric (one untraced read per
    /// poll interval).
    async fn count_backlog(&self) {
        let counted = self
            .store
            .read_untraced(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL AND quarantined IS NULL",
                    [],
                    |row| row.get::<_, i64>(0),
                )?)
            })
            .await;
        match counted {
            Ok(n) => self.outbox.backlog.store(n, Ordering::Relaxed),
            Err(error) => tracing::warn!(%error, "cannot count the outbox backlog"),
        }
    }

    /// Sends again the events of orders still PENDING long after they were sent, and
    /// forgets the entries of orders that reached a final state.
    async fn reconcile(&self) {
        let before =
            now_ms() - i64::try_from(self.settings.reconcile_after.as_millis()).unwrap_or(i64::MAX);
        let max = self.settings.max_republish;
        let result = self
            .store
            .write_untraced(move |c| {
                let again = c.execute(
                    "UPDATE outbox SET sent_at_ms = NULL, republished = republished + 1
                     WHERE sent_at_ms < ?1 AND republished < ?2 AND quarantined IS NULL
                       AND order_id IN (SELECT id FROM orders WHERE status = 'ORDER_STATUS_PENDING')",
                    params![before, max],
                )?;
                c.execute(
                    "DELETE FROM outbox WHERE sent_at_ms < ?1
                       AND order_id IN (SELECT id FROM orders WHERE status != 'ORDER_STATUS_PENDING')",
                    params![before],
                )?;
                Ok(again)
            })
            .await;
        match result {
            Ok(0) => {}
            Ok(again) => tracing::warn!(
                events = again,
                "orders still pending long after their event was sent; sending it again"
            ),
            Err(error) => tracing::warn!(%error, "outbox reconciliation failed"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::KafkaConfig;
    use crate::store::tests::{order, temp_store};
    use rdkafka::mocking::MockCluster;

    fn settings() -> RelaySettings {
        RelaySettings {
            poll_interval: Duration::from_millis(100),
            reconcile_after: Duration::from_secs(60),
            max_republish: 3,
        }
    }

    /// (sent, quarantined) entries.
    async fn counts(store: &Store) -> (i64, i64) {
        store
            .read_untraced(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(sent_at_ms), COUNT(quarantined) FROM outbox",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_bad_entry_is_quarantined_and_the_others_are_sent() {
        let kafka = MockCluster::new(1).unwrap();
        kafka.create_topic("orders", 1, 1).unwrap();
        let publisher = EventPublisher::new(&KafkaConfig {
            bootstrap_servers: kafka.bootstrap_servers(),
            topic: "orders".into(),
            topic_partitions: 1,
        })
        .unwrap();
        let (store, dir) = temp_store();
        let good = order("o-good");
        store
            .create(
                good.clone(),
                NewEntry::order_created(&good, String::new()),
                None,
            )
            .await
            .unwrap();
        // An entry whose payload is no event, written behind the API's back.
        store
            .write_untraced(|c| {
                c.execute(
                    "INSERT INTO outbox (order_id, payload, trace_context, created_at_ms)
                     VALUES ('o-bad', x'00ff', '', 0)",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();

        let relay = Relay::new(Outbox::default(), store.clone(), publisher, settings());
        relay.send_pending().await;
        assert_eq!(counts(&store).await, (1, 1));
        assert_eq!(pending_count(&store).await, 0);
        // Nothing is left to send, and the quarantined entry is not tried again.
        relay.send_pending().await;
        assert_eq!(counts(&store).await, (1, 1));
        std::fs::remove_dir_all(dir).unwrap();
    }

    pub(crate) async fn pending_count(store: &Store) -> i64 {
        store
            .read_untraced(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL AND quarantined IS NULL",
                    [],
                    |row| row.get(0),
                )?)
            })
            .await
            .unwrap()
    }
}
