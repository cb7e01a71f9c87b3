//! The open loop's timetable: request `i` is due at `i / rate` seconds after the start,
//! whatever happened to the requests before it.
//!
//! Measuring each request's latency from its due time, not from when it was actually
//! sent, is what avoids coordinated omission: a stalled server delays the sends behind
//! it, and that delay is charged to the server instead of vanishing from the figures.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timetable {
    rate: f64,
}

impl Timetable {
    /// `rate` requests per second; the caller has checked it is positive and finite.
    pub fn new(rate: f64) -> Self {
        Self { rate }
    }

    /// When request `i` (from 0) is due, counted from the start of the run.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many requests fall due within `window` (those due strictly before its end),
    /// consistent with [`Timetable::offset`] even where floating point rounds.
    pub fn due_within(&self, window: Duration) -> u64 {
        let mut count = (window.as_secs_f64() * self.rate).ceil() as u64;
        while count > 0 && self.offset(count - 1) >= window {
            count -= 1;
        }
        while self.offset(count) < window {
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_even_intervals_from_the_start() {
        let table = Timetable::new(4.0);
        let offsets: Vec<Duration> = (0..5).map(|i| table.offset(i)).collect();
        assert_eq!(
            offsets,
            [0, 250, 500, 750, 1000].map(Duration::from_millis).to_vec()
        );
        // A slow rate: one every two seconds.
        assert_eq!(Timetable::new(0.5).offset(3), Duration::from_secs(6));
    }

    #[test]
    fn the_window_holds_rate_times_duration_requests() {
        assert_eq!(
            Timetable::new(1000.0).due_within(Duration::from_secs(10)),
            10_000
        );
        assert_eq!(Timetable::new(3.0).due_within(Duration::from_secs(1)), 3);
        // 0.1 × 30 is 3.0000000000000004 in floating point: still 3 due before 0.1 s.
        assert_eq!(
            Timetable::new(30.0).due_within(Duration::from_millis(100)),
            3
        );
        assert_eq!(Timetable::new(0.5).due_within(Duration::from_secs(5)), 3);
        assert_eq!(Timetable::new(7.0).due_within(Duration::ZERO), 0);
        for (rate, ms) in [(333.0, 1000), (1.5, 2000), (997.0, 12_345)] {
            let table = Timetable::new(rate);
            let window = Duration::from_millis(ms);
            let n = table.due_within(window);
            assert!(
                table.offset(n - 1) < window && table.offset(n) >= window,
                "{rate} {ms}"
            );
        }
    }
}
