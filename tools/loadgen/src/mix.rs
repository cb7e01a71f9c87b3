//! Which request comes next: a create or a read, and for a create, an order the demo
//! fulfils or one it fails (an SKU starting `OOS-`, or more than 100 units).
//!
//! The shares are spread evenly by counting, not drawn at random: two runs with the same
//! flags send the same mix, and a test can count it exactly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Reads go to one of this many most recently created orders, as a customer checks an
/// order just placed.
const RECENT_ORDERS: usize = 1024;

/// Whether the `n`-th item (from 0) of a sequence belongs to the `ratio` share: of the
/// first `n` items exactly `floor(n × ratio)` do, spread as evenly as possible.
pub fn spread(n: u64, ratio: f64) -> bool {
    ((n + 1) as f64 * ratio).floor() > (n as f64 * ratio).floor()
}

/// How the demo is expected to end an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Expected {
    Fulfilled,
    Failed,
}

/// One request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// `POST /api/orders` with this JSON body.
    Create { body: String, expected: Expected },
    /// `GET /api/orders/{id}`.
    Read { order_id: String },
}

#[derive(Debug)]
pub struct Mix {
    read_ratio: f64,
    fail_ratio: f64,
    requests: AtomicU64,
    creates: AtomicU64,
    failures: AtomicU64,
    recent: Mutex<VecDeque<String>>,
}

impl Mix {
    pub fn new(read_ratio: f64, fail_ratio: f64) -> Self {
        Self {
            read_ratio,
            fail_ratio,
            requests: AtomicU64::new(0),
            creates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_ORDERS)),
        }
    }

    /// The next request. A read due before any order was created becomes a create:
    /// reading an order that does not exist would only measure 404s.
    pub fn next(&self) -> Plan {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if spread(n, self.read_ratio)
            && let Some(order_id) = self.recent_order(n)
        {
            return Plan::Read { order_id };
        }
        self.new_order()
    }

    /// Remembers a created order for later reads.
    pub fn remember(&self, order_id: String) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_ORDERS {
            recent.pop_front();
        }
        recent.push_back(order_id);
    }

    fn recent_order(&self, n: u64) -> Option<String> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.is_empty() {
            return None;
        }
        recent.get((n % recent.len() as u64) as usize).cloned()
    }

    fn new_order(&self) -> Plan {
        let c = self.creates.fetch_add(1, Ordering::Relaxed);
        let customer = c % 1000;
        let (sku, quantity, expected) = if spread(c, self.fail_ratio) {
            // Both of the demo's failure paths, alternately: stock, then payment.
            if self
                .failures
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(2)
            {
                (format!("OOS-{}", c % 7), 1, Expected::Failed)
            } else {
                (format!("BOOK-{}", c % 7), 101, Expected::Failed)
            }
        } else {
            (format!("BOOK-{}", c % 7), 1 + c % 3, Expected::Fulfilled)
        };
        Plan::Create {
            body: format!(
                r#"{{"customer_id":"loadgen-{customer}","items":[{{"sku":"{sku}","quantity":{quantity}}}]}}"#
            ),
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_exactly_the_share_evenly() {
        for (ratio, of_100) in [(0.0, 0), (1.0, 100), (0.25, 25), (0.1, 10), (1.0 / 3.0, 33)] {
            let picked: Vec<u64> = (0..100).filter(|&n| spread(n, ratio)).collect();
            assert_eq!(picked.len(), of_100, "{ratio}");
            // Evenly: never two picks closer than the ratio allows.
            if ratio > 0.0 && ratio < 1.0 {
                let gap = (1.0 / ratio).floor() as u64;
                assert!(
                    picked.windows(2).all(|w| w[1] - w[0] >= gap),
                    "{ratio}: {picked:?}"
                );
            }
        }
    }

    #[test]
    fn reads_need_an_order_to_read_and_failures_take_both_paths() {
        let mix = Mix::new(0.5, 0.5);
        // Nothing created yet: the read share falls back to creates.
        assert!(matches!(mix.next(), Plan::Create { .. }));
        assert!(matches!(mix.next(), Plan::Create { .. }));
        mix.remember("o-1".to_owned());
        let plans: Vec<Plan> = (0..8).map(|_| mix.next()).collect();
        let reads = plans
            .iter()
            .filter(|p| matches!(p, Plan::Read { .. }))
            .count();
        assert_eq!(reads, 4);
        let failed: Vec<&str> = plans
            .iter()
            .chain([mix.next(), mix.next()].iter())
            .filter_map(|p| match p {
                Plan::Create {
                    body,
                    expected: Expected::Failed,
                } => Some(body.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|b| {
                if b.contains("OOS-") {
                    "stock"
                } else {
                    "payment"
                }
            })
            .collect();
        assert!(
            failed.contains(&"stock") && failed.contains(&"payment"),
            "{failed:?}"
        );
    }

    #[test]
    fn bodies_are_orders_the_gateway_accepts() {
        let mix = Mix::new(0.0, 0.5);
        for _ in 0..4 {
            let Plan::Create { body, expected } = mix.next() else {
                panic!("only creates without reads");
            };
            let order: serde_json::Value = serde_json::from_str(&body).unwrap();
            let item = &order["items"][0];
            let (sku, quantity) = (
                item["sku"].as_str().unwrap(),
                item["quantity"].as_i64().unwrap(),
            );
            let fails = sku.starts_with("OOS-") || quantity > 100;
            assert_eq!(fails, expected == Expected::Failed, "{body}");
            assert!(
                (1..=1000).contains(&quantity),
                "within the API's limit: {body}"
            );
        }
    }
}
