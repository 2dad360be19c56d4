//! The agent's own process metrics, read from `/proc/self` on every scrape, under the names
//! every Prometheus client library uses (`process_*`). A figure that cannot be read (not
//! Linux, a restricted `/proc`) is left out.

use std::fs;
use std::sync::OnceLock;

use super::exposition::{Exposition, MetricType::Counter, MetricType::Gauge};

/// `/proc` counts CPU time in USER_HZ ticks, which Linux fixes at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// The address-space limit; `u64::MAX` when unlimited.
    pub virtual_memory_max_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's figures.
    pub fn read() -> Self {
        let stat = fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().map(stat_fields).unwrap_or_default();
        let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
        let status = fs::read_to_string("/proc/self/status").ok();
        let status_kib = |key: &str| status.as_deref().and_then(|text| status_kib(text, key));
        let limits = fs::read_to_string("/proc/self/limits").ok();
        Self {
            cpu_seconds: ticks(STAT_UTIME)
                .zip(ticks(STAT_STIME))
                .map(|(user, system)| (user + system) as f64 / TICKS_PER_SECOND),
            resident_memory_bytes: status_kib("VmRSS:").map(|kib| kib * 1024),
            virtual_memory_bytes: status_kib("VmSize:").map(|kib| kib * 1024),
            open_fds: fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: limits
                .as_deref()
                .and_then(|limits| soft_limit(limits, "Max open files")),
            virtual_memory_max_bytes: limits
                .as_deref()
                .and_then(|limits| soft_limit(limits, "Max address space")),
            start_time_seconds: *START_TIME.get_or_init(|| {
                let boot = fs::read_to_string("/proc/stat").ok()?;
                let boot_time = boot_time_seconds(&boot)?;
                Some(boot_time as f64 + ticks(STAT_STARTTIME)? as f64 / TICKS_PER_SECOND)
            }),
        }
    }

    pub fn write(&self, out: &mut Exposition) {
        if let Some(seconds) = self.cpu_seconds {
            out.single(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                Counter,
                seconds,
            );
        }
        if let Some(bytes) = self.resident_memory_bytes {
            out.single(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Gauge,
                bytes,
            );
        }
        if let Some(bytes) = self.virtual_memory_bytes {
            out.single(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Gauge,
                bytes,
            );
        }
        if let Some(fds) = self.open_fds {
            out.single(
                "process_open_fds",
                "Number of open file descriptors.",
                Gauge,
                fds,
            );
        }
        if let Some(fds) = self.max_fds {
            out.single(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Gauge,
                fds,
            );
        }
        if let Some(bytes) = self.virtual_memory_max_bytes {
            out.single(
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                Gauge,
                bytes,
            );
        }
        if let Some(seconds) = self.start_time_seconds {
            out.single(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                Gauge,
                seconds,
            );
        }
    }
}

static START_TIME: OnceLock<Option<f64>> = OnceLock::new();

// Indexes into the fields after the command name of `/proc/self/stat` (field 3, the state,
// is index 0; see proc(5)).
const STAT_UTIME: usize = 11;
const STAT_STIME: usize = 12;
const STAT_STARTTIME: usize = 19;

/// The fields after `(comm)`, which may itself contain spaces and parentheses.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit named `name` in `/proc/self/limits`; `u64::MAX` for "unlimited".
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with(name))?;
    match line[name.len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        value => value.parse().ok(),
    }
}

fn boot_time_seconds(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 \
                    8 0 12345 1000 200 18446744073709551615";
        let fields = stat_fields(stat);
        assert_eq!(fields[0], "S");
        assert_eq!(fields[STAT_UTIME], "250");
        assert_eq!(fields[STAT_STIME], "50");
        assert_eq!(fields[STAT_STARTTIME], "12345");
        assert_eq!(
            status_kib("Name:\tagent\nVmRSS:\t   10240 kB\n", "VmRSS:"),
            Some(10_240)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max address space         unlimited            unlimited            bytes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024));
        assert_eq!(soft_limit(limits, "Max address space"), Some(u64::MAX));
        assert_eq!(
            boot_time_seconds("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_is_described() {
        let stats = ProcessStats::read();
        assert!(stats.resident_memory_bytes.unwrap() > 0);
        assert!(stats.open_fds.unwrap() > 0);
        assert!(stats.max_fds.unwrap() > 0);
        assert!(stats.cpu_seconds.is_some());
        let started = stats.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(started <= now + 1.0 && started > now - 86_400.0 * 365.0);
    }
}
