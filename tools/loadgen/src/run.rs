//! A run: the closed or open loop until its limits, then the tracked orders until final,
//! a progress line on stderr every second, and the summary at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{Args, Load};
use crate::mix::{Mix, Plan};
use crate::procstat::CpuMs;
use crate::report::{
    Idempotent, OpenLoop, Orders, Percentiles, ProcessFigures, RequestRow, Summary,
};
use crate::requests::Client;
use crate::schedule::Timetable;
use crate::stats::{Kind, Outcome, Stats};
use crate::tracker::{Created, Inbox, Tracked, Tracker};

/// What a run shares between its tasks.
#[derive(Debug)]
struct Shared {
    client: Client,
    stats: Arc<Stats>,
    mix: Mix,
    tracker: Option<Inbox>,
    /// `--idempotent-retries`: each POST carries a key of its own and is sent again this
    /// many times at most.
    idempotent_retries: Option<u32>,
}

/// The body of a 201.
#[derive(Deserialize)]
struct CreatedBody {
    order_id: String,
    trace_id: Option<String>,
}

/// Runs the load `args` describe until its limits or `cancel` (Ctrl-C), then waits for
/// tracked orders. `traced`: make each request a CLIENT span (telemetry exports somewhere).
pub async fn run(args: &Args, traced: bool, cancel: CancellationToken) -> anyhow::Result<Summary> {
    let load = args.load();
    let tracking = args.tracking();
    let pool = match load {
        Load::Closed { connections } => connections,
        Load::Open { max_in_flight, .. } => max_in_flight,
    } + tracking.map_or(0, |t| t.poll_connections);
    let client = Client::new(args.target.clone(), args.timeout, pool as usize, traced)?;
    let stats = Arc::new(Stats::default());
    let (tracker, inbox) = match tracking {
        Some(settings) => {
            let (tracker, inbox) =
                Tracker::spawn(client.clone(), settings, stats.clone(), cancel.clone());
            (Some(tracker), Some(inbox))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        client,
        stats: stats.clone(),
        mix: Mix::new(args.read_ratio, args.fail_ratio),
        tracker: inbox,
        idempotent_retries: args.idempotent_retries,
    });

    // `--cpu-of`: a process that cannot be read now is a mistake in the flags.
    let cpu_before = args
        .cpu_of
        .iter()
        .map(|process| process.cpu_ms())
        .collect::<Result<Vec<CpuMs>, String>>()
        .map_err(anyhow::Error::msg)?;

    let start = Instant::now();
    let progress_done = CancellationToken::new();
    let progress = (!args.no_progress).then(|| {
        tokio::spawn(progress(
            stats.clone(),
            start,
            matches!(load, Load::Open { .. }),
            tracking.is_some(),
            progress_done.clone(),
        ))
    });

    let window = args.time_limit();
    let open_loop = match load {
        Load::Closed { connections } => {
            closed_loop(&shared, connections, start + window, args.requests, &cancel).await;
            None
        }
        Load::Open {
            rate,
            max_in_flight,
        } => Some(
            open_loop(
                &shared,
                rate,
                max_in_flight,
                start,
                window,
                args.requests,
                &cancel,
            )
            .await,
        ),
    };
    let load_elapsed = start.elapsed();
    let pending_at_load_end = stats.live.pending_orders.load(Ordering::Relaxed).max(0) as u64;
    let polls_during_load = stats.live.done[Kind::Poll as usize].load(Ordering::Relaxed);
    // A process that exited meanwhile has no figure; the others still do.
    let cpu_during_load: Vec<Option<CpuMs>> = args
        .cpu_of
        .iter()
        .zip(&cpu_before)
        .map(|(process, before)| process.cpu_ms().ok().map(|after| after.since(*before)))
        .collect();

    // The load's tasks have finished; dropping the last inbox tells the tracker that no
    // more orders are coming.
    drop(shared);
    let tracked = match tracker {
        Some(tracker) => Some(tracker.finish().await?),
        None => None,
    };
    let total_elapsed = start.elapsed();
    progress_done.cancel();
    if let Some(progress) = progress {
        let _ = progress.await;
    }

    let processes = args
        .cpu_of
        .iter()
        .zip(cpu_during_load)
        .map(|(process, cpu_ms)| (process, cpu_ms, process.peak_rss_kib()))
        .collect();

    Ok(summarise(SummaryInputs {
        args,
        traced,
        interrupted: cancel.is_cancelled(),
        stats: &stats,
        load_elapsed,
        total_elapsed,
        open_loop,
        tracked,
        pending_at_load_end,
        polls_during_load,
        processes,
        start,
    }))
}

/// Each of `connections` tasks sends its next request when the last one answered, until
/// `end`, the request budget, or `cancel`. A request in flight at the end finishes.
async fn closed_loop(
    shared: &Arc<Shared>,
    connections: u32,
    end: Instant,
    requests: Option<u64>,
    cancel: &CancellationToken,
) {
    let budget = Arc::new(AtomicU64::new(requests.unwrap_or(u64::MAX)));
    let tasks = TaskTracker::new();
    for _ in 0..connections {
        let (shared, budget, cancel) = (shared.clone(), budget.clone(), cancel.clone());
        tasks.spawn(async move {
            while !cancel.is_cancelled() && Instant::now() < end && take(&budget) {
                let plan = shared.mix.next();
                execute(&shared, plan, Instant::now()).await;
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Takes one request from the budget; false once it is spent.
fn take(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Sends request `i` at its due time on the timetable, each in a task of its own, with at
/// most `max_in_flight` in flight. A request due while the limit is reached waits for a
/// slot and its latency still counts from its due time; one still waiting when the
/// window closes is overflow.
async fn open_loop(
    shared: &Arc<Shared>,
    rate: f64,
    max_in_flight: u32,
    start: Instant,
    window: Duration,
    requests: Option<u64>,
    cancel: &CancellationToken,
) -> OpenLoop {
    let timetable = Timetable::new(rate);
    let scheduled = timetable
        .due_within(window)
        .min(requests.unwrap_or(u64::MAX));
    let slots = Arc::new(Semaphore::new(max_in_flight as usize));
    let tasks = TaskTracker::new();
    let (mut sent, mut waited, mut max_delay) = (0u64, 0u64, Duration::ZERO);
    let mut stopped_early = false;
    let end = start + window;
    for i in 0..scheduled {
        let due = start + timetable.offset(i);
        tokio::select! {
            biased;
            () = cancel.cancelled() => { stopped_early = true; break; }
            () = tokio::time::sleep_until(due) => {}
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                waited += 1;
                shared.stats.live.waiting.fetch_add(1, Ordering::Relaxed);
                let permit = tokio::select! {
                    biased;
                    () = cancel.cancelled() => { stopped_early = true; None }
                    () = tokio::time::sleep_until(end) => None,
                    permit = slots.clone().acquire_owned() => permit.ok(),
                };
                shared.stats.live.waiting.fetch_sub(1, Ordering::Relaxed);
                match permit {
                    Some(permit) => permit,
                    None => break,
                }
            }
        };
        max_delay = max_delay.max(due.elapsed());
        sent += 1;
        let (shared, plan) = (shared.clone(), shared.mix.next());
        tasks.spawn(async move {
            execute(&shared, plan, due).await;
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
    OpenLoop {
        rate,
        max_in_flight,
        scheduled,
        sent,
        waited_for_slot: waited,
        max_send_delay_ms: max_delay.as_secs_f64() * 1000.0,
        // Interrupted runs did not overflow: they were told to stop.
        overflow: if stopped_early { 0 } else { scheduled - sent },
    }
}

/// Sends one request and records it; latency counts from `since` (the due time in the
/// open loop, the send time in the closed loop).
async fn execute(shared: &Shared, plan: Plan, since: Instant) {
    let live = &shared.stats.live;
    live.in_flight.fetch_add(1, Ordering::Relaxed);
    match plan {
        Plan::Create { body, expected } => {
            let reply = create(shared, body, since).await;
            if reply.outcome == Outcome::Status(201) {
                match serde_json::from_slice::<CreatedBody>(&reply.body) {
                    Ok(created) => {
                        shared.mix.remember(created.order_id.clone());
                        if let Some(tracker) = &shared.tracker {
                            tracker.track(Created {
                                order_id: created.order_id,
                                trace_id: created.trace_id,
                                at: Instant::now(),
                                expected,
                            });
                        }
                    }
                    Err(_) => shared.stats.unreadable_body(),
                }
            }
        }
        Plan::Read { order_id } => {
            let reply = shared.client.get_order(&order_id).await;
            shared
                .stats
                .record(Kind::Read, reply.outcome, since.elapsed());
        }
    }
    live.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// `POST /api/orders`, every attempt recorded; with `--idempotent-retries`, sent again
/// with the same key and body after no answer, a 502, 503 or 504, until answered otherwise
/// or the retries are spent. Returns the last answer.
async fn create(shared: &Shared, body: String, since: Instant) -> crate::requests::Reply {
    let Some(retries) = shared.idempotent_retries else {
        let reply = shared.client.create(body, None).await;
        shared
            .stats
            .record(Kind::Create, reply.outcome, since.elapsed());
        return reply;
    };
    let key = uuid::Uuid::new_v4().to_string();
    let mut backoff = RETRY_FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        let reply = shared.client.create(body.clone(), Some(&key)).await;
        shared
            .stats
            .record(Kind::Create, reply.outcome, since.elapsed());
        let retryable = matches!(
            reply.outcome,
            Outcome::Transport(_) | Outcome::Status(502..=504)
        );
        if !retryable {
            return reply;
        }
        if attempt == retries {
            shared.stats.live.gave_up.fetch_add(1, Ordering::Relaxed);
            return reply;
        }
        attempt += 1;
        shared.stats.live.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX_BACKOFF);
    }
}

const RETRY_FIRST_BACKOFF: Duration = Duration::from_millis(250);
const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(4);

/// One line a second on stderr: rates over the last second, errors, what is in flight.
async fn progress(
    stats: Arc<Stats>,
    start: Instant,
    open: bool,
    tracking: bool,
    done: CancellationToken,
) {
    let live = &stats.live;
    let snapshot = || {
        (
            Kind::ALL.map(|k| live.done[k as usize].load(Ordering::Relaxed)),
            live.finals.load(Ordering::Relaxed),
        )
    };
    let mut last = snapshot();
    let mut ticks =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = done.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = snapshot();
        let [creates, reads, polls] = [0, 1, 2].map(|i| now.0[i] - last.0[i]);
        let mut line = format!(
            "loadgen {:>4}s  POST {creates}/s  GET {reads}/s  errors {}  in flight {}",
            start.elapsed().as_secs(),
            live.errors.load(Ordering::Relaxed),
            live.in_flight.load(Ordering::Relaxed),
        );
        if open {
            line.push_str(&format!(
                "  waiting {}",
                live.waiting.load(Ordering::Relaxed)
            ));
        }
        if tracking {
            line.push_str(&format!(
                "  | orders final {}/s, pending {}, polls {polls}/s",
                now.1 - last.1,
                live.pending_orders.load(Ordering::Relaxed),
            ));
        }
        eprintln!("{line}");
        last = now;
    }
}

struct SummaryInputs<'a> {
    args: &'a Args,
    traced: bool,
    interrupted: bool,
    stats: &'a Stats,
    load_elapsed: Duration,
    total_elapsed: Duration,
    open_loop: Option<OpenLoop>,
    tracked: Option<Tracked>,
    pending_at_load_end: u64,
    polls_during_load: u64,
    /// `--cpu-of`: each process, its CPU time during the load, its peak RSS in KiB.
    processes: Vec<(&'a crate::procstat::Watched, Option<CpuMs>, Option<u64>)>,
    start: Instant,
}

fn summarise(inputs: SummaryInputs<'_>) -> Summary {
    let SummaryInputs { args, stats, .. } = inputs;
    let per_second = |count: u64, elapsed: Duration| {
        let seconds = elapsed.as_secs_f64();
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    };
    let row = |kind: Kind, elapsed: Duration| {
        let figures = stats.figures(kind);
        RequestRow {
            label: kind.label().to_owned(),
            count: figures.count,
            per_second: per_second(figures.count, elapsed),
            errors: figures.errors,
            latency_ms: Percentiles::of(&figures.latency),
            status_codes: figures.statuses,
        }
    };
    let (create, read) = (
        row(Kind::Create, inputs.load_elapsed),
        row(Kind::Read, inputs.load_elapsed),
    );
    let all = {
        let mut all = stats.figures(Kind::Create).latency;
        // Same bounds for every histogram here, so adding cannot go out of range.
        all.add(&stats.figures(Kind::Read).latency)
            .ok()
            .map(|()| all)
    };
    let poll = inputs
        .tracked
        .as_ref()
        .map(|_| row(Kind::Poll, inputs.total_elapsed));
    let requests = create.count + read.count;
    let orders = inputs
        .tracked
        .as_ref()
        .zip(args.tracking())
        .map(|(tracked, settings)| Orders {
            created: tracked.created,
            finished: tracked.fulfilled + tracked.failed,
            fulfilled: tracked.fulfilled,
            failed: tracked.failed,
            unexpected: tracked.unexpected.clone(),
            lost: tracked.lost.len() as u64,
            lost_orders: tracked.lost.clone(),
            final_per_second: tracked.last_final.map_or(0.0, |last| {
                per_second(tracked.fulfilled + tracked.failed, last - inputs.start)
            }),
            pending_at_load_end: inputs.pending_at_load_end,
            latency_ms: Percentiles::of(&tracked.latency),
            poll_interval_ms: settings.poll_interval.as_secs_f64() * 1000.0,
            deadline_seconds: settings.deadline.as_secs_f64(),
        });
    let served_during_load = requests + inputs.polls_during_load;
    let processes = inputs
        .processes
        .iter()
        .map(|(process, cpu, peak_rss_kib)| {
            let per_request =
                |ms: u64| (served_during_load > 0).then(|| ms as f64 / served_during_load as f64);
            ProcessFigures {
                name: process.name.clone(),
                pid: process.pid,
                cpu_ms: cpu.map(|cpu| cpu.total),
                cpu_ms_per_request: cpu.and_then(|cpu| per_request(cpu.total)),
                export_threads_cpu_ms: cpu.map(|cpu| cpu.export_threads),
                export_threads_cpu_ms_per_request: cpu
                    .and_then(|cpu| per_request(cpu.export_threads)),
                peak_rss_kib: *peak_rss_kib,
            }
        })
        .collect();
    Summary {
        target: args.target.base().to_owned(),
        mode: if inputs.open_loop.is_some() {
            "open"
        } else {
            "closed"
        },
        connections: match args.load() {
            Load::Closed { connections } => Some(connections),
            Load::Open { .. } => None,
        },
        traced: inputs.traced,
        interrupted: inputs.interrupted,
        elapsed_seconds: inputs.load_elapsed.as_secs_f64(),
        requests,
        requests_per_second: per_second(requests, inputs.load_elapsed),
        errors: create.errors + read.errors,
        http_requests: requests + poll.as_ref().map_or(0, |p| p.count),
        all_latency_ms: all.as_ref().and_then(Percentiles::of),
        create,
        read,
        poll,
        open_loop: inputs.open_loop,
        orders,
        polls_during_load: inputs.polls_during_load,
        processes,
        unreadable_bodies: stats.unreadable(),
        idempotent: args.idempotent_retries.map(|max_retries| Idempotent {
            max_retries,
            retries: stats.live.retries.load(Ordering::Relaxed),
            gave_up: stats.live.gave_up.load(Ordering::Relaxed),
        }),
    }
}
