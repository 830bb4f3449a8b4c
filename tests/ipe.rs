//! IPÊ drop-in (issue #13): IPÊ's README sample config, verbatim, loads
//! and serves; IPÊ's `-config` flag works. Where each IPÊ key and variable
//! lands, and the errors that name them, are unit tests in
//! `src/config/ipe.rs`; pusher-js and the Node SDK against the same file
//! are `tests/conformance/ipe.test.mjs`.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use common::{Client, Server, WAIT, post, signed_path};
use serde_json::json;

/// IPÊ's README sample, verbatim.
const SAMPLE: &str = include_str!("fixtures/ipe-readme.yml");
const SAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ipe-readme.yml");
const KEY: &str = "278d525bdf162c739803";
const SECRET: &str = "ipe-secret";

fn stapes() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stapes"));
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

#[test]
fn check_config_accepts_the_readme_sample_with_its_secret_set() {
    let out =
        stapes().env("APP_SECRET", SECRET).arg("--check-config").arg(SAMPLE_PATH).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": OK (1 apps)\n"));
    // IPÊ expands an unset variable to nothing; stapes then refuses the
    // empty secret, naming the key, with the configuration exit status.
    let out = stapes().arg("--check-config").arg(SAMPLE_PATH).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apps[0].secret: must not be empty"), "{stderr}");
}

#[test]
fn a_bad_value_names_the_ipe_key() {
    let dir = std::env::temp_dir().join(format!("stapes-ipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yml");
    std::fs::write(&path, SAMPLE.replace("app_id: \"1\"", "app_id: \"one\"")).unwrap();
    let out = stapes()
        .env("APP_SECRET", SECRET)
        .args(["-config"])
        .arg(&path)
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    // -config and --check-config are exclusive, as --config is.
    assert_eq!(out.status.code(), Some(2));
    let out = stapes().env("APP_SECRET", SECRET).arg("--check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"apps[0].app_id: must be digits only, got "one""#), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Subscribes to a channel of the sample's app, triggers an event through
/// the signed HTTP API, and reads it back.
fn event_round_trip(port: u16) {
    let path = format!("/app/{KEY}?protocol=7&client=js&version=8.4.0&flash=false");
    let mut client = Client::connect(port, &path);
    let ok = client.subscribe("ipe-news");
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    let body = json!({"name": "update", "channel": "ipe-news", "data": "{\"n\":1}"}).to_string();
    let reply =
        post(port, &signed_path("POST", "/apps/1/events", body.as_bytes(), KEY, SECRET), &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let event = client.event();
    assert_eq!(
        (event["event"].as_str(), event["data"].as_str()),
        (Some("update"), Some("{\"n\":1}"))
    );
}

#[test]
fn the_readme_sample_serves_websockets_and_the_http_api() {
    let server = Server::start_with(SAMPLE, &[("APP_SECRET", SECRET)]);
    event_round_trip(server.port);
}

/// The binary, started as IPÊ's unit file starts IPÊ: glog's
/// `-logtostderr`, then `-config FILE` (Go's single dash).
#[test]
fn the_binary_takes_ipes_command_line() {
    let dir = std::env::temp_dir().join(format!("stapes-ipe-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("output.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = stapes()
        .env("APP_SECRET", SECRET)
        .env("STAPES_HOST", "127.0.0.1")
        .env("STAPES_PORT", "0")
        .env("STAPES_SHARDS", "1")
        .env("STAPES_LOG", "info")
        .args(["-logtostderr", "-config"])
        .arg(SAMPLE_PATH)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let port = loop {
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(port) = listening_port(&out) {
            assert!(out.contains("ignoring IPÊ's logging flag -logtostderr"), "{out}");
            break port;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("stapes exited during start-up: {status}\n{out}");
        }
        assert!(Instant::now() < deadline, "stapes did not listen within {WAIT:?}\n{out}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    event_round_trip(port);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The plain port from the `stapes listening` log line (port 0 was asked for).
fn listening_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("stapes listening"))?;
    let addr = &line[line.find("plain=")? + "plain=".len()..];
    let addr = addr.trim_start_matches("Some(");
    addr[..addr.find([' ', ')'])?].parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}
