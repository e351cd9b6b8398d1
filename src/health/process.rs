//! The process metrics every Prometheus client library exports, under their standard names
//! (`process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`,
//! `process_virtual_memory_bytes`, `process_resident_memory_bytes`,
//! `process_start_time_seconds`, `process_threads`), read from `/proc/self` as those
//! libraries read them. Parsing is pure ([`Sample::parse`]); [`prometheus`] does the reads.

use std::fmt::Write;

/// The unit of `/proc`'s process times: `USER_HZ`, 100 on every architecture weft builds
/// for (the kernel converts to it whatever its tick rate).
const USER_HZ: f64 = 100.0;

/// One reading of the process.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    open_fds: u64,
    max_fds: Option<u64>,
    virtual_bytes: u64,
    resident_bytes: u64,
    start_time_seconds: f64,
    threads: u64,
}

impl Sample {
    /// From `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits`, `/proc/stat` and
    /// the number of entries in `/proc/self/fd`; `None` when a file is not as Linux writes it.
    fn parse(stat: &str, status: &str, limits: &str, proc_stat: &str, fds: u64) -> Option<Self> {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let after_comm = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        // proc(5) numbers fields from 1 with the pid first: field n is f[n - 3].
        let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        let ticks = field(14)? + field(15)?;
        let kb = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line[key.len()..].split_whitespace().next()?.parse().ok()
        };
        let boot: u64 = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(Sample {
            cpu_seconds: ticks as f64 / USER_HZ,
            open_fds: fds,
            max_fds: max_open_files(limits),
            virtual_bytes: kb("VmSize:").unwrap_or(0) * 1024,
            resident_bytes: kb("VmRSS:").unwrap_or(0) * 1024,
            start_time_seconds: boot as f64 + field(22)? as f64 / USER_HZ,
            threads: kb("Threads:")?,
        })
    }

    fn prometheus(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            format!("{:.2}", self.cpu_seconds),
        );
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.to_string(),
        );
        if let Some(max) = self.max_fds {
            metric(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                max.to_string(),
            );
        }
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_bytes.to_string(),
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.to_string(),
        );
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            format!("{:.2}", self.start_time_seconds),
        );
        metric(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            self.threads.to_string(),
        );
        s
    }
}

/// The soft limit on open files from `/proc/self/limits` (`None` when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// This process's metrics as Prometheus text; empty if `/proc` cannot be read.
pub(super) fn prometheus() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    // Reading the directory holds a descriptor of its own, listed with the rest.
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as u64)
        .unwrap_or(0);
    Sample::parse(
        &read("/proc/self/stat"),
        &read("/proc/self/status"),
        &read("/proc/self/limits"),
        &read("/proc/stat"),
        fds,
    )
    .map(|s| s.prometheus())
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Linux 6.1 writes them, for a process named with a space and a parenthesis.
    const STAT: &str = "4242 (weft (x) y) S 1 4242 4242 0 -1 4194560 1130 0 0 0 \
        250 75 0 0 20 0 7 0 123456 180355072 3012 18446744073709551615 1 1 0 0 0 0 0 0 0 0 \
        0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0";
    const STATUS: &str = "Name:\tweft\nVmSize:\t  176128 kB\nVmRSS:\t   12048 kB\nThreads:\t7\n";
    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max open files            1024                 524288               files     \n";
    const PROC_STAT: &str = "cpu  1 2 3 4\nbtime 1764650000\nprocesses 10\n";

    #[test]
    fn a_sample_is_read_from_procs_lines() {
        let s = Sample::parse(STAT, STATUS, LIMITS, PROC_STAT, 23).unwrap();
        assert_eq!(
            s,
            Sample {
                cpu_seconds: 3.25,
                open_fds: 23,
                max_fds: Some(1024),
                virtual_bytes: 176128 * 1024,
                resident_bytes: 12048 * 1024,
                start_time_seconds: 1764650000.0 + 1234.56,
                threads: 7,
            }
        );
        let text = s.prometheus();
        for line in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.25\n",
            "process_open_fds 23\n",
            "process_max_fds 1024\n",
            "process_resident_memory_bytes 12337152\n",
            "process_start_time_seconds 1764651234.56\n",
            "process_threads 7\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn unlimited_files_and_a_truncated_stat_are_handled() {
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        let s = Sample::parse(STAT, STATUS, unlimited, PROC_STAT, 3).unwrap();
        assert_eq!(s.max_fds, None);
        assert!(!s.prometheus().contains("process_max_fds"));
        assert_eq!(
            Sample::parse("4242 (weft) S 1 2", STATUS, LIMITS, PROC_STAT, 3),
            None
        );
        assert_eq!(Sample::parse("", "", "", "", 0), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let text = prometheus();
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let threads: f64 = std::fs::read_dir("/proc/self/task").unwrap().count() as f64;
        // Other tests start and end threads meanwhile: the count is a live one, not exact.
        assert!(value("process_threads") >= 1.0 && threads >= 1.0);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}
