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

/// Runs `stapes --config <path>` expecting it to stop during start-up; a
/// server that keeps running fails the test rather than hanging it.
fn start_up_failure(path: &std::path::Path) -> (Option<i32>, String) {
    use std::io::Read as _;
    let mut child = stapes()
        .arg("--config")
        .arg(path)
        .env("STAPES_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("stapes kept running with {}", path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

/// The TLS files are configuration: a missing, unreadable or garbled
/// certificate or key, or a key that does not match the certificate, stops
/// start-up with status 78 and names the key to fix.
#[test]
fn bad_tls_files_exit_78_naming_the_key() {
    let fixture = |name: &str| format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let (cert, key) = (fixture("localhost.crt"), fixture("localhost.key"));
    let garbage = write("garbage.pem", "not PEM at all\n");
    let garbage = garbage.to_str().unwrap();
    // A directory opens but cannot be read (root reads any file, whatever
    // its mode).
    let unreadable = std::env::temp_dir();
    let unreadable = unreadable.to_str().unwrap();
    let other_key = fixture("apns-test-key.p8");
    let cases = [
        ("/nonexistent/stapes/cert.pem", key.as_str(), "tls.cert_file"),
        (cert.as_str(), "/nonexistent/stapes/key.pem", "tls.key_file"),
        (unreadable, key.as_str(), "tls.cert_file"),
        (cert.as_str(), unreadable, "tls.key_file"),
        (garbage, key.as_str(), "tls.cert_file"),
        (cert.as_str(), garbage, "tls.key_file"),
        (key.as_str(), key.as_str(), "tls.cert_file"),
        (cert.as_str(), other_key.as_str(), "tls.key_file"),
    ];
    for (n, (cert_file, key_file, named)) in cases.into_iter().enumerate() {
        let yaml = format!(
            "server:\n  port: {}\ntls:\n  port: {}\n  cert_file: {cert_file}\n  \
             key_file: {key_file}\napps:\n  - id: \"1\"\n    key: k\n    secret: s\n",
            common::free_port(),
            common::free_port(),
        );
        let (code, stderr) = start_up_failure(&write(&format!("tls-{n}.yml"), &yaml));
        assert_eq!(code, Some(78), "{cert_file} / {key_file}: {stderr}");
        assert!(stderr.contains(named), "{cert_file} / {key_file} should name {named}: {stderr}");
    }
}
