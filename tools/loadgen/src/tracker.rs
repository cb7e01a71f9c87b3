//! `--track-orders`: follows every created order to FULFILLED or FAILED by polling
//! `GET /api/orders/{id}`, which measures the whole pipeline (gateway, order-service,
//! outbox, Kafka, worker) rather than the HTTP answer alone.
//!
//! An order's first polls come at the poll interval; one still pending after a few is
//! polled less and less often, and at most `poll_connections` polls are in flight at
//! once, most overdue first. So a backlog of pending orders (a worker that cannot keep
//! up) adds a bounded load to the gateway instead of a flood of GETs. An order that is
//! not final by its deadline is **lost**, and reported by id and trace id.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering as Atomic;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::Tracking;
use crate::mix::Expected;
use crate::requests::Client;
use crate::stats::{self, Kind, Outcome, Stats};

/// Polls at the poll interval before backing off: most orders of a healthy pipeline are
/// final by then.
const STEADY_POLLS: u32 = 2;
/// The longest wait between two polls of one order (unless the interval is longer).
const MAX_POLL_GAP: Duration = Duration::from_secs(1);

/// How long to wait before poll number `attempt + 1` of an order (`attempt` from 0):
/// the interval for the first few, then doubling up to a second.
pub fn poll_delay(interval: Duration, attempt: u32) -> Duration {
    if attempt < STEADY_POLLS {
        return interval;
    }
    let doublings = (attempt - STEADY_POLLS + 1).min(16);
    interval
        .saturating_mul(1 << doublings)
        .min(MAX_POLL_GAP.max(interval))
}

/// An order the gateway answered 201 for.
#[derive(Debug, Clone)]
pub struct Created {
    pub order_id: String,
    pub trace_id: Option<String>,
    /// When the 201 arrived.
    pub at: Instant,
    pub expected: Expected,
}

/// An order that never reached a final state in time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LostOrder {
    pub order_id: String,
    pub trace_id: Option<String>,
    /// What the last poll saw: `PENDING`, `HTTP 404`, `timeout`, or `interrupted`.
    pub last_seen: String,
}

/// An order whose final state is not the one its request asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unexpected {
    pub order_id: String,
    pub expected: Expected,
    pub status: String,
}

/// What tracking found.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub created: u64,
    pub fulfilled: u64,
    pub failed: u64,
    pub unexpected: Vec<Unexpected>,
    pub lost: Vec<LostOrder>,
    /// Created → first poll that saw the order final, in µs.
    pub latency: Histogram<u64>,
    /// When the last order was seen final.
    pub last_final: Option<Instant>,
}

/// The running tracker; [`Tracker::finish`] waits for it.
#[derive(Debug)]
pub struct Tracker {
    task: JoinHandle<Tracked>,
}

/// Where created orders are handed to the tracker. The tracker finishes once every
/// inbox is dropped and every order it was given is final or lost.
#[derive(Debug, Clone)]
pub struct Inbox(mpsc::UnboundedSender<Created>);

impl Inbox {
    pub fn track(&self, order: Created) {
        // Fails only once the tracker has stopped (cancelled): nothing left to follow.
        let _ = self.0.send(order);
    }
}

impl Tracker {
    /// Starts polling. `cancel` (Ctrl-C) reports every order still pending as lost,
    /// `interrupted`, at once.
    pub fn spawn(
        client: Client,
        settings: Tracking,
        stats: Arc<Stats>,
        cancel: CancellationToken,
    ) -> (Self, Inbox) {
        let (orders, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(track(client, settings, stats, received, cancel));
        (Self { task }, Inbox(orders))
    }

    /// Waits until every inbox is dropped and every order is final or past its deadline.
    pub async fn finish(self) -> anyhow::Result<Tracked> {
        Ok(self.task.await?)
    }
}

/// An order waiting for its next poll.
#[derive(Debug)]
struct Pending {
    order: Created,
    due: Instant,
    deadline: Instant,
    attempts: u32,
    seq: u64,
}

// Ordered by due time (then arrival), so the heap yields the most overdue order first.
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pending {}

/// What one poll saw.
#[derive(Debug)]
enum Seen {
    Final(String),
    NotYet(String),
    Interrupted,
}

#[derive(Deserialize)]
struct OrderBody {
    status: String,
}

async fn track(
    client: Client,
    settings: Tracking,
    stats: Arc<Stats>,
    mut received: mpsc::UnboundedReceiver<Created>,
    cancel: CancellationToken,
) -> Tracked {
    let mut result = Tracked {
        created: 0,
        fulfilled: 0,
        failed: 0,
        unexpected: Vec::new(),
        lost: Vec::new(),
        latency: stats::histogram(),
        last_final: None,
    };
    let mut waiting: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut polls: JoinSet<(Pending, Seen)> = JoinSet::new();
    let mut input_open = true;
    let mut seq = 0;
    let slots = settings.poll_connections as usize;

    loop {
        // Start every poll that is due while a connection is free, most overdue first.
        let now = Instant::now();
        while polls.len() < slots && waiting.peek().is_some_and(|p| p.0.due <= now) {
            if let Some(Reverse(pending)) = waiting.pop() {
                let (client, stats, cancel) = (client.clone(), stats.clone(), cancel.clone());
                polls.spawn(async move {
                    let seen = tokio::select! {
                        biased;
                        () = cancel.cancelled() => Seen::Interrupted,
                        seen = poll(&client, &stats, &pending.order.order_id) => seen,
                    };
                    (pending, seen)
                });
            }
        }
        if !input_open && waiting.is_empty() && polls.is_empty() {
            break;
        }
        let next_due = (polls.len() < slots)
            .then(|| waiting.peek().map(|p| p.0.due))
            .flatten();
        tokio::select! {
            biased;
            () = cancel.cancelled(), if !waiting.is_empty() || input_open => {
                // Stop taking orders; what waits for a poll is lost, and polls in flight
                // return Interrupted by themselves.
                input_open = false;
                received.close();
                while let Ok(order) = received.try_recv() {
                    result.created += 1;
                    stats.live.pending_orders.fetch_add(1, Atomic::Relaxed);
                    lose(&mut result, &stats, order, "interrupted");
                }
                for Reverse(pending) in waiting.drain() {
                    lose(&mut result, &stats, pending.order, "interrupted");
                }
            }
            order = received.recv(), if input_open => match order {
                Some(order) => {
                    result.created += 1;
                    stats.live.pending_orders.fetch_add(1, Atomic::Relaxed);
                    let (due, deadline) = (order.at + settings.poll_interval, order.at + settings.deadline);
                    waiting.push(Reverse(Pending { order, due, deadline, attempts: 0, seq }));
                    seq += 1;
                }
                None => input_open = false,
            },
            Some(joined) = polls.join_next(), if !polls.is_empty() => {
                // A poll task only panics if the HTTP client does; its order is then
                // unaccounted for, which the created/final/lost sums would show.
                let Ok((mut pending, seen)) = joined else { continue };
                let now = Instant::now();
                match seen {
                    Seen::Final(status) => {
                        stats::record(&mut result.latency, now - pending.order.at);
                        stats.live.finals.fetch_add(1, Atomic::Relaxed);
                        stats.live.pending_orders.fetch_sub(1, Atomic::Relaxed);
                        result.last_final = Some(now);
                        let seen_as = if status == "FULFILLED" { Expected::Fulfilled } else { Expected::Failed };
                        match seen_as {
                            Expected::Fulfilled => result.fulfilled += 1,
                            Expected::Failed => result.failed += 1,
                        }
                        if seen_as != pending.order.expected {
                            result.unexpected.push(Unexpected {
                                order_id: pending.order.order_id,
                                expected: pending.order.expected,
                                status,
                            });
                        }
                    }
                    Seen::NotYet(last_seen) if now >= pending.deadline => {
                        lose(&mut result, &stats, pending.order, &last_seen);
                    }
                    Seen::NotYet(_) => {
                        pending.due = (now + poll_delay(settings.poll_interval, pending.attempts)).min(pending.deadline);
                        pending.attempts += 1;
                        waiting.push(Reverse(pending));
                    }
                    Seen::Interrupted => lose(&mut result, &stats, pending.order, "interrupted"),
                }
            }
            () = sleep_until(next_due), if next_due.is_some() => {}
        }
    }
    result
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lose(result: &mut Tracked, stats: &Stats, order: Created, last_seen: &str) {
    stats.live.pending_orders.fetch_sub(1, Atomic::Relaxed);
    result.lost.push(LostOrder {
        order_id: order.order_id,
        trace_id: order.trace_id,
        last_seen: last_seen.to_owned(),
    });
}

async fn poll(client: &Client, stats: &Stats, order_id: &str) -> Seen {
    let started = Instant::now();
    let reply = client.get_order(order_id).await;
    stats.record(Kind::Poll, reply.outcome, started.elapsed());
    match reply.outcome {
        Outcome::Status(200) => match serde_json::from_slice::<OrderBody>(&reply.body) {
            Ok(body) if body.status == "FULFILLED" || body.status == "FAILED" => {
                Seen::Final(body.status)
            }
            Ok(body) => Seen::NotYet(body.status),
            Err(_) => Seen::NotYet("unreadable body".to_owned()),
        },
        Outcome::Status(code) => Seen::NotYet(format!("HTTP {code}")),
        Outcome::Transport(kind) => Seen::NotYet(kind.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_back_off_to_once_a_second() {
        let interval = Duration::from_millis(100);
        let delays: Vec<u64> = (0..10)
            .map(|a| poll_delay(interval, a).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [100, 100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000]
        );
        // A poll interval longer than the cap is kept as it is.
        assert_eq!(
            poll_delay(Duration::from_secs(3), 40),
            Duration::from_secs(3)
        );
    }
}
