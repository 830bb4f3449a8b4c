//! Helpers shared by the fuzz targets: the apps they run against, encoders
//! for round trips, and an independent oracle for repeated JSON keys.
#![allow(dead_code)]

use std::{collections::HashSet, fmt, sync::Arc};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use stapes::core::{AppConfig, Apps};

/// App `1` (`app-key` / `app-secret`, client events on) and app `2`,
/// disabled: the credentials the committed seeds are signed with.
pub fn apps() -> Apps {
    Apps::new(vec![Arc::new(app()), Arc::new(disabled())])
}

/// App `1` alone.
pub fn app() -> AppConfig {
    let mut app = AppConfig::new("1", "app-key", "app-secret");
    app.client_events = true;
    app
}

fn disabled() -> AppConfig {
    let mut app = AppConfig::new("2", "off-key", "off-secret");
    app.enabled = false;
    app
}

/// Form-encodes `s` so that any form decoder gives `s` back: everything but
/// unreserved characters becomes `%XX`.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One masked client → server WebSocket frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The payload of one unmasked server → client frame, if `frame` is
/// exactly one such text frame.
pub fn server_text_payload(frame: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = frame.split_first()?;
    if first != 0x81 {
        return None;
    }
    let (&len7, rest) = rest.split_first()?;
    let (len, rest) = match len7 {
        126 => (usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)), &rest[2..]),
        127 => {
            (usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?, &rest[8..])
        }
        n if n < 126 => (usize::from(n), rest),
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

/// Whether some object in `json` repeats a key, decided by serde_json (keys
/// compared after unescaping); `None` when serde_json does not read `json`
/// as one JSON document (including past its nesting limit).
pub fn repeats_a_key(json: &[u8]) -> Option<bool> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let found = Dups.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(found)
}

struct Dups;

impl<'de> DeserializeSeed<'de> for Dups {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(DupVisitor)
    }
}

struct DupVisitor;

impl<'de> Visitor<'de> for DupVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(inner) = seq.next_element_seed(Dups)? {
            found |= inner;
        }
        Ok(found)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut keys = HashSet::new();
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            found |= !keys.insert(key);
            found |= map.next_value_seed(Dups)?;
        }
        Ok(found)
    }
}

/// Two Incus shards with rings replaced by a loop, and a fake clock.
pub struct IncusNode {
    pub shards: Vec<stapes::proto::incus::IncusShard>,
    pub now: std::time::Instant,
    pub unix: u64,
}

impl IncusNode {
    pub fn new(client_broadcasts: bool) -> Self {
        use std::time::Duration;
        let settings = stapes::proto::incus::state::Settings {
            client_broadcasts,
            lp_timeout: Duration::from_secs(10),
            mailbox_messages: 3,
            mailbox_ttl: Duration::from_secs(30),
            max_outbox_bytes: 64 * 1024,
            ping_interval: Duration::from_secs(20),
            auth_timeout: Duration::from_secs(60),
            redis: false,
            commands_per_sec: 10,
            commands_burst: 20,
            max_sessions: 1000,
            online_every: None,
        };
        let shards = (0..2)
            .map(|id| stapes::proto::incus::IncusShard::new(id, 2, settings.clone()))
            .collect();
        Self { shards, now: std::time::Instant::now(), unix: 1_700_000_000 }
    }

    /// Moves queued messages between shards until none is left.
    pub fn pump(&mut self) {
        loop {
            let mut moved = Vec::new();
            for shard in &mut self.shards {
                shard.drain_mesh_out(|to, msg| moved.push((to, msg)));
            }
            if moved.is_empty() {
                return;
            }
            for (to, msg) in moved {
                self.shards[to].handle_mesh(msg, self.now);
            }
        }
    }

    /// Moves the clock on, runs every shard's clock and the rings.
    pub fn advance(&mut self, secs: u64) {
        self.now += std::time::Duration::from_secs(secs);
        self.unix += secs;
        for shard in &mut self.shards {
            shard.tick(self.now);
        }
        self.pump();
    }

    /// Takes every shard's output; each answered poll (taken here) must
    /// have a JSON body.
    pub fn check_output(&mut self) {
        let mut ids = Vec::new();
        for shard in &mut self.shards {
            let mut dirty = Vec::new();
            shard.take_dirty(&mut dirty);
            shard.take_completed(&mut ids);
            for id in ids.drain(..) {
                if let Some(stapes::proto::incus::PollResult::Message(body)) = shard.take_poll(id) {
                    let _: serde_json::Value =
                        serde_json::from_slice(&body).expect("a long-poll body is JSON");
                }
            }
        }
    }
}

/// A `message` delivery is one JSON document, framed as one text frame
/// whose payload is that document and a newline.
pub fn check_delivery(delivery: &stapes::proto::incus::Delivery) {
    let payload = server_text_payload(&delivery.frame).expect("one text frame");
    assert_eq!(payload, [&delivery.body[..], b"\n"].concat(), "frame is body + newline");
    let body: serde_json::Value = serde_json::from_slice(&delivery.body).expect("body is JSON");
    assert!(body.get("event").is_some_and(serde_json::Value::is_string), "no event: {body}");
    assert!(body.get("data").is_some_and(serde_json::Value::is_object), "no data: {body}");
}
