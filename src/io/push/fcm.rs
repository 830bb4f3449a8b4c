//! The FCM HTTP v1 client (Incus spec §9.5): one `POST
//! {fcm_url}/v1/projects/{project}/messages:send` per registration token,
//! with a bearer token from [`oauth`], over a pooled hyper client (HTTP/2
//! to Google by ALPN, HTTP/1.1 to a local `http://` mock). Answers are
//! classified into an [`Outcome`] by [`classify`], which is pure.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use simd_json::{OwnedValue, prelude::*};
use tokio::sync::Mutex;

use super::oauth::{self, ServiceAccount, TokenCache};
use crate::{
    core::json::write_str,
    proto::push::{
        report::{Outcome, fcm_legacy_name},
        retry::parse_retry_after,
    },
};

/// Longest answer body read; FCM's are a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends to FCM for one project.
pub struct Fcm {
    http: HttpClient,
    send_url: String,
    account: ServiceAccount,
    /// Held across a refresh, so that concurrent sends wait for one token
    /// request instead of each making their own.
    token: Mutex<TokenCache>,
    timeout: Duration,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm").field("send_url", &self.send_url).finish_non_exhaustive()
    }
}

impl Fcm {
    /// A client for `project` at `base_url` (no trailing slash).
    pub fn new(
        base_url: &str,
        project: &str,
        account: ServiceAccount,
        tls: rustls::ClientConfig,
        timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            http,
            send_url: format!("{base_url}/v1/projects/{project}/messages:send"),
            account,
            token: Mutex::new(TokenCache::default()),
            timeout,
        }
    }

    /// Sends `data` (the v1 `data` map as JSON) to one registration token.
    pub async fn send(&self, registration_id: &str, data: &str) -> Outcome {
        let bearer = match self.bearer().await {
            Ok(bearer) => bearer,
            Err(outcome) => return outcome,
        };
        let mut body = String::with_capacity(data.len() + registration_id.len() + 40);
        body.push_str("{\"message\":{\"token\":");
        write_str(registration_id, &mut body);
        body.push_str(",\"data\":");
        body.push_str(data);
        body.push_str("}}");
        let request = Request::post(self.send_url.as_str())
            .header(header::AUTHORIZATION, bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            Err(e) => return Outcome::Failed(format!("bad request: {e}")),
        };
        let (status, retry_after, mut answer) = match self.exchange(request).await {
            Ok(answer) => answer,
            Err(why) => {
                tracing::debug!("fcm send failed: {why}");
                return Outcome::Retry { reason: "Unavailable".into(), retry_after: None };
            }
        };
        let outcome = classify(status.as_u16(), retry_after.as_deref(), &mut answer);
        if matches!(&outcome, Outcome::Retry { reason, .. } if reason == "Unauthorized") {
            // The token was revoked or the clock jumped: fetch a new one.
            self.token.lock().await.clear();
        }
        outcome
    }

    /// `Bearer <token>`, from the cache or a new token request.
    async fn bearer(&self) -> Result<String, Outcome> {
        let mut cache = self.token.lock().await;
        let now = tokio::time::Instant::now().into_std();
        if let Some(token) = cache.current(now) {
            return Ok(format!("Bearer {token}"));
        }
        if cache.failing(now) {
            return Err(Outcome::Retry { reason: "Unavailable".into(), retry_after: None });
        }
        let fetched = self.fetch_token(&mut cache, now).await;
        if fetched.is_err() {
            cache.failed(tokio::time::Instant::now().into_std());
        }
        fetched
    }

    async fn fetch_token(&self, cache: &mut TokenCache, now: Instant) -> Result<String, Outcome> {
        let unavailable =
            |retry_after| Outcome::Retry { reason: "Unavailable".into(), retry_after };
        let form = self.account.token_request(unix_now()).map_err(|e| {
            tracing::error!("fcm: {e}");
            Outcome::Failed("AuthenticationError".into())
        })?;
        let request = Request::post(self.account.token_url())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Outcome::Failed(format!("bad token request: {e}")))?;
        let (status, retry_after, mut answer) = self.exchange(request).await.map_err(|why| {
            tracing::warn!(url = self.account.token_url(), "fcm token request failed: {why}");
            unavailable(None)
        })?;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(%status, "fcm token endpoint busy");
            return Err(unavailable(retry_after.as_deref().and_then(parse_retry_after)));
        }
        if !status.is_success() {
            // The answer says why (invalid_grant, …) and holds no secret.
            let why = String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
            tracing::error!(%status, answer = %why, "fcm token request refused; check the service account");
            return Err(Outcome::Failed("AuthenticationError".into()));
        }
        match cache.store(&mut answer, now) {
            Ok(token) => Ok(format!("Bearer {token}")),
            Err(e) => {
                tracing::error!("fcm: {e}");
                Err(Outcome::Failed("AuthenticationError".into()))
            }
        }
    }

    /// One request with the timeout: status, `Retry-After`, body.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>), String> {
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, retry_after, body.to_vec()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// What an FCM answer means for the token (Incus spec §9.5). Only FCM's
/// own error detail (`FcmError.errorCode`) can condemn a token: a bare 404
/// or 403 may come from a wrong `fcm_url` or project, or a proxy, and
/// reporting every token as dead then would make backends delete them all.
pub fn classify(status: u16, retry_after: Option<&str>, body: &mut [u8]) -> Outcome {
    let parsed: Option<OwnedValue> = simd_json::to_owned_value(body).ok();
    if (200..300).contains(&status) {
        let name = parsed.as_ref().and_then(|v| v.get("name")).and_then(|n| n.as_str());
        return Outcome::Sent(name.map(str::to_owned));
    }
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let fcm_code =
        error.and_then(|e| e.get("details")).and_then(|d| d.as_array()).and_then(|details| {
            details
                .iter()
                .filter(|d| d.get("@type").and_then(|t| t.as_str()) == Some(FCM_ERROR_TYPE))
                .find_map(|d| d.get("errorCode").and_then(|c| c.as_str()))
        });
    let retry_after = retry_after.and_then(parse_retry_after);
    let name = |code: &str| fcm_legacy_name(code).to_owned();
    match (fcm_code, status) {
        (Some(code @ ("UNREGISTERED" | "INVALID_ARGUMENT" | "SENDER_ID_MISMATCH")), _) => {
            Outcome::TokenRejected(name(code))
        }
        (Some(code @ ("QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL")), _) => {
            Outcome::Retry { reason: name(code), retry_after }
        }
        (Some(code), s) if s == 429 || s >= 500 => {
            Outcome::Retry { reason: name(code), retry_after }
        }
        (Some(code), _) => Outcome::Failed(name(code)),
        // A revoked access token: the caller clears it; one more try.
        (None, 401) => Outcome::Retry { reason: "Unauthorized".into(), retry_after },
        (None, 429) => Outcome::Retry { reason: name("QUOTA_EXCEEDED"), retry_after },
        (None, 503) => Outcome::Retry { reason: name("UNAVAILABLE"), retry_after },
        (None, s) if s >= 500 => Outcome::Retry { reason: name("INTERNAL"), retry_after },
        (None, s) => {
            let status_name = error.and_then(|e| e.get("status")).and_then(|s| s.as_str());
            Outcome::Failed(status_name.map_or_else(|| format!("HTTP {s}"), str::to_owned))
        }
    }
}

/// The `@type` of FCM's own error detail.
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

// The driver may read the clock; [`classify`] may not.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The token endpoint used when neither the config nor the key names one.
pub const DEFAULT_TOKEN_URL: &str = oauth::GOOGLE_TOKEN_URL;

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
        classify(status, retry_after, &mut body.as_bytes().to_vec())
    }

    fn fcm_error(status: u16, code: &str) -> String {
        format!(
            r#"{{"error":{{"code":{status},"message":"m","status":"X","details":[{{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"{code}"}}]}}}}"#
        )
    }

    #[test]
    fn each_fcm_answer_is_classified() {
        assert_eq!(
            outcome(200, None, r#"{"name":"projects/p/messages/0:1"}"#),
            Outcome::Sent(Some("projects/p/messages/0:1".into()))
        );
        assert_eq!(
            outcome(404, None, &fcm_error(404, "UNREGISTERED")),
            Outcome::TokenRejected("NotRegistered".into())
        );
        // Without FCM's own detail nothing condemns the token: a wrong URL,
        // project or a proxy answers like this.
        assert_eq!(outcome(404, None, "not json"), Outcome::Failed("HTTP 404".into()));
        assert_eq!(
            outcome(404, None, r#"{"error":{"code":404,"status":"NOT_FOUND"}}"#),
            Outcome::Failed("NOT_FOUND".into())
        );
        assert_eq!(outcome(403, None, ""), Outcome::Failed("HTTP 403".into()));
        assert_eq!(
            outcome(400, None, &fcm_error(400, "INVALID_ARGUMENT")),
            Outcome::TokenRejected("InvalidRegistration".into())
        );
        assert_eq!(
            outcome(403, None, &fcm_error(403, "SENDER_ID_MISMATCH")),
            Outcome::TokenRejected("MismatchSenderId".into())
        );
        assert_eq!(
            outcome(429, Some("7"), &fcm_error(429, "QUOTA_EXCEEDED")),
            Outcome::Retry {
                reason: "DeviceMessageRateExceeded".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            outcome(503, Some("2"), &fcm_error(503, "UNAVAILABLE")),
            Outcome::Retry {
                reason: "Unavailable".into(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            outcome(500, None, ""),
            Outcome::Retry { reason: "InternalServerError".into(), retry_after: None }
        );
        assert_eq!(
            outcome(401, None, &fcm_error(401, "THIRD_PARTY_AUTH_ERROR")),
            Outcome::Failed("ThirdPartyAuthError".into())
        );
        assert_eq!(
            outcome(401, None, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#),
            Outcome::Retry { reason: "Unauthorized".into(), retry_after: None }
        );
        assert_eq!(outcome(413, None, ""), Outcome::Failed("HTTP 413".into()));
    }
}
