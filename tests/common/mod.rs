//! Starts the real `stapes` binary on free ports and talks to it with raw
//! TCP, a tungstenite WebSocket client, and hand-signed HTTP requests.
#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used, clippy::disallowed_methods)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, protocol::CloseFrame};

pub mod redis_server;
#[allow(unused_imports)] // not every test binary starts a Redis
pub use redis_server::Redis;

pub const APP_ID: &str = "1001";
pub const KEY: &str = "test-key";
pub const SECRET: &str = "test-secret";
/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// Deadline for anything that depends on Redis (re)connecting.
pub const SLOW: Duration = Duration::from_secs(30);

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
    child: Option<Child>,
    dir: PathBuf,
    /// Whether stdout and stderr go to `output.log` in `dir`.
    logged: bool,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The default test config: two shards, one app with client events, one
/// without, a small activity timeout where asked.
pub fn config(port: u16, extra_server: &str, extra_apps: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  shards: 2\n{extra_server}\napps:\n  - id: \"{APP_ID}\"\n    key: {KEY}\n    secret: {SECRET}\n    client_events: true\n{extra_apps}"
    )
}

impl Server {
    pub fn start() -> Server {
        let port = free_port();
        Server::start_with(port, None, &config(port, "", ""), &[])
    }

    pub fn start_with(
        port: u16,
        tls_port: Option<u16>,
        yaml: &str,
        env: &[(&str, &str)],
    ) -> Server {
        Server::spawn(port, tls_port, yaml, env, false)
    }

    /// Like [`Server::start_with`], with stdout and stderr kept in a file
    /// ([`Server::output`]) instead of the test's stderr; printed if the
    /// test fails.
    pub fn start_logged(port: u16, yaml: &str, env: &[(&str, &str)]) -> Server {
        Server::spawn(port, None, yaml, env, true)
    }

    fn spawn(
        port: u16,
        tls_port: Option<u16>,
        yaml: &str,
        env: &[(&str, &str)],
        logged: bool,
    ) -> Server {
        let dir = std::env::temp_dir().join(format!("stapes-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yml");
        std::fs::write(&path, yaml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stapes"));
        cmd.arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if logged {
            let log = std::fs::File::create(dir.join("output.log")).unwrap();
            cmd.stdout(log.try_clone().unwrap()).stderr(log);
        }
        // Quiet by default; a failing test still shows warnings and errors.
        cmd.env("STAPES_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut server = Server { port, tls_port, child: Some(child), dir, logged };
        let deadline = Instant::now() + WAIT;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited during start-up: {status}\n{}", server.output());
            }
            assert!(Instant::now() < deadline, "server did not listen within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// What a [`Server::start_logged`] server wrote so far (stdout and
    /// stderr together); empty for the others.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("output.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not exit within {WAIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
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

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.logged && std::thread::panicking() {
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

    /// Asserts nothing arrives within `d`.
    pub fn quiet(&mut self, d: Duration) {
        self.ws.get_ref().set_read_timeout(Some(d)).unwrap();
        match self.ws.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
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
