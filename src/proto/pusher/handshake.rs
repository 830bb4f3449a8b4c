//! The Pusher half of the WebSocket handshake (spec §1, §3.1): which app, and
//! whether this client may connect. Runs after the RFC 6455 upgrade, because
//! pusher-js reads the refusal from a `pusher:error` frame and the close code.

use crate::core::{AppIdx, Apps, CloseCode};

/// Protocol versions we speak: 7 is current; 4–6 differ only in features
/// pusher-js 8 never uses, so they are served the same way.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 4..=7;

/// What the connection asked for.
#[derive(Debug, Clone, Copy)]
pub struct Upgrade<'a> {
    /// Request path, e.g. `/app/my-key`.
    pub path: &'a str,
    /// Raw query string, e.g. `protocol=7&client=js&version=8.4.0`.
    pub query: &'a str,
    /// Whether the connection came in over TLS.
    pub tls: bool,
}

/// Checks the app and protocol in the order of spec §3.1. Connection quotas
/// and node capacity are checked by the caller, which owns the counters.
pub fn check(
    apps: &Apps,
    req: Upgrade<'_>,
    allow_missing_protocol: bool,
) -> Result<AppIdx, CloseCode> {
    let key = req.path.strip_prefix("/app/").ok_or(CloseCode::PATH_NOT_FOUND)?;
    let key = key.strip_suffix('/').unwrap_or(key);
    if key.is_empty() || key.contains('/') {
        return Err(CloseCode::PATH_NOT_FOUND);
    }
    let idx = apps.by_key(key).ok_or(CloseCode::APP_NOT_FOUND)?;
    let app = apps.get(idx);
    if !app.enabled {
        return Err(CloseCode::APP_DISABLED);
    }
    if app.only_ssl && !req.tls {
        return Err(CloseCode::SSL_ONLY);
    }
    let protocol = req
        .query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == "protocol")
        .map(|(_, v)| v);
    match protocol {
        None if allow_missing_protocol => {}
        None => return Err(CloseCode::NO_PROTOCOL_VERSION),
        Some(v) => {
            let version: u32 = v.parse().map_err(|_| CloseCode::INVALID_VERSION_FORMAT)?;
            if !PROTOCOLS.contains(&version) {
                return Err(CloseCode::UNSUPPORTED_PROTOCOL);
            }
        }
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::AppConfig;

    fn apps() -> Apps {
        let mut disabled = AppConfig::new("2", "off", "s");
        disabled.enabled = false;
        let mut tls_only = AppConfig::new("3", "tls", "s");
        tls_only.only_ssl = true;
        Apps::new(vec![
            Arc::new(AppConfig::new("1", "key", "s")),
            Arc::new(disabled),
            Arc::new(tls_only),
        ])
    }

    fn up<'a>(path: &'a str, query: &'a str) -> Upgrade<'a> {
        Upgrade { path, query, tls: false }
    }

    #[test]
    fn every_refusal_has_its_close_code() {
        let apps = apps();
        let q = "protocol=7&client=js&version=8.4.0&flash=false";
        assert_eq!(check(&apps, up("/app/key", q), true), Ok(0));
        assert_eq!(check(&apps, up("/app/key/", q), true), Ok(0));
        assert_eq!(check(&apps, up("/app/nope", q), true), Err(CloseCode::APP_NOT_FOUND));
        assert_eq!(check(&apps, up("/app/off", q), true), Err(CloseCode::APP_DISABLED));
        assert_eq!(check(&apps, up("/app/tls", q), true), Err(CloseCode::SSL_ONLY));
        assert_eq!(check(&apps, Upgrade { path: "/app/tls", query: q, tls: true }, true), Ok(2));
        assert_eq!(check(&apps, up("/apps/key", q), true), Err(CloseCode::PATH_NOT_FOUND));
        assert_eq!(check(&apps, up("/app/", q), true), Err(CloseCode::PATH_NOT_FOUND));
        assert_eq!(
            check(&apps, up("/app/key", "protocol=x"), true),
            Err(CloseCode::INVALID_VERSION_FORMAT)
        );
        assert_eq!(
            check(&apps, up("/app/key", "protocol=3"), true),
            Err(CloseCode::UNSUPPORTED_PROTOCOL)
        );
        assert_eq!(
            check(&apps, up("/app/key", "protocol=8"), true),
            Err(CloseCode::UNSUPPORTED_PROTOCOL)
        );
        assert_eq!(check(&apps, up("/app/key", "client=js"), true), Ok(0));
        assert_eq!(check(&apps, up("/app/key", ""), false), Err(CloseCode::NO_PROTOCOL_VERSION));
    }
}
