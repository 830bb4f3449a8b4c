//! The binary's command line and configuration errors.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::process::Command;

fn stapes() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stapes"))
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stapes-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_accepts_the_shipped_config_yml() {
    let path = format!("{}/config.yml", env!("CARGO_MANIFEST_DIR"));
    let out = stapes().arg("--check-config").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_bad_config_exits_non_zero_naming_the_key() {
    let path = write(
        "bad.yml",
        "server:\n  port: 99999\napps:\n  - id: \"1\"\n    key: k\n    secret: s\n",
    );
    let out = stapes().arg("--check-config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.port"));
    let path = write(
        "unknown.yml",
        "server:\n  prot: 1\napps:\n  - id: \"1\"\n    key: k\n    secret: s\n",
    );
    let out = stapes().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prot"));
    let out = stapes().arg("--config").arg("/nonexistent.yml").output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn unknown_arguments_are_refused() {
    let out = stapes().arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_embedded_default_takes_its_app_from_the_environment() {
    let port = common::free_port();
    let mut child = stapes()
        .env("STAPES_PORT", port.to_string())
        .env("STAPES_APP_KEY", "env-key")
        .env("STAPES_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "no listener");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let c = common::Client::connect(port, "/app/env-key?protocol=7");
    assert!(!c.socket_id.is_empty());
    let _ = child.kill();
    let _ = child.wait();
}
