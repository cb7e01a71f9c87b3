//! `--cpu-of NAME=PID`: the CPU time and peak memory of the processes under load, read
//! from Linux's `/proc` at the exact start and end of the load, so a benchmark gets the
//! services' cost per request over the load's window and not over the tracking that
//! follows it (a backlog's polls would otherwise swamp the figure).

use std::path::PathBuf;

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`): 100 on every architecture
/// Linux runs on today (it is part of the kernel's user-space ABI, unlike `HZ`).
const USER_HZ: u64 = 100;

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

    /// User plus system CPU time so far, in milliseconds.
    pub fn cpu_ms(&self) -> Result<u64, String> {
        let path = self.path("stat");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{} (pid {}): cannot read {}: {e}",
                self.name,
                self.pid,
                path.display()
            )
        })?;
        cpu_ticks(&text)
            .map(|ticks| ticks * 1000 / USER_HZ)
            .ok_or_else(|| format!("{}: unexpected format of {}", self.name, path.display()))
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
