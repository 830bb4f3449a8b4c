//! Mobile push end to end: the real `stapes` binary (two shards), a real
//! `redis-server` on a free loopback port carrying the Incus commands
//! (RPUSH `Incus_Queue`) and the error lists, and a mock FCM written here:
//! HTTP/1.1 on 127.0.0.1, serving both the OAuth2 token endpoint and
//! `messages:send`, answering from a fixed script keyed by the registration
//! token, and recording every request with its arrival instant.
//!
//! No assertion is about speed. Waits are bounded polls; the only time
//! compared is the gap between two tries of one token, which Retry-After
//! makes a lower bound (behaviour, not performance).
//!
//! APNs cannot be reached here (a2 has a fixed endpoint), so iOS pushes
//! are only ever sent when they are to be refused before sending.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use common::*;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

const PROJECT: &str = "demo-project";
const CLIENT_EMAIL: &str = "push@demo-project.iam.gserviceaccount.com";
/// What the mock's token endpoint hands out, followed by `-<n>` for its
/// n-th token; must never reach a log.
const ACCESS_TOKEN: &str = "ya29.mock-access-token-5e1f9c2b7d";
const QUEUE: &str = "Incus_Queue";
const ANDROID_ERRORS: &str = "Incus_Android_Error_Queue";
const FCM_KEY_PEM: &str = include_str!("fixtures/fcm-test-key.pem");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

// ------------------------------------------------------------- mock FCM

/// One request the mock received.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

impl Req {
    fn is_token(&self) -> bool {
        self.path == "/token"
    }

    /// `message.token` of a send.
    fn registration_id(&self) -> Option<String> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v["message"]["token"].as_str().map(str::to_owned)
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// How long the mock waits before answering.
    delay: Duration,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply { status, headers: Vec::new(), body, delay: Duration::ZERO }
    }
}

fn fcm_error(status: u16, grpc: &str, code: &str) -> String {
    json!({"error": {"code": status, "message": "scripted", "status": grpc, "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]}})
    .to_string()
}

/// The message name the mock gives an accepted send.
fn message_name(id: &str) -> String {
    format!("projects/{PROJECT}/messages/m-{id}")
}

/// The script: what a send to registration token `id` gets on its
/// `attempt`-th try (0 first), by the token's prefix.
fn answer(id: &str, attempt: usize) -> Reply {
    let prefix = id.split('-').next().unwrap_or_default();
    match (prefix, attempt) {
        ("unreg", _) => Reply::json(404, fcm_error(404, "NOT_FOUND", "UNREGISTERED")),
        ("invalid", _) => Reply::json(400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")),
        ("mismatch", _) => {
            Reply::json(403, fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"))
        }
        ("busy503", 0) => Reply {
            headers: vec![("Retry-After", "1".to_owned())],
            ..Reply::json(503, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"))
        },
        ("busy429", 0) => Reply {
            headers: vec![("Retry-After", "1".to_owned())],
            ..Reply::json(429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"))
        },
        // A revoked access token, as FCM says it (no FCM error code).
        ("unauth", 0) => Reply::json(
            401,
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED",
                "message": "Request had invalid authentication credentials."}})
            .to_string(),
        ),
        ("down500", _) => Reply::json(500, fcm_error(500, "INTERNAL", "INTERNAL")),
        // Answers long after any push_timeout_secs used here.
        ("hang", _) => Reply {
            delay: Duration::from_secs(5),
            ..Reply::json(200, json!({"name": message_name(id)}).to_string())
        },
        _ => Reply::json(200, json!({"name": message_name(id)}).to_string()),
    }
}

/// A loopback HTTP/1.1 FCM (keep-alive, Content-Length bodies).
struct MockFcm {
    port: u16,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl MockFcm {
    fn start() -> MockFcm {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = Arc::clone(&log);
                thread::spawn(move || serve(stream, &log));
            }
        });
        MockFcm { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn token_url(&self) -> String {
        format!("{}/token", self.url())
    }

    fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }

    fn tokens(&self) -> Vec<Req> {
        self.requests().into_iter().filter(Req::is_token).collect()
    }

    fn sends(&self) -> Vec<Req> {
        self.requests().into_iter().filter(|r| !r.is_token()).collect()
    }

    /// Sends to `id`, in arrival order.
    fn sends_to(&self, id: &str) -> Vec<Req> {
        self.sends().into_iter().filter(|r| r.registration_id().as_deref() == Some(id)).collect()
    }

    fn wait_sends_to(&self, id: &str, n: usize) -> Vec<Req> {
        wait_until(&format!("{n} send(s) to {id}"), || self.sends_to(id).len() >= n);
        self.sends_to(id)
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Req>>) {
    let mut reader = BufReader::new(stream);
    while let Some(ReadRequest { method, path, headers, body }) = read_request(&mut reader) {
        let req = Req {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        };
        let reply = {
            let mut seen = seen.lock().unwrap();
            let reply = if req.is_token() {
                let n = seen.iter().filter(|r| r.is_token()).count() + 1;
                let token = format!("{ACCESS_TOKEN}-{n}");
                Reply::json(
                    200,
                    json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
                        .to_string(),
                )
            } else {
                let id = req.registration_id().unwrap_or_default();
                let attempt = seen
                    .iter()
                    .filter(|r| r.registration_id().as_deref() == Some(id.as_str()))
                    .count();
                answer(&id, attempt)
            };
            seen.push(req);
            reply
        };
        thread::sleep(reply.delay);
        let mut head = format!(
            "HTTP/1.1 {} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&reply.body);
        if reader.get_mut().write_all(head.as_bytes()).is_err() {
            return;
        }
    }
}

// ------------------------------------------------------------- set-up

/// A service-account key file from the fixture RSA key, in a directory of
/// its own; `token_uri` is written into it when given.
fn service_account(name: &str, token_uri: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stapes-push-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut key = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": FCM_KEY_PEM,
        "client_email": CLIENT_EMAIL,
    });
    if let Some(uri) = token_uri {
        key["token_uri"] = uri.into();
    }
    let path = dir.join("service-account.json");
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

/// Redis, the mock, and stapes pointed at both, logging at debug into a
/// file so that [`Setup::assert_no_secrets`] can read everything it wrote.
struct Setup {
    redis: Redis,
    mock: MockFcm,
    server: Server,
    key: PathBuf,
}

/// Where stapes learns the mock's token endpoint.
#[derive(Clone, Copy)]
enum TokenUrl {
    /// `incus.fcm_token_url`.
    Config,
    /// The key file's `token_uri`.
    KeyFile,
}

impl Setup {
    /// `incus_extra` lines go under `incus:` (two-space indented).
    fn start(name: &str, token_url: TokenUrl, incus_extra: &str) -> Setup {
        let redis = Redis::start();
        let mock = MockFcm::start();
        let (key, token_url) = match token_url {
            TokenUrl::Config => {
                (service_account(name, None), format!("  fcm_token_url: {}\n", mock.token_url()))
            }
            TokenUrl::KeyFile => (service_account(name, Some(&mock.token_url())), String::new()),
        };
        let yaml = config("", "")
            + &format!(
                "incus:\n  fcm_enabled: true\n  fcm_project_id: {PROJECT}\n  \
                 fcm_service_account_file: {}\n  fcm_url: {}\n{token_url}{incus_extra}",
                key.display(),
                mock.url()
            )
            + &format!(
                "redis:\n  url: {}\n  instance: push-test\n  reconnect_max_ms: 200\n",
                redis.url()
            );
        let server = Server::start_logged(&yaml, &[("STAPES_LOG", "debug")]);
        Setup { redis, mock, server, key }
    }

    fn rpush(&self, command: &Value) {
        self.redis.rpush(QUEUE, &command.to_string());
    }

    fn metric(&self, series: &str) -> Option<u64> {
        metric(self.server.port, series)
    }

    fn wait_metric(&self, series: &str, n: u64) {
        wait_until(&format!("{series} to be {n}"), || self.metric(series) == Some(n));
    }

    fn error_list(&self) -> Vec<Value> {
        let entries: Vec<String> = self.redis.cmd(&["LRANGE", ANDROID_ERRORS, "0", "-1"]);
        entries.iter().map(|e| serde_json::from_str(e).unwrap()).collect()
    }

    /// Neither the private key, nor an assertion signed with it, nor the
    /// access token is in anything stapes wrote, at debug level.
    fn assert_no_secrets(&self) {
        let out = self.server.output();
        // The capture works: the push thread's start is logged at info.
        assert!(out.contains("push thread started"), "no log captured:\n{out}");
        for line in FCM_KEY_PEM.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!out.contains(line), "a line of the private key is in the log");
        }
        assert!(!out.contains(ACCESS_TOKEN), "the access token is in the log");
        for req in self.mock.tokens() {
            let assertion = req.body.rsplit('=').next().unwrap();
            let signature = assertion.rsplit('.').next().unwrap();
            assert!(!out.contains(signature), "a signed assertion is in the log");
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(dir) = self.key.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn android(ids: &str, event: &str, data: Value) -> Value {
    json!({"command": {"command": "push", "push_type": "android", "registration_ids": ids},
        "message": {"event": event, "data": data}})
}

fn sent(platform: &str) -> String {
    format!("stapes_push_sent_total{{platform=\"{platform}\"}}")
}

fn failed(platform: &str) -> String {
    format!("stapes_push_failed_total{{platform=\"{platform}\"}}")
}

fn retried(platform: &str) -> String {
    format!("stapes_push_retried_total{{platform=\"{platform}\"}}")
}

fn refused(platform: &str) -> String {
    format!("stapes_push_refused_total{{platform=\"{platform}\"}}")
}

/// The decoded `data` map of a send, checking that the body has the v1
/// shape and that every `data` value is a string.
fn send_data(req: &Req, id: &str) -> HashMap<String, String> {
    let body: Value = serde_json::from_str(&req.body).unwrap();
    let message = body["message"].as_object().unwrap();
    let keys: BTreeSet<&str> = message.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["token", "data"]), "{}", req.body);
    assert_eq!(message["token"], id);
    message["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap_or_else(|| panic!("data.{k} is not a string: {}", req.body));
            (k.clone(), v.to_owned())
        })
        .collect()
}

// ------------------------------------------------------------- tests

#[test]
fn token_grant_then_one_send_per_id_with_string_data() {
    let s = Setup::start("grant", TokenUrl::Config, "");
    s.rpush(&android("good1, good2", "an", json!({"a": 1, "internal_url": "/y"})));
    let sends = [s.mock.wait_sends_to("good1", 1), s.mock.wait_sends_to("good2", 1)];
    s.wait_metric(&sent("android"), 2);

    // One token request, RFC 7523, with a JWT Google would accept.
    let tokens = s.mock.tokens();
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    let grant = &tokens[0];
    assert_eq!(grant.method, "POST");
    assert_eq!(grant.headers["content-type"], "application/x-www-form-urlencoded");
    let assertion = grant
        .body
        .strip_prefix("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=")
        .unwrap_or_else(|| panic!("not a jwt-bearer grant: {}", grant.body));
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3, "{assertion}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}));
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/firebase.messaging");
    assert_eq!(claims["aud"], s.mock.token_url());
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 3600, "{claims}");
    assert!(iat.abs_diff(now_unix()) < 600, "iat is the current time: {claims}");
    let der: String = FCM_KEY_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
    let pair = RsaKeyPair::from_pkcs8(&STANDARD.decode(der).unwrap()).unwrap();
    let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public().as_ref());
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    public.verify(signed.as_bytes(), &signature).expect("RS256 signature by the fixture key");
    let mut tampered = signed.into_bytes();
    tampered[0] ^= 1;
    assert!(public.verify(&tampered, &signature).is_err(), "the check can fail");

    // One send per id, trimmed, after the grant, with its token.
    assert_eq!(s.mock.sends().len(), 2);
    for (req, id) in sends.iter().map(|r| &r[0]).zip(["good1", "good2"]) {
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, format!("/v1/projects/{PROJECT}/messages:send"));
        assert_eq!(req.headers["authorization"], format!("Bearer {ACCESS_TOKEN}-1"));
        assert_eq!(req.headers["content-type"], "application/json");
        assert!(req.at >= grant.at);
        let data = send_data(req, id);
        let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["data", "event", "time"]));
        let inner: Value = serde_json::from_str(&data["data"]).unwrap();
        assert_eq!(inner, json!({"a": 1, "internal_url": "/y"}));
        assert_eq!(data["event"], "an");
        let time: u64 = data["time"].parse().unwrap();
        assert!(time.abs_diff(now_unix()) < 600, "time is decimal UNIX seconds: {time}");
    }

    // The next push reuses the cached token.
    s.rpush(&android("good3", "again", json!({})));
    let again = s.mock.wait_sends_to("good3", 1);
    assert_eq!(again[0].headers["authorization"], format!("Bearer {ACCESS_TOKEN}-1"));
    s.wait_metric(&sent("android"), 3);
    assert_eq!(s.mock.tokens().len(), 1, "a second token request");
    assert_eq!(s.metric(&failed("android")), Some(0));
    assert_eq!(s.error_list(), Vec::<Value>::new(), "nothing failed, nothing reported");
    s.assert_no_secrets();
}

#[test]
fn each_fcm_error_code_lands_in_the_android_error_list() {
    let s = Setup::start("errors", TokenUrl::Config, "");
    let ids = ["good-e1", "unreg-e2", "invalid-e3", "mismatch-e4"];
    s.rpush(&android(&ids.join(","), "e", json!({"k": "v"})));
    wait_until("the error-list entry", || s.redis.llen(ANDROID_ERRORS) >= 1);
    let result = |message_id: &str, error: &str| json!({"message_id": message_id, "registration_id": "", "error": error});
    assert_eq!(
        s.error_list(),
        [json!({
            "registration_ids": ids,
            "results": [
                result(&message_name("good-e1"), ""),
                result("", "NotRegistered"),
                result("", "InvalidRegistration"),
                result("", "MismatchSenderId"),
            ],
        })]
    );
    s.wait_metric(&failed("android"), 3);
    s.wait_metric(&sent("android"), 1);
    s.wait_metric("stapes_push_reported_total{platform=\"android\"}", 1);
    // A rejected token is not retried.
    for id in ids {
        assert_eq!(s.mock.sends_to(id).len(), 1, "{id}");
    }
    assert_eq!(s.metric(&retried("android")), Some(0));
    s.assert_no_secrets();
}

#[test]
fn retries_honour_retry_after_renew_a_revoked_token_and_give_up_in_time() {
    let s =
        Setup::start("retry", TokenUrl::Config, "  push_retry_secs: 5\n  push_timeout_secs: 2\n");
    s.rpush(&android("busy503-r1, busy429-r2", "r", json!({})));
    for id in ["busy503-r1", "busy429-r2"] {
        let tries = s.mock.wait_sends_to(id, 2);
        let gap = tries[1].at.duration_since(tries[0].at);
        assert!(gap >= Duration::from_millis(950), "{id}: Retry-After: 1 not honoured ({gap:?})");
    }
    s.wait_metric(&sent("android"), 2);
    assert_eq!(s.metric(&retried("android")), Some(2));
    for id in ["busy503-r1", "busy429-r2"] {
        assert_eq!(s.mock.sends_to(id).len(), 2, "{id}: one retry, then accepted");
    }

    // A 401: the access token is dropped, a new one fetched, the send
    // repeated with it.
    s.rpush(&android("unauth-r3", "r", json!({})));
    let tries = s.mock.wait_sends_to("unauth-r3", 2);
    s.wait_metric(&sent("android"), 3);
    assert_eq!(s.mock.tokens().len(), 2, "a new token after the 401");
    assert_eq!(tries[0].headers["authorization"], format!("Bearer {ACCESS_TOKEN}-1"));
    assert_eq!(tries[1].headers["authorization"], format!("Bearer {ACCESS_TOKEN}-2"));
    assert_eq!(s.metric(&retried("android")), Some(3));

    // A 500 every time, and no answer within push_timeout_secs: both
    // retried until push_retry_secs runs out, then reported in one entry.
    // (5 s leave room for a second try after a 2 s timeout, however slow
    // the machine.)
    // Had the pushes above left an entry it would be first.
    s.rpush(&android("down500-r4,hang-r5", "r", json!({})));
    wait_until("the error-list entry", || s.redis.llen(ANDROID_ERRORS) >= 1);
    assert_eq!(
        s.error_list(),
        [json!({"registration_ids": ["down500-r4", "hang-r5"], "results": [
            {"message_id": "", "registration_id": "", "error": "InternalServerError"},
            {"message_id": "", "registration_id": "", "error": "Unavailable"}]})]
    );
    s.wait_metric(&failed("android"), 2);
    let tries: Vec<usize> = ["down500-r4", "hang-r5"].map(|id| s.mock.sends_to(id).len()).into();
    assert!(tries.iter().all(|&n| n >= 2), "each is retried: {tries:?} tries");
    let retries = 3 + tries.iter().map(|n| n - 1).sum::<usize>() as u64;
    assert_eq!(s.metric(&retried("android")), Some(retries));
    assert_eq!(s.metric(&sent("android")), Some(3));
    s.assert_no_secrets();
}

type Ws = WebSocket<TcpStream>;

/// An authenticated Incus `/socket` client.
fn socket(port: u16, user: &str) -> Ws {
    let mut ws = ws_connect(port, "/socket");
    send(&mut ws, json!({"command": {"command": "authenticate", "user": user}}));
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The next message delivered on an Incus socket.
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.trim_end()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

fn message_to(user: &str, event: &str) -> Value {
    json!({"command": {"command": "message", "user": user},
        "message": {"event": event, "data": {}}})
}

fn push_or_message(user: &str, registration_id: &str) -> Value {
    json!({"command": {"command": "pushormessage", "user": user, "registration_ids": registration_id},
        "message": {"websocket": {"event": "ws", "data": {"w": 1}},
            "push": {"android": {"event": "pa", "data": {}}}}})
}

fn zrange(redis: &Redis, key: &str) -> Vec<String> {
    redis.cmd(&["ZRANGE", key, "0", "-1"])
}

/// `pushormessage_connected: true`: being connected makes a user active.
#[test]
fn pushormessage_pushes_only_to_users_not_connected() {
    let s = Setup::start("pom-connected", TokenUrl::KeyFile, "  pushormessage_connected: true\n");
    let mut pm1 = socket(s.server.port, "pm1");
    wait_until("pm1's online mark", || !zrange(&s.redis, "stapes:online:pm1").is_empty());

    // a) Connected: the websocket part, no push.
    s.rpush(&push_or_message("pm1", "r1-a"));
    let got = recv(&mut pm1);
    assert_eq!(got["event"], "ws", "{got}");
    assert_eq!(got["data"], json!({"w": 1}));

    // b) Nobody connected as pm-none: the push part, to its id.
    s.rpush(&push_or_message("pm-none", "r1-b"));
    let push = s.mock.wait_sends_to("r1-b", 1);
    let data = send_data(&push[0], "r1-b");
    assert_eq!(data["event"], "pa");
    assert_eq!(data["data"], "{}");
    s.wait_metric(&sent("android"), 1);
    // pm1 got nothing meanwhile: a marker sent after it is next.
    s.rpush(&message_to("pm1", "marker-b"));
    assert_eq!(recv(&mut pm1)["event"], "marker-b");
    // a) never pushed: its presence read was answered before b)'s, whose
    // push has been sent by now.
    assert!(s.mock.sends_to("r1-a").is_empty());
    assert_eq!(s.mock.sends().len(), 1);
    // The token came from the key file's token_uri (no fcm_token_url here).
    assert_eq!(s.mock.tokens().len(), 1);
    s.assert_no_secrets();
}

/// Two nodes share a Redis; only node B reads `Incus_Queue` (node A reads
/// a list of its own). A user connected to node A is online for node B's
/// decision, and gets the WebSocket part through the channel; when node A
/// stops, its marks go, and the next decision is a push. Both nodes have
/// `pushormessage_connected: true` (A keeps the marks, B reads them).
#[test]
fn pushormessage_sees_users_on_other_nodes() {
    let b = Setup::start("two-nodes", TokenUrl::Config, "  pushormessage_connected: true\n");
    let yaml = config("", "")
        + "incus:\n  pushormessage_connected: true\n"
        + &format!(
            "redis:\n  url: {}\n  instance: node-a\n  incus_queue: node_a_queue\n  \
             reconnect_max_ms: 200\n",
            b.redis.url()
        );
    let mut a = Server::start_logged(&yaml, &[]);
    let port = a.port;
    wait_until("both nodes to subscribe", || b.redis.subscribers("Incus") >= 2);
    let mut far = socket(port, "far");
    wait_until("node A's online mark", || zrange(&b.redis, "stapes:online:far") == ["node-a"]);
    b.rpush(&push_or_message("far", "r-far1"));
    let got = recv(&mut far);
    assert_eq!(got["event"], "ws", "{got}");
    assert_eq!(got["data"], json!({"w": 1}));
    // Node A stops: its sockets close after its bridge, so the bridge
    // removes its marks on the way out.
    assert!(a.terminate().success());
    wait_until("node A's marks to go", || zrange(&b.redis, "stapes:online:far").is_empty());
    b.rpush(&push_or_message("far", "r-far2"));
    let push = b.mock.wait_sends_to("r-far2", 1);
    assert_eq!(send_data(&push[0], "r-far2")["event"], "pa");
    assert!(b.mock.sends_to("r-far1").is_empty(), "the first was a WebSocket delivery");
    b.assert_no_secrets();
}

/// The default is Incus's rule: only `setpresence true` makes a user
/// active, so a connected user who never sent it gets the push.
#[test]
fn pushormessage_by_default_needs_setpresence() {
    let s = Setup::start("pom-presence", TokenUrl::KeyFile, "");
    let mut pc1 = socket(s.server.port, "pc1");
    wait_until("pc1 in SocketClients", || {
        s.redis.cmd::<i64>(&["SISMEMBER", "SocketClients", "pc1"]) == 1
    });
    // By default no online marks are kept at all.
    assert!(zrange(&s.redis, "stapes:online:pc1").is_empty());

    // Connected but never set present: the push path.
    s.rpush(&push_or_message("pc1", "r1-c1"));
    let push = s.mock.wait_sends_to("r1-c1", 1);
    assert_eq!(send_data(&push[0], "r1-c1")["event"], "pa");
    s.rpush(&message_to("pc1", "marker-c1"));
    assert_eq!(recv(&mut pc1)["event"], "marker-c1", "the websocket part went out too");

    // Present: the websocket path.
    send(&mut pc1, json!({"command": {"command": "setpresence"}, "message": {"presence": true}}));
    wait_until("pc1's presence", || !zrange(&s.redis, "ClientPresence:pc1").is_empty());
    s.rpush(&push_or_message("pc1", "r1-c2"));
    let got = recv(&mut pc1);
    assert_eq!(got["event"], "ws", "{got}");
    // And no push for it: a push for an absent user, decided after it, has
    // been sent; c2's never was.
    s.rpush(&push_or_message("pc-none", "r1-c3"));
    s.mock.wait_sends_to("r1-c3", 1);
    s.wait_metric(&sent("android"), 2);
    assert!(s.mock.sends_to("r1-c2").is_empty());
    s.assert_no_secrets();
}

#[test]
fn bad_push_commands_are_refused_counted_and_harmless() {
    let apns_key = fixture("apns-test-key.p8");
    let s = Setup::start(
        "refused",
        TokenUrl::Config,
        &format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABCDE12345\n  \
             apns_team_id: TEAM123456\n  apns_store_topic: com.example.app\n",
            apns_key.display()
        ),
    );
    let token = "0123456789abcdef".repeat(4);
    let ios = |device_token: &str, data: Value| {
        json!({"command": {"command": "pushios", "device_token": device_token, "build": "store"},
            "message": {"event": "i", "data": data}})
    };
    s.rpush(&ios(&token, json!({"badge_count": "3"})));
    s.rpush(&ios(&token[1..], json!({"message_text": "hi"})));
    s.rpush(&json!({"command": {"command": "pushandroid", "registration_ids": " , "},
        "message": {"event": "a", "data": {}}}));
    s.rpush(&json!({"command": {"command": "pushormessage", "user": "nobody-here",
            "device_token": token, "build": "store"},
        "message": {"websocket": {"event": "w", "data": {}}, "push": {"ios": 5}}}));
    s.wait_metric(&refused("ios"), 3);
    s.wait_metric(&refused("android"), 1);
    let out = s.server.output();
    for why in [
        "data.badge_count must be a number",
        "command.device_token must be an even number of hex digits",
        "command.registration_ids holds no id",
        "message.push.ios must be an object",
    ] {
        assert!(out.contains(why), "the log says why ({why}):\n{out}");
    }
    // Still serving: /ping, and an Incus message from Redis to a socket.
    let ping = http(s.server.port, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(ping.status, 200);
    let mut alive = socket(s.server.port, "alive");
    wait_until("alive in SocketClients", || {
        s.redis.cmd::<i64>(&["SISMEMBER", "SocketClients", "alive"]) == 1
    });
    s.rpush(&message_to("alive", "still-up"));
    assert_eq!(recv(&mut alive)["event"], "still-up");
    assert!(s.mock.requests().is_empty(), "nothing was sent");
    for platform in ["ios", "android"] {
        assert_eq!(s.metric(&sent(platform)), Some(0));
        assert_eq!(s.metric(&failed(platform)), Some(0));
    }
}

/// Runs stapes expecting it to stop during start-up: exit status, stderr.
fn start_up_failure(name: &str, incus: &str) -> (std::process::ExitStatus, String) {
    let dir = std::env::temp_dir().join(format!("stapes-push-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yml");
    std::fs::write(&path, config("", "") + "incus:\n" + incus).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stapes"))
        .arg("--config")
        .arg(&path)
        .env("STAPES_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("stapes kept running with {name}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (status, stderr)
}

#[test]
fn missing_credential_files_stop_start_up_naming_the_key() {
    let missing = "/nonexistent/stapes-test/credentials";
    let (status, stderr) = start_up_failure(
        "no-fcm-key",
        &format!(
            "  fcm_enabled: true\n  fcm_project_id: {PROJECT}\n  \
             fcm_service_account_file: {missing}.json\n"
        ),
    );
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("incus.fcm_service_account_file"), "{stderr}");
    let (status, stderr) = start_up_failure(
        "no-apns-key",
        &format!(
            "  apns_enabled: true\n  apns_key_file: {missing}.p8\n  apns_key_id: ABCDE12345\n  \
             apns_team_id: TEAM123456\n  apns_store_topic: com.example.app\n"
        ),
    );
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("incus.apns_key_file"), "{stderr}");
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Issue #15, defect 1: a client's `message` that names `command` twice
/// was checked as a `message` and published as a `pushandroid`, which
/// every node then sent with the operator's FCM credentials. Here it is
/// refused where it arrives (a `/socket` frame, a long-poll `command`),
/// counted and logged; an envelope on the channel marked as a client's
/// that names a push is refused by the bridge; no send reaches FCM; and
/// honest client messages still travel the channel.
#[test]
fn clients_cannot_make_the_nodes_push() {
    let s = Setup::start(
        "client-push",
        TokenUrl::Config,
        "  connection_timeout: 1\n  pushormessage_connected: true\n",
    );
    let port = s.server.port;
    let exploit = |token: &str| {
        format!(
            r#"{{"command":{{"command":"message","command":"pushandroid","registration_ids":"{token}"}},"message":{{"event":"pwn","data":{{"x":1}}}}}}"#
        )
    };
    let refused = "stapes_incus_client_refused_total";

    // An honest client message goes round the Incus channel to its user.
    let mut witness = socket(port, "witness");
    wait_until("witness's online mark", || !zrange(&s.redis, "stapes:online:witness").is_empty());
    let mut honest = socket(port, "honest");
    send(&mut honest, message_to("witness", "hello"));
    assert_eq!(recv(&mut witness)["event"], "hello");

    // The exploit from a socket, from a long-poll, and an envelope marked
    // as a client's that names a push, published on the channel directly.
    let mut mallory = socket(port, "mallory");
    mallory.send(Message::text(exploit("tok-socket"))).unwrap();
    let lp = poll(port, &format!("user=mallory-lp&command={}", enc(&exploit("tok-lp"))));
    assert_eq!(lp.status, 204, "the poll itself is served: {}", lp.headers);
    s.redis.publish(
        "Incus",
        r#"{"command":{"command":"pushandroid","registration_ids":"tok-forged"},"message":{"event":"pwn","data":{}},"origin":"client"}"#,
    );
    let tokens = ["tok-socket", "tok-lp", "tok-forged"];
    wait_until("the three refusals (or a push)", || {
        s.metric(refused) == Some(3) || tokens.iter().any(|t| !s.mock.sends_to(t).is_empty())
    });
    // A backend's push published after them on the same channel is sent:
    // the bridge handles the channel in order, so the forged one was
    // handled first.
    s.redis.publish(
        "Incus",
        &json!({"command": {"command": "pushandroid", "registration_ids": "marker-tok"},
            "message": {"event": "m", "data": {}}})
        .to_string(),
    );
    s.mock.wait_sends_to("marker-tok", 1);
    let pushed: Vec<&str> = tokens.into_iter().filter(|t| !s.mock.sends_to(t).is_empty()).collect();
    assert!(pushed.is_empty(), "a client made the node push to {pushed:?}");
    assert_eq!(s.mock.sends().len(), 1, "only the marker was sent");
    s.wait_metric(&sent("android"), 1);
    assert_eq!(s.metric(refused), Some(3));

    // The socket that sent it is closed as for any malformed frame.
    let close = loop {
        match mallory.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame: {e}"),
        }
    };
    assert_eq!(close, Some(1000));

    // Each refusal is logged, with the user and what was wrong.
    let out = s.server.output();
    let warned = |needle: &str| out.lines().any(|l| l.contains(" WARN ") && l.contains(needle));
    let why = r#"incus client command refused: duplicate key "command" in the object at $.command"#;
    for (user, from) in [("mallory", "socket"), ("mallory-lp", "longpoll")] {
        let line = out
            .lines()
            .find(|l| l.contains(why) && l.contains(&format!("user={user} ")))
            .unwrap_or_else(|| panic!("no refusal logged for {user}:\n{out}"));
        assert!(line.contains(" WARN ") && line.contains(&format!("from=\"{from}\"")), "{line}");
    }
    assert!(
        warned(
            r#"incus client envelope refused: a client's envelope may only carry a message, not "pushandroid""#
        ),
        "{out}"
    );
    s.assert_no_secrets();
}

fn poll(port: u16, query: &str) -> HttpReply {
    http(
        port,
        format!("GET /lp?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}
