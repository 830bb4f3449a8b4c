//! Reading one value: a key's text (a YAML scalar or an environment
//! variable) into its type, or an error saying what was expected and what
//! came; figment adds the key. `port: 6001`, `port: "6001"` and
//! `STAPES_PORT=6001` read alike.

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use figment2::value::Value;
use serde::{Deserialize, Deserializer, de::Error as _};

use super::{
    ConfigError,
    validate::{
        self, MAX_NAME_CHARS, MAX_WEBHOOK_WAIT_MS, at_least, hint, ms_range, not_empty, opt, range,
        timeout,
    },
};
use crate::core::{AppConfig, HookKind, HookKinds, WebhookConfig};

/// A type a key's text reads into.
pub(crate) trait Leaf: Sized {
    /// The value of `text`, or what was expected instead.
    fn read(text: &str) -> Result<Self, String>;
}

/// Any [`Leaf`] field: `#[serde(deserialize_with = "leaf")]`.
pub(crate) fn leaf<'de, D: Deserializer<'de>, T: Leaf>(d: D) -> Result<T, D::Error> {
    parsed(d, T::read)
}

/// Whole milliseconds.
pub(crate) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    leaf(d).map(Duration::from_millis)
}

/// A port where 0 asks the kernel for a free one.
pub(crate) fn any_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    parsed(d, |t| int(t, 0, u16::MAX.into()))
}

/// `host:port` addresses, as a list or comma-separated text.
pub(crate) fn host_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a list of host:port, or comma-separated text")]
    enum Nodes {
        List(Vec<Text>),
        One(Text),
    }
    let texts = match Nodes::deserialize(d)? {
        Nodes::List(list) => list,
        Nodes::One(text) => vec![text],
    };
    let nodes = texts.iter().flat_map(|Text(t)| t.split(',')).map(str::trim);
    let checked = nodes.filter(|n| !n.is_empty()).map(|node| {
        let port = node.rsplit_once(':').filter(|(host, _)| !host.is_empty());
        match port.and_then(|(_, port)| port.parse::<u16>().ok()).is_some_and(|p| p != 0) {
            true => Ok(node.to_owned()),
            false => Err(D::Error::custom(format!("expected host:port, got {node:?}"))),
        }
    });
    checked.collect()
}

/// `server.shards`: 0 means one per core.
pub(crate) fn shards<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    leaf(d).map(|n: usize| Some(n).filter(|&n| n != 0))
}

/// A field's own reading of its text.
pub(crate) fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    read: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    read(&text(d)?).map_err(D::Error::custom)
}

/// One value as text, for reading by hand.
#[derive(Deserialize)]
pub(crate) struct Text(#[serde(deserialize_with = "text")] pub(crate) String);

/// Text with the blanks around it dropped.
pub(crate) fn trimmed<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    text(d).map(|t| t.trim().to_owned())
}

/// One value as text. YAML's `0123` and `yes` arrive as text (see the
/// parser options in `load`); numbers and booleans are written back.
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match <Value as Deserialize>::deserialize(d)? {
        Value::String(_, text) => Ok(text),
        Value::Bool(_, b) => Ok(b.to_string()),
        Value::Num(_, n) => Ok(match (n.to_u128(), n.to_i128(), n.to_f64()) {
            (Some(n), ..) => n.to_string(),
            (_, Some(n), _) => n.to_string(),
            (.., n) => n.unwrap_or(f64::NAN).to_string(),
        }),
        _ => Err(D::Error::custom("expected a single value, not a mapping or a list")),
    }
}

/// `impl Leaf for $type` from a function of the text.
macro_rules! leaf {
    ($($(#[$doc:meta])* $ty:ty => $read:expr;)*) => {$(
        $(#[$doc])*
        impl Leaf for $ty {
            fn read(text: &str) -> Result<Self, String> {
                $read(text)
            }
        }
    )*};
}

leaf! {
    String => |t: &str| Ok(t.to_owned());
    PathBuf => |t: &str| Ok(t.into());
    /// Trimmed; empty means unset.
    Option<String> => |t: &str| Ok(Some(t.trim()).filter(|t| !t.is_empty()).map(str::to_owned));
    /// Trimmed; empty means unset.
    Option<PathBuf> => |t| Ok(Option::<String>::read(t)?.map(PathBuf::from));
    bool => |t: &str| match t.trim() {
        v if v.eq_ignore_ascii_case("true") => Ok(true),
        v if v.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(format!("expected true or false, got {t:?}")),
    };
    IpAddr => |t: &str| t.trim().parse().map_err(|_| {
        format!("expected an IP address such as 127.0.0.1, 0.0.0.0 or ::, got {t:?}")
    });
    /// Every `u16` key is a port.
    u16 => |t| int(t, 1, u16::MAX.into());
    u32 => |t| int(t, 0, u32::MAX.into());
    u64 => |t| int(t, 0, u64::MAX.into());
    usize => |t| int(t, 0, u64::MAX.into());
    crate::config::RedisMode => |t: &str| match t.trim() {
        "standalone" => Ok(Self::Standalone),
        "cluster" => Ok(Self::Cluster),
        "sentinel" => Ok(Self::Sentinel),
        _ => Err(format!("expected standalone, cluster or sentinel, got {t:?}")),
    };
    Option<bool> => |t| bool::read(t).map(Some);
    /// A limit whose `null` means none.
    Option<usize> => |t| usize::read(t).map(Some);
    /// Whole seconds.
    Duration => |t| u64::read(t).map(Duration::from_secs);
    /// Whole seconds, for a key whose `null` turns something off.
    Option<Duration> => |t| Duration::read(t).map(Some);
}

/// An integer in `min..=max`, in decimal.
fn int<T: TryFrom<i128>>(text: &str, min: i128, max: i128) -> Result<T, String> {
    let n = text.trim().parse::<i128>().ok().filter(|n| (min..=max).contains(n));
    n.and_then(|n| T::try_from(n).ok()).ok_or_else(|| match max > u32::MAX.into() {
        true => format!("expected an integer of at least {min}, got {text:?}"),
        false => format!("expected an integer from {min} to {max}, got {text:?}"),
    })
}

/// `apps:`, read into the core's [`AppConfig`].
pub(crate) fn apps<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<AppConfig>>, D::Error> {
    #[derive(Deserialize)]
    struct App(#[serde(with = "AppKeys")] AppConfig);
    let apps = Vec::<App>::deserialize(d)?;
    Ok(apps.into_iter().map(|App(app)| Arc::new(app)).collect())
}

/// A serde `remote` struct for a core type, one line per key,
/// `field["key"]: Type, "reader", check;` as in [`section!`], with the
/// checks of single keys (`check`).
macro_rules! remote {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($remote:ty) {
            $($field:ident $([$key:literal])?: $ty:ty, $read:literal $(, $check:expr)?;)*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[serde(rename = $key)])? #[serde(deserialize_with = $read)] $field: $ty,)*
        }

        impl $name {
            /// Checks each key's value of `value`, whose key is `at`, on its own.
            #[allow(dead_code, unused_variables, reason = "not every entry has checks")]
            pub(crate) fn check(value: &$remote, at: &str) -> Result<(), ConfigError> {
                $({
                    let _key = key!($field $($key)?);
                    $(validate::rule(format!("{at}.{_key}"), &value.$field, $check)?;)?
                })*
                Ok(())
            }
        }
    };
}

remote! {
    /// One entry of `apps:`; `id`, `key` and `secret` are required.
    #[derive(Deserialize)]
    #[serde(remote = "AppConfig", default = "AppKeys::blank", deny_unknown_fields)]
    #[serde(expecting = "a mapping for an app")]
    pub(crate) struct AppKeys(AppConfig) {
        id: String, "leaf", not_empty;
        key: String, "leaf", not_empty;
        secret: String, "leaf", not_empty;
        enabled: bool, "leaf";
        client_events: bool, "leaf";
        only_ssl: bool, "leaf";
        max_connections: Option<usize>, "leaf", hint(opt(at_least(1)), "; use null for unlimited");
        max_event_bytes: usize, "leaf", at_least(1);
        max_presence_members: usize, "leaf", at_least(1);
        max_presence_user_info_bytes: usize, "leaf", at_least(1);
        max_presence_user_id_chars: usize, "leaf", at_least(1);
        client_event_rate: u32, "leaf", at_least(1);
        max_channel_name_chars: usize, "leaf", range(1, MAX_NAME_CHARS);
        max_event_name_chars: usize, "leaf", range(1, MAX_NAME_CHARS);
        subscription_count: bool, "leaf";
        cache_ttl["cache_ttl_secs"]: Duration, "leaf", timeout(1);
        authorized_timeout["authorized_timeout_secs"]: Option<Duration>, "leaf",
            hint(opt(timeout(1)), "; use null to turn it off");
        webhooks: Vec<WebhookConfig>, "webhooks";
        webhook_delay["webhook_delay_ms"]: Duration, "millis", ms_range(0, MAX_WEBHOOK_WAIT_MS);
        webhook_batch["webhook_batch_ms"]: Duration, "millis", ms_range(0, MAX_WEBHOOK_WAIT_MS);
        webhook_batch_max: usize, "leaf", range(1, 1000);
    }
}

impl AppKeys {
    fn blank() -> AppConfig {
        AppConfig::new("", "", "")
    }
}

fn webhooks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<WebhookConfig>, D::Error> {
    #[derive(Deserialize)]
    struct Hook(#[serde(with = "HookKeys")] WebhookConfig);
    Ok(Vec::<Hook>::deserialize(d)?.into_iter().map(|Hook(hook)| hook).collect())
}

remote! {
    /// One entry of `apps[].webhooks`; `url` is required.
    #[derive(Deserialize)]
    #[serde(remote = "WebhookConfig", default = "HookKeys::blank", deny_unknown_fields)]
    #[serde(expecting = "a mapping for a webhook")]
    struct HookKeys(WebhookConfig) {
        url: String, "trimmed";
        event_types: HookKinds, "kinds";
    }
}

impl HookKeys {
    fn blank() -> WebhookConfig {
        WebhookConfig { url: String::new(), event_types: HookKinds::ALL }
    }
}

fn kinds<'de, D: Deserializer<'de>>(d: D) -> Result<HookKinds, D::Error> {
    #[derive(Deserialize)]
    struct Name(#[serde(deserialize_with = "trimmed")] String);
    let names = Vec::<Name>::deserialize(d)?;
    if names.is_empty() {
        let message = "names no event type; leave the key out to receive all of them";
        return Err(D::Error::custom(message));
    }
    names
        .into_iter()
        .map(|Name(name)| {
            HookKind::parse(&name).ok_or_else(|| {
                let known = HookKinds::ALL.names().join(", ");
                D::Error::custom(format!("unknown event type {name:?}; expected one of {known}"))
            })
        })
        .collect()
}
