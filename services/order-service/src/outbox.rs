//! The transactional outbox: how an order's event reaches Kafka without the request
//! waiting for Kafka, and without being lost when Kafka is down.
//!
//! 1. **Entry.** CreateOrder stores the order and a [`NewEntry`] (the event's payload and
//!    the request's trace context, captured here) in one database transaction
//!    (`Store::create`), then answers at once. Kafka is not on the request's path.
//! 2. **Relay.** [`Relay`] sends pending entries: woken right after each commit (commit
//!    to send in milliseconds), and on a timer for what a failed send left behind (after
//!    an outage). Each send is a PRODUCER span `send orders` whose parent is restored from
//!    the entry, so it stays in the order's trace however late it goes out. With several
//!    replicas on PostgreSQL, a relay claims its round with `FOR UPDATE SKIP LOCKED`
//!    and holds the rows until they are marked, so two relays never send one entry at
//!    the same time; a replica that dies mid-round loses its connection, and with it the
//!    locks, and another relay takes the entries.
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
use telemetry::propagation::stored;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;
use crate::store::{QuarantinedIds, Settlement, Store, now_ms};

/// An event to store with the order it belongs to.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub(crate) order_id: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) trace_context: String,
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
            let claimed = match self.store.claim_pending(BATCH).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the outbox");
                    return;
                }
            };
            if claimed.entries.is_empty() && claimed.unreadable.is_empty() {
                // Lets the (empty) claim go.
                let _ = self.store.settle(claimed, Settlement::default()).await;
                return;
            }
            let full_round = claimed.entries.len() + claimed.unreadable.len() == BATCH;
            let mut settlement = Settlement {
                quarantined: claimed.unreadable.clone(),
                ..Settlement::default()
            };
            let mut sendable = Vec::with_capacity(claimed.entries.len());
            for entry in &claimed.entries {
                match OrderCreated::from_payload(&entry.payload) {
                    Ok(_) => sendable.push(entry),
                    Err(error) => settlement.quarantined.push((entry.id, error.to_string())),
                }
            }
            self.send(&sendable, &mut settlement).await;
            let all_sent = settlement.failed.is_empty();
            let reasons = settlement.quarantined.clone();
            match self.store.settle(claimed, settlement).await {
                Ok(quarantined) => log_quarantined(&quarantined, &reasons),
                // The events went out; unmarked, they go out again: a duplicate, never a loss.
                Err(error) => {
                    tracing::warn!(%error, "sent events not marked; they will be sent again")
                }
            }
            if !all_sent || !full_round {
                return;
            }
        }
    }

    /// Sends a round concurrently and notes what the broker acknowledged and what failed
    /// (the broker is likely away then: the relay waits for the timer).
    async fn send(&self, entries: &[&Pending], settlement: &mut Settlement) {
        // Concurrently: each send waits on the broker's acknowledgement, and rdkafka
        // batches what is in flight together.
        let sends = entries.iter().map(|entry| self.publisher.publish(entry));
        let results = join_all(sends).await;
        for (entry, result) in entries.iter().zip(results) {
            match result {
                Ok(()) => settlement.sent.push(entry.id),
                Err(error) => {
                    tracing::warn!(order_id = %entry.order_id, %error, "event not sent yet; it stays in the outbox");
                    settlement.failed.push(entry.id);
                }
            }
        }
    }

    /// Counts the entries still to send, for the backlog metric (one untraced read per
    /// poll interval).
    async fn count_backlog(&self) {
        match self.store.count_pending().await {
            Ok(n) => self.outbox.backlog.store(n, Ordering::Relaxed),
            Err(error) => tracing::warn!(%error, "cannot count the outbox backlog"),
        }
    }

    /// Sends again the events of orders still PENDING long after they were sent, and
    /// forgets the entries of orders that reached a final state.
    async fn reconcile(&self) {
        let before =
            now_ms() - i64::try_from(self.settings.reconcile_after.as_millis()).unwrap_or(i64::MAX);
        match self
            .store
            .reconcile(before, self.settings.max_republish)
            .await
        {
            Ok(0) => {}
            Ok(again) => tracing::warn!(
                events = again,
                "orders still pending long after their event was sent; sending it again"
            ),
            Err(error) => tracing::warn!(%error, "outbox reconciliation failed"),
        }
    }
}

fn log_quarantined(quarantined: &[QuarantinedIds], reasons: &[(i64, String)]) {
    for ids in quarantined {
        let reason = reasons
            .iter()
            .find(|(id, _)| *id == ids.id)
            .map_or("?", |(_, reason)| reason.as_str());
        tracing::error!(
            outbox_id = ids.id,
            order_id = ids.order_id.as_deref().unwrap_or("?"),
            trace_id = ids
                .trace_context
                .as_deref()
                .and_then(stored::trace_id)
                .as_deref()
                .unwrap_or("?"),
            reason,
            "outbox entry quarantined; it will not be sent"
        );
    }
}
