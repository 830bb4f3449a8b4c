//! Channel and user authorization signatures (spec §5.2, §10.1) and presence
//! `channel_data` (spec §6).
//!
//! The app's auth endpoint signs a string with the app secret; the client
//! hands us `"<app_key>:<hex HMAC-SHA256>"`, and we recompute the MAC over the
//! strings exactly as received (never re-serialised, spec §5.2) and compare
//! in constant time.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::core::json;

type HmacSha256 = Hmac<Sha256>;

/// Length of a hex-encoded SHA-256 MAC.
const HEX_SIG_LEN: usize = 64;

/// Why a channel or sign-in authorization was refused. The caller sends
/// `pusher:error` with `code: null` and this `Display` text, and keeps the
/// connection (spec §3.5, §5.4). Texts follow Pusher's wording (spec §3.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `auth` has no `:` separating key and signature (an empty `auth`
    /// included). Reject the subscription / sign-in.
    #[error("Invalid format: auth must have the format key:signature")]
    InvalidFormat,
    /// The key part is not this app's key. Reject.
    #[error("Invalid key in auth")]
    InvalidKey,
    /// The signature does not match (or is not 64 hex digits). Reject; the
    /// message shows the string we signed so the app developer can compare.
    #[error(
        "Invalid signature: Expected HMAC SHA256 hex digest of {string_to_sign}, but got {got}"
    )]
    InvalidSignature {
        /// What a correct signature covers (contains no secret).
        string_to_sign: String,
        /// The signature part as received.
        got: String,
    },
}

/// Hex HMAC-SHA256 of `message` under `secret` (spec §5.2, §12.2): the
/// signature scheme of channel auth, sign-in, request signing and webhooks.
pub fn sign(secret: &str, message: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// A MAC keyed with the app secret.
pub(crate) fn new_mac(secret: &str) -> HmacSha256 {
    // HMAC accepts keys of any length (longer ones are hashed first), so the
    // error case of the generic `KeyInit` API cannot happen here.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// Decodes a 64-digit hex signature (either case) for `Mac::verify_slice`.
/// `None` for anything else, which the callers report as a wrong signature.
pub(crate) fn decode_sig(hex_sig: &str) -> Option<[u8; 32]> {
    if hex_sig.len() != HEX_SIG_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_sig, &mut out).ok()?;
    Some(out)
}

/// Splits `auth` into key and signature and checks the key (spec §5.2).
/// Splits at the last `:` because the hex signature never contains one.
fn split_auth<'a>(app_key: &str, auth: &'a str) -> Result<&'a str, AuthError> {
    let (key, sig) = auth.rsplit_once(':').ok_or(AuthError::InvalidFormat)?;
    // The key is public, so a plain comparison leaks nothing.
    if key != app_key {
        return Err(AuthError::InvalidKey);
    }
    Ok(sig)
}

/// Compares the MAC of `parts` (concatenated) with `sig` in constant time.
fn check(secret: &str, parts: &[&str], sig: &str) -> Result<(), AuthError> {
    let mut mac = new_mac(secret);
    for part in parts {
        mac.update(part.as_bytes());
    }
    match decode_sig(sig) {
        Some(bytes) if mac.verify_slice(&bytes).is_ok() => Ok(()),
        _ => {
            Err(AuthError::InvalidSignature { string_to_sign: parts.concat(), got: sig.to_owned() })
        }
    }
}

/// Checks a subscription `auth` = `"<app_key>:<hex sig>"` (spec §5.2).
///
/// Signed string: `<socket_id>:<channel>`, or `<socket_id>:<channel>:<channel_data>`
/// whenever `channel_data` is `Some` — for presence, and for private
/// channels whose auth endpoint added custom data (the SDKs sign it whenever
/// given; soketi got this wrong, spec §14.2). `channel_data` is used byte for
/// byte as received.
pub fn verify_channel(
    app_key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> Result<(), AuthError> {
    let sig = split_auth(app_key, auth)?;
    match channel_data {
        Some(data) => check(secret, &[socket_id, ":", channel, ":", data], sig),
        None => check(secret, &[socket_id, ":", channel], sig),
    }
}

/// Checks a `pusher:signin` `auth` over `<socket_id>::user::<user_data>`
/// (spec §5.2, §10.1), `user_data` byte for byte as received.
pub fn verify_user(
    app_key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> Result<(), AuthError> {
    let sig = split_auth(app_key, auth)?;
    check(secret, &[socket_id, "::user::", user_data], sig)
}

/// A presence member as announced by its `channel_data` (spec §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMember {
    /// The user id in string form: integers are normalised to their decimal
    /// text, because pusher-js keys members by string (spec §6), so `10` and
    /// `"10"` are the same user.
    pub user_id: String,
    /// `user_info` as compact JSON (re-serialised; only the signature needs
    /// the original bytes). `None` when absent or `null`.
    pub user_info: Option<String>,
}

/// Why presence `channel_data` was refused. The caller rejects the
/// subscription with `pusher:error` and this text (spec §5.4); the
/// connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceDataError {
    /// Not JSON, or not a JSON object. Reject.
    #[error("Invalid channel_data: {0}")]
    InvalidJson(String),
    /// No `user_id` (or `null`). Reject.
    #[error("Invalid channel_data: user_id is required")]
    MissingUserId,
    /// `user_id` is empty, or neither a string nor an integer. Reject.
    #[error("Invalid channel_data: user_id must be a non-empty string or an integer")]
    InvalidUserId,
    /// `user_id` has more characters than allowed. Reject.
    #[error("Invalid channel_data: user_id longer than {max} characters")]
    UserIdTooLong {
        /// The configured maximum, in characters.
        max: usize,
    },
    /// `user_info` serialises to more bytes than allowed. Reject.
    #[error("Invalid channel_data: user_info larger than {max} bytes")]
    UserInfoTooLarge {
        /// The configured maximum, in bytes of compact JSON.
        max: usize,
    },
}

/// The shape of `channel_data`; unknown fields are ignored.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object with a user_id")]
struct RawPresence {
    user_id: Option<serde_json::Value>,
    user_info: Option<serde_json::Value>,
}

/// Parses and validates presence `channel_data` (spec §6):
///
/// * a JSON object with `user_id`: a non-empty string or an integer, at
///   most `max_id_chars` characters (default 128). Fractional numbers are
///   refused: their string form differs between JSON libraries, so the same
///   user could appear twice.
/// * optional `user_info`: any JSON, at most `max_info_bytes` (default 1 KB)
///   once serialised compactly.
pub fn parse_presence_data(
    channel_data: &str,
    max_id_chars: usize,
    max_info_bytes: usize,
) -> Result<PresenceMember, PresenceDataError> {
    json::check_unique_keys(channel_data.as_bytes())
        .map_err(|e| PresenceDataError::InvalidJson(e.to_string()))?;
    let raw: RawPresence = serde_json::from_str(channel_data)
        .map_err(|e| PresenceDataError::InvalidJson(e.to_string()))?;
    let user_id = match raw.user_id {
        None | Some(serde_json::Value::Null) => return Err(PresenceDataError::MissingUserId),
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => return Err(PresenceDataError::InvalidUserId),
    };
    if user_id.len() > max_id_chars && user_id.chars().count() > max_id_chars {
        return Err(PresenceDataError::UserIdTooLong { max: max_id_chars });
    }
    let user_info = raw.user_info.map(|v| v.to_string());
    if user_info.as_ref().is_some_and(|i| i.len() > max_info_bytes) {
        return Err(PresenceDataError::UserInfoTooLarge { max: max_info_bytes });
    }
    Ok(PresenceMember { user_id, user_info })
}

/// A signed-in user as announced by its `user_data` (spec §10.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInUser {
    /// The user id: a non-empty string (pusher-js refuses other types).
    pub id: String,
    /// `user_info` as compact JSON, shown as the user's presence info when a
    /// presence subscription carries no `channel_data`. `None` when absent.
    pub user_info: Option<String>,
    /// `watchlist` user ids, in order, at most the given maximum.
    pub watchlist: Vec<String>,
    /// Whether the watchlist was cut to the maximum (spec §10.3: 4302).
    pub watchlist_truncated: bool,
}

/// Why `user_data` was refused. The caller rejects the sign-in with
/// `pusher:error` and this text; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    /// Not a JSON object. Reject.
    #[error("Invalid user_data: {0}")]
    InvalidJson(String),
    /// `id` missing, empty or not a string. Reject.
    #[error("Invalid user_data: id must be a non-empty string")]
    InvalidId,
    /// `id` longer than allowed. Reject.
    #[error("Invalid user_data: id longer than {max} characters")]
    IdTooLong {
        /// The configured maximum, in characters.
        max: usize,
    },
    /// `user_info` serialises to more bytes than allowed. Reject.
    #[error("Invalid user_data: user_info larger than {max} bytes")]
    UserInfoTooLarge {
        /// The configured maximum, in bytes of compact JSON.
        max: usize,
    },
    /// `watchlist` is not an array of non-empty strings. Reject.
    #[error("Invalid user_data: watchlist must be an array of user id strings")]
    InvalidWatchlist,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object with an id")]
struct RawUser {
    id: Option<serde_json::Value>,
    user_info: Option<serde_json::Value>,
    watchlist: Option<serde_json::Value>,
}

/// Parses and validates sign-in `user_data` (spec §10.1, §10.3). The id
/// shares the presence limit on user ids (`max_id_chars`); a watchlist
/// longer than `max_watchlist` keeps its first ids.
pub fn parse_user_data(
    user_data: &str,
    max_id_chars: usize,
    max_info_bytes: usize,
    max_watchlist: usize,
) -> Result<SignedInUser, UserDataError> {
    json::check_unique_keys(user_data.as_bytes())
        .map_err(|e| UserDataError::InvalidJson(e.to_string()))?;
    let raw: RawUser =
        serde_json::from_str(user_data).map_err(|e| UserDataError::InvalidJson(e.to_string()))?;
    let id = match raw.id {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        _ => return Err(UserDataError::InvalidId),
    };
    if id.len() > max_id_chars && id.chars().count() > max_id_chars {
        return Err(UserDataError::IdTooLong { max: max_id_chars });
    }
    let user_info = raw.user_info.filter(|v| !v.is_null()).map(|v| v.to_string());
    if user_info.as_ref().is_some_and(|i| i.len() > max_info_bytes) {
        return Err(UserDataError::UserInfoTooLarge { max: max_info_bytes });
    }
    let mut watchlist = Vec::new();
    match raw.watchlist {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(ids)) => {
            for id in ids {
                match id {
                    serde_json::Value::String(s) if !s.is_empty() => watchlist.push(s),
                    _ => return Err(UserDataError::InvalidWatchlist),
                }
            }
        }
        Some(_) => return Err(UserDataError::InvalidWatchlist),
    }
    let watchlist_truncated = watchlist.len() > max_watchlist;
    watchlist.truncate(max_watchlist);
    Ok(SignedInUser { id, user_info, watchlist, watchlist_truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Spec §15 / §12.2 test credentials.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const SOCKET: &str = "1234.1234";
    const PRIVATE_SIG: &str = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
    const USER_DATA: &str = r#"{"id":"12345"}"#;
    const USER_SIG: &str = "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba";
    const PRESENCE_DATA: &str = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
    // Our computation (spec §15); the docs print a value that does not verify.
    const PRESENCE_SIG: &str = "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80";

    fn auth(sig: &str) -> String {
        format!("{KEY}:{sig}")
    }

    #[test]
    fn channel_data_and_user_data_may_not_repeat_a_key() {
        let err = parse_presence_data(r#"{"user_id":"a","user_id":"b"}"#, 128, 1024)
            .expect_err("repeated user_id");
        assert_eq!(
            err,
            PresenceDataError::InvalidJson(
                r#"duplicate key "user_id" in the object at $"#.to_owned()
            )
        );
        // In user_info, which other members receive as it is.
        let err = parse_presence_data(r#"{"user_id":"a","user_info":{"n":1,"n":2}}"#, 128, 1024)
            .expect_err("repeated key in user_info");
        assert!(err.to_string().contains(r#"duplicate key "n" in the object at $.user_info"#));
        let err = parse_user_data(r#"{"id":"a","user_info":{},"id":"b"}"#, 128, 1024, 100)
            .expect_err("repeated id");
        assert_eq!(
            err,
            UserDataError::InvalidJson(r#"duplicate key "id" in the object at $"#.to_owned())
        );
    }

    #[test]
    fn sign_matches_spec_vectors() {
        assert_eq!(sign(SECRET, b"1234.1234:private-foobar"), PRIVATE_SIG);
        assert_eq!(sign(SECRET, format!("{SOCKET}::user::{USER_DATA}").as_bytes()), USER_SIG);
        let presence = format!("{SOCKET}:presence-foobar:{PRESENCE_DATA}");
        assert_eq!(sign(SECRET, presence.as_bytes()), PRESENCE_SIG);
    }

    #[test]
    fn private_vector_verifies() {
        let ok = verify_channel(KEY, SECRET, SOCKET, "private-foobar", None, &auth(PRIVATE_SIG));
        assert_eq!(ok, Ok(()));
        // Upper-case hex decodes to the same bytes.
        let upper = auth(&PRIVATE_SIG.to_uppercase());
        assert_eq!(verify_channel(KEY, SECRET, SOCKET, "private-foobar", None, &upper), Ok(()));
    }

    #[test]
    fn presence_vector_verifies() {
        let ok = verify_channel(
            KEY,
            SECRET,
            SOCKET,
            "presence-foobar",
            Some(PRESENCE_DATA),
            &auth(PRESENCE_SIG),
        );
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn channel_data_is_signed_byte_for_byte() {
        // Same JSON value, different bytes: must fail.
        let spaced = r#"{"user_id": 10, "user_info": {"name": "Mr. Channels"}}"#;
        let bad = verify_channel(
            KEY,
            SECRET,
            SOCKET,
            "presence-foobar",
            Some(spaced),
            &auth(PRESENCE_SIG),
        );
        assert!(matches!(bad, Err(AuthError::InvalidSignature { .. })));
    }

    #[test]
    fn user_vector_verifies() {
        assert_eq!(verify_user(KEY, SECRET, SOCKET, USER_DATA, &auth(USER_SIG)), Ok(()));
        let other = verify_user(KEY, SECRET, "1234.1235", USER_DATA, &auth(USER_SIG));
        assert!(matches!(other, Err(AuthError::InvalidSignature { .. })));
    }

    #[test]
    fn private_channel_with_custom_data_signs_it() {
        let data = r#"{"custom":true}"#;
        let sig = sign(SECRET, format!("{SOCKET}:private-foobar:{data}").as_bytes());
        let ok = verify_channel(KEY, SECRET, SOCKET, "private-foobar", Some(data), &auth(&sig));
        assert_eq!(ok, Ok(()));
        // Leaving the data out of the check must fail (spec §14.2)...
        let without = verify_channel(KEY, SECRET, SOCKET, "private-foobar", None, &auth(&sig));
        assert!(matches!(without, Err(AuthError::InvalidSignature { .. })));
        // ...and a signature without the data does not cover it.
        let plain =
            verify_channel(KEY, SECRET, SOCKET, "private-foobar", Some(data), &auth(PRIVATE_SIG));
        assert!(matches!(plain, Err(AuthError::InvalidSignature { .. })));
    }

    #[test]
    fn wrong_key() {
        let bad = verify_channel(
            KEY,
            SECRET,
            SOCKET,
            "private-foobar",
            None,
            &format!("otherkey:{PRIVATE_SIG}"),
        );
        assert_eq!(bad, Err(AuthError::InvalidKey));
        assert_eq!(AuthError::InvalidKey.to_string(), "Invalid key in auth");
        let empty_key = verify_user(KEY, SECRET, SOCKET, USER_DATA, &format!(":{USER_SIG}"));
        assert_eq!(empty_key, Err(AuthError::InvalidKey));
    }

    #[test]
    fn wrong_signature_message() {
        let wrong = "0".repeat(64);
        let err = verify_channel(KEY, SECRET, SOCKET, "private-foobar", None, &auth(&wrong));
        let msg = err.err().map(|e| e.to_string());
        assert_eq!(
            msg.as_deref(),
            Some(
                "Invalid signature: Expected HMAC SHA256 hex digest of 1234.1234:private-foobar, \
                 but got 0000000000000000000000000000000000000000000000000000000000000000"
            )
        );
        // Wrong secret, wrong channel, wrong socket.
        for (secret, socket, channel) in [
            ("nope", SOCKET, "private-foobar"),
            (SECRET, SOCKET, "private-foobaz"),
            (SECRET, "1.1", "private-foobar"),
        ] {
            let bad = verify_channel(KEY, secret, socket, channel, None, &auth(PRIVATE_SIG));
            assert!(matches!(bad, Err(AuthError::InvalidSignature { .. })), "{secret} {channel}");
        }
    }

    #[test]
    fn bad_hex() {
        for sig in [
            "",
            "zz",
            &PRIVATE_SIG[..63],
            &format!("{PRIVATE_SIG}0"),
            &format!("{}zz", &PRIVATE_SIG[..62]),
            &format!("{PRIVATE_SIG}00"),
        ] {
            let bad = verify_channel(KEY, SECRET, SOCKET, "private-foobar", None, &auth(sig));
            assert_eq!(
                bad,
                Err(AuthError::InvalidSignature {
                    string_to_sign: "1234.1234:private-foobar".into(),
                    got: sig.to_owned(),
                }),
                "{sig}"
            );
        }
    }

    #[test]
    fn missing_colon() {
        for a in ["", "no-colon-here", PRIVATE_SIG] {
            let bad = verify_channel(KEY, SECRET, SOCKET, "private-foobar", None, a);
            assert_eq!(bad, Err(AuthError::InvalidFormat), "{a}");
        }
        assert_eq!(
            AuthError::InvalidFormat.to_string(),
            "Invalid format: auth must have the format key:signature"
        );
        assert_eq!(verify_user(KEY, SECRET, SOCKET, USER_DATA, "x"), Err(AuthError::InvalidFormat));
    }

    #[test]
    fn presence_data_spec_example() {
        let m = parse_presence_data(PRESENCE_DATA, 128, 1024);
        assert_eq!(
            m,
            Ok(PresenceMember {
                user_id: "10".into(),
                user_info: Some(r#"{"name":"Mr. Channels"}"#.into()),
            })
        );
    }

    #[test]
    fn presence_data_ids() {
        let id = |data: &str| parse_presence_data(data, 128, 1024).map(|m| m.user_id);
        assert_eq!(id(r#"{"user_id":"abc"}"#), Ok("abc".into()));
        assert_eq!(id(r#"{"user_id":-7}"#), Ok("-7".into()));
        assert_eq!(id(r#"{"user_id":18446744073709551615}"#), Ok("18446744073709551615".into()));
        assert_eq!(id(r#"{"user_id":"1","extra":[1]}"#), Ok("1".into()));
        assert_eq!(id(r#"{}"#), Err(PresenceDataError::MissingUserId));
        assert_eq!(id(r#"{"user_id":null}"#), Err(PresenceDataError::MissingUserId));
        for bad in [
            r#"{"user_id":""}"#,
            r#"{"user_id":1.5}"#,
            r#"{"user_id":1e3}"#,
            r#"{"user_id":true}"#,
            r#"{"user_id":{}}"#,
            r#"{"user_id":[1]}"#,
        ] {
            assert_eq!(id(bad), Err(PresenceDataError::InvalidUserId), "{bad}");
        }
    }

    #[test]
    fn presence_data_limits() {
        let long = format!(r#"{{"user_id":"{}"}}"#, "a".repeat(129));
        assert_eq!(
            parse_presence_data(&long, 128, 1024),
            Err(PresenceDataError::UserIdTooLong { max: 128 })
        );
        let max = format!(r#"{{"user_id":"{}"}}"#, "é".repeat(128));
        assert!(parse_presence_data(&max, 128, 1024).is_ok());
        // user_info is measured compact: {"n":"…"} is 8 bytes plus the text.
        let info =
            |n: usize| format!(r#"{{"user_id":1,"user_info": {{ "n" : "{}" }} }}"#, "x".repeat(n));
        assert!(parse_presence_data(&info(1016), 128, 1024).is_ok());
        assert_eq!(
            parse_presence_data(&info(1017), 128, 1024),
            Err(PresenceDataError::UserInfoTooLarge { max: 1024 })
        );
        // Any JSON is acceptable user_info; null means none.
        let any = parse_presence_data(r#"{"user_id":1,"user_info":[1, "a"]}"#, 128, 1024);
        assert_eq!(any.map(|m| m.user_info), Ok(Some(r#"[1,"a"]"#.into())));
        let null = parse_presence_data(r#"{"user_id":1,"user_info":null}"#, 128, 1024);
        assert_eq!(null.map(|m| m.user_info), Ok(None));
    }

    #[test]
    fn user_data_rules() {
        let u = parse_user_data(
            r#"{"id":"7","user_info":{"n":1},"watchlist":["a","b","c"]}"#,
            128,
            1024,
            2,
        );
        assert_eq!(
            u,
            Ok(SignedInUser {
                id: "7".into(),
                user_info: Some(r#"{"n":1}"#.into()),
                watchlist: vec!["a".into(), "b".into()],
                watchlist_truncated: true,
            })
        );
        let plain = parse_user_data(USER_DATA, 128, 1024, 100);
        assert_eq!(
            plain.map(|u| (u.user_info, u.watchlist.len(), u.watchlist_truncated)),
            Ok((None, 0, false))
        );
        for bad in [r#"{"id":7}"#, r#"{"id":""}"#, r#"{}"#, r#"{"id":null}"#] {
            assert_eq!(
                parse_user_data(bad, 128, 1024, 100),
                Err(UserDataError::InvalidId),
                "{bad}"
            );
        }
        for bad in [r#"{"id":"1","watchlist":"a"}"#, r#"{"id":"1","watchlist":[1]}"#] {
            assert_eq!(
                parse_user_data(bad, 128, 1024, 100),
                Err(UserDataError::InvalidWatchlist),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_user_data("[]", 128, 1024, 100),
            Err(UserDataError::InvalidJson(_))
        ));
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(129));
        assert_eq!(
            parse_user_data(&long, 128, 1024, 100),
            Err(UserDataError::IdTooLong { max: 128 })
        );
        let big = format!(r#"{{"id":"1","user_info":"{}"}}"#, "x".repeat(1100));
        assert_eq!(
            parse_user_data(&big, 128, 1024, 100),
            Err(UserDataError::UserInfoTooLarge { max: 1024 })
        );
    }

    #[test]
    fn presence_data_not_an_object() {
        for bad in ["", "not json", "[]", "10", r#""{}""#, r#"{"user_id":1"#] {
            assert!(
                matches!(
                    parse_presence_data(bad, 128, 1024),
                    Err(PresenceDataError::InvalidJson(_))
                ),
                "{bad}"
            );
        }
    }
}
