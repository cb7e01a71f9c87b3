//! Lessons about a whole process (telemetry initialised once per process, flushed before
//! it exits, printing to stdout) run in a child process: this test binary again, with
//! only the one test selected and `LESSON_CHILD` naming it. The test function is both
//! sides: the parent when the variable is not set, the child when it names the test.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CHILD_VAR: &str = "LESSON_CHILD";
const PATIENCE: Duration = Duration::from_secs(60);

/// True in the child process [`run`] started for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_VAR).is_ok_and(|value| value == test)
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the test `test` of this binary in a child process with only `env` (and
/// `LESSON_CHILD`) in its environment, and waits for it to exit.
pub fn run(test: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        // Only what the lesson sets: no OTEL_* variable of the person running the tests.
        .env_clear()
        .env(CHILD_VAR, test)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the child for {test}: {e}"));
    let stdout = collect(child.stdout.take().expect("piped stdout"));
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the child for {test} did not exit within {PATIENCE:?}; stderr:\n{}",
                join(stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    }
}

/// Reads a pipe on a thread of its own, so the child never blocks on a full pipe.
fn collect(pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    })
}

fn join(reader: JoinHandle<String>) -> String {
    reader
        .join()
        .unwrap_or_else(|_| String::from("<unreadable>"))
}

/// The value of the first `key=value` word in `output` (libtest may print the test's
/// name on the same line, before it).
pub fn value<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    output
        .split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
}
