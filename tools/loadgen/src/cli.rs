//! The flags: every one checked when parsed, so a bad value stops the tool with a message
//! naming the flag before any request is sent. Telemetry is configured by the usual
//! `OTEL_*` variables, read by the telemetry crate.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::procstat::Watched;
use crate::target::Target;

/// Closed loop when neither `--connections` nor `--rate` is given.
pub const DEFAULT_CONNECTIONS: u32 = 8;
/// Open loop's in-flight bound when `--max-in-flight` is not given.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
/// A run's length when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// The time limit of a run bounded by `--requests` alone: it always stops by itself.
pub const REQUESTS_ONLY_TIME_LIMIT: Duration = Duration::from_secs(300);
/// Polls in flight at once for `--track-orders`, when not given.
pub const DEFAULT_POLL_CONNECTIONS: u32 = 4;

const MAX_CONNECTIONS: i64 = 10_000;
const MAX_RATE: f64 = 100_000.0;
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load for the gateway's order API: closed or open loop, HDR latency percentiles, orders tracked to their final state.",
    long_about = "Load for the gateway's order API (POST /api/orders, GET /api/orders/{id}).\n\n\
        Closed loop (default): --connections N, each sending its next request when the last answered.\n\
        Open loop: --rate R requests per second on a fixed timetable; each latency counts from the \
        request's scheduled time, so a slow server cannot hide its delays (no coordinated omission).\n\n\
        Stops by itself at --duration or --requests, whichever comes first. Loopback targets only.\n\
        Every request is a CLIENT span of its own, exported as the OTEL_* variables say \
        (OTEL_TRACES_EXPORTER=none: no spans at all, no traceparent sent)."
)]
pub struct Args {
    /// The gateway's base URL; loopback only (127.0.0.0/8, [::1], localhost).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = Target::parse)]
    pub target: Target,

    /// Closed loop over N connections (the default, with 8).
    #[arg(long, value_name = "N", conflicts_with = "rate",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub connections: Option<u32>,

    /// Open loop at this many requests per second.
    #[arg(long, value_name = "PER_SECOND", allow_negative_numbers = true, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Open loop: most requests in flight at once [default: 256]. A request due while
    /// the limit is reached waits, and the wait counts in its latency; those still
    /// waiting when time is up are reported as overflow.
    #[arg(long, value_name = "N", requires = "rate",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub max_in_flight: Option<u32>,

    /// Stop after this long (e.g. 30s, 500ms, 2m) [default: 10s, or 300s with --requests].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many requests (creates and reads; tracking polls not counted).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Share of requests that read a recently created order (0 to 1).
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, allow_negative_numbers = true,
          value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Share of created orders the demo will fail (0 to 1): out of stock or payment declined.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, allow_negative_numbers = true,
          value_parser = parse_ratio)]
    pub fail_ratio: f64,

    /// Poll each created order until FULFILLED or FAILED: orders/s end to end, created→final
    /// latency, and the orders that never got there (lost).
    #[arg(long)]
    pub track_orders: bool,

    /// An order not final this long after it was created is lost [default: 30s].
    #[arg(long, value_name = "DURATION", requires = "track_orders", value_parser = parse_duration)]
    pub track_deadline: Option<Duration>,

    /// First polls of an order this often; a pending order is then polled less often, up to
    /// once a second [default: 100ms].
    #[arg(long, value_name = "DURATION", requires = "track_orders", value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,

    /// Polls in flight at once [default: 4]: a backlog of pending orders costs the
    /// gateway at most this much extra concurrency.
    #[arg(long, value_name = "N", requires = "track_orders",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub poll_connections: Option<u32>,

    /// Send each POST with an `Idempotency-Key` of its own and, after no answer, a 502,
    /// 503 or 504, send it again with the same key and body, up to N more times (backoff
    /// from 250 ms, doubled, at most 4 s): what a careful client does. The order-service
    /// must then create one order per key, however often a request was sent.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub idempotent_retries: Option<u32>,

    /// Give up on one request after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// No progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,

    /// Also report this process's CPU time over the load's window, per request, and its
    /// peak memory (Linux /proc; repeatable: --cpu-of gateway=4242 --cpu-of worker=4243).
    #[arg(long = "cpu-of", value_name = "NAME=PID", value_parser = Watched::parse)]
    pub cpu_of: Vec<Watched>,
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Closed { connections: u32 },
    Open { rate: f64, max_in_flight: u32 },
}

/// `--track-orders` and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracking {
    pub deadline: Duration,
    pub poll_interval: Duration,
    pub poll_connections: u32,
}

impl Args {
    pub fn load(&self) -> Load {
        match self.rate {
            Some(rate) => Load::Open {
                rate,
                max_in_flight: self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            },
            None => Load::Closed {
                connections: self.connections.unwrap_or(DEFAULT_CONNECTIONS),
            },
        }
    }

    /// When the load stops at the latest.
    pub fn time_limit(&self) -> Duration {
        match (self.duration, self.requests) {
            (Some(duration), _) => duration,
            (None, Some(_)) => REQUESTS_ONLY_TIME_LIMIT,
            (None, None) => DEFAULT_DURATION,
        }
    }

    pub fn tracking(&self) -> Option<Tracking> {
        self.track_orders.then(|| Tracking {
            deadline: self.track_deadline.unwrap_or(Duration::from_secs(30)),
            poll_interval: self.poll_interval.unwrap_or(Duration::from_millis(100)),
            poll_connections: self.poll_connections.unwrap_or(DEFAULT_POLL_CONNECTIONS),
        })
    }
}

/// `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as 30s, 500ms or 2m";
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number.parse().map_err(|_| EXPECTED.to_owned())?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(EXPECTED.to_owned()),
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|_| EXPECTED.to_owned())?;
    if duration.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    if duration > MAX_DURATION {
        return Err("must be at most 24h".to_owned());
    }
    Ok(duration)
}

fn parse_ratio(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("expected a ratio from 0 to 1, such as 0.2".to_owned()),
    }
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE => Ok(rate),
        _ => Err(format!(
            "expected requests per second, more than 0 and at most {MAX_RATE}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    fn refused(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_a_short_closed_loop_on_the_local_gateway() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.target.base(), "http://127.0.0.1:8080");
        assert_eq!(args.load(), Load::Closed { connections: 8 });
        assert_eq!(args.time_limit(), Duration::from_secs(10));
        assert_eq!(args.tracking(), None);
        assert_eq!(args.timeout, Duration::from_secs(10));
    }

    #[test]
    fn rate_selects_the_open_loop_and_limits_combine() {
        let args = parse(&[
            "--rate",
            "500",
            "--max-in-flight",
            "64",
            "--requests",
            "100",
        ])
        .unwrap();
        assert_eq!(
            args.load(),
            Load::Open {
                rate: 500.0,
                max_in_flight: 64
            }
        );
        assert_eq!(args.time_limit(), REQUESTS_ONLY_TIME_LIMIT);
        let args = parse(&["--rate", "0.5", "--duration", "1m", "--track-orders"]).unwrap();
        assert_eq!(args.time_limit(), Duration::from_secs(60));
        assert_eq!(args.tracking().unwrap().deadline, Duration::from_secs(30));
    }

    #[test]
    fn every_bad_flag_is_named_with_what_would_do() {
        for (args, says) in [
            (&["--target", "http://10.1.2.3:8080"][..], "loopback"),
            (&["--target", "https://127.0.0.1"], "https"),
            (&["--connections", "0"], "--connections"),
            (&["--rate", "0"], "more than 0"),
            (&["--rate", "fast"], "requests per second"),
            (&["--rate", "inf"], "requests per second"),
            (&["--rate", "-5"], "more than 0"),
            (&["--read-ratio", "1.5"], "ratio from 0 to 1"),
            (&["--fail-ratio", "-0.1"], "ratio from 0 to 1"),
            (&["--duration", "soon"], "30s, 500ms or 2m"),
            (&["--duration", "0s"], "more than zero"),
            (&["--duration", "10d"], "30s, 500ms or 2m"),
            (&["--requests", "0"], "--requests"),
            (&["--cpu-of", "gateway"], "NAME=PID"),
        ] {
            let message = refused(args);
            assert!(message.contains(says), "{args:?}: {message}");
        }
    }

    #[test]
    fn flags_that_do_not_fit_together_are_refused() {
        for (args, kind) in [
            (
                &["--rate", "10", "--connections", "4"][..],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--max-in-flight", "4"],
                ErrorKind::MissingRequiredArgument,
            ),
            (
                &["--track-deadline", "5s"],
                ErrorKind::MissingRequiredArgument,
            ),
            (
                &["--poll-interval", "5ms"],
                ErrorKind::MissingRequiredArgument,
            ),
            (&["--unknown"], ErrorKind::UnknownArgument),
        ] {
            assert_eq!(parse(args).unwrap_err().kind(), kind, "{args:?}");
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        for (raw, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("2m", 120_000),
            ("1.5", 1500),
            ("1h", 3_600_000),
        ] {
            assert_eq!(
                parse_duration(raw).unwrap(),
                Duration::from_millis(ms),
                "{raw}"
            );
        }
        for bad in ["", "s", "-1s", "1x", "nan", "25h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
