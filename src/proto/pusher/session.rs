//! One connection's protocol state: parsing and validating what the client
//! sends, liveness, and the client-event rate limit. Sans-IO: bytes and the
//! current time go in, a [`Command`] for the shard or a [`Rejection`] for the
//! client comes out. What spans connections (channel membership, presence,
//! fan-out) is the shard's business ([`super::shard`]).

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    auth::{self, PresenceMember, SignedInUser},
    channel::{self, ChannelFlags, ChannelKind},
};
use crate::core::{AppConfig, AppIdx, CloseCode, SocketId, Tick, json};

/// A validated request for the shard to carry out, borrowing from the frame
/// what it can: a subscribe or a client event copies nothing on its way.
#[derive(Debug)]
pub enum Command<'a> {
    /// Answer with `pusher:pong`.
    Ping,
    /// Nothing to do beyond the liveness already recorded.
    Nothing,
    /// Subscribe (auth already checked).
    Subscribe {
        /// Channel name, validated.
        channel: Cow<'a, str>,
        /// Its kind.
        flags: ChannelFlags,
        /// Who joins, on presence channels.
        member: Option<PresenceMember>,
    },
    /// Unsubscribe; unknown channels are ignored (spec §5.1: no reply).
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Relay a client event; the shard still checks that the sender is
    /// subscribed.
    ClientEvent {
        /// `client-…` event name.
        event: Cow<'a, str>,
        /// Channel name, validated.
        channel: Cow<'a, str>,
        /// The `data` value exactly as the client sent it (`{}` when absent).
        data: &'a str,
    },
    /// The connection signed in (signature checked, [`Session::user`] set):
    /// answer `pusher:signin_success` and act on the watchlist.
    Signin {
        /// `user_data` exactly as received, echoed in the answer.
        user_data: String,
        /// What it says.
        user: SignedInUser,
    },
}

/// Most watchlist ids one sign-in may carry (spec §10.3); the rest are
/// dropped with a 4302 `pusher:error`.
pub const MAX_WATCHLIST: usize = 100;

/// The user a connection signed in as (spec §10.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub id: Box<str>,
    /// `user_info` as compact JSON, for presence subscriptions without
    /// `channel_data`.
    pub info: Option<Box<str>>,
}

/// A request refused with a `pusher:error`; the connection stays open
/// (spec §3.5).
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `code` of the error frame; `None` sends `null`, as Pusher does for
    /// malformed input and failed auth.
    pub code: Option<u16>,
    /// Human-readable reason.
    pub message: String,
}

impl Rejection {
    fn plain(message: impl Into<String>) -> Self {
        Self { code: None, message: message.into() }
    }

    fn client_event(message: impl Into<String>) -> Self {
        Self { code: Some(CloseCode::CLIENT_EVENT_REJECTED.0), message: message.into() }
    }
}

/// What the clock says about a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Not due yet.
    None,
    /// Silent for `activity_timeout`: send `pusher:ping`.
    Ping,
    /// Pinged and still silent after `pong_timeout`: close with 4201.
    Close,
}

/// Per-connection protocol state.
#[derive(Debug)]
pub struct Session {
    /// This connection's socket id.
    pub socket_id: SocketId,
    /// The app it connected to.
    pub app: AppIdx,
    /// Set once `pusher:signin` succeeded; boxed, as most connections never
    /// sign in and every idle one would carry its room.
    pub user: Option<Box<User>>,
    /// Client-event token bucket, in thousandths of an event.
    tokens_milli: u64,
    // Times are ticks, not `Instant`s, and each option a tick with a flag
    // beside it: 4 bytes each instead of 16 (issue #14).
    last_heard: Tick,
    /// When `pusher:ping` went out, if `pinged`.
    ping_sent: Tick,
    tokens_at: Tick,
    /// For apps with authorized connections on, if `auth_required`: the
    /// time by which the connection must have signed in or subscribed to a
    /// private or presence channel (spec §10.4).
    auth_deadline: Tick,
    pinged: bool,
    /// Cleared once the connection is authorized, or when the app does not
    /// ask.
    auth_required: bool,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(default, borrow)]
    auth: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    channel_data: Option<Cow<'a, str>>,
}

impl SubscribeData<'_> {
    /// The same fields, none borrowed: for data that came as a JSON string
    /// holding the object, which is decoded into a string of its own.
    fn detach(self) -> SubscribeData<'static> {
        SubscribeData {
            channel: Cow::Owned(self.channel.into_owned()),
            auth: self.auth.map(|a| Cow::Owned(a.into_owned())),
            channel_data: self.channel_data.map(|c| Cow::Owned(c.into_owned())),
        }
    }
}

#[derive(Deserialize)]
struct SigninData {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    user_data: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

impl Session {
    /// A session that has just been sent `connection_established`.
    pub fn new(socket_id: SocketId, app: AppIdx, rate: u32, now: Instant) -> Self {
        let now = Tick::of(now);
        Self {
            socket_id,
            app,
            user: None,
            tokens_milli: u64::from(rate) * 1000,
            last_heard: now,
            ping_sent: now,
            tokens_at: now,
            auth_deadline: now,
            pinged: false,
            auth_required: false,
        }
    }

    /// Requires the connection to become authorized by `deadline`
    /// (spec §10.4); see [`Session::authorization_overdue`].
    pub fn require_authorization(&mut self, deadline: Instant) {
        self.auth_deadline = Tick::of(deadline);
        self.auth_required = true;
    }

    /// The connection signed in or joined a private or presence channel:
    /// it is authorized for good, even if it later leaves that channel.
    pub fn authorize(&mut self) {
        self.auth_required = false;
    }

    /// Whether the connection missed its authorization deadline.
    pub fn authorization_overdue(&self, now: Instant) -> bool {
        self.auth_required && self.auth_deadline.reached(Tick::of(now))
    }

    /// Records that something (any frame) arrived: proof of liveness (spec §3.3).
    pub fn heard(&mut self, now: Instant) {
        let now = Tick::of(now);
        self.last_heard = now;
        self.pinged = false;
        // A bucket untouched for a second is full whatever its rate; kept
        // within a second of now so that the tick's wrap, 49.7 days on,
        // never makes an old refill look recent. A live connection is
        // heard at least every activity timeout, or closed.
        if self.tokens_at.passed(Duration::from_secs(1), now) {
            self.tokens_at = now.before(Duration::from_secs(1));
        }
    }

    /// Advances the liveness clock.
    pub fn handle_timeout(&mut self, now: Instant, activity: Duration, pong: Duration) -> Timeout {
        let now = Tick::of(now);
        let due = if self.pinged {
            self.ping_sent.passed(pong, now)
        } else {
            self.last_heard.passed(activity, now)
        };
        if !due {
            return Timeout::None;
        }
        if self.pinged {
            return Timeout::Close;
        }
        self.ping_sent = now;
        self.pinged = true;
        Timeout::Ping
    }

    /// Parses and validates one text message from the client.
    pub fn handle_text<'a>(
        &mut self,
        now: Instant,
        app: &AppConfig,
        text: &'a [u8],
    ) -> Result<Command<'a>, Rejection> {
        self.heard(now);
        // Checked on the whole frame, so `data` (relayed verbatim to other
        // clients for client events) is covered at any depth.
        json::check_unique_keys(text)
            .map_err(|e| Rejection::plain(format!("Invalid message format: {e}")))?;
        let envelope: Envelope<'_> = serde_json::from_slice(text)
            .map_err(|e| Rejection::plain(format!("Invalid message format: {e}")))?;
        match &*envelope.event {
            "pusher:ping" => Ok(Command::Ping),
            "pusher:pong" => Ok(Command::Nothing),
            "pusher:subscribe" => self.subscribe(app, envelope.data),
            "pusher:signin" => self.signin(app, envelope.data),
            "pusher:unsubscribe" => {
                let data: UnsubscribeData = data_object(envelope.data)?;
                Ok(Command::Unsubscribe { channel: data.channel })
            }
            event if event.starts_with("client-") => self.client_event(now, app, envelope),
            event => Err(Rejection::plain(format!("Unsupported event: {}", truncate(event, 64)))),
        }
    }

    fn subscribe<'a>(
        &self,
        app: &AppConfig,
        data: Option<&'a RawValue>,
    ) -> Result<Command<'a>, Rejection> {
        let data = subscribe_data(data)?;
        let flags = channel::validate(&data.channel, app.max_channel_name_chars)
            .map_err(|e| Rejection::plain(e.to_string()))?;
        if flags.kind == ChannelKind::ServerToUser {
            // Spec §10.2: only the user's own signed-in connections.
            let owner = channel::server_to_user_id(&data.channel);
            if self.user.as_ref().map(|u| &*u.id) != owner {
                return Err(Rejection::plain(format!(
                    "Cannot subscribe to {}: only a connection signed in as that user may",
                    data.channel
                )));
            }
            return Ok(Command::Subscribe { channel: data.channel, flags, member: None });
        }
        if !flags.kind.needs_auth() {
            return Ok(Command::Subscribe { channel: data.channel, flags, member: None });
        }
        let socket_id = self.socket_id.to_string();
        let auth = data.auth.as_deref().unwrap_or("");
        let channel_data = data.channel_data.as_deref();
        if flags.kind == ChannelKind::Presence && channel_data.is_none() {
            // Spec §5.2: a signed-in connection joins as its user, and the
            // auth then covers only `<socket_id>:<channel>`.
            let Some(user) = &self.user else {
                return Err(Rejection::plain(format!(
                    "Presence channel {} needs channel_data or a signed-in connection",
                    data.channel
                )));
            };
            auth::verify_channel(&app.key, &app.secret, &socket_id, &data.channel, None, auth)
                .map_err(|e| Rejection::plain(e.to_string()))?;
            let member = PresenceMember {
                user_id: user.id.to_string(),
                user_info: user.info.as_deref().map(str::to_owned),
            };
            return Ok(Command::Subscribe { channel: data.channel, flags, member: Some(member) });
        }
        auth::verify_channel(&app.key, &app.secret, &socket_id, &data.channel, channel_data, auth)
            .map_err(|e| Rejection::plain(e.to_string()))?;
        let member = match (flags.kind, channel_data) {
            (ChannelKind::Presence, Some(raw)) => Some(
                auth::parse_presence_data(
                    raw,
                    app.max_presence_user_id_chars,
                    app.max_presence_user_info_bytes,
                )
                .map_err(|e| Rejection::plain(e.to_string()))?,
            ),
            _ => None,
        };
        Ok(Command::Subscribe { channel: data.channel, flags, member })
    }

    /// `pusher:signin` (spec §10.1): checks the signature over
    /// `<socket_id>::user::<user_data>` and the user data, and records the
    /// user. Signing in again as the same user is confirmed again; as another
    /// user it is refused.
    fn signin(
        &mut self,
        app: &AppConfig,
        data: Option<&RawValue>,
    ) -> Result<Command<'static>, Rejection> {
        let data: SigninData = data_object(data)?;
        let Some(user_data) = data.user_data else {
            return Err(Rejection::plain("Sign-in needs user_data"));
        };
        let auth = data.auth.as_deref().unwrap_or("");
        let socket_id = self.socket_id.to_string();
        auth::verify_user(&app.key, &app.secret, &socket_id, &user_data, auth)
            .map_err(|e| Rejection::plain(e.to_string()))?;
        let user = auth::parse_user_data(
            &user_data,
            app.max_presence_user_id_chars,
            app.max_presence_user_info_bytes,
            MAX_WATCHLIST,
        )
        .map_err(|e| Rejection::plain(e.to_string()))?;
        if let Some(current) = &self.user
            && *current.id != *user.id
        {
            return Err(Rejection::plain(format!(
                "Sign-in refused: this connection is already signed in as {}",
                current.id
            )));
        }
        self.user = Some(Box::new(User {
            id: user.id.as_str().into(),
            info: user.user_info.as_deref().map(Into::into),
        }));
        self.authorize();
        Ok(Command::Signin { user_data, user })
    }

    fn client_event<'a>(
        &mut self,
        now: Instant,
        app: &AppConfig,
        envelope: Envelope<'a>,
    ) -> Result<Command<'a>, Rejection> {
        if !app.client_events {
            return Err(Rejection::client_event("Client events are not enabled for this app"));
        }
        channel::validate_event_name(&envelope.event, app.max_event_name_chars)
            .map_err(|e| Rejection::client_event(e.to_string()))?;
        let Some(channel) = envelope.channel else {
            return Err(Rejection::client_event("Client event without a channel"));
        };
        let flags = channel::validate(&channel, app.max_channel_name_chars)
            .map_err(|e| Rejection::client_event(e.to_string()))?;
        if !flags.kind.allows_client_events() {
            return Err(Rejection::client_event(format!(
                "Client events are only allowed on private and presence channels, not {channel}"
            )));
        }
        let data = envelope.data.map_or("{}", RawValue::get);
        if data.len() > app.max_event_bytes {
            return Err(Rejection::client_event(format!(
                "Client event data is larger than {} bytes",
                app.max_event_bytes
            )));
        }
        if !self.take_token(now, app.client_event_rate) {
            return Err(Rejection::client_event(format!(
                "Client event rejected: more than {} per second",
                app.client_event_rate
            )));
        }
        Ok(Command::ClientEvent { event: envelope.event, channel, data })
    }

    /// Token bucket: `rate` tokens of burst, refilled at `rate` per second.
    fn take_token(&mut self, now: Instant, rate: u32) -> bool {
        let cap = u64::from(rate) * 1000;
        let now = Tick::of(now);
        let elapsed_ms = u64::from(self.tokens_at.millis_until(now));
        self.tokens_milli = (self.tokens_milli + elapsed_ms * u64::from(rate)).min(cap);
        self.tokens_at = now;
        if self.tokens_milli < 1000 {
            return false;
        }
        self.tokens_milli -= 1000;
        true
    }
}

/// `data` as an object, whether it came as an object or as a JSON string
/// holding one (spec §2.3).
fn data_object<T: for<'de> Deserialize<'de>>(data: Option<&RawValue>) -> Result<T, Rejection> {
    serde_json::from_str(&data_text(data)?).map_err(|e| invalid_data(&e))
}

/// [`data_object`] for `pusher:subscribe`, borrowing from the frame unless
/// the object came inside a string.
fn subscribe_data(data: Option<&RawValue>) -> Result<SubscribeData<'_>, Rejection> {
    match data_text(data)? {
        Cow::Borrowed(text) => serde_json::from_str(text).map_err(|e| invalid_data(&e)),
        Cow::Owned(inner) => serde_json::from_str::<SubscribeData<'_>>(&inner)
            .map(SubscribeData::detach)
            .map_err(|e| invalid_data(&e)),
    }
}

/// The text of the object `data` is or holds: the frame's own bytes for an
/// object, the decoded string (checked for repeated keys, which the frame's
/// check could not see inside) for a JSON string holding one.
fn data_text(data: Option<&RawValue>) -> Result<Cow<'_, str>, Rejection> {
    let Some(raw) = data else { return Err(Rejection::plain("Missing data")) };
    let text = raw.get();
    if !text.starts_with('"') {
        return Ok(Cow::Borrowed(text));
    }
    let inner = serde_json::from_str::<String>(text).map_err(|e| invalid_data(&e))?;
    json::check_unique_keys(inner.as_bytes()).map_err(|e| invalid_data(&e))?;
    Ok(Cow::Owned(inner))
}

fn invalid_data(e: &dyn std::fmt::Display) -> Rejection {
    Rejection::plain(format!("Invalid data: {e}"))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
// The tests make up the connection's `Instant`.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn refusal(text: &str) -> String {
        let mut app = AppConfig::new("1", "key", "secret");
        app.client_events = true;
        let socket_id = "1.2".parse().expect("socket id");
        let now = Instant::now();
        let mut session = Session::new(socket_id, 0, 10, now);
        match session.handle_text(now, &app, text.as_bytes()) {
            Err(Rejection { code: None, message }) => message,
            other => panic!("{text}: expected a pusher:error with code null, got {other:?}"),
        }
    }

    #[test]
    fn repeated_keys_are_refused_anywhere_in_a_frame() {
        let cases = [
            (
                r#"{"event":"pusher:subscribe","event":"pusher:ping","data":{}}"#,
                r#"Invalid message format: duplicate key "event" in the object at $"#,
            ),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":"a","channel":"private-b"}}"#,
                r#"Invalid message format: duplicate key "channel" in the object at $.data"#,
            ),
            // A client event's data is relayed as it is: checked at any depth.
            (
                r#"{"event":"client-x","channel":"private-a","data":{"m":[{"to":1,"to":2}]}}"#,
                r#"Invalid message format: duplicate key "to" in the object at $.data.m[0]"#,
            ),
            // An object sent as a JSON string is checked once decoded.
            (
                r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\",\"channel\":\"b\"}"}"#,
                r#"Invalid data: duplicate key "channel" in the object at $"#,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(refusal(text), expected);
        }
    }
}
