//! Channel names and kinds: classification by prefix and name validation.
//!
//! Everything here is a pure function of the name, so both the WebSocket
//! subscribe path and the HTTP API share one definition of "valid" and of
//! "which kind of channel is this".

/// The kind of a channel, decided by its prefix (spec §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anything without a recognised prefix, and `cache-`; no authorization.
    Public,
    /// `private-` and `private-cache-`: signed `<socket_id>:<channel>`.
    Private,
    /// `private-encrypted-` (and its cache variant): private auth rules; the
    /// payload is end-to-end encrypted and relayed untouched (spec §7).
    PrivateEncrypted,
    /// `presence-` and `presence-cache-`: signed with `channel_data` (spec §6).
    Presence,
    /// `#server-to-user-<user_id>`: the per-user channel of a signed-in
    /// connection (spec §10.2).
    ServerToUser,
}

/// What a channel name says about the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelFlags {
    /// The authorization and delivery rules that apply.
    pub kind: ChannelKind,
    /// A cache channel: the last API-published event is replayed to new
    /// subscribers (spec §8).
    pub cache: bool,
}

/// Prefix of the per-user channel (spec §4.1, §10.2).
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// Prefixes in matching order: longer prefixes sharing a stem come first so
/// the first hit is the longest match (spec §4.1).
const PREFIXES: [(&str, ChannelKind, bool); 8] = [
    ("private-encrypted-cache-", ChannelKind::PrivateEncrypted, true),
    ("private-encrypted-", ChannelKind::PrivateEncrypted, false),
    ("private-cache-", ChannelKind::Private, true),
    ("private-", ChannelKind::Private, false),
    ("presence-cache-", ChannelKind::Presence, true),
    ("presence-", ChannelKind::Presence, false),
    ("cache-", ChannelKind::Public, true),
    (SERVER_TO_USER_PREFIX, ChannelKind::ServerToUser, false),
];

/// Why a channel or event name was refused. Every variant is a client error:
/// the caller rejects the subscribe / client event with `pusher:error`
/// (connection kept, spec §3.5) or the HTTP request with 400, using the
/// `Display` text as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The channel name is empty. Reject.
    #[error("Channel name must not be empty")]
    EmptyChannel,
    /// The channel name is longer than the configured maximum. Reject.
    #[error("Channel name too long (max {max} characters)")]
    ChannelTooLong {
        /// The configured maximum, in characters.
        max: usize,
    },
    /// The channel name contains a character outside the allowed set. Reject.
    #[error("Invalid channel name '{name}': only A-Z a-z 0-9 _ - = @ , . ; are allowed")]
    InvalidChannel {
        /// The offending name (bounded by the length limit).
        name: String,
    },
    /// `#server-to-user-` followed by nothing, or by an id with characters
    /// outside the allowed set. Reject.
    #[error(
        "Invalid channel name '{name}': {SERVER_TO_USER_PREFIX} must be followed by a user id \
         of A-Z a-z 0-9 _ - = @ , . ;"
    )]
    InvalidServerToUser {
        /// The offending name (bounded by the length limit).
        name: String,
    },
    /// The event name is empty. Reject.
    #[error("Event name must not be empty")]
    EmptyEvent,
    /// The event name is longer than the configured maximum. Reject.
    #[error("Event name too long (max {max} characters)")]
    EventTooLong {
        /// The configured maximum, in characters.
        max: usize,
    },
}

/// Classifies a channel by its longest anchored prefix, dash included
/// (spec §4.1): `foo-private-x`, `private` and `presence` are public.
/// Does not validate; see [`validate`].
pub fn classify(name: &str) -> ChannelFlags {
    PREFIXES
        .iter()
        .find(|(prefix, _, _)| name.starts_with(prefix))
        .map_or(ChannelFlags { kind: ChannelKind::Public, cache: false }, |&(_, kind, cache)| {
            ChannelFlags { kind, cache }
        })
}

/// The user id of a `#server-to-user-<id>` channel, `None` for other names
/// (spec §10.2). The subscribe path compares it with the signed-in user.
pub fn server_to_user_id(name: &str) -> Option<&str> {
    name.strip_prefix(SERVER_TO_USER_PREFIX)
}

/// The character set of channel names: `A-Z a-z 0-9 _ - = @ , . ;` (spec §4.2).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

/// Validates a channel name and returns its flags (spec §4.2).
///
/// * Length 1..=`max_chars` (200 by default; the docs' 164 is configurable
///   through `max_chars`). Allowed names are ASCII, so bytes are characters;
///   checking the byte length first keeps error messages bounded — a longer
///   non-ASCII name is refused either way, only with the length message.
/// * Characters `A-Z a-z 0-9 _ - = @ , . ;`.
/// * `#` is reserved (spec §4.2) except for `#server-to-user-<user_id>`,
///   which the HTTP API must accept (spec §4.2, §14.5); the id must be
///   non-empty and use the same character set. Whether a connection may
///   *subscribe* to it is the caller's decision (spec §10.2).
pub fn validate(name: &str, max_chars: usize) -> Result<ChannelFlags, NameError> {
    if name.is_empty() {
        return Err(NameError::EmptyChannel);
    }
    if name.len() > max_chars {
        return Err(NameError::ChannelTooLong { max: max_chars });
    }
    if let Some(user_id) = server_to_user_id(name) {
        if user_id.is_empty() || !user_id.bytes().all(is_name_byte) {
            return Err(NameError::InvalidServerToUser { name: name.to_owned() });
        }
        return Ok(ChannelFlags { kind: ChannelKind::ServerToUser, cache: false });
    }
    if !name.bytes().all(is_name_byte) {
        return Err(NameError::InvalidChannel { name: name.to_owned() });
    }
    Ok(classify(name))
}

/// Validates an event name: 1..=`max_chars` characters, any characters
/// (spec §4.3). Reserved prefixes (`pusher:`, `client-`) are the caller's
/// concern because they depend on who sends the event.
pub fn validate_event_name(name: &str, max_chars: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::EmptyEvent);
    }
    // A name never has more characters than bytes, so counting is only
    // needed when the byte length is over the limit.
    if name.len() > max_chars && name.chars().count() > max_chars {
        return Err(NameError::EventTooLong { max: max_chars });
    }
    Ok(())
}

impl ChannelKind {
    /// Whether subscribing needs a signed `auth` (spec §5.2): private,
    /// private-encrypted and presence channels.
    ///
    /// `ServerToUser` returns `false`: pusher-js subscribes to it with an
    /// empty `auth` (spec §10.2), so the caller must instead check that the
    /// connection is signed in as [`server_to_user_id`].
    pub fn needs_auth(self) -> bool {
        matches!(self, Self::Private | Self::PrivateEncrypted | Self::Presence)
    }

    /// Whether clients may trigger `client-` events here (spec §9.2): private
    /// and presence channels, cache variants included.
    ///
    /// Encrypted channels allow them too: pusher-js refuses to send them, but
    /// the protocol does not forbid them (spec §7, §16), and the server relays
    /// the payload without reading it either way.
    pub fn allows_client_events(self) -> bool {
        matches!(self, Self::Private | Self::PrivateEncrypted | Self::Presence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(kind: ChannelKind, cache: bool) -> ChannelFlags {
        ChannelFlags { kind, cache }
    }

    #[test]
    fn classify_by_longest_anchored_prefix() {
        use ChannelKind::*;
        let cases = [
            ("private-encrypted-cache-x", flags(PrivateEncrypted, true)),
            ("private-encrypted-x", flags(PrivateEncrypted, false)),
            ("private-cache-x", flags(Private, true)),
            ("private-x", flags(Private, false)),
            ("presence-cache-x", flags(Presence, true)),
            ("presence-x", flags(Presence, false)),
            ("cache-x", flags(Public, true)),
            ("#server-to-user-42", flags(ServerToUser, false)),
            ("my-channel", flags(Public, false)),
            // Exactly the prefix still has the prefix.
            ("private-", flags(Private, false)),
            ("private-encrypted-", flags(PrivateEncrypted, false)),
            // No dash, or not anchored: public (spec §4.1).
            ("private", flags(Public, false)),
            ("presence", flags(Public, false)),
            ("cache", flags(Public, false)),
            ("privatefoo", flags(Public, false)),
            ("foo-private-x", flags(Public, false)),
            ("foo-presence-x", flags(Public, false)),
            ("Private-x", flags(Public, false)),
            // "private-encrypted" without the dash is a private channel.
            ("private-encryptedx", flags(Private, false)),
            ("private-cachex", flags(Private, false)),
            ("presence-cachex", flags(Presence, false)),
            ("#server-to-user", flags(Public, false)),
        ];
        for (name, want) in cases {
            assert_eq!(classify(name), want, "{name}");
        }
    }

    #[test]
    fn validate_accepts_the_whole_charset() {
        let name = "AZaz09_-=@,.;";
        assert_eq!(validate(name, 200), Ok(flags(ChannelKind::Public, false)));
        assert_eq!(validate("presence-cache-room=1", 200), Ok(flags(ChannelKind::Presence, true)));
    }

    #[test]
    fn validate_rejects_bad_characters() {
        for name in ["x y", "a/b", "a#b", "#foo", "é", "a\0", "a:b", "private-\n", "a*"] {
            let err = validate(name, 200);
            assert_eq!(err, Err(NameError::InvalidChannel { name: name.to_owned() }), "{name}");
        }
        let msg = validate("x y", 200).err().map(|e| e.to_string());
        assert_eq!(
            msg.as_deref(),
            Some("Invalid channel name 'x y': only A-Z a-z 0-9 _ - = @ , . ; are allowed")
        );
    }

    #[test]
    fn validate_length() {
        assert_eq!(validate("", 200), Err(NameError::EmptyChannel));
        let max = "a".repeat(200);
        assert!(validate(&max, 200).is_ok());
        let over = "a".repeat(201);
        assert_eq!(validate(&over, 200), Err(NameError::ChannelTooLong { max: 200 }));
        assert_eq!(
            NameError::ChannelTooLong { max: 200 }.to_string(),
            "Channel name too long (max 200 characters)"
        );
        // The docs' 164 limit is a configuration choice.
        assert!(validate(&"a".repeat(165), 164).is_err());
        // Multi-byte names over the limit in bytes are refused (as too long).
        assert!(validate(&"é".repeat(101), 200).is_err());
    }

    #[test]
    fn validate_server_to_user() {
        assert_eq!(validate("#server-to-user-1", 200), Ok(flags(ChannelKind::ServerToUser, false)));
        assert_eq!(
            validate("#server-to-user-a@b.c", 200),
            Ok(flags(ChannelKind::ServerToUser, false))
        );
        for name in ["#server-to-user-", "#server-to-user-a b", "#server-to-user-#1"] {
            assert_eq!(
                validate(name, 200),
                Err(NameError::InvalidServerToUser { name: name.to_owned() }),
                "{name}"
            );
        }
        // Other `#` names stay reserved.
        assert!(validate("#server-to-use-1", 200).is_err());
        assert_eq!(server_to_user_id("#server-to-user-42"), Some("42"));
        assert_eq!(server_to_user_id("private-42"), None);
    }

    #[test]
    fn event_names() {
        assert_eq!(validate_event_name("", 200), Err(NameError::EmptyEvent));
        assert!(validate_event_name("my event: with anything ✓", 200).is_ok());
        assert!(validate_event_name(&"e".repeat(200), 200).is_ok());
        assert_eq!(
            validate_event_name(&"e".repeat(201), 200),
            Err(NameError::EventTooLong { max: 200 })
        );
        // Counted in characters, not bytes.
        assert!(validate_event_name(&"é".repeat(200), 200).is_ok());
        assert!(validate_event_name(&"é".repeat(201), 200).is_err());
    }

    #[test]
    fn kind_rules() {
        use ChannelKind::*;
        assert!(!Public.needs_auth());
        assert!(Private.needs_auth());
        assert!(PrivateEncrypted.needs_auth());
        assert!(Presence.needs_auth());
        assert!(!ServerToUser.needs_auth());
        assert!(!Public.allows_client_events());
        assert!(Private.allows_client_events());
        assert!(PrivateEncrypted.allows_client_events());
        assert!(Presence.allows_client_events());
        assert!(!ServerToUser.allows_client_events());
    }
}
