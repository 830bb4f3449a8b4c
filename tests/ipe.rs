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
use stapes::config::{Config, ConfigError, RedisMode};

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

/// `text` loaded as a file named `config.yml` with `vars` as the environment.
fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stapes-ipe-load-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yml");
    std::fs::write(&path, text).unwrap();
    let env = vars.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect();
    let loaded = stapes::config::load_file(&path, &env);
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

/// The error loading `text`, with the file named `config.yml`.
fn err(text: &str, vars: &[(&str, &str)]) -> String {
    match load(text, vars) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => {
            let e = e.to_string();
            e.find("config.yml: ").map_or(e.clone(), |at| e[at..].to_owned())
        }
    }
}

#[test]
fn the_readme_sample_lands_where_the_mapping_says() {
    let c = load(SAMPLE, &[("APP_SECRET", "s3cret")]).expect("loads");
    assert_eq!((c.server.host.to_string(), c.server.port), ("0.0.0.0".into(), 8080));
    assert!(c.tls.is_none() && c.redis.is_none());
    let app = &c.apps[0];
    assert_eq!(
        (app.id.as_str(), app.key.as_str(), app.secret.as_str()),
        ("1", "278d525bdf162c739803", "s3cret")
    );
    assert_eq!((app.enabled, app.only_ssl, app.client_events), (true, false, true));
    assert_eq!(app.webhooks.len(), 1);
    assert_eq!(app.webhooks[0].url, "http://127.0.0.1:5000/hook");
    assert!(c.notes.is_empty());
    let ssl = SAMPLE
        .replace("enabled: false", "enabled: true")
        .replace("profiling: false", "profiling: true");
    let c = load(&ssl, &[("APP_SECRET", "s")]).expect("loads");
    let tls = c.tls.expect("ssl.enabled makes tls");
    assert_eq!(
        (tls.port, tls.cert_file.to_str(), tls.key_file.to_str()),
        (4343, Some("cert.pem"), Some("key.pem"))
    );
    assert_eq!(c.notes.len(), 1, "profiling is noted");
    let off = "host: \"127.0.0.1:0\"\napps:\n  - {app_id: \"2\", key: k, secret: s, webhooks: {url: \"http://h/\"}}\n";
    let c = load(off, &[]).expect("loads");
    let app = &c.apps[0];
    assert_eq!((c.server.host.to_string(), c.server.port), ("127.0.0.1".into(), 0));
    assert_eq!(
        (app.enabled, app.client_events, app.webhooks.len()),
        (false, false, 0),
        "Go's zero values"
    );
    assert_eq!(load("host: \"\"\n", &[]).map(|c| c.server.port).ok(), None, "no app");
}

#[test]
fn stapes_variables_still_apply() {
    let c = load(SAMPLE, &[("APP_SECRET", "s"), ("STAPES_PORT", "9000"), ("STAPES_SHARDS", "3")])
        .expect("loads");
    assert_eq!((c.server.port, c.server.shards), (9000, Some(3)));
}

#[test]
fn redis_variables_land_in_the_redis_section() {
    let c = load(
        SAMPLE,
        &[
            ("APP_SECRET", "s"),
            ("REDIS_HOST", "r.local"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2"),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_TLS_ENABLED", "true"),
            ("IPE_INSTANCE_ID", "node-1"),
        ],
    )
    .expect("loads");
    let r = c.redis.expect("REDIS_HOST turns Redis on");
    assert_eq!(
        (r.url.as_str(), r.password.as_deref(), r.tls, r.instance.as_deref()),
        ("redis://r.local:6380/2", Some("pw"), Some(true), Some("node-1"))
    );
    assert_eq!(r.mode, RedisMode::Standalone);
    let c = load(
        SAMPLE,
        &[("APP_SECRET", "s"), ("REDIS_CLUSTER_MODE", "true"), ("REDIS_ADDRS", "a:7000,b:7001")],
    )
    .expect("loads");
    let r = c.redis.expect("REDIS_ADDRS turns Redis on");
    assert_eq!(
        (r.mode, r.nodes.clone(), r.url.as_str()),
        (RedisMode::Cluster, vec!["a:7000".to_owned(), "b:7001".to_owned()], "")
    );
    let c = load(SAMPLE, &[("APP_SECRET", "s"), ("IPE_INSTANCE_ID", "alone")])
        .expect("no Redis needed");
    assert!(c.redis.is_none());
    let c = load(
        SAMPLE,
        &[("APP_SECRET", "s"), ("REDIS_HOST", "h"), ("STAPES_REDIS_URL", "redis://other/1")],
    )
    .expect("loads");
    assert_eq!(c.redis.expect("on").url, "redis://other/1", "STAPES_* above IPÊ's variables");
}

#[test]
fn errors_name_the_ipe_key_or_variable() {
    let s = &[("APP_SECRET", "s")][..];
    for (text, vars, message) in [
        (
            SAMPLE.replace("\":8080\"", "\"8080\""),
            s,
            r#"host: expected [address]:port such as ":8080" or "127.0.0.1:8080", got "8080""#,
        ),
        (
            SAMPLE.replace("app_id: \"1\"", "app_id: \"one\""),
            s,
            r#"apps[0].app_id: must be digits only, got "one""#,
        ),
        (
            SAMPLE.replace("user_events: true", "user_events: often"),
            s,
            r#"apps[0].user_events: expected true or false, got "often""#,
        ),
        (
            SAMPLE.replace("enabled: true\n    only", "enabled: yes\n    only"),
            s,
            r#"apps[0].enabled: expected true or false, got "yes""#,
        ),
        (
            SAMPLE.replace("http://127.0.0.1:5000/hook", "ftp://h/"),
            s,
            r#"apps[0].webhooks.url: expected an http:// or https:// URL, got scheme "ftp""#,
        ),
        (
            SAMPLE.replace("enabled: true\n      url", "enabled: 2\n      url"),
            s,
            r#"apps[0].webhooks.enabled: expected true or false, got "2""#,
        ),
        (
            SAMPLE.replace("profiling: false", "profiling: maybe"),
            s,
            r#"profiling: expected true or false, got "maybe""#,
        ),
        (
            SAMPLE.replace(
                "enabled: false\n  host: \":4343\"",
                "enabled: true\n  host: \"10.0.0.1:4343\"",
            ),
            s,
            "ssl.host: must listen on the same address as host (0.0.0.0): stapes serves TLS on a second port of it, got 10.0.0.1",
        ),
        (
            SAMPLE.replace("enabled: false\n  host: \":4343\"", "enabled: true\n  host: \":8080\""),
            s,
            "ssl.host: must differ from server.port, both are 8080",
        ),
        (
            SAMPLE.replace("user_events", "client_events"),
            s,
            "config.yml: unknown key \"apps[0].client_events\"",
        ),
        (SAMPLE.replace("profiling", "profile"), s, "config.yml: unknown key \"profile\""),
        (SAMPLE.to_owned(), &[], "apps[0].secret: must not be empty"),
        (
            SAMPLE.to_owned(),
            &[("APP_SECRET", "s"), ("REDIS_HOST", "h"), ("REDIS_PORT", "x")],
            r#"redis.url: expected a port from 1 to 65535, got "x" (from REDIS_PORT)"#,
        ),
        (
            SAMPLE.to_owned(),
            &[("APP_SECRET", "s"), ("REDIS_HOST", "h"), ("REDIS_DB", "-1")],
            r#"redis.url: expected a database number, got "-1" (from REDIS_DB)"#,
        ),
        (
            SAMPLE.to_owned(),
            &[
                ("APP_SECRET", "s"),
                ("REDIS_HOST", "h"),
                ("REDIS_DB", "3"),
                ("REDIS_CLUSTER_MODE", "1"),
            ],
            "redis.url: names a database other than 0, which Redis Cluster does not have (from REDIS_HOST, REDIS_DB)",
        ),
        (
            SAMPLE.to_owned(),
            &[("APP_SECRET", "s"), ("REDIS_ADDRS", "h"), ("REDIS_CLUSTER_MODE", "on")],
            r#"redis.mode: expected true or false, got "on" (from REDIS_CLUSTER_MODE)"#,
        ),
        (
            SAMPLE.to_owned(),
            &[("APP_SECRET", "s"), ("REDIS_ADDRS", "a:1,b")],
            r#"redis.nodes: expected host:port, got "b" (from REDIS_ADDRS)"#,
        ),
        (
            SAMPLE.to_owned(),
            &[("APP_SECRET", "s"), ("REDIS_ADDRS", "a:1"), ("REDIS_TLS_ENABLED", "y")],
            r#"redis.tls: expected true or false, got "y" (from REDIS_TLS_ENABLED)"#,
        ),
        (
            SAMPLE.to_owned(),
            &[("APP_SECRET", "s"), ("REDIS_PASSWORD", "pw")],
            "redis: REDIS_PASSWORD is set but neither REDIS_HOST nor REDIS_ADDRS is; one of them turns Redis on",
        ),
    ] {
        assert_eq!(err(&text, vars), message);
    }
}
