//! `loadgen`: load for the gateway's order API, measured the way a benchmark needs it.
//!
//! Closed loop (N connections, each sending its next request when the last answered) or
//! open loop (a fixed arrival rate on a timetable, latency from each request's due time:
//! no coordinated omission). Creates and reads, fulfilled and failed orders, in exact
//! shares. Latency percentiles from HDR histograms; with `--track-orders`, every created
//! order followed to its final state. Each request is a CLIENT span of its own, so the
//! load shows in Jaeger as a real client's would.
//!
//! # Layout
//!
//! - `cli.rs`: the flags, each checked as it is parsed.
//! - `target.rs`: the gateway's address: loopback only.
//! - `mix.rs`: which request comes next. `schedule.rs`: the open loop's timetable.
//! - `requests.rs`: one request as a traced client sends it.
//! - `tracker.rs`: created orders polled until final, or lost.
//! - `stats.rs`: histograms and counters. `report.rs`: the table and the JSON.
//! - `procstat.rs`: `--cpu-of`, the CPU time and peak memory of the processes under load.
//! - `run.rs`: the two loops, the progress line, the summary.

pub mod cli;
pub mod mix;
pub mod procstat;
pub mod report;
pub mod requests;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod target;
pub mod tracker;

pub use cli::Args;
pub use report::{Summary, render};
pub use run::run;
