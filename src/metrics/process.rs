//! The process's own CPU, memory and descriptors, in Prometheus's
//! conventional names (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`),
//! read from /proc/self at each scrape. The parsing is pure.

use metrics::{describe_gauge, gauge, Unit};

pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const RESIDENT_BYTES: &str = "process_resident_memory_bytes";
pub const OPEN_FDS: &str = "process_open_fds";
pub const MAX_FDS: &str = "process_max_fds";

/// What one reading of /proc/self gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

/// CPU time and resident memory from /proc/self/stat's text, given the
/// clock ticks per second and the page size. Fields are counted after the
/// command's closing parenthesis (the command may hold spaces and parens).
pub fn parse_stat(stat: &str, ticks_per_second: u64, page_size: u64) -> Option<Usage> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the man page, so utime (14) is index
    // 11, stime (15) index 12, rss (24) index 21.
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let ticks = num(11)? + num(12)?;
    Some(Usage {
        cpu_seconds: ticks as f64 / ticks_per_second.max(1) as f64,
        resident_bytes: num(21)? * page_size,
    })
}

pub fn describe() {
    describe_gauge!(
        CPU_SECONDS,
        Unit::Seconds,
        "user and system CPU time this process used (a running total, kept as a gauge for its fractions of a second)"
    );
    describe_gauge!(
        RESIDENT_BYTES,
        Unit::Bytes,
        "this process's resident memory"
    );
    describe_gauge!(OPEN_FDS, "file descriptors this process holds open");
    describe_gauge!(
        MAX_FDS,
        "this process's limit of open file descriptors (RLIMIT_NOFILE)"
    );
}

/// Reads /proc/self and sets the process metrics (what cannot be read is
/// left as it was).
pub fn refresh() {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    let usage = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s, ticks, page));
    if let Some(u) = usage {
        gauge!(CPU_SECONDS).set(u.cpu_seconds);
        gauge!(RESIDENT_BYTES).set(u.resident_bytes as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge!(OPEN_FDS).set(fds.count() as f64);
    }
    if let Ok(n) = crate::proxy::nofile_limit() {
        gauge!(MAX_FDS).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_are_read_past_the_command() {
        // A command with a space and a parenthesis in it.
        let stat = "4242 (sock warden)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 6 0 12345 123456789 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat, 100, 4096),
            Some(Usage {
                cpu_seconds: 4.0,
                resident_bytes: 3000 * 4096
            })
        );
        assert_eq!(parse_stat("garbage", 100, 4096), None);
        assert_eq!(parse_stat("1 (x) S 1 2", 100, 4096), None);
    }
}
