//! What the worker does when something fails: which failures are waited out, which are
//! re-checked, which send the record to the dead-letter topic, and how long to wait
//! between tries. The one place that decides it, for the gRPC report, the event decoding
//! and the dead-letter write alike. Hop: none of its own; it decides whether a record's
//! CONSUMER span ends in error.
//!
//! The rule behind the classes: a failure *about this record* (it cannot be read, the
//! order-service refuses its outcome) goes to the dead-letter topic, because no amount of
//! waiting changes it. A failure *about the service or the network* (down, slow,
//! overloaded, misdeployed) is waited out, because every record would fail the same way:
//! dead-lettering them all would empty the topic into the DLQ, and waiting loses nothing.

use std::future::Future;
use std::time::Duration;

use proto::events::EventError;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// What retrying can do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Not about this record. Retried with backoff until it works or the worker stops;
    /// never dead-lettered.
    Transient,
    /// The order is unknown, which may only mean it is not visible yet: re-checked
    /// [`RetryPolicy::rechecks`] times, then treated as permanent.
    Recheck,
    /// About this record, and retrying cannot change it: dead-lettered at once.
    Permanent,
}

/// A classified failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type}: {reason}")]
pub struct Failure {
    pub class: Class,
    /// Low-cardinality name of the failure: `error.type` on the span, `dlq.error.type` on
    /// a dead letter.
    pub error_type: &'static str,
    /// What happened, for a person.
    pub reason: String,
}

impl Failure {
    pub fn transient(error_type: &'static str, reason: impl Into<String>) -> Self {
        Self {
            class: Class::Transient,
            error_type,
            reason: reason.into(),
        }
    }

    /// A `CompleteOrder` call that failed, on either side of the wire.
    pub fn from_status(status: &tonic::Status) -> Self {
        let (class, error_type) = classify(status.code());
        Self {
            class,
            error_type,
            reason: format!("CompleteOrder {error_type}: {}", status.message()),
        }
    }
}

/// A record that is not an order event this worker can read never will be.
impl From<EventError> for Failure {
    fn from(error: EventError) -> Self {
        let error_type = match error {
            EventError::Malformed(_) => "malformed_message",
            EventError::UnknownType(_) => "unknown_event_type",
            EventError::UnknownVersion(_) => "unknown_event_version",
        };
        Self {
            class: Class::Permanent,
            error_type,
            reason: error.to_string(),
        }
    }
}

/// The class of a gRPC status code, and its name as an `error.type`. Exhaustive on
/// purpose: a code tonic adds one day must be classified by a person.
///
/// tonic 0.14 makes some of these on the client side, without the order-service saying
/// anything (measured in `reporting.rs`): its own request timeout (`ORDER_SERVICE_TIMEOUT_MS`)
/// is `CANCELLED` "Timeout expired", and so is a connection the server closes at once; a
/// refused connection is `UNAVAILABLE` "tcp connect error"; an answer that is not HTTP/2
/// is `UNKNOWN` "transport error" or `INTERNAL` "h2 protocol error".
pub fn classify(code: Code) -> (Class, &'static str) {
    match code {
        // The order-service does not know the order: it may not be visible yet.
        Code::NotFound => (Class::Recheck, "not_found"),
        // This record's outcome is refused: a bad order id, a conflicting outcome.
        Code::InvalidArgument => (Class::Permanent, "invalid_argument"),
        Code::FailedPrecondition => (Class::Permanent, "failed_precondition"),
        Code::AlreadyExists => (Class::Permanent, "already_exists"),
        Code::OutOfRange => (Class::Permanent, "out_of_range"),
        // Down, slow, overloaded, or the connection broke (see above for tonic's own).
        Code::Unavailable => (Class::Transient, "unavailable"),
        Code::DeadlineExceeded => (Class::Transient, "deadline_exceeded"),
        Code::Cancelled => (Class::Transient, "cancelled"),
        Code::ResourceExhausted => (Class::Transient, "resource_exhausted"),
        Code::Aborted => (Class::Transient, "aborted"),
        Code::Unknown => (Class::Transient, "unknown"),
        Code::Internal => (Class::Transient, "internal"),
        // Misdeployed or misconfigured: every record would fail alike until it is fixed.
        Code::Unimplemented => (Class::Transient, "unimplemented"),
        Code::Unauthenticated => (Class::Transient, "unauthenticated"),
        Code::PermissionDenied => (Class::Transient, "permission_denied"),
        Code::DataLoss => (Class::Transient, "data_loss"),
        // Not a failure at all: a status that says OK but carries no answer is a fault
        // of the exchange, not of the record.
        Code::Ok => (Class::Transient, "ok"),
    }
}

/// How long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait after a transient failure, doubled after each further one.
    pub first_backoff: Duration,
    /// `WORKER_RETRY_MAX_BACKOFF_MS`: the longest wait between two tries of a transient
    /// failure (default 5000). Also how long an outage can go unnoticed after it ends.
    pub max_backoff: Duration,
    /// How often an unknown order is re-checked before its record is dead-lettered.
    pub rechecks: u32,
    /// The first wait before a re-check, doubled for each further one.
    pub first_recheck: Duration,
}

/// 3 re-checks after 250, 500 and 1000 ms (each less up to half, for jitter): an order
/// gets about 1 to 2 seconds to become visible. In this system the event is published
/// only after the order is committed, so `NOT_FOUND` should be rare; the re-checks cover
/// a store that replicates, or a record replayed against a restored database.
pub const NOT_FOUND_RECHECKS: u32 = 3;

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            rechecks: NOT_FOUND_RECHECKS,
            first_recheck: Duration::from_millis(250),
        }
    }
}

/// Exponential backoff with jitter: each wait is a random point in the upper half of
/// its step, the step doubles up to a cap. Without jitter, workers that failed together
/// (the order-service restarted) would all come back at the same instant, again and again.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            step: first.min(max),
            max,
        }
    }

    /// The wait before the next try: between half the current step and all of it.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.checked_mul(2).unwrap_or(self.max).min(self.max);
        let half = step / 2;
        half + random_up_to(step - half)
    }
}

fn random_up_to(limit: Duration) -> Duration {
    let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Why [`retry`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GaveUp {
    /// Retrying cannot help: the record goes to the dead-letter topic.
    Permanent(Failure),
    /// `stop` was cancelled while waiting to try again: the record is left for
    /// redelivery.
    Stopped,
}

/// Runs `attempt` until it succeeds, retrying as its failure's [`Class`] says: transient
/// ones forever with [`Backoff`], a re-check up to `policy.rechecks` times. Only the
/// waits between tries are cut short by `stop`; a try in progress finishes.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    stop: &CancellationToken,
    what: &str,
    mut attempt: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut backoff = Backoff::new(policy.first_backoff, policy.max_backoff);
    let mut recheck = Backoff::new(policy.first_recheck, Duration::MAX);
    let mut rechecks_left = policy.rechecks;
    loop {
        let failure = match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        let delay = match failure.class {
            Class::Transient => backoff.next_delay(),
            Class::Recheck if rechecks_left > 0 => {
                rechecks_left -= 1;
                recheck.next_delay()
            }
            Class::Recheck | Class::Permanent => return Err(GaveUp::Permanent(failure)),
        };
        tracing::warn!(what, error.type = failure.error_type, reason = %failure.reason, ?delay, "retrying");
        tokio::select! {
            biased;
            () = stop.cancelled() => return Err(GaveUp::Stopped),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn every_grpc_code_has_its_class() {
        use Class::*;
        let expected = [
            (Code::Ok, Transient),
            (Code::Cancelled, Transient),
            (Code::Unknown, Transient),
            (Code::InvalidArgument, Permanent),
            (Code::DeadlineExceeded, Transient),
            (Code::NotFound, Recheck),
            (Code::AlreadyExists, Permanent),
            (Code::PermissionDenied, Transient),
            (Code::ResourceExhausted, Transient),
            (Code::FailedPrecondition, Permanent),
            (Code::Aborted, Transient),
            (Code::OutOfRange, Permanent),
            (Code::Unimplemented, Transient),
            (Code::Internal, Transient),
            (Code::Unavailable, Transient),
            (Code::DataLoss, Transient),
            (Code::Unauthenticated, Transient),
        ];
        for (code, class) in expected {
            assert_eq!(classify(code).0, class, "{code:?}");
        }
        // The error.type is the code's name, as the gRPC conventions spell it, in lower case.
        assert_eq!(classify(Code::FailedPrecondition).1, "failed_precondition");
        let failure = Failure::from_status(&tonic::Status::not_found("order o-1 not found"));
        assert_eq!(
            failure.reason,
            "CompleteOrder not_found: order o-1 not found"
        );
    }

    #[test]
    fn unreadable_events_are_permanent() {
        let cases: [(&[u8], &str); 3] = [
            (b"{not json", "malformed_message"),
            (
                br#"{"type":"order.deleted","order_id":"o","customer_id":"c","items":[]}"#,
                "unknown_event_type",
            ),
            (
                br#"{"type":"order.created","version":2,"order_id":"o","customer_id":"c","items":[]}"#,
                "unknown_event_version",
            ),
        ];
        for (payload, error_type) in cases {
            let Err(error) = proto::order::v1::OrderCreated::from_payload(payload) else {
                panic!("{error_type}: payload accepted");
            };
            let failure = Failure::from(error);
            assert_eq!(failure.class, Class::Permanent);
            assert_eq!(failure.error_type, error_type);
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half_and_stops_at_the_cap() {
        let first = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        for _ in 0..200 {
            let mut backoff = Backoff::new(first, max);
            let mut step = first;
            for _ in 0..10 {
                let delay = backoff.next_delay();
                assert!(
                    delay >= step / 2 && delay <= step,
                    "{delay:?} not in [{:?}, {step:?}]",
                    step / 2
                );
                step = (step * 2).min(max);
            }
        }
        // Jitter: the waits are not all the same.
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(first, max).next_delay())
            .collect();
        assert!(delays.len() > 1);
        // A cap below the first step wins; a huge step does not overflow.
        assert!(Backoff::new(first, Duration::from_millis(10)).next_delay() <= max / 100);
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        huge.next_delay();
        huge.next_delay();
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            rechecks: 3,
            first_recheck: Duration::from_millis(1),
        }
    }

    /// Fails with `failures` in turn, then succeeds; counts the tries.
    async fn run(failures: Vec<Failure>, stop: &CancellationToken) -> (Result<(), GaveUp>, u32) {
        let tries = AtomicU32::new(0);
        let result = retry(&quick(), stop, "test", || {
            let n = tries.fetch_add(1, Ordering::SeqCst) as usize;
            let outcome = failures.get(n).cloned().map_or(Ok(()), Err);
            async move { outcome }
        })
        .await;
        (result, tries.load(Ordering::SeqCst))
    }

    fn status(code: Code) -> Failure {
        Failure::from_status(&tonic::Status::new(code, "x"))
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_they_pass() {
        let stop = CancellationToken::new();
        let failures = vec![status(Code::Unavailable); 12];
        assert_eq!(run(failures, &stop).await, (Ok(()), 13));
    }

    #[tokio::test]
    async fn not_found_is_rechecked_a_bounded_number_of_times() {
        let stop = CancellationToken::new();
        let (result, tries) = run(vec![status(Code::NotFound); 10], &stop).await;
        assert_eq!(result, Err(GaveUp::Permanent(status(Code::NotFound))));
        assert_eq!(tries, 1 + 3);
        // Found on the last re-check: fine.
        assert_eq!(
            run(vec![status(Code::NotFound); 3], &stop).await,
            (Ok(()), 4)
        );
        // Transient failures in between do not use up the re-checks.
        let mixed = vec![
            status(Code::NotFound),
            status(Code::Unavailable),
            status(Code::Unavailable),
            status(Code::NotFound),
            status(Code::NotFound),
        ];
        assert_eq!(run(mixed, &stop).await, (Ok(()), 6));
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let stop = CancellationToken::new();
        let (result, tries) = run(vec![status(Code::FailedPrecondition)], &stop).await;
        assert!(
            matches!(result, Err(GaveUp::Permanent(f)) if f.error_type == "failed_precondition")
        );
        assert_eq!(tries, 1);
    }

    #[tokio::test]
    async fn stopping_ends_a_retry_between_tries() {
        let stop = CancellationToken::new();
        let tries = AtomicU32::new(0);
        let result: Result<(), GaveUp> = retry(&quick(), &stop, "test", || {
            if tries.fetch_add(1, Ordering::SeqCst) == 2 {
                stop.cancel();
            }
            async { Err(status(Code::Unavailable)) }
        })
        .await;
        assert_eq!(result, Err(GaveUp::Stopped));
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }
}
