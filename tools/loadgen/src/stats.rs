//! What the run measured: an HDR latency histogram and status counts per kind of request,
//! and the live counters the progress line reads once a second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

/// The kinds of request, each with its own histogram and row in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Create,
    Read,
    /// `--track-orders`: a GET that asks whether an order is final yet.
    Poll,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Create, Kind::Read, Kind::Poll];

    /// The status a healthy answer has.
    fn expected_status(self) -> u16 {
        match self {
            Kind::Create => 201,
            Kind::Read | Kind::Poll => 200,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Create => "POST /api/orders",
            Kind::Read => "GET /api/orders/{id}",
            Kind::Poll => "GET /api/orders/{id} (tracking polls)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Read => "read",
            Kind::Poll => "poll",
        }
    }
}

/// How one request ended: an HTTP status, or no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// `timeout`, `connect`, `body`, ... (see `requests::classify`).
    Transport(&'static str),
}

impl Outcome {
    fn key(self) -> String {
        match self {
            Outcome::Status(code) => code.to_string(),
            Outcome::Transport(kind) => kind.to_owned(),
        }
    }
}

/// A latency histogram in microseconds, 3 significant digits, from 1 µs to an hour.
// Constant bounds within the crate's rules (low ≥ 1, high ≥ 2 × low, sigfig ≤ 5): this
// cannot fail, whatever the input.
#[allow(clippy::expect_used)]
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// Counters the progress line reads while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub done: [AtomicU64; 3],
    pub errors: AtomicU64,
    pub in_flight: AtomicI64,
    /// Open loop: requests due but waiting for a free slot.
    pub waiting: AtomicI64,
    /// `--track-orders`: orders seen final, and orders still pending.
    pub finals: AtomicU64,
    pub pending_orders: AtomicI64,
    /// `--idempotent-retries`: POSTs sent again, and POSTs given up after the last retry.
    pub retries: AtomicU64,
    pub gave_up: AtomicU64,
}

#[derive(Debug)]
struct PerKind {
    latency: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    errors: u64,
}

/// Everything recorded, per kind of request.
#[derive(Debug)]
pub struct Stats {
    pub live: Live,
    kinds: Mutex<BTreeMap<Kind, PerKind>>,
    unreadable: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        let kinds = Kind::ALL
            .into_iter()
            .map(|kind| {
                (
                    kind,
                    PerKind {
                        latency: histogram(),
                        statuses: BTreeMap::new(),
                        errors: 0,
                    },
                )
            })
            .collect();
        Self {
            live: Live::default(),
            kinds: Mutex::new(kinds),
            unreadable: AtomicU64::new(0),
        }
    }
}

/// One kind's figures at the end.
#[derive(Debug, Clone)]
pub struct KindFigures {
    pub count: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<String, u64>,
}

impl Stats {
    /// Records a finished request. Every request counts in the latency, errors and
    /// timeouts too: leaving them out would make a failing server look fast.
    pub fn record(&self, kind: Kind, outcome: Outcome, elapsed: Duration) {
        let failed = outcome != Outcome::Status(kind.expected_status());
        {
            let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(per_kind) = kinds.get_mut(&kind) {
                record(&mut per_kind.latency, elapsed);
                *per_kind.statuses.entry(outcome.key()).or_default() += 1;
                per_kind.errors += u64::from(failed);
            }
        }
        self.live.done[kind as usize].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.live.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A 201 whose body held no order id: the order cannot be read or tracked.
    pub fn unreadable_body(&self) {
        self.unreadable.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    pub fn figures(&self, kind: Kind) -> KindFigures {
        let kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        match kinds.get(&kind) {
            Some(k) => KindFigures {
                count: k.latency.len(),
                errors: k.errors,
                latency: k.latency.clone(),
                statuses: k.statuses.clone(),
            },
            None => KindFigures {
                count: 0,
                errors: 0,
                latency: histogram(),
                statuses: BTreeMap::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_and_still_timed() {
        let stats = Stats::default();
        stats.record(Kind::Create, Outcome::Status(201), Duration::from_millis(2));
        stats.record(Kind::Create, Outcome::Status(503), Duration::from_millis(4));
        stats.record(
            Kind::Create,
            Outcome::Transport("timeout"),
            Duration::from_secs(10),
        );
        stats.record(Kind::Read, Outcome::Status(200), Duration::from_millis(1));
        let create = stats.figures(Kind::Create);
        assert_eq!((create.count, create.errors), (3, 2));
        assert_eq!(
            create.statuses,
            BTreeMap::from([("201".into(), 1), ("503".into(), 1), ("timeout".into(), 1)])
        );
        assert!(
            create.latency.max() >= 9_990_000,
            "the timeout is in the histogram"
        );
        assert_eq!(stats.figures(Kind::Read).errors, 0);
        assert_eq!(stats.live.errors.load(Ordering::Relaxed), 2);
        assert_eq!(
            stats.live.done[Kind::Create as usize].load(Ordering::Relaxed),
            3
        );
    }
}
