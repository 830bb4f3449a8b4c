//! WebSockets over TLS on the second port, and `only_ssl` apps.

#![allow(clippy::unwrap_used)]

mod common;

use std::{net::TcpStream, sync::Arc};

use common::*;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn tls_client(port: u16) -> StreamOwned<ClientConnection, TcpStream> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("localhost.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
        .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    StreamOwned::new(conn, tcp)
}

#[test]
fn wss_serves_pusher_and_only_ssl_apps_refuse_plain_connections() {
    let tls = format!(
        "tls:\n  port: 6002\n  cert_file: {}\n  key_file: {}\n",
        fixture("localhost.crt"),
        fixture("localhost.key")
    );
    let apps = "  - id: \"2\"\n    key: tls-key\n    secret: s\n    only_ssl: true\n";
    let yaml = format!("{}{tls}", config("", apps));
    let server = Server::start_with(&yaml, &[]);
    let tls_port = server.tls_port.unwrap();

    let stream = tls_client(tls_port);
    let (mut ws, _) =
        tungstenite::client(format!("wss://localhost:{tls_port}/app/tls-key?protocol=7"), stream)
            .unwrap();
    let hello = event(&mut ws);
    assert_eq!(hello["event"], "pusher:connection_established");
    ws.send(tungstenite::Message::text(
        r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#,
    ))
    .unwrap();
    assert_eq!(event(&mut ws)["event"], "pusher_internal:subscription_succeeded");
    let r = {
        let body = serde_json::json!({"name":"e","channel":"news","data":"over tls"}).to_string();
        post(
            server.port,
            &signed_path("POST", "/apps/2/events", body.as_bytes(), "tls-key", "s"),
            &body,
        )
    };
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(event(&mut ws)["data"], "over tls");

    let mut plain = server.ws_path("/app/tls-key?protocol=7");
    assert_eq!(event(&mut plain)["data"]["code"], 4000);
    assert_eq!(next(&mut plain), Got::Close(Some(4000)));
}

#[test]
fn a_missing_certificate_stops_start_up_naming_the_key() {
    let yaml = format!(
        "{}tls:\n  port: 6002\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n",
        config("", ""),
    );
    let dir = std::env::temp_dir().join(format!("stapes-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stapes"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.cert_file"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// One request over TLS on a fresh connection (`Connection: close`).
fn tls_request(port: u16, method: &str, path: &str, body: &str) -> HttpReply {
    use std::io::{Read, Write};
    let mut stream = tls_client(port);
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    // The peer's close_notify or FIN ends the reply.
    let _ = stream.read_to_end(&mut out);
    parse_reply(&out)
}

/// pusher-js's HTTP transports over TLS: a session's requests, on fresh
/// TLS connections that either shard may accept, reach the session's
/// owner (the socket and its TLS session move between shards); an
/// `only_ssl` app refuses them over plain HTTP with 4000.
#[test]
fn http_transport_sessions_over_tls_move_between_shards_with_their_tls_session() {
    let tls = format!(
        "tls:\n  port: 6002\n  cert_file: {}\n  key_file: {}\n",
        fixture("localhost.crt"),
        fixture("localhost.key")
    );
    let apps = "  - id: \"2\"\n    key: tls-key\n    secret: s\n    only_ssl: true\n";
    let server = Server::start_with(&format!("{}{tls}", config("", apps)), &[]);
    let tls_port = server.tls_port.unwrap();
    for i in 0..4 {
        let base = format!("/pusher/app/tls-key/{i}/tlssess{i}");
        let open = tls_request(tls_port, "POST", &format!("{base}/xhr?protocol=7"), "");
        assert!(open.body.starts_with("o\na["), "{}", open.body);
        assert!(open.body.contains("pusher:connection_established"), "{}", open.body);
        let subscribe = r#"["{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"news\"}}"]"#;
        let sent = tls_request(tls_port, "POST", &format!("{base}/xhr_send"), subscribe);
        assert_eq!(sent.status, 204, "{}", sent.body);
        let ok = tls_request(tls_port, "POST", &format!("{base}/xhr?protocol=7"), "");
        assert!(ok.body.contains("pusher_internal:subscription_succeeded"), "{}", ok.body);
    }
    let plain = post(server.port, "/pusher/app/tls-key/1/plain/xhr?protocol=7", "");
    assert!(
        plain.body.ends_with(
            "c[4000,\"Application only accepts SSL connections, reconnect using wss://\"]\n"
        ),
        "{}",
        plain.body
    );
}
