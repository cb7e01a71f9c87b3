//! `--cpu-of NAME=PID`: the CPU time and peak memory of the processes under load, read
//! from Linux's `/proc` at the exact start and end of the load, so a benchmark gets the
//! services' cost per request over the load's window and not over the tracking that
//! follows it (a backlog's polls would otherwise swamp the figure). Of that CPU time, the
//! share of the threads that export telemetry is read too: what the export itself
//! costs (batching, OTLP encoding, sending), apart from making the spans.

use std::path::PathBuf;

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`): 100 on every architecture
/// Linux runs on today (it is part of the kernel's user-space ABI, unlike `HZ`).
const USER_HZ: u64 = 100;

/// How the threads that export telemetry start their names (`/proc` keeps the first 15
/// bytes): the SDK's batch span processor and periodic metric reader
/// (`OpenTelemetry.Traces.BatchProcessor`, `OpenTelemetry.Metrics.PeriodicReader`) and
/// the runtime of the blocking HTTP client the OTLP/HTTP exporters send with
/// (`reqwest-internal-sync-runtime`).
const EXPORT_THREAD_PREFIXES: [&str; 2] = ["OpenTelemetry", "reqwest-interna"];

/// CPU time so far, in milliseconds: the whole process, and of it the threads that export
/// telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMs {
    pub total: u64,
    pub export_threads: u64,
}

impl CpuMs {
    /// The time spent between `earlier` and this reading.
    pub fn since(self, earlier: CpuMs) -> CpuMs {
        CpuMs {
            total: self.total.saturating_sub(earlier.total),
            // An export thread that ended meanwhile took its time with it.
            export_threads: self.export_threads.saturating_sub(earlier.export_threads),
        }
    }
}

/// A process to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl Watched {
    /// `NAME=PID`, e.g. `gateway=4242`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (name, pid) = raw
            .split_once('=')
            .ok_or("expected NAME=PID, such as gateway=4242")?;
        let pid = pid
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{pid:?} is not a process id; expected NAME=PID"))?;
        if name.trim().is_empty() {
            return Err("expected NAME=PID with a name, such as gateway=4242".to_owned());
        }
        Ok(Self {
            name: name.trim().to_owned(),
            pid,
        })
    }

    fn path(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{file}", self.pid))
    }

    /// User plus system CPU time so far: the process's, and its export threads'.
    pub fn cpu_ms(&self) -> Result<CpuMs, String> {
        let path = self.path("stat");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{} (pid {}): cannot read {}: {e}",
                self.name,
                self.pid,
                path.display()
            )
        })?;
        let total = cpu_ticks(&text)
            .ok_or_else(|| format!("{}: unexpected format of {}", self.name, path.display()))?;
        Ok(CpuMs {
            total: total * 1000 / USER_HZ,
            export_threads: self.export_thread_ticks() * 1000 / USER_HZ,
        })
    }

    /// The export threads' CPU ticks. A thread that ends while the list is read is left
    /// out: it has nothing more to add.
    fn export_thread_ticks(&self) -> u64 {
        let Ok(threads) = std::fs::read_dir(self.path("task")) else {
            return 0;
        };
        threads
            .filter_map(|thread| std::fs::read_to_string(thread.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                thread_name(stat).is_some_and(|name| {
                    EXPORT_THREAD_PREFIXES
                        .iter()
                        .any(|prefix| name.starts_with(prefix))
                })
            })
            .filter_map(|stat| cpu_ticks(&stat))
            .sum()
    }

    /// The peak resident set size (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.path("status")).ok()?;
        vm_hwm_kib(&text)
    }
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name in
/// field 2 is in parentheses and may itself hold spaces and parentheses, so fields are
/// counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The name in parentheses in field 2 of a `/proc/.../stat` line.
fn thread_name(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_past_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 1000 100 200";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_the_thread_name() {
        let stat = "4243 (OpenTelemetry.T) S 1 4242 4242 0 -1 4194560 1234 0 0 0 25 5 0 0";
        assert_eq!(thread_name(stat), Some("OpenTelemetry.T"));
        assert_eq!(thread_name("4244 (a (b)) S"), Some("a (b)"));
        assert_eq!(thread_name("garbage"), None);
    }

    #[test]
    fn counts_the_cpu_of_export_threads_only() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        let me = Watched::parse(&format!("self={}", std::process::id())).unwrap();
        let before = me.cpu_ms().unwrap();
        // A thread of the given name spins until the CPU spent since `before` is enough;
        // returns that reading, taken while the thread still runs (an ended thread's time
        // leaves the thread list).
        let spin_until = |name: &str, enough: &dyn Fn(CpuMs) -> bool| {
            let stop = Arc::new(AtomicBool::new(false));
            let spinner = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn({
                    let stop = stop.clone();
                    move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    }
                })
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut spent = me.cpu_ms().unwrap().since(before);
            while !enough(spent) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                spent = me.cpu_ms().unwrap().since(before);
            }
            stop.store(true, Ordering::Relaxed);
            spinner.join().unwrap();
            spent
        };

        // 100 ms on a thread of another name: in the total, not among the export threads.
        let other = spin_until("worker-thread", &|spent| spent.total >= 100);
        assert!(other.total >= 100, "{other:?}");
        assert!(other.export_threads < 20, "{other:?}");

        // Then a thread named like the SDK's batch processor: counted.
        let export = spin_until("OpenTelemetry.Traces.BatchProcessor", &|spent| {
            spent.export_threads >= other.export_threads + 50
        });
        assert!(
            export.export_threads >= other.export_threads + 50,
            "{export:?}"
        );
    }

    #[test]
    fn reads_the_peak_resident_set() {
        let status =
            "Name:\tgateway\nVmPeak:\t  300000 kB\nVmHWM:\t   12288 kB\nVmRSS:\t   10000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(12288));
        assert_eq!(vm_hwm_kib("Name: x\n"), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = Watched::parse(&format!("self={}", std::process::id())).unwrap();
        assert!(me.cpu_ms().is_ok());
        assert!(me.peak_rss_kib().is_some_and(|kib| kib > 0));
    }

    #[test]
    fn names_and_pids_are_checked() {
        assert_eq!(
            Watched::parse("gateway=42").unwrap(),
            Watched {
                name: "gateway".to_owned(),
                pid: 42
            }
        );
        for bad in ["gateway", "gateway=abc", "=42", "gateway=-1"] {
            assert!(Watched::parse(bad).is_err(), "{bad}");
        }
    }
}
