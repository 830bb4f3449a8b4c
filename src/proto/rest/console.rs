//! The debug console's access and publishes ([`crate::proto::console`]),
//! checked as the HTTP API checks its requests: the stream request is
//! signed like an API request (spec §12.2), and what the page publishes
//! is the body of `POST /apps/{id}/events`, under the same limits.

use crate::{
    core::{AppIdx, Apps},
    proto::{
        http::request::parse_query,
        rest::{
            error::ApiError,
            events::{self, Limits, Trigger},
            signature::{self, SignatureError, SignedRequest},
        },
    },
};

/// Most channels one publish from the page may name, as for the HTTP API.
const MAX_CHANNELS: usize = 100;

/// Why a stream request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No `app_id`, or no app with that id: 404.
    #[error("Unknown app")]
    UnknownApp,
    /// The signature did not verify: 401.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The app is disabled: 403.
    #[error("Application disabled")]
    Disabled,
}

impl ConsoleError {
    /// The HTTP status the upgrade is refused with.
    pub fn status(&self) -> u16 {
        match self {
            ConsoleError::UnknownApp => 404,
            ConsoleError::Signature(e) => e.status(),
            ConsoleError::Disabled => 403,
        }
    }
}

/// Checks a `GET /console/stream?app_id=…&auth_key=…` request, signed as an
/// HTTP API request over its path and query (spec §12.2, no body), and
/// returns the app it may watch.
pub fn authorize(
    apps: &Apps,
    path: &str,
    query: &str,
    now_unix: u64,
) -> Result<AppIdx, ConsoleError> {
    let params = parse_query(query).map_err(|_| ConsoleError::UnknownApp)?;
    let app_id = params.iter().find(|(k, _)| k == "app_id").map(|(_, v)| v.as_str());
    let idx = app_id.and_then(|id| apps.by_id(id)).ok_or(ConsoleError::UnknownApp)?;
    let app = apps.get(idx);
    let signed = SignedRequest { method: "GET", path, query, body: &[] };
    signature::verify(&signed, &app.key, &app.secret, now_unix)?;
    if !app.enabled {
        return Err(ConsoleError::Disabled);
    }
    Ok(idx)
}

/// Reads a publish the page sent: the body of the HTTP API's
/// `POST /apps/{id}/events` (`name`, `channel` or `channels`, `data`),
/// checked against the app's limits as the API checks it.
pub fn publish_request(apps: &Apps, app: AppIdx, body: &[u8]) -> Result<Trigger, ApiError> {
    let app = apps.get(app);
    let limits = Limits {
        max_event_bytes: app.max_event_bytes,
        max_channels: MAX_CHANNELS,
        max_batch: 1,
        max_name_chars: app.max_event_name_chars,
        max_channel_name_chars: app.max_channel_name_chars,
    };
    events::parse_trigger_json(body, &limits)
}

/// The page's answer to a publish: which channels got it, or why none did.
pub fn publish_reply(result: Result<&Trigger, &ApiError>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match result {
        Ok(trigger) => {
            out.extend_from_slice(b"{\"type\":\"published\",\"event\":");
            crate::core::json::push_json_str(&mut out, &trigger.name);
            out.extend_from_slice(b",\"channels\":[");
            for (i, channel) in trigger.channels.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                crate::core::json::push_json_str(&mut out, channel);
            }
            out.extend_from_slice(b"]}");
        }
        Err(e) => {
            out.extend_from_slice(b"{\"type\":\"error\",\"message\":");
            crate::core::json::push_json_str(&mut out, e.message());
            out.push(b'}');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hmac::{KeyInit, Mac};

    use super::*;
    use crate::{core::AppConfig, proto::console::STREAM_PATH};

    fn apps() -> Apps {
        let mut off = AppConfig::new("2", "key2", "secret2");
        off.enabled = false;
        Apps::new(vec![Arc::new(AppConfig::new("1", "key1", "secret1")), Arc::new(off)])
    }

    fn signed(query: &str, secret: &str) -> String {
        let mut params: Vec<&str> = query.split('&').collect();
        params.sort_unstable();
        let text = format!("GET\n{STREAM_PATH}\n{}", params.join("&"));
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(text.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        format!("{query}&auth_signature={sig}")
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn a_signed_stream_request_names_its_app() {
        let q =
            signed("app_id=1&auth_key=key1&auth_timestamp=1700000000&auth_version=1.0", "secret1");
        assert_eq!(authorize(&apps(), STREAM_PATH, &q, NOW).ok(), Some(0));
    }

    #[test]
    fn stream_requests_without_the_secret_are_refused() {
        let apps = apps();
        let base = "app_id=1&auth_key=key1&auth_timestamp=1700000000&auth_version=1.0";
        let wrong = signed(base, "not-the-secret");
        assert_eq!(authorize(&apps, STREAM_PATH, &wrong, NOW).map_err(|e| e.status()), Err(401));
        assert_eq!(authorize(&apps, STREAM_PATH, base, NOW).map_err(|e| e.status()), Err(401));
        // Another app's key signs nothing for this one.
        let other =
            signed("app_id=1&auth_key=key2&auth_timestamp=1700000000&auth_version=1.0", "secret2");
        assert_eq!(authorize(&apps, STREAM_PATH, &other, NOW).map_err(|e| e.status()), Err(401));
        let unknown =
            signed("app_id=9&auth_key=key1&auth_timestamp=1700000000&auth_version=1.0", "secret1");
        assert_eq!(authorize(&apps, STREAM_PATH, &unknown, NOW).map_err(|e| e.status()), Err(404));
        let late = authorize(&apps, STREAM_PATH, &signed(base, "secret1"), NOW + 3600);
        assert_eq!(late.map_err(|e| e.status()), Err(401));
        let disabled =
            signed("app_id=2&auth_key=key2&auth_timestamp=1700000000&auth_version=1.0", "secret2");
        assert_eq!(authorize(&apps, STREAM_PATH, &disabled, NOW).map_err(|e| e.status()), Err(403));
    }

    #[test]
    fn the_page_publishes_in_the_apis_body_format() {
        let apps = apps();
        let body = br#"{"name":"ev","channels":["a","b"],"data":"{\"x\":1}"}"#;
        let trigger = publish_request(&apps, 0, body).expect("valid");
        assert_eq!((trigger.name.as_str(), trigger.channels.len()), ("ev", 2));
        let reply: serde_json::Value =
            serde_json::from_slice(&publish_reply(Ok(&trigger))).expect("json");
        assert_eq!(reply["type"], "published");
        assert_eq!(reply["channels"][1], "b");
        let bad = publish_request(&apps, 0, br#"{"name":"ev","data":"x"}"#);
        let err = bad.expect_err("no channel");
        let reply: serde_json::Value =
            serde_json::from_slice(&publish_reply(Err(&err))).expect("json");
        assert_eq!(reply["type"], "error");
    }
}
