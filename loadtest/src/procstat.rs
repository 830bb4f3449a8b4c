//! What the kernel says about a process and about TCP memory, from /proc.

use std::fs;

/// A process's CPU time and resident memory at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU time, in seconds.
    pub cpu_secs: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(Sample { cpu_secs: (utime + stime) as f64 / ticks_per_sec(), rss_bytes: rss_kib * 1024 })
}

/// This process's own CPU time (user + system), in seconds, from getrusage.
pub fn own_cpu_secs() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Kernel memory held by all TCP sockets on the machine, in bytes
/// (`/proc/net/sockstat`, "TCP: … mem N" in pages). Both ends of every
/// loopback connection count here, so it is reported apart from RSS.
pub fn tcp_mem_bytes() -> u64 {
    let Ok(s) = fs::read_to_string("/proc/net/sockstat") else { return 0 };
    let pages = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            let i = parts.iter().position(|p| *p == "mem")?;
            parts.get(i + 1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Kernel slab memory of the whole machine, in bytes (`/proc/meminfo`
/// `Slab:`): where the kernel keeps each socket, its inode, file and
/// epoll or io_uring entries, so its growth over N idle connections is
/// their kernel cost. Both ends of a loopback connection count here too.
pub fn slab_bytes() -> Option<u64> {
    let s = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        s.lines().find_map(|l| l.strip_prefix("Slab:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the
/// machine, so a publisher's stamp can be compared with a receiver's.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 0);
        assert!(slab_bytes().is_some_and(|b| b > 0));
        let a = mono_ns();
        assert!(mono_ns() >= a);
    }
}
