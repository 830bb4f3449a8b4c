//! `stapes doctor`: can this host hold the connections the config asks for?
//!
//! Reads the limits and kernel settings that decide how many connections
//! one process can hold (open files, accept and SYN queues, ephemeral
//! ports, connection tracking, TCP buffer memory, RAM, io_uring) and
//! prints, for each, its value, what the configured `server.max_connections`
//! needs, and the command that fixes it.
//!
//! Split in two so every finding is tested without touching the real host:
//! [`Host::read`] takes the `/proc` paths and the process's own facts (its
//! open-file limit, the io_uring probe) as parameters, and [`check`] is a
//! pure function of a [`Host`] and a [`Target`].

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::{config::Config, io::shard::IoDriver};

/// Server memory per idle subscribed connection, bytes: the connection's
/// task, its slot, the runtime's descriptor state, the socket-id map, one
/// subscription and its channel-index share (README "Performance": 1,225 to
/// 1,251 B measured with `stapes-load hold`).
pub const SERVER_BYTES_PER_CONN: u64 = 1_300;

/// Kernel memory per idle TCP socket, bytes: slab objects only (the TCP
/// socket 2,368 B, its inode 832 B, dentry, file, the io_uring poll
/// request, security blobs), since an idle socket holds no buffer pages.
/// Measured on Linux 6.18: the slab caches grew by 5,039 B per socket over
/// 19,000 idle loopback connections (38,000 sockets), README "Tuning a host
/// for a million connections".
pub const KERNEL_BYTES_PER_IDLE_SOCKET: u64 = 5_000;

/// Descriptors besides WebSockets: per shard its listeners, io driver and
/// ring doorbells; then HTTP API requests and Incus long-polls, which
/// `server.max_connections` does not count, and Redis, webhook and push
/// clients.
const FILES_PER_SHARD: u64 = 16;
const FILES_SPARE: u64 = 1024;

/// The accept queue stapes asks of each listener (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: u64 = crate::io::shard::listener::BACKLOG as u64;

/// Most ports one source address can use towards one destination.
const MAX_PORTS: u64 = 64_511;

/// Open files stapes needs for `max_connections` WebSockets on `shards` shards.
pub fn files_needed(max_connections: u64, shards: u64) -> u64 {
    max_connections + shards * FILES_PER_SHARD + FILES_SPARE
}

/// Where the host's settings are read from; [`Paths::default`] is the real
/// `/proc`, tests point them at a fake tree.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/proc/sys`.
    pub proc_sys: PathBuf,
    /// `/proc/meminfo`.
    pub meminfo: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths { proc_sys: "/proc/sys".into(), meminfo: "/proc/meminfo".into() }
    }
}

/// What building a shard's send ring (an io_uring) gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringProbe {
    /// A ring was built and the kernel has `sendmsg` on it.
    Works,
    /// A ring was built, but the kernel lacks `sendmsg` on it (or cannot
    /// say, before Linux 5.6).
    MissingOps,
    /// `io_uring_setup` failed with this errno.
    Refused(i32),
}

/// The host's settings, as read. `None` where a file is missing or does
/// not parse: the check then says it could not tell.
#[derive(Debug, Clone)]
pub struct Host {
    /// This process's open-file limit, soft and hard.
    pub nofile: Option<(u64, u64)>,
    /// `fs.nr_open`: the highest open-file limit a process may have.
    pub nr_open: Option<u64>,
    /// `fs.file-max`: open files for the whole system.
    pub file_max: Option<u64>,
    /// `net.core.somaxconn`: the cap on any accept queue.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`: half-open connections per listener.
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<(u64, u64)>,
    /// `net.netfilter.nf_conntrack_max`; `None` when conntrack is not loaded.
    pub conntrack_max: Option<u64>,
    /// `net.ipv4.tcp_mem` (min, pressure, max), in pages.
    pub tcp_mem: Option<[u64; 3]>,
    /// Page size, bytes.
    pub page_size: u64,
    /// `MemTotal` and `MemAvailable`, bytes.
    pub mem: Option<(u64, u64)>,
    /// `kernel.io_uring_disabled` (0, 1 or 2); `None` before Linux 6.6.
    pub io_uring_disabled: Option<u64>,
    /// `kernel.io_uring_group` (with `io_uring_disabled` 1).
    pub io_uring_group: Option<i64>,
    /// What building a ring gave in this process.
    pub uring: UringProbe,
}

impl Host {
    /// Reads the settings under `paths`; `nofile` and `uring` are this
    /// process's own (see [`own_nofile`] and [`probe_uring`]).
    pub fn read(
        paths: &Paths,
        nofile: Option<(u64, u64)>,
        uring: UringProbe,
        page_size: u64,
    ) -> Host {
        let sys = |key: &str| read_trimmed(&paths.proc_sys.join(key.replace('.', "/")));
        let num = |key: &str| sys(key).and_then(|s| s.parse::<u64>().ok());
        let port_range = sys("net.ipv4.ip_local_port_range").and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        });
        let tcp_mem = sys("net.ipv4.tcp_mem").and_then(|s| {
            let v: Vec<u64> = s.split_whitespace().filter_map(|p| p.parse().ok()).collect();
            <[u64; 3]>::try_from(v).ok()
        });
        let mem = read_trimmed(&paths.meminfo).and_then(|text| {
            let kib = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .map(|k| k * 1024)
            };
            Some((kib("MemTotal")?, kib("MemAvailable")?))
        });
        Host {
            nofile,
            nr_open: num("fs.nr_open"),
            file_max: num("fs.file-max"),
            somaxconn: num("net.core.somaxconn"),
            tcp_max_syn_backlog: num("net.ipv4.tcp_max_syn_backlog"),
            port_range,
            conntrack_max: num("net.netfilter.nf_conntrack_max"),
            tcp_mem,
            page_size,
            mem,
            io_uring_disabled: num("kernel.io_uring_disabled"),
            io_uring_group: sys("kernel.io_uring_group").and_then(|s| s.parse().ok()),
            uring,
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// What the configuration asks of the host.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// `server.max_connections`.
    pub max_connections: u64,
    /// Shards that will run (`server.shards`, or every core).
    pub shards: u64,
    /// The io driver `STAPES_IO_DRIVER` asks for.
    pub driver: IoDriver,
}

impl Target {
    /// The target of `config` run with `driver`.
    pub fn of(config: &Config, driver: IoDriver) -> Target {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Target {
            max_connections: config.server.max_connections as u64,
            shards: config.server.shards.unwrap_or(cores).max(1) as u64,
            driver,
        }
    }
}

/// How a finding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Enough for the configured load.
    Ok,
    /// Matters only in some setups (said in the finding); not counted as a failure.
    Info,
    /// Not enough for the configured load: apply the fix.
    Fix,
}

/// One setting: its value, what the load needs, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The setting, as an operator would look it up (`net.core.somaxconn`).
    pub name: &'static str,
    /// How it stands.
    pub level: Level,
    /// Its value on this host.
    pub value: String,
    /// What the configured load needs, and why.
    pub needed: String,
    /// The commands that fix it, in order; empty when nothing is to fix.
    pub fix: Vec<String>,
}

impl Finding {
    fn new(name: &'static str, level: Level, value: String, needed: String) -> Finding {
        Finding { name, level, value, needed, fix: Vec::new() }
    }

    fn fix(mut self, command: impl Into<String>) -> Finding {
        self.fix.push(command.into());
        self
    }
}

/// Every finding for `target` on `host`, in a fixed order.
pub fn check(host: &Host, target: &Target) -> Vec<Finding> {
    let conns = target.max_connections;
    let files = files_needed(conns, target.shards);
    vec![
        open_files(host, files),
        nr_open(host, files),
        file_max(host, files),
        somaxconn(host),
        syn_backlog(host),
        port_range(host, conns),
        conntrack(host, conns),
        tcp_mem(host, conns),
        memory(host, conns),
        io_uring(host, target.driver),
    ]
}

fn sysctl_fix(key: &str, value: impl std::fmt::Display) -> String {
    format!("sysctl -w {key}={value}")
}

fn unknown(name: &'static str, needed: String) -> Finding {
    Finding::new(name, Level::Info, "unknown (not readable here)".into(), needed)
}

fn open_files(host: &Host, files: u64) -> Finding {
    let name = "open files (ulimit -n)";
    let needed = format!(
        "{files}: one per WebSocket (server.max_connections) plus HTTP API requests, long-polls and each shard's own"
    );
    let Some((soft, hard)) = host.nofile else { return unknown(name, needed) };
    let value = format!("{soft} (hard {hard})");
    if soft >= files {
        return Finding::new(name, Level::Ok, value, needed);
    }
    Finding::new(name, Level::Fix, value, needed)
        .fix(format!("systemd: LimitNOFILE={files} in stapes.service (deploy/stapes.service has 1048576)"))
        .fix(format!("shell: ulimit -n {files} before starting stapes (as root if above the hard limit {hard})"))
}

fn nr_open(host: &Host, files: u64) -> Finding {
    let name = "fs.nr_open";
    let needed = format!("{files}: no process may raise its open-file limit above it");
    let Some(v) = host.nr_open else { return unknown(name, needed) };
    if v >= files {
        return Finding::new(name, Level::Ok, v.to_string(), needed);
    }
    Finding::new(name, Level::Fix, v.to_string(), needed).fix(sysctl_fix(name, files))
}

fn file_max(host: &Host, files: u64) -> Finding {
    let name = "fs.file-max";
    let needed = format!("{files} for stapes alone: open files of the whole system");
    let Some(v) = host.file_max else { return unknown(name, needed) };
    if v >= files {
        return Finding::new(name, Level::Ok, v.to_string(), needed);
    }
    Finding::new(name, Level::Fix, v.to_string(), needed).fix(sysctl_fix(name, files * 2))
}

fn somaxconn(host: &Host) -> Finding {
    let name = "net.core.somaxconn";
    let needed = format!(
        "{BACKLOG}: stapes asks each shard's listener for a {BACKLOG}-connection accept queue and the kernel caps it here; a short queue drops the SYNs of a reconnect storm (every client at once after a restart), and they retry after 1, 3, 7 s"
    );
    let Some(v) = host.somaxconn else { return unknown(name, needed) };
    if v >= BACKLOG {
        return Finding::new(name, Level::Ok, v.to_string(), needed);
    }
    Finding::new(name, Level::Fix, v.to_string(), needed).fix(sysctl_fix(name, BACKLOG))
}

fn syn_backlog(host: &Host) -> Finding {
    let name = "net.ipv4.tcp_max_syn_backlog";
    let needed = format!(
        "{BACKLOG}: half-open connections queued per listener, as many as the accept queue"
    );
    let Some(v) = host.tcp_max_syn_backlog else { return unknown(name, needed) };
    if v >= BACKLOG {
        return Finding::new(name, Level::Ok, v.to_string(), needed);
    }
    Finding::new(name, Level::Fix, v.to_string(), needed).fix(sysctl_fix(name, BACKLOG))
}

fn port_range(host: &Host, conns: u64) -> Finding {
    let name = "net.ipv4.ip_local_port_range";
    let want = conns.min(MAX_PORTS);
    let needed = format!(
        "{want} ports, only if a proxy on this host connects to stapes: each of its connections from one source address takes one port (past {MAX_PORTS}, give the proxy several source addresses); clients connecting from elsewhere use none"
    );
    let Some((low, high)) = host.port_range else { return unknown(name, needed) };
    let ports = (high + 1).saturating_sub(low);
    let value = format!("{low}-{high} ({ports} ports)");
    let level = if ports >= want { Level::Ok } else { Level::Info };
    let f = Finding::new(name, level, value, needed);
    if level == Level::Ok { f } else { f.fix(format!("sysctl -w {name}=\"1024 65535\"")) }
}

fn conntrack(host: &Host, conns: u64) -> Finding {
    let name = "net.netfilter.nf_conntrack_max";
    let want = conns * 2;
    let needed = format!(
        "{want}: one entry per connection, twice over because the entries of a reconnect storm's closed connections linger (TIME_WAIT, 120 s) beside the new ones"
    );
    let Some(v) = host.conntrack_max else {
        return Finding::new(
            name,
            Level::Ok,
            "conntrack not loaded".into(),
            "nothing: connections are not tracked".into(),
        );
    };
    if v >= want {
        return Finding::new(name, Level::Ok, v.to_string(), needed);
    }
    Finding::new(name, Level::Fix, v.to_string(), needed).fix(sysctl_fix(name, want))
}

fn tcp_mem(host: &Host, conns: u64) -> Finding {
    let name = "net.ipv4.tcp_mem";
    let page = host.page_size.max(1);
    // The kernel charges socket buffers in whole pages: a broadcast queues at
    // least one on every socket until its client has read it.
    let want = conns;
    let needed = format!(
        "max ≥ {want} pages ({}): a broadcast holds at least one page on every socket until its client reads it; past max the kernel refuses socket memory (\"TCP: out of memory\")",
        mib(want * page)
    );
    let Some([min, pressure, max]) = host.tcp_mem else { return unknown(name, needed) };
    let value = format!("{min} {pressure} {max} pages (max {})", mib(max * page));
    if max >= want {
        return Finding::new(name, Level::Ok, value, needed);
    }
    let fix = format!("sysctl -w {name}=\"{min} {} {}\"", want.max(pressure), want * 2);
    Finding::new(name, Level::Fix, value, needed).fix(fix)
}

fn memory(host: &Host, conns: u64) -> Finding {
    let name = "memory";
    let per = SERVER_BYTES_PER_CONN + KERNEL_BYTES_PER_IDLE_SOCKET;
    let want = conns * per;
    let needed = format!(
        "{} for {conns} idle connections: {SERVER_BYTES_PER_CONN} B in stapes + {KERNEL_BYTES_PER_IDLE_SOCKET} B in the kernel each, before any event is queued",
        mib(want)
    );
    let Some((total, available)) = host.mem else { return unknown(name, needed) };
    let value = format!("{} available of {}", mib(available), mib(total));
    if available >= want {
        return Finding::new(name, Level::Ok, value, needed);
    }
    let fits = available / per;
    Finding::new(name, Level::Fix, value, needed)
        .fix(format!("lower server.max_connections to about {fits}, or add memory"))
}

fn io_uring(host: &Host, driver: IoDriver) -> Finding {
    let name = "io driver";
    let disabled = host.io_uring_disabled.unwrap_or(0);
    let knob = match host.io_uring_disabled {
        Some(d) => format!("kernel.io_uring_disabled={d}"),
        None => "kernel.io_uring_disabled absent (kernel before 6.6)".into(),
    };
    let needed =
        "io_uring (stapes falls back to one writev per socket, which costs more CPU per event)"
            .to_owned();
    if driver == IoDriver::Epoll {
        return Finding::new(
            name,
            Level::Info,
            format!("epoll, chosen by STAPES_IO_DRIVER; {knob}"),
            needed,
        )
        .fix("unset STAPES_IO_DRIVER (or set it to auto)");
    }
    let value = |what: &str| format!("{what}; {knob}");
    match host.uring {
        UringProbe::Works => Finding::new(name, Level::Ok, value("io_uring"), needed),
        UringProbe::MissingOps => Finding::new(
            name,
            Level::Fix,
            value("epoll: this kernel's io_uring lacks operations stapes uses"),
            needed,
        )
        .fix("upgrade the kernel (5.6 or later has every operation)"),
        UringProbe::Refused(errno) => {
            let why = std::io::Error::from_raw_os_error(errno);
            let f = Finding::new(
                name,
                Level::Fix,
                value(&format!("epoll: io_uring_setup refused ({why})")),
                needed,
            );
            match (errno, disabled) {
                (libc::EPERM, 2) => f.fix(sysctl_fix("kernel.io_uring_disabled", 0)),
                (libc::EPERM, 1) => {
                    let group = host.io_uring_group.unwrap_or(-1);
                    f.fix(sysctl_fix("kernel.io_uring_disabled", 0)).fix(format!(
                        "or keep it and run stapes in group {group} (kernel.io_uring_group): SupplementaryGroups= in stapes.service"
                    ))
                }
                (libc::EPERM, _) => f.fix(
                    "a seccomp profile refuses it: allow io_uring_setup, io_uring_enter and io_uring_register (container runtimes block them by default)",
                ),
                (libc::ENOMEM, _) => f.fix(
                    "locked memory too small for the ring (kernels before 5.12): LimitMEMLOCK=8M in stapes.service, or ulimit -l 8192",
                ),
                (libc::ENOSYS, _) => f.fix("the kernel has no io_uring: upgrade to 5.6 or later"),
                _ => f,
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The report for `findings`, as `stapes doctor` prints it.
pub fn render(target: &Target, findings: &[Finding]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stapes doctor: can this host hold {} connections (server.max_connections) on {} shards?\n",
        target.max_connections, target.shards
    );
    for f in findings {
        let tag = match f.level {
            Level::Ok => "[ok]  ",
            Level::Info => "[info]",
            Level::Fix => "[FIX] ",
        };
        let _ = writeln!(out, "{tag} {}: {}", f.name, f.value);
        let _ = writeln!(out, "       needed: {}", f.needed);
        for cmd in &f.fix {
            let _ = writeln!(out, "       fix: {cmd}");
        }
    }
    let sysctls: Vec<&str> = findings
        .iter()
        .filter(|f| f.level == Level::Fix)
        .flat_map(|f| f.fix.iter())
        .filter_map(|c| c.strip_prefix("sysctl -w "))
        .collect();
    if !sysctls.is_empty() {
        let _ = writeln!(out, "\nTo keep the sysctl settings across reboots:\n");
        let _ = writeln!(out, "cat > /etc/sysctl.d/90-stapes.conf <<'EOF'");
        for s in &sysctls {
            let (key, value) = s.split_once('=').unwrap_or((s, ""));
            let _ = writeln!(out, "{key} = {}", value.trim_matches('"'));
        }
        let _ = writeln!(out, "EOF\nsysctl --system");
    }
    let fixes = findings.iter().filter(|f| f.level == Level::Fix).count();
    let _ = writeln!(
        out,
        "\n{}",
        if fixes == 0 {
            "Nothing to fix for this load.".to_owned()
        } else {
            format!("{fixes} setting(s) to fix for this load.")
        }
    );
    out
}

/// The real host's report for `config` run with `driver`, and whether
/// nothing needs fixing (`stapes doctor` exits 0 then, 1 otherwise).
pub fn run(config: &Config, driver: IoDriver) -> (String, bool) {
    let target = Target::of(config, driver);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let host = Host::read(
        &Paths::default(),
        own_nofile(),
        probe_uring(),
        u64::try_from(page).unwrap_or(4096),
    );
    let findings = check(&host, &target);
    let ok = findings.iter().all(|f| f.level != Level::Fix);
    (render(&target, &findings), ok)
}

/// This process's `RLIMIT_NOFILE`, soft and hard.
pub fn own_nofile() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// Builds the send ring a shard builds and says what became of it.
pub fn probe_uring() -> UringProbe {
    match crate::io::shard::probe_send_ring() {
        Ok(()) => UringProbe::Works,
        Err(e) => match e.raw_os_error() {
            Some(errno) => UringProbe::Refused(errno),
            None => UringProbe::MissingOps,
        },
    }
}

#[cfg(test)]
mod tests;
