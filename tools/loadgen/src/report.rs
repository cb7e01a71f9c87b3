//! The figures at the end of a run: a markdown table for people and the same figures as
//! JSON (`--json`) for scripts/bench.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::tracker::{LostOrder, Unexpected};

/// Lost orders printed in the table; `--json` has them all.
const LOST_SHOWN: usize = 20;

/// Latency percentiles in milliseconds, from an HDR histogram in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// `None` for an empty histogram: no figure rather than a zero that looks measured.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        })
    }
}

/// One kind of request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRow {
    pub label: String,
    pub count: u64,
    pub per_second: f64,
    pub errors: u64,
    pub latency_ms: Option<Percentiles>,
    /// HTTP status (`201`) or failure without one (`timeout`, `connect`) → count.
    pub status_codes: BTreeMap<String, u64>,
}

/// Open loop: how well the timetable was kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenLoop {
    pub rate: f64,
    pub max_in_flight: u32,
    /// Requests due within the run (`rate × duration`, or `--requests`).
    pub scheduled: u64,
    pub sent: u64,
    /// Sent late because `max_in_flight` requests were in flight when they fell due.
    pub waited_for_slot: u64,
    /// How late the latest request was sent after its due time (in its latency too).
    pub max_send_delay_ms: f64,
    /// Due within the run but never sent: still waiting for a slot when time ran out.
    pub overflow: u64,
}

/// `--track-orders`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Orders {
    pub created: u64,
    #[serde(rename = "final")]
    pub finished: u64,
    pub fulfilled: u64,
    pub failed: u64,
    /// Final, but not as the request asked (a fulfilled order meant to fail, or the reverse).
    pub unexpected: Vec<Unexpected>,
    pub lost: u64,
    pub lost_orders: Vec<LostOrder>,
    /// Orders seen final per second, from the first request to the last order seen final.
    pub final_per_second: f64,
    /// Orders created but not yet seen final when the load stopped.
    pub pending_at_load_end: u64,
    /// Created (the 201) → the first poll that saw the order final.
    pub latency_ms: Option<Percentiles>,
    pub poll_interval_ms: f64,
    pub deadline_seconds: f64,
}

/// `--cpu-of`: one process under load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessFigures {
    pub name: String,
    pub pid: u32,
    /// User plus system CPU time during the load (`None`: the process was gone at its end).
    pub cpu_ms: Option<u64>,
    /// Divided by every HTTP request sent during the load, tracking polls included.
    pub cpu_ms_per_request: Option<f64>,
    /// Of `cpu_ms`, the threads that export telemetry (procstat.rs names them).
    pub export_threads_cpu_ms: Option<u64>,
    /// Divided as `cpu_ms_per_request` is.
    pub export_threads_cpu_ms_per_request: Option<f64>,
    /// `VmHWM` at the end of the run.
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub target: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub connections: Option<u32>,
    /// Whether each request was a CLIENT span (telemetry exports somewhere).
    pub traced: bool,
    /// Stopped by Ctrl-C or SIGTERM before its limits.
    pub interrupted: bool,
    /// From the first request to the last answer of the load (tracking polls excluded).
    pub elapsed_seconds: f64,
    /// Creates and reads.
    pub requests: u64,
    pub requests_per_second: f64,
    pub errors: u64,
    /// Every HTTP request sent, tracking polls included: what the services served.
    pub http_requests: u64,
    pub create: RequestRow,
    pub read: RequestRow,
    /// Creates and reads together.
    pub all_latency_ms: Option<Percentiles>,
    pub poll: Option<RequestRow>,
    pub open_loop: Option<OpenLoop>,
    pub orders: Option<Orders>,
    /// Tracking polls answered before the load stopped (the rest came after).
    pub polls_during_load: u64,
    pub processes: Vec<ProcessFigures>,
    /// 201 answers without a readable order id (neither read again nor tracked).
    pub unreadable_bodies: u64,
    /// `--idempotent-retries`: how often a POST was sent again with its key.
    pub idempotent: Option<Idempotent>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Idempotent {
    pub max_retries: u32,
    /// Attempts after the first (each also counted in the POST row).
    pub retries: u64,
    /// POSTs still unanswered (or 502/503/504) after the last retry.
    pub gave_up: u64,
}

/// `3.21`, `45.6`, `789`: three significant figures or so, as HDR keeps them.
fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn percentile_cells(latency: Option<&Percentiles>) -> String {
    match latency {
        Some(p) => [p.p50, p.p90, p.p99, p.p999, p.max].map(ms).join(" | "),
        None => ["-"; 5].join(" | "),
    }
}

fn statuses(codes: &BTreeMap<String, u64>) -> String {
    if codes.is_empty() {
        return "none".to_owned();
    }
    codes
        .iter()
        .map(|(code, n)| format!("{code} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table printed at the end of a run.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let pacing = match (&summary.open_loop, summary.connections) {
        (Some(open), _) => format!(
            "open loop at {}/s (at most {} in flight)",
            open.rate, open.max_in_flight
        ),
        (None, Some(connections)) => format!("closed loop, {connections} connections"),
        (None, None) => "closed loop".to_owned(),
    };
    let _ = writeln!(
        out,
        "loadgen: {pacing}, {}, {:.2} s against {}{}\n",
        if summary.traced { "traced" } else { "untraced" },
        summary.elapsed_seconds,
        summary.target,
        if summary.interrupted {
            " (interrupted)"
        } else {
            ""
        },
    );
    let _ = writeln!(
        out,
        "| requests | count | per s | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n\
         |:--|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    let mut row =
        |label: &str, count: u64, per_second: f64, errors: u64, latency: Option<&Percentiles>| {
            let _ = writeln!(
                out,
                "| {label} | {count} | {per_second:.1} | {errors} | {} |",
                percentile_cells(latency)
            );
        };
    for r in [&summary.create, &summary.read] {
        row(
            &r.label,
            r.count,
            r.per_second,
            r.errors,
            r.latency_ms.as_ref(),
        );
    }
    row(
        "all (creates and reads)",
        summary.requests,
        summary.requests_per_second,
        summary.errors,
        summary.all_latency_ms.as_ref(),
    );
    if let Some(poll) = &summary.poll {
        row(
            &poll.label,
            poll.count,
            poll.per_second,
            poll.errors,
            poll.latency_ms.as_ref(),
        );
    }
    let _ = writeln!(
        out,
        "\nLatency counts every request, errors and timeouts included{}.",
        if summary.open_loop.is_some() {
            ", from the time it was due on the timetable"
        } else {
            ", from when it was sent (closed loop: a slow answer delays the next request)"
        }
    );
    let mut codes = vec![
        format!("POST {}", statuses(&summary.create.status_codes)),
        format!("GET {}", statuses(&summary.read.status_codes)),
    ];
    if let Some(poll) = &summary.poll {
        codes.push(format!("polls {}", statuses(&poll.status_codes)));
    }
    let _ = writeln!(out, "Status codes: {}.", codes.join("; "));
    if let Some(open) = &summary.open_loop {
        let _ = writeln!(
            out,
            "Open loop: {} due, {} sent; {} waited for a free slot; latest send {} ms after its due time; \
             {} overflow (due, never sent: {} in flight when time ran out).",
            open.scheduled,
            open.sent,
            open.waited_for_slot,
            ms(open.max_send_delay_ms),
            open.overflow,
            open.max_in_flight,
        );
    }
    if let Some(idempotent) = &summary.idempotent {
        let _ = writeln!(
            out,
            "\nIdempotency-Key on every POST: {} sent again (at most {} each), {} given up.",
            idempotent.retries, idempotent.max_retries, idempotent.gave_up
        );
    }
    if summary.unreadable_bodies > 0 {
        let _ = writeln!(
            out,
            "{} created orders answered without a readable order id: not read back or tracked.",
            summary.unreadable_bodies
        );
    }
    if !summary.processes.is_empty() {
        render_processes(&mut out, &summary.processes);
    }
    if let Some(orders) = &summary.orders {
        render_orders(&mut out, orders);
    }
    out
}

fn render_processes(out: &mut String, processes: &[ProcessFigures]) {
    let _ = writeln!(
        out,
        "\n| process | CPU ms during the load | CPU ms per request | of it, telemetry export threads | peak RSS MiB |\n|:--|--:|--:|--:|--:|"
    );
    for p in processes {
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "| {} (pid {}) | {} | {} | {} | {} |",
            p.name,
            p.pid,
            or_dash(p.cpu_ms.map(|ms| ms.to_string())),
            or_dash(p.cpu_ms_per_request.map(|ms| format!("{ms:.3}"))),
            or_dash(
                p.export_threads_cpu_ms_per_request
                    .map(|ms| format!("{ms:.3}"))
            ),
            or_dash(
                p.peak_rss_kib
                    .map(|kib| format!("{:.1}", kib as f64 / 1024.0))
            ),
        );
    }
    let _ = writeln!(
        out,
        "\nCPU per request: user + system time during the load, divided by every HTTP request \
         sent during it, tracking polls included."
    );
}

fn render_orders(out: &mut String, orders: &Orders) {
    let _ = writeln!(
        out,
        "\n| orders | created | final | FULFILLED | FAILED | unexpected | lost | final per s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n\
         |:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n\
         | created → final | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
        orders.created,
        orders.finished,
        orders.fulfilled,
        orders.failed,
        orders.unexpected.len(),
        orders.lost,
        orders.final_per_second,
        percentile_cells(orders.latency_ms.as_ref()),
    );
    let _ = writeln!(
        out,
        "\nCreated → final runs from the 201 to the first poll that saw FULFILLED or FAILED \
         (polled every {} ms at first), so it is an upper bound. Final per s counts from the first \
         request to the last order seen final. {} orders were still pending when the load stopped.",
        ms(orders.poll_interval_ms),
        orders.pending_at_load_end
    );
    for unexpected in orders.unexpected.iter().take(LOST_SHOWN) {
        let _ = writeln!(
            out,
            "Unexpected: order {} is {}, expected {:?}.",
            unexpected.order_id, unexpected.status, unexpected.expected
        );
    }
    if !orders.lost_orders.is_empty() {
        let _ = writeln!(
            out,
            "\nLost: {} orders not final within {} s of creation:",
            orders.lost, orders.deadline_seconds
        );
        for lost in orders.lost_orders.iter().take(LOST_SHOWN) {
            let _ = writeln!(
                out,
                "- order {} trace {} (last seen {})",
                lost.order_id,
                lost.trace_id.as_deref().unwrap_or("-"),
                lost.last_seen
            );
        }
        if orders.lost_orders.len() > LOST_SHOWN {
            let _ = writeln!(
                out,
                "- … and {} more (all of them in --json)",
                orders.lost_orders.len() - LOST_SHOWN
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;
    use std::time::Duration;

    /// 1..=1000 ms, one sample each: the percentiles are known.
    fn one_to_a_thousand_ms() -> Histogram<u64> {
        let mut h = stats::histogram();
        for ms in 1..=1000 {
            stats::record(&mut h, Duration::from_millis(ms));
        }
        h
    }

    fn close(actual: f64, expected: f64) -> bool {
        // HDR with 3 significant digits: within 0.1 %.
        (actual - expected).abs() <= expected * 0.001
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let p = Percentiles::of(&one_to_a_thousand_ms()).unwrap();
        for (actual, expected) in [
            (p.p50, 500.0),
            (p.p90, 900.0),
            (p.p99, 990.0),
            (p.p999, 999.0),
            (p.max, 1000.0),
            (p.mean, 500.5),
        ] {
            assert!(close(actual, expected), "{actual} vs {expected}");
        }
        assert_eq!(Percentiles::of(&stats::histogram()), None);
    }

    fn summary() -> Summary {
        let latency = Percentiles::of(&one_to_a_thousand_ms());
        let row = |label: &str, code: &str| RequestRow {
            label: label.to_owned(),
            count: 1000,
            per_second: 100.0,
            errors: 0,
            latency_ms: latency,
            status_codes: BTreeMap::from([(code.to_owned(), 1000)]),
        };
        Summary {
            target: "http://127.0.0.1:8080".to_owned(),
            mode: "open",
            connections: None,
            traced: false,
            interrupted: false,
            elapsed_seconds: 10.0,
            requests: 2000,
            requests_per_second: 200.0,
            errors: 0,
            http_requests: 2000,
            create: row("POST /api/orders", "201"),
            read: row("GET /api/orders/{id}", "200"),
            all_latency_ms: latency,
            poll: None,
            open_loop: Some(OpenLoop {
                rate: 200.0,
                max_in_flight: 64,
                scheduled: 2003,
                sent: 2000,
                waited_for_slot: 7,
                max_send_delay_ms: 12.5,
                overflow: 3,
            }),
            orders: Some(Orders {
                created: 1000,
                finished: 999,
                fulfilled: 900,
                failed: 99,
                unexpected: Vec::new(),
                lost: 1,
                lost_orders: vec![LostOrder {
                    order_id: "o-1".to_owned(),
                    trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
                    last_seen: "PENDING".to_owned(),
                }],
                final_per_second: 99.9,
                pending_at_load_end: 12,
                latency_ms: latency,
                poll_interval_ms: 100.0,
                deadline_seconds: 30.0,
            }),
            polls_during_load: 0,
            processes: vec![ProcessFigures {
                name: "gateway".to_owned(),
                pid: 42,
                cpu_ms: Some(300),
                cpu_ms_per_request: Some(0.15),
                export_threads_cpu_ms: Some(40),
                export_threads_cpu_ms_per_request: Some(0.02),
                peak_rss_kib: Some(12288),
            }],
            unreadable_bodies: 0,
            idempotent: None,
        }
    }

    #[test]
    fn the_table_has_a_row_per_kind_with_its_percentiles() {
        let table = render(&summary());
        assert!(
            table
                .contains("| POST /api/orders | 1000 | 100.0 | 0 | 500 | 900 | 990 | 999 | 1000 |"),
            "{table}"
        );
        assert!(table.contains("| GET /api/orders/{id} | 1000 |"), "{table}");
        assert!(
            table.contains("| all (creates and reads) | 2000 | 200.0 |"),
            "{table}"
        );
        assert!(
            table.contains("Status codes: POST 201 ×1000; GET 200 ×1000."),
            "{table}"
        );
        assert!(table.contains("3 overflow"), "{table}");
        assert!(
            table.contains("| gateway (pid 42) | 300 | 0.150 | 0.020 | 12.0 |"),
            "{table}"
        );
        assert!(
            table.contains("| created → final | 1000 | 999 | 900 | 99 | 0 | 1 | 99.9 |"),
            "{table}"
        );
        assert!(
            table
                .contains("- order o-1 trace 4bf92f3577b34da6a3ce929d0e0e4736 (last seen PENDING)"),
            "{table}"
        );
    }

    #[test]
    fn an_empty_kind_shows_dashes_not_zeros() {
        let mut summary = summary();
        summary.read.latency_ms = None;
        let table = render(&summary);
        assert!(table.contains("| - | - | - | - | - |"), "{table}");
    }

    #[test]
    fn the_json_names_the_figures_the_benchmark_reads() {
        let json = serde_json::to_value(summary()).unwrap();
        assert!(close(
            json["create"]["latency_ms"]["p999"].as_f64().unwrap(),
            999.0
        ));
        assert_eq!(json["orders"]["final"], 999);
        assert_eq!(json["orders"]["lost_orders"][0]["order_id"], "o-1");
        assert_eq!(json["open_loop"]["overflow"], 3);
        assert_eq!(json["http_requests"], 2000);
        assert_eq!(json["processes"][0]["cpu_ms_per_request"], 0.15);
        assert_eq!(
            json["processes"][0]["export_threads_cpu_ms_per_request"],
            0.02
        );
    }
}
