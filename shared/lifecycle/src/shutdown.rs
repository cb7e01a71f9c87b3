//! How a service stops. The first SIGTERM (what `docker stop` sends) or Ctrl-C cancels one
//! token, and every part of the service watches it to stop taking work and finish what it
//! has. The wait is bounded: `SHUTDOWN_TIMEOUT_MS` after the first signal the service stops
//! waiting, flushes its telemetry and exits non-zero. A second signal exits at once.
//!
//! Once tokio listens for a signal, the signal's default action (ending the process) is
//! gone for the life of the process. Without the second-signal rule a service stuck in
//! its drain would ignore every further Ctrl-C until the deadline.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use settings::{SettingError, Source, millis_or};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `SHUTDOWN_TIMEOUT_MS` when unset. Below the 30 s that Kubernetes and our compose file
/// (`stop_grace_period`) give before SIGKILL, with room for the telemetry flush, which
/// the SDK bounds at 5 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// `SHUTDOWN_TIMEOUT_MS`: how long in-flight work may take after the first signal
    /// (default 20000).
    pub timeout: Duration,
}

impl ShutdownConfig {
    pub fn from_env(source: &impl Source) -> Result<Self, SettingError> {
        Ok(Self {
            timeout: millis_or(source, "SHUTDOWN_TIMEOUT_MS", DEFAULT_TIMEOUT)?,
        })
    }
}

/// A signal that asks the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: `docker stop`, `kill`, Kubernetes.
    Terminate,
}

impl Signal {
    /// The status a shell reports for a process ended by this signal (128 + its number).
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

/// The shutdown deadline passed with work still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutdown deadline of {timeout:?} passed with work still in flight; stopped waiting")]
pub struct DeadlineExceeded {
    pub timeout: Duration,
}

/// The shutdown of one service: a token cancelled on the first signal, and the deadline
/// that follows it.
#[derive(Debug)]
pub struct Shutdown {
    token: CancellationToken,
    timeout: Duration,
}

impl Shutdown {
    /// Listens for SIGTERM and Ctrl-C: the first cancels [`token`](Self::token), a second
    /// ends the process at once with 128 + the signal's number, without flushing. Call it
    /// inside the tokio runtime, before the service starts its work.
    pub fn on_signal(config: ShutdownConfig) -> Self {
        Self::new(config, os_signals(), |signal| {
            std::process::exit(signal.exit_code())
        })
    }

    /// Like [`on_signal`](Self::on_signal), with the signals read from `signals` and
    /// `exit` called on the second one instead of ending the process (tests).
    pub fn new(
        config: ShutdownConfig,
        mut signals: mpsc::Receiver<Signal>,
        exit: impl FnOnce(Signal) + Send + 'static,
    ) -> Self {
        let token = CancellationToken::new();
        let cancel = token.clone();
        let timeout = config.timeout;
        tokio::spawn(async move {
            let Some(first) = signals.recv().await else {
                return;
            };
            tracing::info!(
                signal = ?first,
                timeout_ms = timeout.as_millis(),
                "shutdown signal received; finishing in-flight work (a second signal exits at once)"
            );
            cancel.cancel();
            if let Some(second) = signals.recv().await {
                tracing::warn!(
                    signal = ?second,
                    "second shutdown signal: exiting at once, buffered spans are lost"
                );
                exit(second);
            }
        });
        Self { token, timeout }
    }

    /// Cancelled on the first signal: stop taking work, finish what is in hand.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs `work` to its end, but no longer than the timeout after the token is
    /// cancelled (by the first signal, or by the service itself when it stops on its
    /// own, as the worker does when its consumer fails). Past the deadline `work` is
    /// dropped unfinished and the caller gets [`DeadlineExceeded`]: flush telemetry, then
    /// exit non-zero.
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> Result<T, DeadlineExceeded> {
        let deadline = async {
            self.token.cancelled().await;
            tokio::time::sleep(self.timeout).await;
        };
        tokio::select! {
            output = work => Ok(output),
            () = deadline => {
                tracing::error!(
                    timeout_ms = self.timeout.as_millis(),
                    "shutdown deadline passed; no longer waiting for in-flight work"
                );
                Err(DeadlineExceeded { timeout: self.timeout })
            }
        }
    }
}

/// Ends the process, last thing in `main`: status 0, or 1 when the service failed
/// (`result`, already reported) or its telemetry could not be flushed (reported here).
///
/// An exit rather than a return from `main`, because returning drops the tokio runtime,
/// which waits for every task still running. After the shutdown deadline some are, by
/// definition (a blocking call, a Kafka client closing against a broker that is gone),
/// and the process would hang until SIGKILL.
pub fn exit<E, F: Display>(result: Result<(), E>, flushed: Result<(), F>) -> ! {
    if let Err(error) = &flushed {
        tracing::error!(%error, "telemetry flush failed");
    }
    std::process::exit(i32::from(result.is_err() || flushed.is_err()))
}

/// SIGINT and SIGTERM as they arrive, for as long as the process runs. The handlers are
/// installed before this returns, so a signal that comes a moment later is not lost to
/// the default action (which would end the process without a flush).
fn os_signals() -> mpsc::Receiver<Signal> {
    let (sender, receiver) = mpsc::channel(2);
    forward_signals(sender);
    receiver
}

#[cfg(unix)]
fn forward_signals(sender: mpsc::Sender<Signal>) {
    use tokio::signal::unix::{SignalKind, signal};

    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot listen for SIGINT or SIGTERM");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                Some(()) = interrupt.recv() => Signal::Interrupt,
                Some(()) = terminate.recv() => Signal::Terminate,
                else => return,
            };
            if sender.send(signal).await.is_err() {
                return;
            }
        }
    });
}

#[cfg(not(unix))]
fn forward_signals(sender: mpsc::Sender<Signal>) {
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if sender.send(Signal::Interrupt).await.is_err() {
                return;
            }
        }
        tracing::error!("cannot listen for Ctrl-C");
    });
}

#[cfg(test)]
mod tests {
    // The clock is paused in these tests: tokio advances it only when every task is idle,
    // so a deadline fires exactly when nothing else can happen first, with no real wait.
    use super::*;
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(20);

    struct Harness {
        shutdown: Shutdown,
        signals: mpsc::Sender<Signal>,
        exited: oneshot::Receiver<Signal>,
    }

    fn harness() -> Harness {
        let (signals, receiver) = mpsc::channel(2);
        let (exit, exited) = oneshot::channel();
        let shutdown = Shutdown::new(ShutdownConfig { timeout: TIMEOUT }, receiver, |signal| {
            let _ = exit.send(signal);
        });
        Harness {
            shutdown,
            signals,
            exited,
        }
    }

    /// Work that stops taking work on the token but never finishes what it has.
    async fn stuck(token: CancellationToken) {
        token.cancelled().await;
        std::future::pending::<()>().await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_signal_work_runs_as_long_as_it_needs() {
        let h = harness();
        let work = async {
            tokio::time::sleep(TIMEOUT * 10).await;
            "done"
        };
        assert_eq!(h.shutdown.run(work).await, Ok("done"));
        assert!(!h.shutdown.token().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_drains_in_time_returns_its_own_result() {
        let h = harness();
        let token = h.shutdown.token();
        let work = async move {
            token.cancelled().await;
            tokio::time::sleep(TIMEOUT / 2).await;
            "drained"
        };
        h.signals.send(Signal::Terminate).await.unwrap();
        assert_eq!(h.shutdown.run(work).await, Ok("drained"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_first_signal_and_stops_the_wait() {
        let h = harness();
        let work = stuck(h.shutdown.token());
        let run = h.shutdown.run(work);
        tokio::pin!(run);
        // Long before any signal: the deadline has not started.
        tokio::select! {
            _ = &mut run => panic!("the deadline fired without a signal"),
            () = tokio::time::sleep(TIMEOUT * 3) => {}
        }
        let signalled = Instant::now();
        h.signals.send(Signal::Terminate).await.unwrap();
        assert_eq!(run.await, Err(DeadlineExceeded { timeout: TIMEOUT }));
        // Virtual time, exact: the wait ended at the deadline, not before.
        assert!(signalled.elapsed() >= TIMEOUT);
        assert!(h.shutdown.token().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_exits_at_once() {
        let mut h = harness();
        let work = stuck(h.shutdown.token());
        let run = h.shutdown.run(work);
        tokio::pin!(run);
        h.signals.send(Signal::Interrupt).await.unwrap();
        h.signals.send(Signal::Terminate).await.unwrap();
        // The deadline is 20 s of virtual time away; the clock only moves once the signal
        // task has had its turn, so if the exit comes first it did not wait for anything.
        tokio::select! {
            biased;
            exited = &mut h.exited => assert_eq!(exited, Ok(Signal::Terminate)),
            _ = &mut run => panic!("the deadline fired before the second signal was handled"),
        }
        assert!(h.shutdown.token().is_cancelled());
    }

    #[test]
    fn exit_codes_are_128_plus_the_signal_number() {
        assert_eq!(Signal::Interrupt.exit_code(), 128 + 2);
        assert_eq!(Signal::Terminate.exit_code(), 128 + 15);
    }

    #[test]
    fn the_timeout_defaults_to_20_s_and_a_bad_value_names_its_variable() {
        let defaults = ShutdownConfig::from_env(&|_: &str| None).unwrap();
        assert_eq!(defaults.timeout, DEFAULT_TIMEOUT);
        let set = |k: &str| (k == "SHUTDOWN_TIMEOUT_MS").then(|| "1500".to_owned());
        assert_eq!(
            ShutdownConfig::from_env(&set).unwrap().timeout,
            Duration::from_millis(1500)
        );
        for bad in ["0", "-1", "soon"] {
            let source = |k: &str| (k == "SHUTDOWN_TIMEOUT_MS").then(|| bad.to_owned());
            let error = ShutdownConfig::from_env(&source).unwrap_err();
            assert_eq!(error.variable, "SHUTDOWN_TIMEOUT_MS", "{bad}");
        }
    }
}
