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
//! returns an [`IncusError`] that the bridge logs and counts.

use simd_json::{OwnedValue, prelude::*};

use crate::{
    core::json::write_str,
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

/// Why a payload is not a usable Incus command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncusError {
    /// Not JSON at all; fix the publisher.
    #[error("invalid JSON: {0}")]
    Json(String),
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

/// Parses one envelope. simd-json rewrites `payload`.
///
/// # Errors
///
/// An [`IncusError`] naming the first problem.
pub fn parse(payload: &mut [u8]) -> Result<IncusCommand, IncusError> {
    parse_with(payload, false)
}

/// [`parse`], but with `lenient` a non-string value in `command` reads as
/// `""` instead of refusing the document: the original's long-poll
/// `command` parameter executes whatever decoded (spec §5.4).
///
/// # Errors
///
/// An [`IncusError`] naming the first problem.
pub fn parse_with(payload: &mut [u8], lenient: bool) -> Result<IncusCommand, IncusError> {
    let value = simd_json::to_owned_value(payload).map_err(|e| IncusError::Json(e.to_string()))?;
    let OwnedValue::Object(top) = value else { return Err(IncusError::Shape) };
    let mut command = None;
    let mut message = None;
    // Go's decoder matches field names case-insensitively; an exact match wins.
    for (key, value) in top.into_iter() {
        let slot = if key.eq_ignore_ascii_case("command") {
            &mut command
        } else if key.eq_ignore_ascii_case("message") {
            &mut message
        } else {
            continue;
        };
        if slot.is_none() || key == "command" || key == "message" {
            *slot = Some(value);
        }
    }
    let Some(OwnedValue::Object(command)) = command else { return Err(IncusError::Shape) };
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
    Ok(IncusCommand { kind, user, page, fields, message })
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
    /// Hands over one command; `send` queues a message for a shard.
    fn route(
        &mut self,
        command: IncusCommand,
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
}

/// `{"command":{"command":"message","page":…,"user":…},"message":…}`,
/// keys sorted as Incus publishes client messages.
fn message_command(user: &str, page: Option<&str>, message: &OwnedValue) -> String {
    let mut json = String::from(r#"{"command":{"command":"message","#);
    if let Some(page) = page {
        json.push_str(r#""page":"#);
        write_str(page, &mut json);
        json.push(',');
    }
    json.push_str(r#""user":"#);
    write_str(user, &mut json);
    json.push_str(r#"},"message":"#);
    write_value(message, &mut json);
    json.push('}');
    json
}

impl IncusRouter for ShardRouter {
    fn route(
        &mut self,
        command: IncusCommand,
        source: IncusSource,
        now_unix: u64,
        send: &mut dyn FnMut(usize, IncusMsg),
    ) {
        match command.kind {
            IncusKind::Message => {
                let delivery = match incus::format(command.message.as_ref(), now_unix) {
                    Ok(delivery) => delivery,
                    Err(e) => {
                        tracing::warn!(source = source.label(), "incus message refused: {e}");
                        return;
                    }
                };
                let target = Target::of(command.user.as_deref(), command.page.as_deref());
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
            IncusKind::PushOrMessage => {
                let Some(user) = command.user.as_deref().filter(|u| !u.is_empty()) else {
                    tracing::warn!(source = source.label(), "incus pushormessage without a user");
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
                        part.map(|part| message_command(user, page.as_deref(), part))
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
        parse(&mut payload.as_bytes().to_vec())
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
        router.route(c, IncusSource::Channel, 7, &mut send);
        let c = run(r#"{"command":{"command":"push","push_type":"android","registration_ids":"a,b"},"message":{"event":"e","data":{}}}"#).expect("ok");
        router.route(c, IncusSource::Queue, 7, &mut send);
        let c = run(r#"{"command":{"command":"pushios","device_token":"ab","build":"store"},"message":{"event":"e","data":{}}}"#).expect("ok");
        router.route(c, IncusSource::Queue, 7, &mut send);
        let c = run(r#"{"command":{"command":"pushormessage","user":"u","page":"/p","registration_ids":"r"},"message":{"websocket":{"event":"w","data":{}},"push":{"android":{"event":"a","data":{}}}}}"#)
            .expect("ok");
        router.route(c, IncusSource::Queue, 7, &mut send);
        let c = run(r#"{"command":{"command":"setpage","page":"/p"}}"#).expect("ok");
        router.route(c, IncusSource::Queue, 7, &mut send);
        assert_eq!(sent.len(), 3, "one delivery per shard, nothing else");
        assert_eq!(sent.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            router.counts,
            RouterCounts { routed: 1, push_or_message: 1, push: 2, ignored: 1 }
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
        router.route(c, IncusSource::Channel, 7, &mut |_, _| panic!("nothing sent"));
        assert_eq!(router.take_checks()[0].republish, None, "every node saw the channel's");
        // A non-object websocket part leaves only the push part.
        let c =
            run(r#"{"command":{"command":"pushormessage","user":"u"},"message":{"websocket":5}}"#)
                .expect("ok");
        router.route(c, IncusSource::Channel, 7, &mut |_, _| panic!("nothing sent"));
        let checks = router.take_checks();
        assert_eq!(checks[0].websocket, None);
        assert!(checks[0].pushes.is_empty());
    }
}
