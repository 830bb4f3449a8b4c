//! Publishers: the signed HTTP API over one keep-alive connection, and
//! Redis `PUBLISH` for the server's Redis bridge. One request in flight.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::wire;

/// Where events go.
pub enum Publisher {
    /// `POST /apps/{id}/events`.
    Http {
        /// Keep-alive connection to the server.
        stream: TcpStream,
        /// Response bytes.
        buf: Vec<u8>,
        /// Host, for the Host header.
        host: String,
        /// Port.
        port: u16,
        /// App id, key and secret.
        app: (String, String, String),
    },
    /// `PUBLISH channel message` to Redis.
    Redis {
        /// Connection to Redis.
        stream: TcpStream,
        /// Reply bytes.
        buf: Vec<u8>,
        /// The server's bridge channel.
        channel: String,
        /// App id, carried in each message.
        app_id: String,
        /// Send Incus commands instead of Pusher bridge events.
        incus: bool,
    },
}

impl Publisher {
    /// Connects to the server's HTTP API.
    pub async fn http(
        host: &str,
        port: u16,
        app: (String, String, String),
    ) -> Result<Publisher, String> {
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("publisher connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Publisher::Http { stream, buf: Vec::with_capacity(4096), host: host.into(), port, app })
    }

    /// Connects to Redis.
    pub async fn redis(
        addr: &str,
        channel: &str,
        app_id: &str,
        incus: bool,
    ) -> Result<Publisher, String> {
        let stream =
            TcpStream::connect(addr).await.map_err(|e| format!("redis connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Publisher::Redis {
            stream,
            buf: Vec::with_capacity(256),
            channel: channel.into(),
            app_id: app_id.into(),
            incus,
        })
    }

    /// Publishes one event and waits for the server to accept it.
    pub async fn send(&mut self, channel: &str, data: &str) -> Result<(), String> {
        match self {
            Publisher::Http { stream, buf, host, port, app } => {
                let body = serde_json::json!({ "name": "load", "channel": channel, "data": data })
                    .to_string();
                let unix =
                    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let req = wire::signed_post(host, *port, &app.0, &app.1, &app.2, &body, unix);
                stream.write_all(&req).await.map_err(|e| format!("publish write: {e}"))?;
                loop {
                    if let Some(r) = wire::http_response(buf) {
                        let (status, len) = r?;
                        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                        buf.drain(..len);
                        if status != 200 {
                            return Err(format!("publish answered {status}: {}", text.trim_end()));
                        }
                        return Ok(());
                    }
                    if stream.read_buf(buf).await.map_err(|e| format!("publish read: {e}"))? == 0 {
                        return Err("server closed the publishing connection".into());
                    }
                }
            }
            Publisher::Redis { stream, buf, channel: bridge, app_id, incus } => {
                let msg = if *incus {
                    crate::wire::incus_broadcast(data)
                } else {
                    serde_json::json!({ "app_id": app_id, "channel": channel, "name": "load", "data": data })
                        .to_string()
                };
                stream
                    .write_all(&wire::redis_publish(bridge, &msg))
                    .await
                    .map_err(|e| format!("redis write: {e}"))?;
                loop {
                    if let Some(end) = memchr::memmem::find(buf, b"\r\n") {
                        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 2);
                        if !line.starts_with(':') {
                            return Err(format!("redis answered {line}"));
                        }
                        if line == ":0" {
                            return Err(format!(
                                "nobody subscribes to redis channel {bridge}: is the server's bridge on?"
                            ));
                        }
                        return Ok(());
                    }
                    if stream.read_buf(buf).await.map_err(|e| format!("redis read: {e}"))? == 0 {
                        return Err("redis closed the connection".into());
                    }
                }
            }
        }
    }
}
