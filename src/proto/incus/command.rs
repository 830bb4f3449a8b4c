//! Incus commands from Redis (Incus spec §5.1, §7), sans-IO: the envelope
//! `{"command": {"command": "message", "user"?: …, "page"?: …, …},
//! "message": {…}}` parsed into an [`IncusCommand`], and the
//! [`IncusRouter`] seam where routing to `/socket` connections plugs in.
//!
//! Decoding follows the original where it is deliberate: top-level keys
//! match case-insensitively, `command` is a string→string map in which
//! `null` reads as `""`, and the command name is case-insensitive. Where
//! the original silently dropped a document (a non-string in `command`, a
//! `message` command without a string `event` and an object `data`), this
//! returns an [`IncusError`] that the bridge logs and counts. Where decoders
//! could disagree on what a document says, it is refused: a key repeated in
//! any object ([`json::check_unique_keys`]), or `command`/`message` spelt
//! twice in different cases (Go's decoder would merge the two).
//!
//! # Who wrote an envelope
//!
//! Backends and the nodes themselves share the Incus channel: a node
//! publishes its clients' `message` commands there so that every node
//! delivers them (spec §8.2). Those are written by [`ClientMessage::encode`]
//! only, from a checked `message`, and carry `"origin":"client"` beside
//! `command` and `message`; [`parse`] reads such an envelope as an
//! [`Envelope::Client`], which the router can only deliver, and refuses one
//! that names any other command. Incus and older stapes nodes ignore the
//! extra key and deliver it as before; a backend's envelope has no such
//! key and is an [`Envelope::Backend`] as always.

use simd_json::{OwnedValue, prelude::*};

use crate::{
    core::{json, json::write_str},
    proto::{
        incus,
        incus::{
            IncusMsg, Target,
            message::write_value,
            push::{self, Decoded, PushRules},
        },
    },
};

/// What the backend asked for (`command.command`, any case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncusKind {
    /// Deliver `message` to sockets by user, page, or all (spec §6.2).
    Message,
    /// Mobile push by `push_type` (spec §9).
    Push,
    /// iOS push.
    PushIos,
    /// Android push.
    PushAndroid,
    /// Push or WebSocket depending on presence (spec §9.3).
    PushOrMessage,
    /// Anything else, lower-cased; the original ignores these.
    Other(String),
}

impl IncusKind {
    fn from_name(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "message" => Self::Message,
            "push" => Self::Push,
            "pushios" => Self::PushIos,
            "pushandroid" => Self::PushAndroid,
            "pushormessage" => Self::PushOrMessage,
            _ => Self::Other(lower),
        }
    }

    /// The name as a metric or log label.
    pub fn label(&self) -> &str {
        match self {
            Self::Message => "message",
            Self::Push => "push",
            Self::PushIos => "pushios",
            Self::PushAndroid => "pushandroid",
            Self::PushOrMessage => "pushormessage",
            Self::Other(name) => name,
        }
    }
}

/// One decoded and checked backend command.
#[derive(Debug, Clone, PartialEq)]
pub struct IncusCommand {
    /// `command.command`.
    pub kind: IncusKind,
    /// `command.user` if present, even when empty: an empty user matches
    /// nobody (spec §6.2), which differs from no user.
    pub user: Option<String>,
    /// `command.page` if present.
    pub page: Option<String>,
    /// Every `command` field as sent (including the three above), for the
    /// push commands' platform fields.
    pub fields: Vec<(String, String)>,
    /// `message`, if present.
    pub message: Option<OwnedValue>,
}

/// The top-level key, and its value, that mark an envelope a node
/// published for a client.
pub const ORIGIN_CLIENT: (&str, &str) = ("origin", "client");

/// An envelope from the Incus channel or list, by who wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// A backend's command, any of them.
    Backend(IncusCommand),
    /// A client's `message`, published by a node: deliverable, nothing else.
    Client(ClientMessage),
}

/// A client's `message` command as checked on the node that received it:
/// the only thing a client can have a node publish on the Incus channel.
/// It has no command name: whatever it becomes on the wire, it is a
/// `message`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientMessage {
    /// `command.user`, if present (an empty one matches nobody).
    pub user: Option<String>,
    /// `command.page`, if present.
    pub page: Option<String>,
    /// `message`, with a string `event` and an object `data`.
    pub message: OwnedValue,
}

impl ClientMessage {
    /// The client's command if it is a `message` with a message to deliver.
    pub fn from_command(command: IncusCommand) -> Option<Self> {
        if command.kind != IncusKind::Message {
            return None;
        }
        let IncusCommand { user, page, message, .. } = command;
        Some(Self { user, page, message: message? })
    }

    /// The envelope to PUBLISH on the Incus channel: Incus's (spec §8.2,
    /// keys sorted, Go's escapes) plus `"origin":"client"`. Only `user` and
    /// `page` are kept from the client's `command`: nothing else in it has a
    /// meaning for a `message`.
    pub fn encode(&self) -> String {
        let (user, page) = (self.user.as_deref(), self.page.as_deref());
        message_command(user, page, &self.message, Some(ORIGIN_CLIENT))
    }
}

/// Why a payload is not a usable Incus command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncusError {
    /// Not JSON at all; fix the publisher.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// An object repeats a key, so decoders could read it differently; the
    /// sender must send each key once.
    #[error("{0}")]
    DuplicateKey(#[from] json::DuplicateKey),
    /// `command` or `message` appears in two spellings (`"command"` and
    /// `"Command"`), which Incus reads as one key; send one.
    #[error("{0:?} and {1:?} are the same key to Incus")]
    CaseDuplicate(String, String),
    /// An envelope marked as a client's names a command other than
    /// `message`: a client tried to have the nodes run a backend command.
    #[error("a client's envelope may only carry a message, not {0:?}")]
    ClientCommand(String),
    /// JSON, but not an object with a `command` object.
    #[error("expected an object with a \"command\" object")]
    Shape,
    /// A `command` field holds a number, boolean, object or array; the
    /// original rejects the whole document for this too.
    #[error("command.{0} must be a string")]
    NotAString(String),
    /// `command.command` is missing or empty.
    #[error("command.command is missing")]
    NoCommand,
    /// A `message` command whose `message` lacks a string `event` or an
    /// object `data` (spec §5.1): nothing could be delivered.
    #[error("message command needs message.event (string) and message.data (object)")]
    Undeliverable,
}

/// Parses one envelope from Redis. simd-json rewrites `payload`.
///
/// # Errors
///
/// An [`IncusError`] naming the first problem.
pub fn parse(payload: &mut [u8]) -> Result<Envelope, IncusError> {
    let (command, origin) = decode(payload, false)?;
    let from_client = origin.as_ref().and_then(ValueAsScalar::as_str) == Some(ORIGIN_CLIENT.1);
    if !from_client {
        return Ok(Envelope::Backend(command));
    }
    let name = command.kind.label().to_owned();
    ClientMessage::from_command(command)
        .map(Envelope::Client)
        .ok_or(IncusError::ClientCommand(name))
}

/// Parses a client's command (a `/socket` frame or a long-poll's
/// `command`). With `lenient`, a non-string value in `command` reads as
/// `""` instead of refusing the document: the original's long-poll
/// `command` parameter executes whatever decoded (spec §5.4). simd-json
/// rewrites `payload`.
///
/// # Errors
///
/// An [`IncusError`] naming the first problem.
pub fn parse_client(payload: &mut [u8], lenient: bool) -> Result<IncusCommand, IncusError> {
    decode(payload, lenient).map(|(command, _origin)| command)
}

/// The command, and the value of the top-level `origin` key if any.
fn decode(
    payload: &mut [u8],
    lenient: bool,
) -> Result<(IncusCommand, Option<OwnedValue>), IncusError> {
    // Before simd-json rewrites the payload in place.
    json::check_unique_keys(payload)?;
    let value = simd_json::to_owned_value(payload).map_err(|e| IncusError::Json(e.to_string()))?;
    let OwnedValue::Object(top) = value else { return Err(IncusError::Shape) };
    let mut command: Option<(String, OwnedValue)> = None;
    let mut message: Option<(String, OwnedValue)> = None;
    let mut origin = None;
    // Go's decoder matches field names case-insensitively, and merges two
    // spellings of one into the same map: refused rather than guessed.
    for (key, value) in top.into_iter() {
        let slot = if key.eq_ignore_ascii_case("command") {
            &mut command
        } else if key.eq_ignore_ascii_case("message") {
            &mut message
        } else {
            if key == ORIGIN_CLIENT.0 {
                origin = Some(value);
            }
            continue;
        };
        if let Some((first, _)) = slot {
            return Err(IncusError::CaseDuplicate(first.clone(), key));
        }
        *slot = Some((key, value));
    }
    let message = message.map(|(_, value)| value);
    let Some((_, OwnedValue::Object(command))) = command else { return Err(IncusError::Shape) };
    let mut fields = Vec::with_capacity(command.len());
    for (key, value) in command.into_iter() {
        let text = match value {
            OwnedValue::String(s) => s,
            v if v.is_null() => String::new(),
            _ if lenient => String::new(),
            _ => return Err(IncusError::NotAString(key)),
        };
        fields.push((key, text));
    }
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let kind = match get("command") {
        Some(name) if !name.is_empty() => IncusKind::from_name(&name),
        _ => return Err(IncusError::NoCommand),
    };
    if kind == IncusKind::Message && !deliverable(message.as_ref()) {
        return Err(IncusError::Undeliverable);
    }
    let (user, page) = (get("user"), get("page"));
    Ok((IncusCommand { kind, user, page, fields, message }, origin))
}

fn deliverable(message: Option<&OwnedValue>) -> bool {
    let Some(message) = message.and_then(ValueAsObject::as_object) else { return false };
    let event = message.get("event").is_some_and(|e| e.as_str().is_some());
    let data = message.get("data").is_some_and(|d| d.as_object().is_some());
    event && data
}

/// Where a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncusSource {
    /// The pub/sub channel: every instance sees it.
    Channel,
    /// The list: exactly one instance takes it.
    Queue,
}

impl IncusSource {
    /// The name as a log label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Channel => "channel",
            Self::Queue => "queue",
        }
    }
}

/// Takes parsed Incus commands off the bridge. Returning from
/// [`IncusRouter::route`] means the command was handed over: for a command
/// from the list, the bridge then deletes it from the processing list.
pub trait IncusRouter {
    /// Hands over one envelope; `send` queues a message for a shard.
    fn route(
        &mut self,
        envelope: Envelope,
        source: IncusSource,
        now_unix: u64,
        send: &mut dyn FnMut(usize, IncusMsg),
    );
}

/// What the router did, for the logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouterCounts {
    /// `message` commands sent to the shards.
    pub routed: u64,
    /// `pushormessage` commands waiting for their presence read.
    pub push_or_message: u64,
    /// `push`, `pushios`, `pushandroid` commands decoded.
    pub push: u64,
    /// Commands Incus ignores from Redis (`setpage`, unknown, …).
    pub ignored: u64,
    /// Commands that parsed but could not be carried out (a `message` that
    /// does not format, a `pushormessage` without a user).
    pub refused: u64,
}

/// Routes backend commands: a `message` to every shard (each delivers to
/// its own sockets and to the mailboxes of the users it owns); a push
/// command decoded into [`Decoded`] jobs for the push thread
/// ([`ShardRouter::take_pushes`]); a `pushormessage` into a
/// [`PresenceCheck`] for the bridge, which reads the user's presence from
/// Redis, written by every node ([`ShardRouter::take_checks`]).
#[derive(Debug)]
pub struct ShardRouter {
    shards: usize,
    rules: PushRules,
    checks: Vec<PresenceCheck>,
    pushes: Vec<Decoded>,
    /// Totals so far.
    pub counts: RouterCounts,
}

/// A `pushormessage`: its WebSocket part goes out if the user is active,
/// its push part otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceCheck {
    /// User id.
    pub user: Box<str>,
    /// Page filter.
    pub page: Option<Box<str>>,
    /// `message.websocket`, formatted, if deliverable.
    pub websocket: Option<incus::Delivery>,
    /// For a command from the list, which only this node took: the
    /// WebSocket part as a `message` command to PUBLISH on the Incus
    /// channel, so that the user's sockets on every node get it.
    pub republish: Option<String>,
    /// `message.push.ios` and `.android`, decoded (or refused) now, when
    /// the command's fields and time are at hand.
    pub pushes: Vec<Decoded>,
}

impl ShardRouter {
    /// A router for `shards` shards that decodes pushes by `rules`.
    pub fn new(shards: usize, rules: PushRules) -> Self {
        Self {
            shards: shards.max(1),
            rules,
            checks: Vec::new(),
            pushes: Vec::new(),
            counts: RouterCounts::default(),
        }
    }

    /// The `pushormessage` commands waiting for a presence read.
    pub fn take_checks(&mut self) -> Vec<PresenceCheck> {
        std::mem::take(&mut self.checks)
    }

    /// The push commands decoded since the last call.
    pub fn take_pushes(&mut self) -> Vec<Decoded> {
        std::mem::take(&mut self.pushes)
    }

    /// A `message`, from a backend or a client: formatted once and sent to
    /// every shard.
    fn route_message(
        &mut self,
        user: Option<&str>,
        page: Option<&str>,
        message: Option<&OwnedValue>,
        source: IncusSource,
        now_unix: u64,
        send: &mut dyn FnMut(usize, IncusMsg),
    ) {
        let delivery = match incus::format(message, now_unix) {
            Ok(delivery) => delivery,
            Err(e) => {
                self.counts.refused += 1;
                let source = source.label();
                crate::warn_throttled!(self.counts.refused, source, "incus message refused: {e}");
                return;
            }
        };
        let target = Target::of(user, page);
        for shard in 0..self.shards {
            let delivery = delivery.clone();
            send(shard, IncusMsg::Deliver { target: target.clone(), delivery });
        }
        self.counts.routed += 1;
        tracing::debug!(
            source = source.label(),
            total = self.counts.routed,
            "incus message routed"
        );
    }
}

/// `{"command":{"command":"message","page":…,"user":…},"message":…}`,
/// keys sorted as Incus publishes client messages, with a top-level
/// `origin` key and value last when given.
fn message_command(
    user: Option<&str>,
    page: Option<&str>,
    message: &OwnedValue,
    origin: Option<(&str, &str)>,
) -> String {
    let mut json = String::from(r#"{"command":{"command":"message""#);
    for (key, value) in [("page", page), ("user", user)] {
        if let Some(value) = value {
            json.push(',');
            write_str(key, &mut json);
            json.push(':');
            write_str(value, &mut json);
        }
    }
    json.push_str(r#"},"message":"#);
    write_value(message, &mut json);
    if let Some((key, value)) = origin {
        json.push(',');
        write_str(key, &mut json);
        json.push(':');
        write_str(value, &mut json);
    }
    json.push('}');
    json
}

impl IncusRouter for ShardRouter {
    fn route(
        &mut self,
        envelope: Envelope,
        source: IncusSource,
        now_unix: u64,
        send: &mut dyn FnMut(usize, IncusMsg),
    ) {
        let command = match envelope {
            Envelope::Client(m) => {
                let (user, page) = (m.user.as_deref(), m.page.as_deref());
                self.route_message(user, page, Some(&m.message), source, now_unix, send);
                return;
            }
            Envelope::Backend(command) => command,
        };
        match command.kind {
            IncusKind::Message => {
                let (user, page) = (command.user.as_deref(), command.page.as_deref());
                self.route_message(user, page, command.message.as_ref(), source, now_unix, send);
            }
            IncusKind::PushOrMessage => {
                let Some(user) = command.user.as_deref().filter(|u| !u.is_empty()) else {
                    self.counts.refused += 1;
                    crate::warn_throttled!(
                        self.counts.refused,
                        source = source.label(),
                        "incus pushormessage without a user refused"
                    );
                    return;
                };
                // Anything but a deliverable object leaves only the push part.
                let websocket = command
                    .message
                    .as_ref()
                    .and_then(|m| m.get("websocket"))
                    .and_then(|w| incus::format(Some(w), now_unix).ok());
                let pushes = push::push_part(
                    &command.fields,
                    command.message.as_ref(),
                    &self.rules,
                    now_unix,
                );
                let page: Option<Box<str>> =
                    command.page.as_deref().filter(|p| !p.is_empty()).map(Into::into);
                let republish = match (&websocket, source) {
                    (Some(_), IncusSource::Queue) => {
                        let part = command.message.as_ref().and_then(|m| m.get("websocket"));
                        part.map(|part| message_command(Some(user), page.as_deref(), part, None))
                    }
                    _ => None,
                };
                self.counts.push_or_message += 1;
                let user = user.into();
                self.checks.push(PresenceCheck { user, page, websocket, republish, pushes });
            }
            IncusKind::Push | IncusKind::PushIos | IncusKind::PushAndroid => {
                self.counts.push += 1;
                self.pushes.push(push::direct(
                    command.kind.label(),
                    &command.fields,
                    command.message.as_ref(),
                    &self.rules,
                    now_unix,
                ));
            }
            IncusKind::Other(name) => {
                self.counts.ignored += 1;
                tracing::debug!(command = %name, source = source.label(), "incus command ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(payload: &str) -> Result<IncusCommand, IncusError> {
        match parse(&mut payload.as_bytes().to_vec())? {
            Envelope::Backend(command) => Ok(command),
            Envelope::Client(m) => panic!("a backend's envelope read as a client's: {m:?}"),
        }
    }

    const EXPLOIT: &str = r#"{"command":{"command":"message","command":"pushandroid","registration_ids":"tok"},"message":{"event":"e","data":{}}}"#;

    #[test]
    fn repeated_keys_are_refused_anywhere_from_redis_and_clients() {
        let cases = [
            (EXPLOIT, r#"duplicate key "command" in the object at $.command"#),
            (
                r#"{"command":{"command":"message"},"message":{"event":"e","data":{"a":{"b":1,"b":2}}}}"#,
                r#"duplicate key "b" in the object at $.message.data.a"#,
            ),
            (
                r#"{"command":{"command":"message"},"command":{"command":"pushios"}}"#,
                r#"duplicate key "command" in the object at $"#,
            ),
            (
                r#"{"command":{"command":"message"},"message":{"event":"e","data":{}},"Command":{"command":"pushios"}}"#,
                r#""command" and "Command" are the same key to Incus"#,
            ),
            (
                r#"{"MESSAGE":{"event":"a","data":{}},"command":{"command":"message"},"message":{"event":"b","data":{}}}"#,
                r#""MESSAGE" and "message" are the same key to Incus"#,
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(run(payload).expect_err(payload).to_string(), expected);
            for lenient in [false, true] {
                let err =
                    parse_client(&mut payload.as_bytes().to_vec(), lenient).expect_err(payload);
                assert_eq!(err.to_string(), expected);
            }
        }
    }

    #[test]
    fn client_envelopes_carry_a_message_and_nothing_else() {
        let client = parse_client(
            &mut br#"{"command":{"command":"Message","user":"u","page":"/p","registration_ids":"tok"},"message":{"event":"e<","data":{"b":2,"a":1},"time":3}}"#.to_vec(),
            false,
        )
        .expect("valid");
        let m = ClientMessage::from_command(client).expect("a message");
        let wire = m.encode();
        assert_eq!(
            wire,
            r#"{"command":{"command":"message","page":"/p","user":"u"},"message":{"data":{"a":1,"b":2},"event":"e\u003c","time":3},"origin":"client"}"#
        );
        assert_eq!(parse(&mut wire.into_bytes()), Ok(Envelope::Client(m)));
        // Without user or page: a message to everyone.
        let all = ClientMessage { user: None, page: None, message: OwnedValue::from("x") };
        assert!(all.encode().starts_with(r#"{"command":{"command":"message"},"message":"x""#));
        // Only a message becomes one.
        let setpage = run(r#"{"command":{"command":"setpage","page":"/p"}}"#).expect("ok");
        assert_eq!(ClientMessage::from_command(setpage), None);

        // Marked as a client's, anything but a message is refused.
        for name in ["pushandroid", "push", "pushios", "pushormessage", "setpage", "x"] {
            let payload = format!(
                r#"{{"command":{{"command":"{name}","registration_ids":"tok"}},"message":{{"event":"e","data":{{}}}},"origin":"client"}}"#
            );
            let err = parse(&mut payload.into_bytes()).expect_err(name);
            assert_eq!(err, IncusError::ClientCommand(name.to_owned()));
        }
        // Any other origin is a backend's own key, ignored as before.
        let c =
            run(r#"{"command":{"command":"pushandroid","registration_ids":"t"},"origin":"web"}"#)
                .expect("a backend's");
        assert_eq!(c.kind, IncusKind::PushAndroid);
    }

    #[test]
    fn the_router_only_delivers_a_clients_message() {
        let rules = PushRules { fcm: true, ..PushRules::default() };
        let mut router = ShardRouter::new(2, rules);
        let mut sent = Vec::new();
        let m = ClientMessage {
            user: Some("u".into()),
            page: None,
            message: simd_json::json!({"event": "e", "data": {"registration_ids": "tok"}}),
        };
        router.route(Envelope::Client(m), IncusSource::Channel, 7, &mut |to, msg| {
            sent.push((to, msg))
        });
        assert_eq!(sent.len(), 2);
        let (_, IncusMsg::Deliver { target, delivery }) = &sent[0] else { panic!("a delivery") };
        assert_eq!(*target, Target::User { user: "u".into(), page: None });
        assert!(delivery.body.starts_with(br#"{"event":"e","data":{"registration_ids":"tok"}"#));
        assert!(router.take_pushes().is_empty());
        assert!(router.take_checks().is_empty());
        assert_eq!(router.counts, RouterCounts { routed: 1, ..RouterCounts::default() });
    }

    #[test]
    fn message_envelope() {
        let c = run(r#"{"command":{"command":"MESSAGE","user":"alice","page":"/p"},"message":{"event":"e","data":{"x":1},"time":5}}"#)
            .expect("valid");
        assert_eq!(c.kind, IncusKind::Message);
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.page.as_deref(), Some("/p"));
        let message = c.message.expect("message");
        assert_eq!(message.get("event").and_then(|e| e.as_str()), Some("e"));
    }

    #[test]
    fn keys_and_names_are_case_insensitive_and_null_is_empty() {
        let c =
            run(r#"{"Command":{"command":"PushOrMessage","user":null},"extra":1}"#).expect("ok");
        assert_eq!(c.kind, IncusKind::PushOrMessage);
        assert_eq!(c.user.as_deref(), Some(""), "present but empty");
        assert_eq!(c.page, None);
        assert!(c.message.is_none());
        let c = run(r#"{"command":{"command":"setpage","page":"/x"}}"#).expect("ok");
        assert_eq!(c.kind, IncusKind::Other("setpage".into()));
        let c =
            run(r#"{"command":{"command":"push","push_type":"ios","build":"store"}}"#).expect("ok");
        assert_eq!(c.kind, IncusKind::Push);
        assert!(c.fields.contains(&("build".into(), "store".into())));
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            ("nope", "invalid JSON"),
            ("[]", "expected an object"),
            (r#"{"message":{}}"#, "expected an object"),
            (r#"{"command":"message"}"#, "expected an object"),
            (r#"{"command":{"command":"message","x":1}}"#, "command.x must be a string"),
            (r#"{"command":{"user":"a"}}"#, "command.command is missing"),
            (r#"{"command":{"command":""}}"#, "command.command is missing"),
            (r#"{"command":{"command":"message"}}"#, "needs message.event"),
            (r#"{"command":{"command":"message"},"message":{"event":"e","data":[1]}}"#, "needs"),
            (r#"{"command":{"command":"message"},"message":{"event":7,"data":{}}}"#, "needs"),
            (r#"{"command":{"command":"message"},"message":{"event":"e","data":null}}"#, "needs"),
        ];
        for (payload, expected) in cases {
            let err = run(payload).expect_err(payload).to_string();
            assert!(err.contains(expected), "{payload}: {err}");
        }
    }

    #[test]
    fn router_sends_messages_everywhere_and_decodes_pushes() {
        let rules = PushRules { fcm: true, ..PushRules::default() };
        let mut router = ShardRouter::new(3, rules);
        let mut sent = Vec::new();
        let mut send = |to: usize, msg: IncusMsg| sent.push((to, msg));
        let c = run(
            r#"{"command":{"command":"message","user":"u"},"message":{"event":"e","data":{}}}"#,
        )
        .expect("ok");
        router.route(Envelope::Backend(c), IncusSource::Channel, 7, &mut send);
        let c = run(r#"{"command":{"command":"push","push_type":"android","registration_ids":"a,b"},"message":{"event":"e","data":{}}}"#).expect("ok");
        router.route(Envelope::Backend(c), IncusSource::Queue, 7, &mut send);
        let c = run(r#"{"command":{"command":"pushios","device_token":"ab","build":"store"},"message":{"event":"e","data":{}}}"#).expect("ok");
        router.route(Envelope::Backend(c), IncusSource::Queue, 7, &mut send);
        let c = run(r#"{"command":{"command":"pushormessage","user":"u","page":"/p","registration_ids":"r"},"message":{"websocket":{"event":"w","data":{}},"push":{"android":{"event":"a","data":{}}}}}"#)
            .expect("ok");
        router.route(Envelope::Backend(c), IncusSource::Queue, 7, &mut send);
        let c = run(r#"{"command":{"command":"setpage","page":"/p"}}"#).expect("ok");
        router.route(Envelope::Backend(c), IncusSource::Queue, 7, &mut send);
        assert_eq!(sent.len(), 3, "one delivery per shard, nothing else");
        assert_eq!(sent.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            router.counts,
            RouterCounts { routed: 1, push_or_message: 1, push: 2, ignored: 1, refused: 0 }
        );
        let pushes = router.take_pushes();
        assert!(
            matches!(&pushes[0], Ok(push::PushJob { send: push::Send::Android(p), .. }) if p.registration_ids.len() == 2)
        );
        assert_eq!(
            pushes[1],
            Err((push::Platform::Ios, push::Refusal::Disabled(push::Platform::Ios)))
        );
        assert!(router.take_pushes().is_empty());
        let checks = router.take_checks();
        assert_eq!(checks.len(), 1);
        let check = &checks[0];
        assert_eq!((&*check.user, check.page.as_deref()), ("u", Some("/p")));
        let Some(ws) = &check.websocket else { panic!("websocket part") };
        assert!(ws.body.starts_with(br#"{"event":"w","data":{},"time":7"#));
        assert!(matches!(
            &check.pushes[..],
            [Ok(push::PushJob { send: push::Send::Android(_), .. })]
        ));
        // From the list, only this node has it: the WebSocket part is to be
        // published as a message, for the user's sockets on every node.
        assert_eq!(
            check.republish.as_deref(),
            Some(
                r#"{"command":{"command":"message","page":"/p","user":"u"},"message":{"data":{},"event":"w"}}"#
            )
        );
        let c = run(r#"{"command":{"command":"pushormessage","user":"u"},"message":{"websocket":{"event":"w","data":{}}}}"#)
            .expect("ok");
        router.route(Envelope::Backend(c), IncusSource::Channel, 7, &mut |_, _| {
            panic!("nothing sent")
        });
        assert_eq!(router.take_checks()[0].republish, None, "every node saw the channel's");
        // A non-object websocket part leaves only the push part.
        let c =
            run(r#"{"command":{"command":"pushormessage","user":"u"},"message":{"websocket":5}}"#)
                .expect("ok");
        router.route(Envelope::Backend(c), IncusSource::Channel, 7, &mut |_, _| {
            panic!("nothing sent")
        });
        let checks = router.take_checks();
        assert_eq!(checks[0].websocket, None);
        assert!(checks[0].pushes.is_empty());
    }
}
