//! Runs stapes in the test process (`stapes::server::run` on sockets bound
//! to port 0 here), or the real binary where only a process will do, and
//! talks to it with raw TCP, a tungstenite WebSocket client, and
//! hand-signed HTTP requests.
#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used, clippy::disallowed_methods)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use stapes::server::{IoDriver, Listeners, Shutdown};
use tracing_subscriber::{filter::Targets, layer::SubscriberExt as _};

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, protocol::CloseFrame};

pub mod redis_server;
#[allow(unused_imports)] // not every test binary starts a Redis
pub use redis_server::{Redis, TlsFiles, create_cluster};

pub const APP_ID: &str = "1001";
pub const KEY: &str = "test-key";
pub const SECRET: &str = "test-secret";
/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// Deadline for anything that depends on Redis (re)connecting.
pub const SLOW: Duration = Duration::from_secs(30);

/// The value of `field` in `/proc/<pid>/status`, its words joined by one
/// space (e.g. `FDSize` → `"256"`, `Uid` → `"1000 1000 1000 1000"`).
pub fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Polls `done` every 20 ms; panics naming `what` after [`SLOW`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SLOW;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Server {
    pub port: u16,
    pub tls_port: Option<u16>,
    run: Running,
    dir: PathBuf,
}

/// How the server under test runs.
enum Running {
    /// `stapes::server::run` on a thread of this test process, on sockets
    /// the harness bound itself (port 0), logging to `output.log`.
    InProcess { shutdown: Shutdown, thread: Option<JoinHandle<Result<(), String>>> },
    /// The real binary, for what only a process shows (signals, exit codes).
    Process(Option<Child>),
}

/// How a server stopped.
#[derive(Debug)]
pub struct Stopped {
    ok: bool,
    detail: String,
}

impl Stopped {
    pub fn success(&self) -> bool {
        self.ok
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// A free port for something that is not stapes (a Redis that appears
/// later, a receiver that never listens): bound, read, released.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The default test config: two shards, one app with client events, more
/// apps from `extra_apps`. Its ports are placeholders: [`Server::start_with`]
/// binds free ones (port 0) whatever the file says.
pub fn config(extra_server: &str, extra_apps: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 6001\n  shards: 2\n{extra_server}\napps:\n  - id: \"{APP_ID}\"\n    key: {KEY}\n    secret: {SECRET}\n    client_events: true\n{extra_apps}"
    )
}

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stapes-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&config("", ""), &[])
    }

    /// Runs the server in this process on the config `yaml` (port 0 lets
    /// it pick) with `env` as its only environment. Its log (level
    /// `STAPES_LOG` from `env`, else `STAPES_TEST_LOG` from the test's own
    /// environment, else warn) goes to [`Server::output`] and is printed
    /// when the test fails.
    pub fn start_with(yaml: &str, env: &[(&str, &str)]) -> Server {
        let dir = scratch_dir();
        let path = dir.join("config.yml");
        std::fs::write(&path, yaml).unwrap();
        let mut vars: Vec<(String, String)> =
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        if !vars.iter().any(|(k, _)| k == "STAPES_LOG") {
            let level = std::env::var("STAPES_TEST_LOG").unwrap_or_else(|_| "warn".into());
            vars.push(("STAPES_LOG".into(), level));
        }
        let lookup = |key: &str| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let env: stapes::config::Env = vars.iter().cloned().collect();
        let mut config = stapes::config::load_file(&path, &env)
            .unwrap_or_else(|e| panic!("test config refused: {e}"));
        // Free ports, picked by the kernel as the listeners bind: no port
        // is chosen ahead and released for another test to take.
        config.server.port = 0;
        if let Some(tls) = config.tls.as_mut() {
            tls.port = 0;
        }
        let filter = Targets::from_str(&config.server.log).unwrap();
        let log = std::fs::File::create(dir.join("output.log")).unwrap();
        // The binary's own log format: one line per event, control
        // characters escaped.
        let subscriber = tracing_subscriber::registry()
            .with(stapes::io::logging::layer(Mutex::new(log)))
            .with(filter);
        let dispatch = tracing::Dispatch::new(subscriber);
        let driver = IoDriver::from_env(lookup("STAPES_IO_DRIVER").as_deref()).unwrap();
        let listeners = Listeners::bind(&config).unwrap().with_driver(driver);
        let port = listeners.plain_addr().unwrap().port();
        let tls_port = listeners.tls_addr().map(|a| a.port());
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                stapes::server::run(listeners, config, stop).map_err(|e| e.to_string())
            })
        });
        Server { port, tls_port, run: Running::InProcess { shutdown, thread: Some(thread) }, dir }
    }

    /// Same as [`Server::start_with`]: every in-process server keeps its log.
    pub fn start_logged(yaml: &str, env: &[(&str, &str)]) -> Server {
        Server::start_with(yaml, env)
    }

    /// Runs the real binary, for what only a process shows (signals, exit
    /// status). The binary binds the port in its config, so this is the one
    /// place a port is picked ahead (the placeholder becomes a free port):
    /// keep binary-level tests few.
    pub fn start_binary(yaml: &str, env: &[(&str, &str)]) -> Server {
        Server::start_binary_limited(yaml, env, None)
    }

    /// [`Server::start_binary`] with the process's open-file limit set to
    /// `open_files` (soft and hard), as `ulimit -n` would.
    pub fn start_binary_limited(
        yaml: &str,
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Server {
        let dir = scratch_dir();
        let path = dir.join("config.yml");
        let yaml = yaml.replace("port: 6001", &format!("port: {}", free_port()));
        std::fs::write(&path, yaml).unwrap();
        let log = std::fs::File::create(dir.join("output.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stapes"));
        cmd.arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("STAPES_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = open_files {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let mut server =
            Server { port: 0, tls_port: None, run: Running::Process(Some(child)), dir };
        let deadline = Instant::now() + WAIT;
        loop {
            let out = server.output();
            if let Some(port) = listening_port(&out) {
                server.port = port;
                return server;
            }
            if let Running::Process(Some(child)) = &mut server.run
                && let Some(status) = child.try_wait().unwrap()
            {
                panic!("server exited during start-up: {status}\n{out}");
            }
            assert!(Instant::now() < deadline, "server did not listen within {WAIT:?}\n{out}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server logged so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("output.log")).unwrap_or_default()
    }

    /// Stops the server gracefully (SIGTERM for the binary) and waits,
    /// bounded, for it to end.
    /// Starts the graceful stop (as SIGTERM does) without waiting for it;
    /// [`Server::terminate`] waits for the end.
    pub fn begin_stop(&self) {
        match &self.run {
            Running::InProcess { shutdown, .. } => shutdown.trigger(),
            Running::Process(_) => panic!("begin_stop is for in-process servers"),
        }
    }

    pub fn terminate(&mut self) -> Stopped {
        match &mut self.run {
            Running::InProcess { shutdown, thread } => {
                shutdown.trigger();
                let thread = thread.take().unwrap();
                let deadline = Instant::now() + WAIT;
                while !thread.is_finished() {
                    assert!(Instant::now() < deadline, "server did not stop within {WAIT:?}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                match thread.join() {
                    Ok(Ok(())) => Stopped { ok: true, detail: "stopped".into() },
                    Ok(Err(e)) => Stopped { ok: false, detail: e },
                    Err(_) => Stopped { ok: false, detail: "panicked".into() },
                }
            }
            Running::Process(child) => {
                let mut child = child.take().unwrap();
                // SAFETY: plain kill(2) on our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + WAIT;
                loop {
                    if let Some(status) = child.try_wait().unwrap() {
                        return Stopped { ok: status.success(), detail: status.to_string() };
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        panic!("server did not exit within {WAIT:?} of SIGTERM");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Kills the binary with SIGKILL (no shutdown at all) and reaps it.
    pub fn kill(&mut self) {
        let Running::Process(child) = &mut self.run else {
            panic!("only the binary can be killed; start it with Server::start_binary");
        };
        let mut child = child.take().expect("the server is still running");
        // SAFETY: plain kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }

    /// The binary's process id, e.g. to read `/proc/<pid>/status`.
    pub fn pid(&self) -> Option<u32> {
        match &self.run {
            Running::Process(Some(child)) => Some(child.id()),
            Running::Process(None) | Running::InProcess { .. } => None,
        }
    }

    /// Whether the server still runs.
    pub fn alive(&mut self) -> bool {
        match &mut self.run {
            Running::InProcess { thread, .. } => thread.as_ref().is_some_and(|t| !t.is_finished()),
            Running::Process(child) => {
                child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
            }
        }
    }

    pub fn ws(&self) -> Client {
        Client::connect(
            self.port,
            &format!("/app/{KEY}?protocol=7&client=js&version=8.4.0&flash=false"),
        )
    }

    pub fn ws_path(&self, path: &str) -> WebSocket<TcpStream> {
        ws_connect(self.port, path)
    }
}

/// The plain port from the binary's `stapes listening` log line.
fn listening_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("stapes listening"))?;
    let at = line.find("plain=")?;
    let addr = &line[at + "plain=".len()..];
    let addr = addr.trim_start_matches("Some(");
    let end = addr.find([' ', ')'])?;
    addr[..end].parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.run {
            Running::InProcess { shutdown, thread } => {
                shutdown.trigger();
                if let Some(thread) = thread.take() {
                    let deadline = Instant::now() + WAIT;
                    while !thread.is_finished() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            Running::Process(child) => {
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("--- stapes output ---\n{}", self.output());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn ws_connect(port: u16, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream).unwrap();
    ws
}

/// What a test reads from a WebSocket.
#[derive(Debug, PartialEq)]
pub enum Got {
    Event(Value),
    Close(Option<u16>),
}

pub fn next<S: Read + Write>(ws: &mut WebSocket<S>) -> Got {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Got::Event(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(frame)) => {
                return Got::Close(frame.map(|f: CloseFrame| u16::from(f.code)));
            }
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Got::Close(None);
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub socket_id: String,
}

impl Client {
    pub fn connect(port: u16, path: &str) -> Client {
        let mut ws = ws_connect(port, path);
        let hello = event(&mut ws);
        assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
        let data = data_of(&hello);
        let socket_id = data["socket_id"].as_str().unwrap().to_owned();
        Client { ws, socket_id }
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn next(&mut self) -> Got {
        next(&mut self.ws)
    }

    pub fn event(&mut self) -> Value {
        event(&mut self.ws)
    }

    pub fn subscribe(&mut self, channel: &str) -> Value {
        let auth = if channel.starts_with("private-") {
            sign_auth(&format!("{}:{channel}", self.socket_id))
        } else {
            String::new()
        };
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}));
        self.event()
    }

    pub fn join(&mut self, channel: &str, user_id: &str) -> Value {
        let data = json!({"user_id": user_id, "user_info": {"name": user_id}}).to_string();
        let auth = sign_auth(&format!("{}:{channel}:{data}", self.socket_id));
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":data}}));
        self.event()
    }
}

pub fn event<S: Read + Write>(ws: &mut WebSocket<S>) -> Value {
    match next(ws) {
        Got::Event(v) => v,
        Got::Close(code) => panic!("expected an event, got close {code:?}"),
    }
}

pub fn data_of(v: &Value) -> Value {
    match &v["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

pub fn hmac_hex(secret: &str, msg: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn sign_auth(msg: &str) -> String {
    format!("{KEY}:{}", hmac_hex(SECRET, msg))
}

pub fn md5_hex(body: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(body))
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A signed API request path+query (spec §12.2).
pub fn signed_path(method: &str, path: &str, body: &[u8], key: &str, secret: &str) -> String {
    let mut params = vec![
        ("auth_key".to_owned(), key.to_owned()),
        ("auth_timestamp".to_owned(), now_unix().to_string()),
        ("auth_version".to_owned(), "1.0".to_owned()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".to_owned(), md5_hex(body)));
    }
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let sig = hmac_hex(secret, &format!("{method}\n{path}\n{query}"));
    format!("{path}?{query}&auth_signature={sig}")
}

pub struct HttpReply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One request on a fresh connection (`Connection: close`).
pub fn http(port: u16, raw: &[u8]) -> HttpReply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_reply(&out)
}

pub fn parse_reply(out: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    HttpReply { status, headers: head.to_owned(), body: body.to_owned() }
}

/// A signed GET with extra query parameters (sent unescaped; the test
/// values need no escaping). `body_md5` of the empty body is added when
/// asked, as pusher-http-python does.
pub fn get_signed(port: u16, path: &str, extra: &[(&str, &str)], empty_md5: bool) -> HttpReply {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), KEY.into()),
        ("auth_timestamp".into(), now_unix().to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if empty_md5 {
        params.push(("body_md5".into(), md5_hex(b"")));
    }
    params.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let sig = hmac_hex(SECRET, &format!("GET\n{path}\n{query}"));
    let raw = format!(
        "GET {path}?{query}&auth_signature={sig} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    http(port, raw.as_bytes())
}

pub fn post(port: u16, path_and_query: &str, body: &str) -> HttpReply {
    let raw = format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(port, raw.as_bytes())
}

pub fn trigger(port: u16, body: &Value) -> HttpReply {
    let body = body.to_string();
    let path = format!("/apps/{APP_ID}/events");
    post(port, &signed_path("POST", &path, body.as_bytes(), KEY, SECRET), &body)
}

/// The value of the `/metrics` sample written exactly as `series`.
pub fn metric(port: u16, series: &str) -> Option<u64> {
    let reply = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    reply.body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// One HTTP/1.1 request as a local mock receiver reads it.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads the next request off a keep-alive connection; `None` when the
/// peer closed it.
pub fn read_request<R: std::io::BufRead>(reader: &mut R) -> Option<ReadRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(ReadRequest { method, path, headers, body })
}
