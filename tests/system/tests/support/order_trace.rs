//! What one order's trace holds, as Jaeger stores it: the README's tree, by service, span
//! name and kind. A failed order has the same spans (the failed step is an error).

use std::collections::BTreeMap;

use super::jaeger::StoredSpan;

/// (service, span name, span kind) → how many such spans.
pub type Shape = BTreeMap<(String, String, String), usize>;

/// Spans in one order's trace.
pub const ORDER_SPANS: usize = 11;

/// The spans every order's trace must hold, with orders sent to `topic`.
pub fn expected(topic: &str) -> Shape {
    let send = format!("send {topic}");
    let process = format!("process {topic}");
    let rows = [
        ("gateway", "POST /api/orders", "SERVER"),
        ("gateway", "order.v1.OrderService/CreateOrder", "CLIENT"),
        (
            "order-service",
            "order.v1.OrderService/CreateOrder",
            "SERVER",
        ),
        ("order-service", "INSERT orders", "CLIENT"),
        // Sent by the outbox relay (its bookkeeping is untraced), in the order's trace.
        ("order-service", send.as_str(), "PRODUCER"),
        // Recording the outcome.
        ("order-service", "UPDATE orders", "CLIENT"),
        ("worker", process.as_str(), "CONSUMER"),
        ("worker", "reserve stock", "INTERNAL"),
        ("worker", "charge payment", "INTERNAL"),
        ("worker", "order.v1.OrderService/CompleteOrder", "CLIENT"),
        (
            "order-service",
            "order.v1.OrderService/CompleteOrder",
            "SERVER",
        ),
    ];
    debug_assert_eq!(rows.len(), ORDER_SPANS);
    rows.iter()
        .map(|(s, n, k)| ((s.to_string(), n.to_string(), k.to_string()), 1))
        .collect()
}

/// The shape of stored spans, to compare with [`expected`].
pub fn shape(spans: &[StoredSpan]) -> Shape {
    let mut shape = Shape::new();
    for s in spans {
        *shape
            .entry((s.service.clone(), s.name.clone(), s.kind.clone()))
            .or_default() += 1;
    }
    shape
}
