//! OAuth2 access tokens for FCM HTTP v1 from a Google service-account key
//! (RFC 7523 JWT-bearer grant): the assertion is signed RS256 here with
//! ring, sent to the token endpoint, and the token cached until
//! [`REFRESH_BEFORE`] its expiry. Sans-IO: the clock is an argument and the
//! HTTP exchange is the caller's ([`crate::io::push::fcm`]).
//!
//! The key never leaves this module and is never formatted: `Debug` prints
//! the account's e-mail only.

use std::time::{Duration, Instant};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use ring::{
    rand::SystemRandom,
    signature::{RSA_PKCS1_SHA256, RsaKeyPair},
};
use simd_json::{OwnedValue, prelude::*};

use crate::core::json::write_str;

/// The scope FCM v1 asks for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint, when the key file names none.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Lifetime asked for; Google's maximum.
const LIFETIME_SECS: u64 = 3600;
/// A token is replaced this long before it expires, so that no request
/// goes out with one about to lapse.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Why a key or a token answer is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OauthError {
    /// The key file is not a service-account key.
    #[error("not a service account key: {0}")]
    Key(&'static str),
    /// Signing failed (ring reports no detail).
    #[error("could not sign the token request")]
    Sign,
    /// The token endpoint answered without a usable token.
    #[error("token endpoint answer without access_token/expires_in")]
    Answer,
}

/// A service account able to sign token requests.
pub struct ServiceAccount {
    client_email: String,
    key: RsaKeyPair,
    token_url: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads a service-account key (the JSON Google issues). `token_url`
    /// overrides the key's `token_uri`; without either, Google's endpoint.
    ///
    /// # Errors
    ///
    /// [`OauthError::Key`] naming the field that is missing or unusable,
    /// never its value.
    pub fn from_json(json: &str, token_url: Option<&str>) -> Result<Self, OauthError> {
        let value = simd_json::to_owned_value(&mut json.as_bytes().to_vec())
            .map_err(|_| OauthError::Key("not JSON"))?;
        let text = |name: &'static str| -> Result<&str, OauthError> {
            value.get(name).and_then(|v| v.as_str()).ok_or(OauthError::Key(name))
        };
        let client_email = text("client_email")?.to_owned();
        let der = pem_body(text("private_key")?).ok_or(OauthError::Key("private_key"))?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|_| OauthError::Key("private_key"))?;
        let token_url = token_url
            .map(str::to_owned)
            .or_else(|| value.get("token_uri").and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_else(|| GOOGLE_TOKEN_URL.to_owned());
        Ok(Self { client_email, key, token_url, rng: SystemRandom::new() })
    }

    /// Where tokens come from.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The form body of a token request made at `now_unix`.
    ///
    /// # Errors
    ///
    /// [`OauthError::Sign`] if ring cannot sign.
    pub fn token_request(&self, now_unix: u64) -> Result<String, OauthError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let mut claims = String::from("{\"iss\":");
        write_str(&self.client_email, &mut claims);
        claims.push_str(",\"scope\":");
        write_str(SCOPE, &mut claims);
        claims.push_str(",\"aud\":");
        write_str(&self.token_url, &mut claims);
        claims.push_str(&format!(",\"iat\":{now_unix},\"exp\":{}}}", now_unix + LIFETIME_SECS));
        let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, signing_input.as_bytes(), &mut signature)
            .map_err(|_| OauthError::Sign)?;
        // Base64url has no characters a form body must escape.
        Ok(format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// The DER public key (PKCS#1 RSAPublicKey), for tests that check the
    /// signature as Google would.
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public().as_ref()
    }
}

/// The DER inside a PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body: String =
        pem.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("-----")).collect();
    STANDARD.decode(body).ok()
}

/// After a failed token request, how long sends fail at once instead of
/// each trying the endpoint again (they are retried with back-off).
pub const FAILURE_HOLD: Duration = Duration::from_secs(2);

/// An access token and when to stop using it.
#[derive(Debug, Default)]
pub struct TokenCache {
    token: Option<(String, Instant)>,
    failed_until: Option<Instant>,
}

impl TokenCache {
    /// The cached token while it is good for at least [`REFRESH_BEFORE`]
    /// (or half its lifetime, for one that lives less than twice that).
    pub fn current(&self, now: Instant) -> Option<&str> {
        match &self.token {
            Some((token, refresh_at)) if now < *refresh_at => Some(token),
            _ => None,
        }
    }

    /// Takes a token endpoint's JSON answer received at `now`.
    ///
    /// # Errors
    ///
    /// [`OauthError::Answer`] if it lacks `access_token` or `expires_in`.
    pub fn store(&mut self, answer: &mut [u8], now: Instant) -> Result<&str, OauthError> {
        let value: OwnedValue =
            simd_json::to_owned_value(answer).map_err(|_| OauthError::Answer)?;
        let token = value.get("access_token").and_then(|t| t.as_str()).ok_or(OauthError::Answer)?;
        let expires_in =
            value.get("expires_in").and_then(|e| e.as_u64()).ok_or(OauthError::Answer)?;
        let lifetime = Duration::from_secs(expires_in);
        let refresh_at = now + lifetime - REFRESH_BEFORE.min(lifetime / 2);
        Ok(&self.token.insert((token.to_owned(), refresh_at)).0)
    }

    /// Forgets the token (FCM answered 401 with it).
    pub fn clear(&mut self) {
        self.token = None;
    }

    /// Notes a failed token request at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.failed_until = Some(now + FAILURE_HOLD);
    }

    /// Whether a token request failed within [`FAILURE_HOLD`]: sends
    /// queued behind it then fail at once rather than each waiting out the
    /// endpoint's timeout in turn.
    pub fn failing(&self, now: Instant) -> bool {
        self.failed_until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    use super::*;

    pub(crate) fn key_json(token_uri: Option<&str>) -> String {
        let pem = include_str!("../../../tests/fixtures/fcm-test-key.pem");
        let mut json = String::from(
            r#"{"type":"service_account","project_id":"demo","client_email":"push@demo.iam.gserviceaccount.com","private_key":"#,
        );
        write_str(pem, &mut json);
        if let Some(uri) = token_uri {
            json.push_str(",\"token_uri\":");
            write_str(uri, &mut json);
        }
        json.push('}');
        json
    }

    #[test]
    fn the_assertion_is_a_verifiable_rs256_jwt() {
        let account = ServiceAccount::from_json(&key_json(Some("http://127.0.0.1:9/token")), None)
            .expect("key");
        assert_eq!(account.token_url(), "http://127.0.0.1:9/token");
        let form = account.token_request(1_000).expect("signed");
        let assertion = form
            .strip_prefix(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=",
            )
            .expect("grant type first");
        let parts: Vec<&str> = assertion.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims =
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("utf8");
        assert_eq!(
            claims,
            r#"{"iss":"push@demo.iam.gserviceaccount.com","scope":"https://www.googleapis.com/auth/firebase.messaging","aud":"http://127.0.0.1:9/token","iat":1000,"exp":4600}"#
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, account.public_key_der());
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(public.verify(signed.as_bytes(), &signature).is_ok());
        // The override wins over the file; without either, Google's.
        let a = ServiceAccount::from_json(&key_json(Some("http://x/t")), Some("http://y/t"));
        assert_eq!(a.expect("key").token_url(), "http://y/t");
        assert_eq!(
            ServiceAccount::from_json(&key_json(None), None).expect("key").token_url(),
            GOOGLE_TOKEN_URL
        );
    }

    #[test]
    fn bad_keys_name_the_field_never_the_value() {
        let no_key = r#"{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#;
        let err = ServiceAccount::from_json(no_key, None).expect_err("bad key");
        assert_eq!(err, OauthError::Key("private_key"));
        assert!(!err.to_string().contains("AAAA"));
        let err = ServiceAccount::from_json(r#"{"private_key":"x"}"#, None).expect_err("no email");
        assert_eq!(err, OauthError::Key("client_email"));
        let account = ServiceAccount::from_json(&key_json(None), None).expect("key");
        assert!(!format!("{account:?}").contains("PRIVATE"));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any instant will do as the fake clock's zero
    fn tokens_are_refreshed_before_they_expire() {
        let mut cache = TokenCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.current(t0), None);
        let mut answer =
            br#"{"access_token":"ya29.a","expires_in":3599,"token_type":"Bearer"}"#.to_vec();
        assert_eq!(cache.store(&mut answer, t0), Ok("ya29.a"));
        assert_eq!(cache.current(t0 + Duration::from_secs(3000)), Some("ya29.a"));
        // Inside the last five minutes it is no longer handed out.
        assert_eq!(cache.current(t0 + Duration::from_secs(3300)), None);
        cache.clear();
        assert_eq!(cache.current(t0), None);
        assert_eq!(
            cache.store(&mut br#"{"error":"invalid_grant"}"#.to_vec(), t0),
            Err(OauthError::Answer)
        );
        // A short-lived token is used for half its life.
        let mut answer = br#"{"access_token":"ya29.b","expires_in":120}"#.to_vec();
        assert_eq!(cache.store(&mut answer, t0), Ok("ya29.b"));
        assert_eq!(cache.current(t0 + Duration::from_secs(59)), Some("ya29.b"));
        assert_eq!(cache.current(t0 + Duration::from_secs(60)), None);
        assert!(!cache.failing(t0));
        cache.failed(t0);
        assert!(cache.failing(t0 + Duration::from_secs(1)));
        assert!(!cache.failing(t0 + FAILURE_HOLD));
    }
}
