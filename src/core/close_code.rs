//! Every close code and `pusher:error` code stapes sends, from one table.
//!
//! The ranges tell pusher-js what to do next (spec §3.4): 4000–4099 do not
//! reconnect unchanged, 4100–4199 reconnect after a back-off, 4200–4299
//! reconnect at once. Codes 4300–4399 only ever travel inside a
//! `pusher:error` frame: pusher-js treats a *close* with such a code as
//! "refused", so [`CloseCode::is_close_code`] is false for them and the
//! connection driver refuses to close with one. The 1xxx codes are RFC 6455's.

use std::fmt;

/// A WebSocket close code or Pusher error code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

/// What pusher-js does after a close with this code (spec §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconnect {
    /// 4000–4099: stays disconnected (4000 switches to TLS first).
    Never,
    /// 4100–4199: reconnects after at least a second.
    Backoff,
    /// 4200–4299: reconnects at once.
    Immediately,
    /// Not a Pusher close code (RFC 6455 range, or a 43xx error-only code).
    Other,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $text:literal;)*) => {
        impl CloseCode {
            $($(#[$doc])* pub const $name: CloseCode = CloseCode($code);)*

            /// The human-readable reason sent with the code.
            pub fn reason(self) -> &'static str {
                match self.0 {
                    $($code => $text,)*
                    _ => "Closed",
                }
            }
        }
    };
}

codes! {
    /// RFC 6455: normal closure (echoing a client's close).
    NORMAL = 1000, "Normal closure";
    /// RFC 6455: the server is going down (Incus sockets at shutdown).
    GOING_AWAY = 1001, "Going away";
    /// RFC 6455: the peer broke the WebSocket framing rules.
    WS_PROTOCOL_ERROR = 1002, "WebSocket protocol error";
    /// RFC 6455: a text message was not valid UTF-8.
    WS_INVALID_PAYLOAD = 1007, "Invalid UTF-8 in text message";
    /// RFC 6455: a message was larger than `server.max_message_bytes`.
    WS_MESSAGE_TOO_BIG = 1009, "Message too big";
    /// RFC 6455 "internal error", which Incus sends when a `/socket`
    /// client's first frame is not a valid `authenticate` (Incus spec §5.3).
    INCUS_AUTH_FAILED = 1011, "Authentication failed";
    /// The app only accepts TLS connections; reconnect with wss.
    SSL_ONLY = 4000, "Application only accepts SSL connections, reconnect using wss://";
    /// No app has this key.
    APP_NOT_FOUND = 4001, "Application does not exist";
    /// The app exists but is disabled.
    APP_DISABLED = 4003, "Application disabled";
    /// The app is at its `max_connections` quota.
    APP_OVER_QUOTA = 4004, "Application is over connection quota";
    /// The WebSocket path is not `/app/{key}`.
    PATH_NOT_FOUND = 4005, "Path not found";
    /// `protocol` is not an integer.
    INVALID_VERSION_FORMAT = 4006, "Invalid version string format";
    /// `protocol` is an integer we do not speak (we speak 4 to 7).
    UNSUPPORTED_PROTOCOL = 4007, "Unsupported protocol version";
    /// `protocol` is missing and `server.allow_missing_protocol` is off.
    NO_PROTOCOL_VERSION = 4008, "No protocol version supplied";
    /// The app terminated the signed-in user's connections (spec §10.5).
    /// A 40xx code so that pusher-js does not reconnect (and sign in) again
    /// on its own, which would undo the termination; the app may still
    /// call `connect()` again. soketi uses the same code.
    UNAUTHORIZED = 4009, "Connection is unauthorized";
    /// The node is at `server.max_connections` (or `server.max_http_sessions`
    /// for an HTTP-transport session), or a consumer could not keep
    /// up with its messages (its outbox overflowed): back off, then reconnect.
    OVER_CAPACITY = 4100, "Over capacity";
    /// Generic "reconnect now": the server is shutting down.
    RECONNECT = 4200, "Server is shutting down, reconnect";
    /// The client did not answer the server's ping in time.
    PONG_NOT_RECEIVED = 4201, "Pong reply not received";
    /// Error-only: a client event was rejected (rate limit, disabled, size).
    CLIENT_EVENT_REJECTED = 4301, "Client event rejected";
    /// Error-only: a sign-in's watchlist had more than 100 ids; the first
    /// 100 are watched (spec §10.3).
    WATCHLIST_LIMIT = 4302, "Watchlist limit exceeded";
}

impl CloseCode {
    /// What pusher-js does after a close with this code.
    pub fn reconnect(self) -> Reconnect {
        match self.0 {
            4000..=4099 => Reconnect::Never,
            4100..=4199 => Reconnect::Backoff,
            4200..=4299 => Reconnect::Immediately,
            _ => Reconnect::Other,
        }
    }

    /// Whether a WebSocket may be closed with this code. 43xx codes are for
    /// `pusher:error` frames only (spec §3.4).
    pub fn is_close_code(self) -> bool {
        !(4300..=4399).contains(&self.0) && (1000..=4999).contains(&self.0)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({} {:?})", self.0, self.reason())
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_pusher_js_actions() {
        assert_eq!(CloseCode::APP_NOT_FOUND.reconnect(), Reconnect::Never);
        assert_eq!(CloseCode::SSL_ONLY.reconnect(), Reconnect::Never);
        assert_eq!(CloseCode::OVER_CAPACITY.reconnect(), Reconnect::Backoff);
        assert_eq!(CloseCode::RECONNECT.reconnect(), Reconnect::Immediately);
        assert_eq!(CloseCode::PONG_NOT_RECEIVED.reconnect(), Reconnect::Immediately);
        assert_eq!(CloseCode::WS_MESSAGE_TOO_BIG.reconnect(), Reconnect::Other);
    }

    #[test]
    fn error_only_codes_are_never_close_codes() {
        assert!(!CloseCode::CLIENT_EVENT_REJECTED.is_close_code());
        assert!(!CloseCode(4302).is_close_code());
        assert!(CloseCode::RECONNECT.is_close_code());
        assert!(CloseCode::NORMAL.is_close_code());
    }

    #[test]
    fn every_code_has_its_own_reason() {
        assert_eq!(CloseCode::APP_OVER_QUOTA.reason(), "Application is over connection quota");
        assert_eq!(CloseCode(4999).reason(), "Closed");
    }
}
