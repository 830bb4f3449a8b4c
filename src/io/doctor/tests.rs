//! Every finding of `stapes doctor` against a fake `/proc/sys` tree: a
//! host with enough of everything, then one setting at a time made too
//! small, each giving its finding and the exact command that fixes it.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::*;

const PAGE: u64 = 4096;
const GIB: u64 = 1024 * 1024 * 1024;

/// A fake `/proc/sys` and `/proc/meminfo` in a directory of its own.
struct Tree(PathBuf);

impl Tree {
    /// A host that can hold 100,000 connections on 2 shards.
    fn roomy() -> Tree {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stapes-doctor-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let tree = Tree(dir);
        tree.set("fs.nr_open", "1048576")
            .set("fs.file-max", "9223372036854775807")
            .set("net.core.somaxconn", "4096")
            .set("net.ipv4.tcp_max_syn_backlog", "4096")
            .set("net.ipv4.ip_local_port_range", "1024\t65535")
            .set("net.ipv4.tcp_mem", "100000 150000 200000")
            .set("kernel.io_uring_disabled", "0")
            .meminfo(64 * GIB, 60 * GIB);
        tree
    }

    fn set(&self, key: &str, value: &str) -> &Tree {
        let path = self.0.join("sys").join(key.replace('.', "/"));
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, format!("{value}\n")).expect("write");
        self
    }

    fn remove(&self, key: &str) -> &Tree {
        std::fs::remove_file(self.0.join("sys").join(key.replace('.', "/"))).expect("rm");
        self
    }

    fn meminfo(&self, total: u64, available: u64) -> &Tree {
        std::fs::create_dir_all(&self.0).expect("mkdir");
        let text = format!(
            "MemTotal:       {} kB\nMemFree:        1 kB\nMemAvailable:   {} kB\n",
            total / 1024,
            available / 1024
        );
        std::fs::write(self.0.join("meminfo"), text).expect("write");
        self
    }

    fn paths(&self) -> Paths {
        Paths { proc_sys: self.0.join("sys"), meminfo: self.0.join("meminfo") }
    }

    fn host(&self) -> Host {
        Host::read(&self.paths(), Some((1_048_576, 1_048_576)), UringProbe::Works, PAGE)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn target() -> Target {
    Target { max_connections: 100_000, shards: 2, driver: IoDriver::Auto }
}

fn find<'a>(findings: &'a [Finding], name: &str) -> &'a Finding {
    findings.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no finding {name}"))
}

/// Checks `host`, asserts that `name` stands at `level` with `fix`, and that
/// every other finding is fine: one setting, one finding.
fn only(host: &Host, name: &str, level: Level, fix: &[&str]) -> Finding {
    let findings = check(host, &target());
    for f in &findings {
        if f.name != name {
            assert_eq!(f.level, Level::Ok, "{f:?}");
        }
    }
    let f = find(&findings, name).clone();
    assert_eq!(f.level, level, "{f:?}");
    assert_eq!(f.fix, fix, "{f:?}");
    f
}

#[test]
fn a_roomy_host_needs_nothing() {
    let tree = Tree::roomy();
    let findings = check(&tree.host(), &target());
    assert_eq!(findings.len(), 10);
    for f in &findings {
        assert_eq!(f.level, Level::Ok, "{f:?}");
        assert!(f.fix.is_empty(), "{f:?}");
    }
    assert_eq!(find(&findings, "net.core.somaxconn").value, "4096");
    assert_eq!(find(&findings, "net.ipv4.ip_local_port_range").value, "1024-65535 (64512 ports)");
    assert_eq!(find(&findings, "net.netfilter.nf_conntrack_max").value, "conntrack not loaded");
    assert_eq!(find(&findings, "io driver").value, "io_uring; kernel.io_uring_disabled=0");
    let text = render(&target(), &findings);
    assert!(text.contains("hold 100000 connections"), "{text}");
    assert!(text.ends_with("Nothing to fix for this load.\n"), "{text}");
    assert!(!text.contains("sysctl.d"), "{text}");
}

#[test]
fn open_files_below_max_connections() {
    let tree = Tree::roomy();
    let host = Host { nofile: Some((20_000, 40_000)), ..tree.host() };
    let need = files_needed(100_000, 2);
    assert_eq!(need, 100_000 + 2 * 16 + 1024);
    let f = only(
        &host,
        "open files (ulimit -n)",
        Level::Fix,
        &[
            "systemd: LimitNOFILE=101056 in stapes.service (deploy/stapes.service has 1048576)",
            "shell: ulimit -n 101056 before starting stapes (as root if above the hard limit 40000)",
        ],
    );
    assert_eq!(f.value, "20000 (hard 40000)");
    assert!(f.needed.starts_with("101056:"), "{f:?}");
    // Exactly enough is enough.
    let host = Host { nofile: Some((need, need)), ..tree.host() };
    assert_eq!(find(&check(&host, &target()), "open files (ulimit -n)").level, Level::Ok);
}

#[test]
fn nr_open_below_the_limit_stapes_needs() {
    let tree = Tree::roomy();
    tree.set("fs.nr_open", "65536");
    let f = only(&tree.host(), "fs.nr_open", Level::Fix, &["sysctl -w fs.nr_open=101056"]);
    assert_eq!(f.value, "65536");
}

#[test]
fn file_max_below_the_limit_stapes_needs() {
    let tree = Tree::roomy();
    tree.set("fs.file-max", "80000");
    only(&tree.host(), "fs.file-max", Level::Fix, &["sysctl -w fs.file-max=202112"]);
}

#[test]
fn somaxconn_below_the_backlog_stapes_asks_for() {
    let tree = Tree::roomy();
    tree.set("net.core.somaxconn", "128");
    let f = only(
        &tree.host(),
        "net.core.somaxconn",
        Level::Fix,
        &["sysctl -w net.core.somaxconn=4096"],
    );
    assert_eq!(f.value, "128");
    assert!(f.needed.starts_with("4096: "), "{f:?}");
}

#[test]
fn syn_backlog_below_the_accept_queue() {
    let tree = Tree::roomy();
    tree.set("net.ipv4.tcp_max_syn_backlog", "512");
    only(
        &tree.host(),
        "net.ipv4.tcp_max_syn_backlog",
        Level::Fix,
        &["sysctl -w net.ipv4.tcp_max_syn_backlog=4096"],
    );
}

#[test]
fn a_narrow_port_range_is_only_information() {
    let tree = Tree::roomy();
    tree.set("net.ipv4.ip_local_port_range", "32768\t60999");
    let f = only(
        &tree.host(),
        "net.ipv4.ip_local_port_range",
        Level::Info,
        &["sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""],
    );
    assert_eq!(f.value, "32768-60999 (28232 ports)");
    // Information is never counted as something to fix.
    let text = render(&target(), &check(&tree.host(), &target()));
    assert!(text.ends_with("Nothing to fix for this load.\n"), "{text}");
}

#[test]
fn conntrack_is_checked_only_when_loaded() {
    let tree = Tree::roomy();
    tree.set("net.netfilter.nf_conntrack_max", "262144");
    let f = find(&check(&tree.host(), &target()), "net.netfilter.nf_conntrack_max").clone();
    assert_eq!((f.level, f.value.as_str()), (Level::Ok, "262144"));
    tree.set("net.netfilter.nf_conntrack_max", "65536");
    only(
        &tree.host(),
        "net.netfilter.nf_conntrack_max",
        Level::Fix,
        &["sysctl -w net.netfilter.nf_conntrack_max=200000"],
    );
}

#[test]
fn tcp_mem_below_a_page_per_socket() {
    let tree = Tree::roomy();
    tree.set("net.ipv4.tcp_mem", "1000\t2000\t50000");
    let f = only(
        &tree.host(),
        "net.ipv4.tcp_mem",
        Level::Fix,
        &["sysctl -w net.ipv4.tcp_mem=\"1000 100000 200000\""],
    );
    assert_eq!(f.value, "1000 2000 50000 pages (max 195 MiB)");
    let text = render(&target(), &check(&tree.host(), &target()));
    assert!(text.contains("net.ipv4.tcp_mem = 1000 100000 200000\n"), "{text}");
}

#[test]
fn memory_for_the_connections() {
    let tree = Tree::roomy();
    tree.meminfo(GIB, 256 * 1024 * 1024);
    let fits = 256 * 1024 * 1024 / (SERVER_BYTES_PER_CONN + KERNEL_BYTES_PER_IDLE_SOCKET);
    let f = only(
        &tree.host(),
        "memory",
        Level::Fix,
        &[&format!("lower server.max_connections to about {fits}, or add memory")],
    );
    assert_eq!(f.value, "256 MiB available of 1024 MiB");
}

#[test]
fn io_uring_disabled_by_sysctl() {
    let tree = Tree::roomy();
    tree.set("kernel.io_uring_disabled", "2");
    let host = Host { uring: UringProbe::Refused(libc::EPERM), ..tree.host() };
    let f = only(&host, "io driver", Level::Fix, &["sysctl -w kernel.io_uring_disabled=0"]);
    assert!(f.value.starts_with("epoll: io_uring_setup refused"), "{f:?}");
    assert!(f.value.ends_with("kernel.io_uring_disabled=2"), "{f:?}");
}

#[test]
fn io_uring_for_one_group_only() {
    let tree = Tree::roomy();
    tree.set("kernel.io_uring_disabled", "1").set("kernel.io_uring_group", "1234");
    let host = Host { uring: UringProbe::Refused(libc::EPERM), ..tree.host() };
    only(
        &host,
        "io driver",
        Level::Fix,
        &[
            "sysctl -w kernel.io_uring_disabled=0",
            "or keep it and run stapes in group 1234 (kernel.io_uring_group): SupplementaryGroups= in stapes.service",
        ],
    );
}

#[test]
fn io_uring_refused_by_seccomp() {
    let tree = Tree::roomy();
    let host = Host { uring: UringProbe::Refused(libc::EPERM), ..tree.host() };
    let f = only(
        &host,
        "io driver",
        Level::Fix,
        &[
            "a seccomp profile refuses it: allow io_uring_setup, io_uring_enter and io_uring_register (container runtimes block them by default)",
        ],
    );
    assert!(f.value.ends_with("kernel.io_uring_disabled=0"), "{f:?}");
}

#[test]
fn io_uring_on_old_kernels() {
    let tree = Tree::roomy();
    tree.remove("kernel.io_uring_disabled");
    let f = find(&check(&tree.host(), &target()), "io driver").clone();
    assert_eq!(f.level, Level::Ok);
    assert_eq!(f.value, "io_uring; kernel.io_uring_disabled absent (kernel before 6.6)");
    let host = Host { uring: UringProbe::MissingOps, ..tree.host() };
    only(
        &host,
        "io driver",
        Level::Fix,
        &["upgrade the kernel (5.6 or later has every operation)"],
    );
    let host = Host { uring: UringProbe::Refused(libc::ENOMEM), ..tree.host() };
    only(
        &host,
        "io driver",
        Level::Fix,
        &[
            "locked memory too small for the ring (kernels before 5.12): LimitMEMLOCK=8M in stapes.service, or ulimit -l 8192",
        ],
    );
    let host = Host { uring: UringProbe::Refused(libc::ENOSYS), ..tree.host() };
    only(&host, "io driver", Level::Fix, &["the kernel has no io_uring: upgrade to 5.6 or later"]);
}

#[test]
fn epoll_chosen_by_the_operator_is_information() {
    let tree = Tree::roomy();
    let target = Target { driver: IoDriver::Epoll, ..target() };
    let findings = check(&tree.host(), &target);
    let f = find(&findings, "io driver");
    assert_eq!(f.level, Level::Info);
    assert_eq!(f.value, "epoll, chosen by STAPES_IO_DRIVER; kernel.io_uring_disabled=0");
    assert_eq!(f.fix, ["unset STAPES_IO_DRIVER (or set it to auto)"]);
}

#[test]
fn an_unreadable_setting_is_said_to_be_unknown() {
    let tree = Tree::roomy();
    tree.remove("net.core.somaxconn").set("net.ipv4.tcp_mem", "garbage");
    let findings = check(&tree.host(), &target());
    for name in ["net.core.somaxconn", "net.ipv4.tcp_mem"] {
        let f = find(&findings, name);
        assert_eq!((f.level, f.value.as_str()), (Level::Info, "unknown (not readable here)"));
    }
}

#[test]
fn the_report_gathers_every_sysctl_fix_for_sysctl_d() {
    let tree = Tree::roomy();
    tree.set("net.core.somaxconn", "128").set("net.ipv4.tcp_max_syn_backlog", "256");
    let host = Host { nofile: Some((1024, 4096)), ..tree.host() };
    let text = render(&target(), &check(&host, &target()));
    assert!(text.contains("[FIX]  net.core.somaxconn: 128\n"), "{text}");
    assert!(text.contains("       fix: sysctl -w net.core.somaxconn=4096\n"), "{text}");
    assert!(text.contains("[FIX]  open files (ulimit -n): 1024 (hard 4096)\n"), "{text}");
    assert!(
        text.contains(
            "cat > /etc/sysctl.d/90-stapes.conf <<'EOF'\nnet.core.somaxconn = 4096\nnet.ipv4.tcp_max_syn_backlog = 4096\nEOF\nsysctl --system\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("3 setting(s) to fix for this load.\n"), "{text}");
}
