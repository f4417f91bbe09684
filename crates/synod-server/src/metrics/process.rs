//! `process_*` (as the Go client's process collector on Linux) and etcd's `os_fd_*`, read from
//! `/proc/self` when scraped.

use prometheus::{Counter, Gauge, IntGauge, Registry};

/// Clock ticks per second of `/proc/self/stat`'s CPU times: 100 on every Linux that Synod runs on
/// (`sysconf(_SC_CLK_TCK)`; the kernel's `USER_HZ` is fixed at 100 for user space).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

pub struct ProcessMetrics {
    cpu_seconds: Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
    resident_bytes: IntGauge,
    virtual_bytes: IntGauge,
    os_fd_used: IntGauge,
    os_fd_limit: IntGauge,
}

#[allow(clippy::expect_used)] // constant, valid names
impl ProcessMetrics {
    pub fn new(registry: &Registry) -> ProcessMetrics {
        // Set once: registered here and never touched again.
        let start_time = super::add(
            registry,
            Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )
            .expect("valid metric"),
        );
        if let Some(seconds) = start_time_seconds() {
            start_time.set(seconds);
        }
        ProcessMetrics {
            cpu_seconds: super::add(
                registry,
                Counter::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                )
                .expect("valid metric"),
            ),
            open_fds: super::gauge(
                registry,
                "process_open_fds",
                "Number of open file descriptors.",
            ),
            max_fds: super::gauge(
                registry,
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            resident_bytes: super::gauge(
                registry,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_bytes: super::gauge(
                registry,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            os_fd_used: super::gauge(
                registry,
                "os_fd_used",
                "The number of used file descriptors.",
            ),
            os_fd_limit: super::gauge(registry, "os_fd_limit", "The file descriptor limit."),
        }
    }

    pub fn refresh(&self) {
        if let Some(stat) = Stat::read() {
            let cpu = stat.cpu_ticks as f64 / CLOCK_TICKS_PER_SECOND;
            let now = self.cpu_seconds.get();
            if cpu > now {
                self.cpu_seconds.inc_by(cpu - now);
            }
            self.virtual_bytes.set(stat.virtual_bytes as i64);
            self.resident_bytes
                .set((stat.resident_pages * page_size()) as i64);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            let open = entries.count() as i64;
            self.open_fds.set(open);
            self.os_fd_used.set(open);
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(i64::MAX, |limit| limit.min(i64::MAX as u64) as i64);
        self.max_fds.set(limit);
        self.os_fd_limit.set(limit);
    }
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The fields of `/proc/self/stat` the metrics use.
struct Stat {
    cpu_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
    start_ticks: u64,
}

impl Stat {
    fn read() -> Option<Stat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        // Field numbers (from 1) in proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24;
        // `fields[0]` is field 3 (state).
        let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
        Some(Stat {
            cpu_ticks: field(14)? + field(15)?,
            start_ticks: field(22)?,
            virtual_bytes: field(23)?,
            resident_pages: field(24)?,
        })
    }
}

/// When the process started, in seconds since the epoch: boot time plus its start in ticks.
fn start_time_seconds() -> Option<f64> {
    let stat = Stat::read()?;
    let system = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: f64 = system
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + stat.start_ticks as f64 / CLOCK_TICKS_PER_SECOND)
}
