//! The order-service's own metrics, beside the request metrics the telemetry crate's
//! middleware records: orders created, orders reaching each final state, and the outbox
//! backlog (events committed but not yet acknowledged by Kafka). Names in the `app.`
//! namespace: the semantic conventions define none for these.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, ObservableGauge};
use proto::order::v1::OrderStatus;

#[derive(Clone)]
pub struct OrderMetrics {
    created: Counter<u64>,
    completed: Counter<u64>,
    /// Kept so its callback lives as long as the service.
    _outbox_backlog: ObservableGauge<i64>,
}

// By hand: the instruments have no useful `Debug`.
impl std::fmt::Debug for OrderMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderMetrics").finish_non_exhaustive()
    }
}

impl OrderMetrics {
    /// `backlog` is what the outbox relay last counted (see `outbox.rs`).
    pub fn new(backlog: Arc<AtomicI64>) -> Self {
        let meter = opentelemetry::global::meter("order-service");
        Self {
            created: meter
                .u64_counter("app.orders.created")
                .with_unit("{order}")
                .with_description("Orders stored (a replayed idempotency key is not counted).")
                .build(),
            completed: meter
                .u64_counter("app.orders.completed")
                .with_unit("{order}")
                .with_description("Orders that reached a final state, by `app.order.status`.")
                .build(),
            _outbox_backlog: meter
                .i64_observable_gauge("app.outbox.backlog")
                .with_unit("{event}")
                .with_description("Events committed with their order and not yet sent to Kafka.")
                .with_callback(move |gauge| gauge.observe(backlog.load(Ordering::Relaxed), &[]))
                .build(),
        }
    }

    pub fn created(&self) {
        self.created.add(1, &[]);
    }

    pub fn completed(&self, status: OrderStatus) {
        self.completed.add(
            1,
            &[KeyValue::new("app.order.status", status.as_str_name())],
        );
    }
}
