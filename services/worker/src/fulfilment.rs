//! Fulfilling an order: reserve stock and charge payment, concurrently, each in a task of
//! its own and a span of its own under the consumer span.
//!
//! This is where context gets lost. `tokio::spawn` runs the future on any worker thread,
//! outside the span that was current when it was spawned, so a span created *inside* the
//! task has no parent and starts a new trace. The fix is to create the span here, in the
//! caller's context, and attach it with `.instrument(span)`: the span's parent is fixed
//! at creation, and the task enters it every time it is polled.
//!
//! Each step also honours the faults a request's baggage asks for (`demo.fault=stock_out`,
//! `demo.delay.reserve_stock=300ms`, …, with `FAULT_INJECTION=baggage`): read inside the
//! step's own span, which is how the baggage sent to the gateway, three hops back, reaches
//! a spawned task here.

use std::time::Duration;

use faults::{FaultInjection, Step};
use proto::order::v1::OrderCreated;
use telemetry::span::mark_error;
use tokio::task::JoinSet;
use tracing::Instrument;

/// SKUs starting with this are never in stock (a way to see a FAILED order in the demo).
pub const OUT_OF_STOCK_PREFIX: &str = "OOS-";
/// Orders of more units than this are declined by the payment step.
pub const PAYMENT_LIMIT_UNITS: i64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Fulfilled,
    Failed(String),
}

pub async fn fulfil(event: &OrderCreated, faults: FaultInjection) -> Outcome {
    let mut steps = JoinSet::new();
    steps.spawn(reserve_stock(event.clone(), faults).instrument(step_span("reserve stock", event)));
    steps.spawn(
        charge_payment(event.clone(), faults).instrument(step_span("charge payment", event)),
    );

    // Both steps run to completion (each span ends when its work does); the first
    // failure, in a stable order, is the order's reason.
    let mut failures = Vec::new();
    while let Some(result) = steps.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => failures.push(reason),
            Err(join_error) => failures.push(format!("fulfilment step crashed: {join_error}")),
        }
    }
    failures.sort();
    match failures.into_iter().next() {
        None => Outcome::Fulfilled,
        Some(reason) => Outcome::Failed(reason),
    }
}

async fn reserve_stock(event: OrderCreated, faults: FaultInjection) -> Result<(), String> {
    let injected = faults.at(Step::ReserveStock);
    injected.wait().await;
    // Stands in for a call to an inventory system.
    tokio::time::sleep(Duration::from_millis(10 + 5 * event.items.len() as u64)).await;
    let missing = event
        .items
        .iter()
        .find(|i| i.sku.starts_with(OUT_OF_STOCK_PREFIX))
        .map(|item| item.sku.clone())
        .or_else(|| {
            injected
                .fault
                .map(|fault| format!("asked for by baggage {}", fault.member()))
        });
    match missing {
        Some(what) => {
            let reason = format!("out of stock: {what}");
            tracing::warn!(%reason, "stock reservation failed");
            mark_error(&tracing::Span::current(), "out_of_stock", &reason);
            Err(reason)
        }
        None => {
            tracing::info!(items = event.items.len(), "stock reserved");
            Ok(())
        }
    }
}

async fn charge_payment(event: OrderCreated, faults: FaultInjection) -> Result<(), String> {
    let injected = faults.at(Step::ChargePayment);
    injected.wait().await;
    // Stands in for a call to a payment provider.
    tokio::time::sleep(Duration::from_millis(25)).await;
    let units: i64 = event.items.iter().map(|i| i.quantity).sum();
    let declined = if units > PAYMENT_LIMIT_UNITS {
        Some(format!(
            "{units} units is over the {PAYMENT_LIMIT_UNITS}-unit limit"
        ))
    } else {
        injected
            .fault
            .map(|fault| format!("asked for by baggage {}", fault.member()))
    };
    if let Some(why) = declined {
        let reason = format!("payment declined: {why}");
        tracing::warn!(%reason, "payment failed");
        mark_error(&tracing::Span::current(), "payment_declined", &reason);
        return Err(reason);
    }
    tracing::info!(units, "payment charged");
    Ok(())
}

/// Created by the caller, in the consumer span's context: that is what makes it the
/// consumer span's child even though the task runs elsewhere. A business failure is an
/// error of the step that failed (its span turns red in Jaeger), not of the whole record:
/// the order is still processed, to FAILED.
fn step_span(name: &'static str, event: &OrderCreated) -> tracing::Span {
    telemetry::internal_span!(name, app.order.id = %event.order_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::order::v1::{Order, OrderItem};

    fn event(items: &[(&str, i64)]) -> OrderCreated {
        OrderCreated::for_order(&Order {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            items: items
                .iter()
                .map(|(sku, quantity)| OrderItem {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
            ..Order::default()
        })
    }

    #[tokio::test]
    async fn outcomes_follow_the_rules() {
        let off = FaultInjection::Off;
        assert_eq!(
            fulfil(&event(&[("SKU-1", 2)]), off).await,
            Outcome::Fulfilled
        );
        assert_eq!(
            fulfil(&event(&[("SKU-1", 1), ("OOS-9", 1)]), off).await,
            Outcome::Failed("out of stock: OOS-9".into())
        );
        assert!(matches!(
            fulfil(&event(&[("SKU-1", 101)]), off).await,
            Outcome::Failed(reason) if reason.starts_with("payment declined")
        ));
    }
}
