//! Push commands from Redis (Incus spec §7, §9.1–§9.3), sans-IO: a `push`,
//! `pushios`, `pushandroid` or the push part of a `pushormessage` turned
//! into ready-to-send [`PushJob`]s, or refused with a [`Refusal`] that says
//! why. Everything a job needs later (the APNs body, the FCM `data` map) is
//! built here once, so the push thread only sends.
//!
//! Where Incus crashed (a non-numeric `badge_count`, a non-object
//! `push.ios`) or sent something the services reject (an odd-length token,
//! an empty id list), the command is refused instead.

use simd_json::{OwnedValue, prelude::*};

use crate::{
    core::json::write_str,
    proto::{incus, incus::message::write_value},
};

/// APNs' limit on a notification body (5120 applies to VoIP only).
pub const APNS_MAX_PAYLOAD: usize = 4096;
/// FCM's limit on a message's `data`.
pub const FCM_MAX_DATA: usize = 4096;
/// Longest device token accepted, in bytes (Apple's are 32 today).
const MAX_TOKEN_BYTES: usize = 100;

pub use crate::core::Platform;

/// One iOS notification, ready for APNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IosPush {
    /// `command.build`, one of the configured builds.
    pub build: Box<str>,
    /// The device token, lower-case hex.
    pub token: Box<str>,
    /// The JSON body: `{"aps":{…},"payload":<delivered message>}`.
    pub payload: Box<str>,
    /// `apns-push-type`: `command.apns_push_type`, else the configured one.
    pub push_type: Box<str>,
    /// `apns-priority`: `command.apns_priority`, else the configured one;
    /// always 5 for `background` (APNs refuses 10 there).
    pub priority: u8,
    /// `apns-expiration`: `command.apns_expiration` (absolute UNIX
    /// seconds), else the command's arrival plus the configured time, or 0.
    pub expiration: u64,
    /// `command.apns_collapse_id`.
    pub collapse_id: Option<Box<str>>,
}

/// One Android push to one or more registration tokens, ready for FCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndroidPush {
    /// `command.registration_ids`, split on commas, trimmed, in order.
    pub registration_ids: Vec<Box<str>>,
    /// The FCM v1 `data` map as JSON text, every value a string:
    /// `{"data":"<data as JSON>","event":"…","time":"<unix secs>"}`.
    pub data: Box<str>,
}

/// Something for the push thread to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// When the command arrived (UNIX seconds): a job that waited in the
    /// queue too long is dropped rather than sent late.
    pub arrived: u64,
    /// What to send.
    pub send: Send,
}

/// What a [`PushJob`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// To APNs.
    Ios(IosPush),
    /// To FCM, one request per registration id.
    Android(AndroidPush),
}

impl PushJob {
    /// Its service.
    pub fn platform(&self) -> Platform {
        match self.send {
            Send::Ios(_) => Platform::Ios,
            Send::Android(_) => Platform::Android,
        }
    }
}

/// Why a push command was refused before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `push` without `push_type` ios or android.
    #[error("command.push_type must be \"ios\" or \"android\"")]
    PushType,
    /// The platform is not enabled in the config.
    #[error("{} push is not enabled (incus.{})", .0.label(), if *.0 == Platform::Ios { "apns_enabled" } else { "gcm_enabled" })]
    Disabled(Platform),
    /// No `device_token`.
    #[error("command.device_token is missing")]
    NoDeviceToken,
    /// A token that is not an even number of hex digits, or too long.
    #[error("command.device_token must be an even number of hex digits, at most 200")]
    BadDeviceToken,
    /// No `build`.
    #[error("command.build is missing")]
    NoBuild,
    /// A build without credentials.
    #[error("command.build {0:?} has no APNs credentials configured")]
    UnknownBuild(String),
    /// `registration_ids` empty after splitting.
    #[error("command.registration_ids holds no id")]
    NoRegistrationIds,
    /// `message` (or `push.ios`/`push.android`) lacks a string `event` or an
    /// object `data`: Incus's "Could not format message".
    #[error("{0}: could not format message ({1})")]
    Format(&'static str, incus::message::FormatError),
    /// `badge_count` that is not a number from 0 to 2^32-1.
    #[error("data.badge_count must be a number from 0 to 4294967295")]
    Badge,
    /// `message_text`/`message` that is neither a string nor an object.
    #[error("data.message_text or data.message must be a string or an object")]
    Alert,
    /// `apns_priority` other than 5 or 10, or 10 for a background push.
    #[error("command.apns_priority must be 5 or 10 (5 for background pushes)")]
    Priority,
    /// `apns_push_type` that APNs does not know.
    #[error("command.apns_push_type is not an APNs push type")]
    ApnsPushType,
    /// `apns_expiration` that is not a UNIX time in seconds.
    #[error("command.apns_expiration must be UNIX seconds")]
    Expiration,
    /// `apns_collapse_id` over 64 bytes.
    #[error("command.apns_collapse_id is over 64 bytes")]
    CollapseId,
    /// The body would be over the service's limit.
    #[error("{0} payload is {1} bytes, over the limit of {2}")]
    TooLarge(&'static str, usize, usize),
    /// `message.push.ios` or `.android` that is not an object.
    #[error("{0} must be an object")]
    NotAnObject(&'static str),
}

/// What the command decoder needs to know of the config.
#[derive(Debug, Clone, Default)]
pub struct PushRules {
    /// Builds with APNs credentials; `None` when APNs is off.
    pub apns_builds: Option<Vec<String>>,
    /// Whether FCM is on.
    pub fcm: bool,
    /// `aps.sound` for every iOS push.
    pub sound: String,
    /// `apns-push-type` unless the command says otherwise.
    pub apns_push_type: String,
    /// `apns-priority` unless the command says otherwise.
    pub apns_priority: u8,
    /// How long APNs keeps a push, from its arrival; zero for 0.
    pub apns_expiration_secs: u64,
}

/// The push part of a command for one platform: the jobs, or why not.
pub type Decoded = Result<PushJob, (Platform, Refusal)>;

/// Decodes `push` (by `push_type`), `pushios` or `pushandroid`: `fields`
/// are the `command` fields, `message` the command's `message`.
pub fn direct(
    name: &str,
    fields: &[(String, String)],
    message: Option<&OwnedValue>,
    rules: &PushRules,
    now_unix: u64,
) -> Decoded {
    let platform = match name {
        "pushios" => Platform::Ios,
        "pushandroid" => Platform::Android,
        _ => match field(fields, "push_type").map(str::to_ascii_lowercase).as_deref() {
            Some("ios") => Platform::Ios,
            Some("android") => Platform::Android,
            // Without a platform, ios is as good a label as any.
            _ => return Err((Platform::Ios, Refusal::PushType)),
        },
    };
    one(platform, "message", fields, message, rules, now_unix)
}

/// Decodes the push part of a `pushormessage` whose user is not active
/// (spec §9.3): `message.push.ios` and `message.push.android`, each a
/// message of its own, with the platform fields from `command`. Nothing
/// when `message.push` is missing or not an object.
pub fn push_part(
    fields: &[(String, String)],
    message: Option<&OwnedValue>,
    rules: &PushRules,
    now_unix: u64,
) -> Vec<Decoded> {
    let Some(push) = message.and_then(|m| m.get("push")).and_then(ValueAsObject::as_object) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (platform, key, name) in [
        (Platform::Ios, "ios", "message.push.ios"),
        (Platform::Android, "android", "message.push.android"),
    ] {
        let Some(part) = push.get(key) else { continue };
        if part.as_object().is_none() {
            out.push(Err((platform, Refusal::NotAnObject(name))));
            continue;
        }
        out.push(one(platform, name, fields, Some(part), rules, now_unix));
    }
    out
}

fn one(
    platform: Platform,
    what: &'static str,
    fields: &[(String, String)],
    message: Option<&OwnedValue>,
    rules: &PushRules,
    now_unix: u64,
) -> Decoded {
    let send = match platform {
        Platform::Ios => ios(what, fields, message, rules, now_unix).map(Send::Ios),
        Platform::Android => android(what, fields, message, rules, now_unix).map(Send::Android),
    };
    send.map(|send| PushJob { arrived: now_unix, send }).map_err(|refusal| (platform, refusal))
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn nonempty<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    field(fields, name).filter(|v| !v.is_empty())
}

fn ios(
    what: &'static str,
    fields: &[(String, String)],
    message: Option<&OwnedValue>,
    rules: &PushRules,
    now_unix: u64,
) -> Result<IosPush, Refusal> {
    let builds = rules.apns_builds.as_ref().ok_or(Refusal::Disabled(Platform::Ios))?;
    let token = nonempty(fields, "device_token").ok_or(Refusal::NoDeviceToken)?;
    let token = device_token(token)?;
    let build = nonempty(fields, "build").ok_or(Refusal::NoBuild)?;
    let build = builds
        .iter()
        .find(|b| b.eq_ignore_ascii_case(build))
        .ok_or_else(|| Refusal::UnknownBuild(build.to_owned()))?;
    let push_type = match nonempty(fields, "apns_push_type") {
        Some(t) if APNS_PUSH_TYPES.contains(&t) => t,
        Some(_) => return Err(Refusal::ApnsPushType),
        None => rules.apns_push_type.as_str(),
    };
    let background = push_type == "background";
    let priority = match (nonempty(fields, "apns_priority"), background) {
        (Some("5"), _) => 5,
        (Some("10"), false) => 10,
        (Some(_), _) => return Err(Refusal::Priority),
        (None, true) => 5,
        (None, false) => rules.apns_priority,
    };
    let expiration = match nonempty(fields, "apns_expiration") {
        Some(e) => e.parse::<u64>().map_err(|_| Refusal::Expiration)?,
        None if rules.apns_expiration_secs == 0 => 0,
        None => now_unix.saturating_add(rules.apns_expiration_secs),
    };
    let payload = ios_payload(what, message, &rules.sound, background, now_unix)?;
    let collapse_id = match nonempty(fields, "apns_collapse_id") {
        Some(c) if c.len() > 64 => return Err(Refusal::CollapseId),
        Some(c) => Some(c.into()),
        None => None,
    };
    Ok(IosPush {
        build: build.as_str().into(),
        token,
        payload,
        push_type: push_type.into(),
        priority,
        expiration,
        collapse_id,
    })
}

/// The `apns-push-type` values APNs accepts.
pub const APNS_PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
];

fn device_token(token: &str) -> Result<Box<str>, Refusal> {
    let ok = token.len().is_multiple_of(2)
        && token.len() <= 2 * MAX_TOKEN_BYTES
        && token.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(Refusal::BadDeviceToken);
    }
    Ok(token.to_ascii_lowercase().into())
}

/// The APNs body, keys in Incus's order:
/// `{"aps":{"alert":…,"badge":…,"sound":"…"},"payload":<message §5.2>}`.
///
/// Badge rule (decided for HTTP/2): `data.badge_count` is sent as its
/// integer part, so 0 clears the badge; without it `badge` is left out and
/// the badge stays as it is. Incus's library sent -1 for both, its hack
/// for "clear" on the binary protocol.
///
/// A `background` push wakes the app without showing anything, so its
/// `aps` is `{"content-available":1}` alone (APNs rejects or throttles one
/// with an alert, sound or badge).
pub fn ios_payload(
    what: &'static str,
    message: Option<&OwnedValue>,
    sound: &str,
    background: bool,
    now_unix: u64,
) -> Result<Box<str>, Refusal> {
    let delivery = incus::format(message, now_unix).map_err(|e| Refusal::Format(what, e))?;
    let data = message
        .and_then(|m| m.get("data"))
        .ok_or(Refusal::Format(what, incus::message::FormatError::Data))?;
    let present = |key: &str| data.get(key).filter(|v| !v.is_null());
    let alert = present("message_text").or_else(|| present("message"));
    let badge = match present("badge_count") {
        None => None,
        Some(v) => Some(badge(v)?),
    };
    let mut json = String::with_capacity(delivery.body.len() + 96);
    json.push_str("{\"aps\":{");
    if background {
        json.push_str("\"content-available\":1},\"payload\":");
        json.push_str(std::str::from_utf8(&delivery.body).unwrap_or("null"));
        json.push('}');
        return within_apns_limit(json);
    }
    if let Some(alert) = alert {
        if alert.as_str().is_none() && alert.as_object().is_none() {
            return Err(Refusal::Alert);
        }
        json.push_str("\"alert\":");
        write_value(alert, &mut json);
        json.push(',');
    }
    if let Some(badge) = badge {
        json.push_str("\"badge\":");
        json.push_str(&badge.to_string());
        json.push(',');
    }
    json.push_str("\"sound\":");
    write_str(sound, &mut json);
    json.push_str("},\"payload\":");
    // The delivered message is JSON this module produced.
    json.push_str(std::str::from_utf8(&delivery.body).unwrap_or("null"));
    json.push('}');
    within_apns_limit(json)
}

fn within_apns_limit(json: String) -> Result<Box<str>, Refusal> {
    if json.len() > APNS_MAX_PAYLOAD {
        return Err(Refusal::TooLarge("APNs", json.len(), APNS_MAX_PAYLOAD));
    }
    Ok(json.into())
}

fn badge(value: &OwnedValue) -> Result<u32, Refusal> {
    if let Some(n) = value.as_u64() {
        return u32::try_from(n).map_err(|_| Refusal::Badge);
    }
    match value.as_f64() {
        // The integer part, as Incus took it; NaN and infinities cannot come from JSON.
        Some(f) if (0.0..=f64::from(u32::MAX)).contains(&f) => Ok(f.trunc() as u32),
        _ => Err(Refusal::Badge),
    }
}

fn android(
    what: &'static str,
    fields: &[(String, String)],
    message: Option<&OwnedValue>,
    rules: &PushRules,
    now_unix: u64,
) -> Result<AndroidPush, Refusal> {
    if !rules.fcm {
        return Err(Refusal::Disabled(Platform::Android));
    }
    // Incus split without trimming, so "a, b" sent " b"; ids never hold spaces.
    let registration_ids: Vec<Box<str>> = field(fields, "registration_ids")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(Into::into)
        .collect();
    if registration_ids.is_empty() {
        return Err(Refusal::NoRegistrationIds);
    }
    let data = android_data(what, message, now_unix)?;
    Ok(AndroidPush { registration_ids, data })
}

/// The FCM v1 `data` map. v1 takes only string values, so Incus's nested
/// GCM `data` (`{"data":{…},"event":…,"time":…}`, keys sorted) is kept with
/// `data` as JSON text and `time` as decimal text.
pub fn android_data(
    what: &'static str,
    message: Option<&OwnedValue>,
    now_unix: u64,
) -> Result<Box<str>, Refusal> {
    let format = |e| Refusal::Format(what, e);
    incus::format(message, now_unix).map_err(format)?;
    let message = message.ok_or(format(incus::message::FormatError::NotAnObject))?;
    let (Some(event), Some(data)) =
        (message.get("event").and_then(|e| e.as_str()), message.get("data"))
    else {
        return Err(format(incus::message::FormatError::Event));
    };
    let mut data_text = String::new();
    write_value(data, &mut data_text);
    let mut json = String::with_capacity(data_text.len() * 2 + 64);
    json.push_str("{\"data\":");
    write_str(&data_text, &mut json);
    json.push_str(",\"event\":");
    write_str(event, &mut json);
    json.push_str(",\"time\":\"");
    json.push_str(&now_unix.to_string());
    json.push_str("\"}");
    if json.len() > FCM_MAX_DATA {
        return Err(Refusal::TooLarge("FCM", json.len(), FCM_MAX_DATA));
    }
    Ok(json.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> PushRules {
        PushRules {
            apns_builds: Some(vec!["store".into(), "development".into()]),
            fcm: true,
            sound: "bingbong.aiff".into(),
            apns_push_type: "alert".into(),
            apns_priority: 10,
            apns_expiration_secs: 86_400,
        }
    }

    fn value(json: &str) -> OwnedValue {
        simd_json::to_owned_value(&mut json.as_bytes().to_vec()).expect("json")
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const TOKEN: &str = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn ios_golden_payload_matches_incus_with_the_badge_rule() {
        // Behaviour 81: alert from message_text, badge, sound, the full message.
        let msg = value(
            r#"{"event":"notif","data":{"message_text":"Hello","badge_count":3,"foo":"bar","internal_url":"/x"},"time":1}"#,
        );
        let f = fields(&[("device_token", TOKEN), ("build", "STORE")]);
        let job = direct(
            "push",
            &[f.clone(), fields(&[("push_type", "IOS")])].concat(),
            Some(&msg),
            &rules(),
            1234,
        );
        let Ok(PushJob { send: Send::Ios(push), .. }) = job else { panic!("{job:?}") };
        assert_eq!(&*push.token, TOKEN.to_ascii_lowercase());
        assert_eq!(&*push.build, "store");
        assert_eq!(
            &*push.payload,
            r#"{"aps":{"alert":"Hello","badge":3,"sound":"bingbong.aiff"},"payload":{"event":"notif","data":{"badge_count":3,"foo":"bar","internal_url":"/x","message_text":"Hello"},"time":1234,"internal_url":"/x"}}"#
        );
        // Behaviour 82/83/84: message as alert, message_text wins, no badge
        // without badge_count, 0 clears, no alert key without either.
        let cases = [
            (r#"{"message":"m"}"#, r#"{"aps":{"alert":"m","sound":"bingbong.aiff"}"#),
            (
                r#"{"message":"m","message_text":"t","badge_count":0}"#,
                r#"{"aps":{"alert":"t","badge":0,"sound":"bingbong.aiff"}"#,
            ),
            (r#"{"x":1,"badge_count":2.9}"#, r#"{"aps":{"badge":2,"sound":"bingbong.aiff"}"#),
            (
                r#"{"message_text":{"title":"T","body":"<b>"}}"#,
                r#"{"aps":{"alert":{"body":"\u003cb\u003e","title":"T"},"sound":"bingbong.aiff"}"#,
            ),
        ];
        for (data, start) in cases {
            let msg = value(&format!(r#"{{"event":"e","data":{data}}}"#));
            let job = direct("pushios", &f, Some(&msg), &rules(), 5);
            let Ok(PushJob { send: Send::Ios(push), .. }) = job else { panic!("{data}: {job:?}") };
            assert!(push.payload.starts_with(start), "{data}: {}", push.payload);
        }
    }

    #[test]
    fn ios_refusals_say_why() {
        let msg = value(r#"{"event":"e","data":{}}"#);
        let ok = [("device_token", TOKEN), ("build", "store")];
        type Case = (Vec<(String, String)>, &'static str, Refusal);
        let cases: Vec<Case> = vec![
            (fields(&[("build", "store")]), r#"{"event":"e","data":{}}"#, Refusal::NoDeviceToken),
            (fields(&[("device_token", "123"), ("build", "store")]), "{}", Refusal::BadDeviceToken),
            (fields(&[("device_token", "zz"), ("build", "store")]), "{}", Refusal::BadDeviceToken),
            (fields(&[("device_token", TOKEN)]), "{}", Refusal::NoBuild),
            (
                fields(&[("device_token", TOKEN), ("build", "weird")]),
                "{}",
                Refusal::UnknownBuild("weird".into()),
            ),
            (fields(&ok), r#"{"event":"e","data":{"badge_count":"3"}}"#, Refusal::Badge),
            (fields(&ok), r#"{"event":"e","data":{"badge_count":-1}}"#, Refusal::Badge),
            (fields(&ok), r#"{"event":"e","data":{"badge_count":true}}"#, Refusal::Badge),
            (fields(&ok), r#"{"event":"e","data":{"message":7}}"#, Refusal::Alert),
            (
                [fields(&ok), fields(&[("apns_priority", "7")])].concat(),
                r#"{"event":"e","data":{}}"#,
                Refusal::Priority,
            ),
            (
                [fields(&ok), fields(&[("apns_push_type", "shout")])].concat(),
                r#"{"event":"e","data":{}}"#,
                Refusal::ApnsPushType,
            ),
            (
                [fields(&ok), fields(&[("apns_expiration", "soon")])].concat(),
                r#"{"event":"e","data":{}}"#,
                Refusal::Expiration,
            ),
        ];
        for (f, m, expected) in cases {
            let m = value(if m == "{}" { r#"{"event":"e","data":{}}"# } else { m });
            assert_eq!(
                direct("pushios", &f, Some(&m), &rules(), 1),
                Err((Platform::Ios, expected))
            );
        }
        // Behaviour 76: README-style message without event/data.
        let readme = value(r#"{"badge_count":1,"message_text":"hi"}"#);
        let got = direct("pushios", &fields(&ok), Some(&readme), &rules(), 1);
        assert!(matches!(got, Err((Platform::Ios, Refusal::Format(..)))), "{got:?}");
        let big = value(&format!(r#"{{"event":"e","data":{{"x":"{}"}}}}"#, "a".repeat(5000)));
        let got = direct("pushios", &fields(&ok), Some(&big), &rules(), 1);
        assert!(matches!(got, Err((Platform::Ios, Refusal::TooLarge("APNs", _, 4096)))), "{got:?}");
        let off = PushRules { apns_builds: None, ..rules() };
        let got = direct("pushios", &fields(&ok), Some(&msg), &off, 1);
        assert_eq!(got, Err((Platform::Ios, Refusal::Disabled(Platform::Ios))));
        assert_eq!(
            direct("push", &fields(&ok), Some(&msg), &rules(), 1),
            Err((Platform::Ios, Refusal::PushType))
        );
    }

    #[test]
    fn ios_options_from_the_command() {
        let msg = value(r#"{"event":"e","data":{}}"#);
        let f = fields(&[
            ("device_token", TOKEN),
            ("build", "development"),
            ("apns_push_type", "background"),
            ("apns_priority", "5"),
            ("apns_expiration", "1700000000"),
            ("apns_collapse_id", "c1"),
        ]);
        let Ok(PushJob { send: Send::Ios(push), .. }) =
            direct("pushios", &f, Some(&msg), &rules(), 1)
        else {
            panic!("refused")
        };
        assert_eq!(&*push.push_type, "background");
        assert_eq!(push.priority, 5);
        assert_eq!(push.expiration, 1_700_000_000);
        assert_eq!(push.collapse_id.as_deref(), Some("c1"));
    }

    #[test]
    fn apns_headers_default_from_the_config_and_background_is_silent() {
        let msg = value(r#"{"event":"e","data":{"message_text":"hi","badge_count":1}}"#);
        let f = fields(&[("device_token", TOKEN), ("build", "store")]);
        let Ok(PushJob { send: Send::Ios(push), arrived }) =
            direct("pushios", &f, Some(&msg), &rules(), 1000)
        else {
            panic!("refused")
        };
        assert_eq!(arrived, 1000);
        assert_eq!((&*push.push_type, push.priority, push.expiration), ("alert", 10, 87_400));
        let no_expiry = PushRules { apns_expiration_secs: 0, ..rules() };
        let Ok(PushJob { send: Send::Ios(push), .. }) =
            direct("pushios", &f, Some(&msg), &no_expiry, 1000)
        else {
            panic!("refused")
        };
        assert_eq!(push.expiration, 0, "0 is sent as 0: now or never");
        // Background: priority 5, and aps holds content-available alone.
        let bg = [f.clone(), fields(&[("apns_push_type", "background")])].concat();
        let Ok(PushJob { send: Send::Ios(push), .. }) =
            direct("pushios", &bg, Some(&msg), &rules(), 7)
        else {
            panic!("refused")
        };
        assert_eq!(push.priority, 5);
        assert_eq!(
            &*push.payload,
            r#"{"aps":{"content-available":1},"payload":{"event":"e","data":{"badge_count":1,"message_text":"hi"},"time":7}}"#
        );
        let loud = [bg, fields(&[("apns_priority", "10")])].concat();
        assert_eq!(
            direct("pushios", &loud, Some(&msg), &rules(), 7),
            Err((Platform::Ios, Refusal::Priority))
        );
        // The configured default type works the same way.
        let quiet = PushRules { apns_push_type: "background".into(), ..rules() };
        let Ok(PushJob { send: Send::Ios(push), .. }) =
            direct("pushios", &f, Some(&msg), &quiet, 7)
        else {
            panic!("refused")
        };
        assert_eq!((&*push.push_type, push.priority), ("background", 5));
    }

    #[test]
    fn android_golden_data_is_all_strings() {
        // Behaviour 95 and 103: ids trimmed (98 recommended), data flattened.
        let msg = value(r#"{"event":"an","data":{"a":1,"internal_url":"/y"},"time":9}"#);
        let f = fields(&[("push_type", "android"), ("registration_ids", "good1, bad2,,canon3 ")]);
        let Ok(PushJob { send: Send::Android(push), .. }) =
            direct("push", &f, Some(&msg), &rules(), 1234)
        else {
            panic!("refused")
        };
        let ids: Vec<&str> = push.registration_ids.iter().map(|s| &**s).collect();
        assert_eq!(ids, ["good1", "bad2", "canon3"]);
        assert_eq!(
            &*push.data,
            r#"{"data":"{\"a\":1,\"internal_url\":\"/y\"}","event":"an","time":"1234"}"#
        );
        let parsed = value(&push.data);
        let map = parsed.as_object().expect("object");
        assert!(map.values().all(|v| v.as_str().is_some()), "every value a string");
    }

    #[test]
    fn android_refusals_say_why() {
        let msg = value(r#"{"event":"e","data":{}}"#);
        let got =
            direct("pushandroid", &fields(&[("registration_ids", " , ")]), Some(&msg), &rules(), 1);
        assert_eq!(got, Err((Platform::Android, Refusal::NoRegistrationIds)));
        let got = direct("pushandroid", &[], Some(&msg), &rules(), 1);
        assert_eq!(got, Err((Platform::Android, Refusal::NoRegistrationIds)));
        let off = PushRules { fcm: false, ..rules() };
        let got = direct("pushandroid", &fields(&[("registration_ids", "a")]), Some(&msg), &off, 1);
        assert_eq!(got, Err((Platform::Android, Refusal::Disabled(Platform::Android))));
        let bad = value(r#"{"event":"e","data":[1]}"#);
        let got =
            direct("pushandroid", &fields(&[("registration_ids", "a")]), Some(&bad), &rules(), 1);
        assert!(matches!(got, Err((Platform::Android, Refusal::Format(..)))), "{got:?}");
    }

    #[test]
    fn pushormessage_push_part_per_platform() {
        let f = fields(&[("device_token", TOKEN), ("build", "store"), ("registration_ids", "r1")]);
        let msg = value(
            r#"{"push":{"ios":{"event":"pi","data":{"message_text":"x"}},"android":{"event":"pa","data":{}}},"websocket":{"event":"w","data":{}}}"#,
        );
        let got = push_part(&f, Some(&msg), &rules(), 7);
        assert_eq!(got.len(), 2);
        assert!(
            matches!(&got[0], Ok(PushJob { send: Send::Ios(p), .. }) if p.payload.contains(r#""event":"pi""#))
        );
        assert!(
            matches!(&got[1], Ok(PushJob { send: Send::Android(p), .. }) if p.data.contains(r#""event":"pa""#))
        );
        // Behaviour 78 and 79: nothing without a push object; a non-object part is refused.
        assert!(push_part(&f, Some(&value(r#"{"push":5}"#)), &rules(), 7).is_empty());
        assert!(push_part(&f, None, &rules(), 7).is_empty());
        let got = push_part(&f, Some(&value(r#"{"push":{"ios":5}}"#)), &rules(), 7);
        assert_eq!(got, [Err((Platform::Ios, Refusal::NotAnObject("message.push.ios")))]);
    }
}
