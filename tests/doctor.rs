//! `stapes doctor` on this machine: the real binary reads the real /proc
//! and answers for the configured load. Each finding's logic is tested
//! against fake trees in `src/io/doctor/tests.rs`; this checks the command.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::process::Command;

const NAMES: [&str; 10] = [
    "open files (ulimit -n)",
    "fs.nr_open",
    "fs.file-max",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.netfilter.nf_conntrack_max",
    "net.ipv4.tcp_mem",
    "memory",
    "io driver",
];

fn doctor(max_connections: &str, driver: Option<&str>) -> (String, i32) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stapes"));
    cmd.arg("doctor").env("STAPES_MAX_CONNECTIONS", max_connections).env("STAPES_SHARDS", "2");
    if let Some(d) = driver {
        cmd.env("STAPES_IO_DRIVER", d);
    }
    let out = cmd.output().unwrap();
    (String::from_utf8(out.stdout).unwrap(), out.status.code().unwrap())
}

#[test]
fn doctor_reports_every_setting_for_the_configured_load() {
    let (text, code) = doctor("10", None);
    assert!(text.starts_with("stapes doctor: can this host hold 10 connections"), "{text}");
    for name in NAMES {
        let line = text
            .lines()
            .find(|l| l.starts_with('[') && l[7..].starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name} in\n{text}"));
        assert!(!line.ends_with(": "), "{line}");
    }
    // The exit status is whether anything is to fix.
    let fixes = text.lines().filter(|l| l.starts_with("[FIX]")).count();
    assert_eq!(code, if fixes == 0 { 0 } else { 1 }, "{text}");
    // The open-file need follows server.max_connections and the shards.
    let need = stapes::io::doctor::files_needed(10, 2);
    assert!(text.contains(&format!("needed: {need}: one per WebSocket")), "{text}");
}

#[test]
fn doctor_names_the_driver_the_operator_chose() {
    let (text, _) = doctor("10", Some("epoll"));
    assert!(text.contains("[info] io driver: epoll, chosen by STAPES_IO_DRIVER"), "{text}");
    // Four billion connections need more memory than any host has.
    let (text, code) = doctor("4000000000", None);
    assert!(text.contains("[FIX]  memory: "), "{text}");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("setting(s) to fix for this load."), "{text}");
}

#[test]
fn doctor_takes_a_config_file_and_refuses_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("stapes-doctor-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yml");
    std::fs::write(
        &path,
        "server:\n  max_connections: 1234\napps:\n  - id: \"1\"\n    key: k\n    secret: s\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stapes"))
        .args(["doctor", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("stapes doctor: can this host hold 1234 connections"), "{text}");
    std::fs::write(&path, "server:\n  max_connections: 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stapes"))
        .args(["doctor", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let _ = std::fs::remove_dir_all(&dir);
}
