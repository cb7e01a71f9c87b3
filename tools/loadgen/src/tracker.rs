//! `--track-orders`: follows every created order to FULFILLED or FAILED by polling
//! `GET /api/orders/{id}`, which measures the whole pipeline (gateway, order-service,
//! outbox, Kafka, worker) rather than the HTTP answer alone.
//!
//! An order's first two polls come at the poll interval, later ones ever less often (up
//! to a second apart), the most overdue first. Polls run on at most `poll_connections`
//! connections and within a budget that follows the pipeline: two polls per order
//! created and four per order seen final over the last second, one per pending order
//! every ten seconds, plus a floor. So a backlog of pending orders (a worker that cannot
//! keep up) is polled at about the pace orders leave it, each order still looked at
//! every ten seconds or so, instead of flooding the gateway with GETs that can only
//! answer PENDING. An order that is not final by its deadline is **lost**, and reported
//! by id and trace id; the poll at the deadline, which decides that, never waits for
//! the budget.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
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

/// Polls a second that need no reason: enough to notice a stalled pipeline moving again.
const POLL_FLOOR_PER_SECOND: f64 = 50.0;
/// A healthy pipeline needs about two polls per order: one too early, one that sees it final.
const POLLS_PER_CREATED: f64 = 2.0;
/// A backlog needs polls only as fast as orders leave it, with room to notice a speed-up.
const POLLS_PER_FINAL: f64 = 4.0;
/// Every pending order gets a poll at least this often, whatever else the budget says:
/// orders finish out of creation order (one consumer, several partitions), and one
/// finished among many pending ones must still be seen.
const LONGEST_UNPOLLED: Duration = Duration::from_secs(10);
/// The budget may be spent this far ahead (a quarter of a second's worth).
const BURST: f64 = 0.25;

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

/// The poll budget: a token bucket whose rate follows the orders created and the orders
/// seen final over the last second, and the orders pending.
#[derive(Debug)]
struct Pacer {
    started: Instant,
    last: Instant,
    tokens: f64,
    created: VecDeque<Instant>,
    finals: VecDeque<Instant>,
}

impl Pacer {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            last: now,
            tokens: 1.0,
            created: VecDeque::new(),
            finals: VecDeque::new(),
        }
    }

    fn created(&mut self, at: Instant) {
        self.created.push_back(at);
    }

    fn finished(&mut self, at: Instant) {
        self.finals.push_back(at);
    }

    /// Polls per second allowed at `now`, with `pending` orders not yet final.
    fn rate(&mut self, now: Instant, pending: usize) -> f64 {
        const WINDOW: Duration = Duration::from_secs(1);
        for events in [&mut self.created, &mut self.finals] {
            while events
                .front()
                .is_some_and(|&at| now.duration_since(at) > WINDOW)
            {
                events.pop_front();
            }
        }
        // In the first second the counts cover only the time since the start.
        let span = now
            .duration_since(self.started)
            .clamp(Duration::from_millis(100), WINDOW)
            .as_secs_f64();
        POLL_FLOOR_PER_SECOND
            + (POLLS_PER_CREATED * self.created.len() as f64
                + POLLS_PER_FINAL * self.finals.len() as f64)
                / span
            + pending as f64 / LONGEST_UNPOLLED.as_secs_f64()
    }

    fn refill(&mut self, now: Instant, pending: usize) -> f64 {
        let rate = self.rate(now, pending);
        let earned = now.duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min((rate * BURST).max(1.0));
        self.last = now;
        rate
    }

    /// Spends one poll of the budget, if there is one.
    fn try_take(&mut self, now: Instant, pending: usize) -> bool {
        self.refill(now, pending);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the budget next allows a poll.
    fn next_token(&mut self, now: Instant, pending: usize) -> Instant {
        let rate = self.refill(now, pending);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / rate)
        }
    }
}

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
    // Orders waiting for their next poll, most overdue first; apart, those whose next
    // poll is the one at their deadline, which must not queue behind the budget.
    let mut waiting: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut at_deadline: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut polls: JoinSet<(Pending, Seen)> = JoinSet::new();
    let mut pacer = Pacer::new(Instant::now());
    let mut input_open = true;
    let mut seq = 0;
    let slots = settings.poll_connections as usize;

    loop {
        let now = Instant::now();
        let pending_orders = waiting.len() + at_deadline.len() + polls.len();
        let mut over_budget = false;
        while polls.len() < slots {
            let is_due =
                |heap: &BinaryHeap<Reverse<Pending>>| heap.peek().is_some_and(|p| p.0.due <= now);
            // The poll at the deadline decides between final and lost: it never waits.
            let next = if is_due(&at_deadline) {
                at_deadline.pop()
            } else if is_due(&waiting) {
                if !pacer.try_take(now, pending_orders) {
                    over_budget = true;
                    break;
                }
                waiting.pop()
            } else {
                None
            };
            let Some(Reverse(pending)) = next else {
                break;
            };
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
        if !input_open && waiting.is_empty() && at_deadline.is_empty() && polls.is_empty() {
            break;
        }
        // With a connection free: wake when the next poll falls due, or when the budget
        // allows the one already due.
        let wake = if polls.len() >= slots {
            None
        } else {
            let budget = over_budget.then(|| pacer.next_token(now, pending_orders));
            let due = [&waiting, &at_deadline]
                .into_iter()
                .filter_map(|heap| heap.peek().map(|p| p.0.due))
                .filter(|&due| !over_budget || due > now);
            budget.into_iter().chain(due).min()
        };
        tokio::select! {
            biased;
            () = cancel.cancelled(), if !waiting.is_empty() || !at_deadline.is_empty() || input_open => {
                // Stop taking orders; what waits for a poll is lost, and polls in flight
                // return Interrupted by themselves.
                input_open = false;
                received.close();
                while let Ok(order) = received.try_recv() {
                    result.created += 1;
                    stats.live.pending_orders.fetch_add(1, Atomic::Relaxed);
                    lose(&mut result, &stats, order, "interrupted");
                }
                for Reverse(pending) in waiting.drain().chain(at_deadline.drain()) {
                    lose(&mut result, &stats, pending.order, "interrupted");
                }
            }
            order = received.recv(), if input_open => match order {
                Some(order) => {
                    result.created += 1;
                    pacer.created(Instant::now());
                    stats.live.pending_orders.fetch_add(1, Atomic::Relaxed);
                    let deadline = order.at + settings.deadline;
                    let due = (order.at + settings.poll_interval).min(deadline);
                    schedule(&mut waiting, &mut at_deadline, Pending { order, due, deadline, attempts: 0, seq });
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
                        pacer.finished(now);
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
                        schedule(&mut waiting, &mut at_deadline, pending);
                    }
                    Seen::Interrupted => lose(&mut result, &stats, pending.order, "interrupted"),
                }
            }
            () = sleep_until(wake), if wake.is_some() => {}
        }
    }
    result
}

/// Queues an order for its next poll: the one at its deadline apart from the others.
fn schedule(
    waiting: &mut BinaryHeap<Reverse<Pending>>,
    at_deadline: &mut BinaryHeap<Reverse<Pending>>,
    pending: Pending,
) {
    if pending.due >= pending.deadline {
        at_deadline.push(Reverse(pending));
    } else {
        waiting.push(Reverse(pending));
    }
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
    fn the_budget_follows_orders_created_and_finished() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pacer = Pacer::new(t0);
        assert_eq!(pacer.rate(at(2000), 0), POLL_FLOOR_PER_SECOND);
        // 1000 pending: each polled at least every 10 s.
        assert_eq!(pacer.rate(at(2000), 1000), POLL_FLOOR_PER_SECOND + 100.0);
        let mut pacer = Pacer::new(t0);
        for _ in 0..100 {
            pacer.created(at(400));
        }
        for _ in 0..10 {
            pacer.finished(at(450));
        }
        // Half a second in: 100 created and 10 final in 0.5 s.
        assert_eq!(
            pacer.rate(at(500), 0),
            50.0 + (2.0 * 100.0 + 4.0 * 10.0) / 0.5
        );
        // A second later the window has moved past them: the floor again.
        assert_eq!(pacer.rate(at(1500), 0), POLL_FLOOR_PER_SECOND);
    }

    #[test]
    fn the_budget_is_spent_and_earned_back_at_its_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        // At the floor of 50/s: one poll now, the next 20 ms later.
        assert!(pacer.try_take(t0, 0));
        assert!(!pacer.try_take(t0, 0));
        let next = pacer.next_token(t0, 0);
        assert_eq!(next.duration_since(t0).as_millis(), 20);
        assert!(pacer.try_take(next, 0));
        // Unspent budget is kept only a quarter of a second's worth.
        let later = t0 + Duration::from_secs(10);
        let taken = (0..100).take_while(|_| pacer.try_take(later, 0)).count();
        assert_eq!(taken, 12);
    }

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
