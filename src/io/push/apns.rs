//! APNs over HTTP/2 (Incus spec §9.5). The push thread talks to APNs only
//! through [`ApnsSender`]: the real one ([`A2Sender`]) holds one `a2`
//! client per build, each a long-lived multiplexed HTTP/2 connection with
//! its own credentials; tests put a mock behind the same trait, because
//! a2's endpoint cannot be pointed anywhere but Apple (STACK.md §5).
//! Answers are classified by [`classify`], which is pure.

use std::{collections::HashMap, fs::File, future::Future, time::Duration};

use a2::{
    Client, ClientConfig, Endpoint,
    request::{
        notification::{CollapseId, NotificationOptions, Priority, PushType},
        payload::PayloadLike,
    },
};
use serde_json::value::RawValue;

use crate::{
    config::{ApnsAuth, ApnsBuild},
    proto::push::report::Outcome,
};

/// One notification with every header decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsRequest<'a> {
    /// The build whose credentials and topic are used.
    pub build: &'a str,
    /// Device token, lower-case hex.
    pub token: &'a str,
    /// The JSON body.
    pub payload: &'a str,
    /// `apns-push-type`.
    pub push_type: &'a str,
    /// `apns-priority`: 10 or 5.
    pub priority: u8,
    /// `apns-expiration`: absolute UNIX seconds, 0 for "now or never".
    pub expiration: u64,
    /// `apns-collapse-id`.
    pub collapse_id: Option<&'a str>,
}

/// Sends one notification to APNs and says what came of it.
pub trait ApnsSender {
    /// One send, no retry: the caller retries what [`Outcome::Retry`] says.
    fn send(&self, request: ApnsRequest<'_>) -> impl Future<Output = Outcome>;
}

/// What an APNs answer means for the token: `status` and the `reason` of
/// the error body.
pub fn classify(status: u16, reason: Option<&str>, apns_id: Option<String>) -> Outcome {
    let name = || reason.map_or_else(|| format!("HTTP {status}"), str::to_owned);
    match (status, reason) {
        (200, _) => Outcome::Sent(apns_id),
        // The token is dead or belongs to another app: the backend should drop it.
        (410, _) | (400, Some("BadDeviceToken" | "DeviceTokenNotForTopic")) => {
            Outcome::TokenRejected(name())
        }
        (429 | 500 | 503, _) => Outcome::Retry { reason: name(), retry_after: None },
        _ => Outcome::Failed(name()),
    }
}

/// The real sender: one a2 client per configured build.
pub struct A2Sender {
    builds: HashMap<String, (Client, Option<String>)>,
}

impl std::fmt::Debug for A2Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("A2Sender").field("builds", &self.builds.keys()).finish()
    }
}

/// Why APNs credentials could not be loaded; names the config key.
#[derive(Debug, thiserror::Error)]
#[error("incus.{key}: {reason}")]
pub struct ApnsSetupError {
    key: String,
    reason: String,
}

impl A2Sender {
    /// Builds one client per build, reading their credential files now so
    /// that a bad one stops start-up. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ApnsSetupError`] naming the key of the file that failed.
    pub fn new(builds: &[ApnsBuild], timeout: Duration) -> Result<Self, ApnsSetupError> {
        let mut clients = HashMap::new();
        for build in builds {
            let config = ClientConfig {
                endpoint: if build.sandbox { Endpoint::Sandbox } else { Endpoint::Production },
                request_timeout_secs: Some(timeout.as_secs().max(1)),
                pool_idle_timeout_secs: Some(600),
            };
            let fail = |key: String, e: &dyn std::fmt::Display| ApnsSetupError {
                key,
                reason: e.to_string(),
            };
            let client = match &build.auth {
                ApnsAuth::Token { key_file, key_id, team_id, .. } => {
                    let file_key = build.token_key("key_file");
                    let file = File::open(key_file).map_err(|e| {
                        fail(file_key.clone(), &format!("{}: {e}", key_file.display()))
                    })?;
                    Client::token(file, key_id.as_str(), team_id.as_str(), config)
                        .map_err(|e| fail(file_key, &e))?
                }
                ApnsAuth::Certificate { cert_file, key_file } => {
                    let cert_key = format!("apns_{}_cert", build.name);
                    let key_key = format!("apns_{}_private_key", build.name);
                    let cert = std::fs::read(cert_file).map_err(|e| {
                        fail(cert_key.clone(), &format!("{}: {e}", cert_file.display()))
                    })?;
                    let key = std::fs::read(key_file).map_err(|e| {
                        fail(key_key.clone(), &format!("{}: {e}", key_file.display()))
                    })?;
                    Client::certificate_parts(&cert, &key, config).map_err(|e| {
                        fail(
                            format!("{cert_key}/{key_key}"),
                            &format!("{e} (the key must be PKCS#8 PEM)"),
                        )
                    })?
                }
            };
            clients.insert(build.name.clone(), (client, build.topic.clone()));
        }
        Ok(Self { builds: clients })
    }
}

impl ApnsSender for A2Sender {
    async fn send(&self, request: ApnsRequest<'_>) -> Outcome {
        let Some((client, topic)) = self.builds.get(request.build) else {
            return Outcome::Failed("UnknownBuild".into());
        };
        let body = match RawValue::from_string(request.payload.to_owned()) {
            Ok(body) => body,
            Err(e) => return Outcome::Failed(format!("payload: {e}")),
        };
        let options = NotificationOptions {
            apns_id: None,
            apns_push_type: Some(push_type(request.push_type)),
            apns_expiration: Some(request.expiration),
            apns_priority: Some(if request.priority == 5 {
                Priority::Normal
            } else {
                Priority::High
            }),
            apns_topic: topic.as_deref(),
            apns_collapse_id: request.collapse_id.and_then(|c| CollapseId::new(c).ok()),
        };
        let payload = Prebuilt { options, token: request.token, body: &body };
        match client.send(payload).await {
            Ok(response) => classify(response.code, None, response.apns_id),
            Err(a2::Error::ResponseError(response)) => {
                let reason = response.error.as_ref().map(|e| format!("{:?}", e.reason));
                classify(response.code, reason.as_deref(), response.apns_id)
            }
            Err(
                e @ (a2::Error::RequestTimeout(_)
                | a2::Error::ConnectionError(_)
                | a2::Error::ClientError(_)),
            ) => {
                tracing::debug!("apns send failed: {e}");
                Outcome::Retry { reason: "Unavailable".into(), retry_after: None }
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

fn push_type(name: &str) -> PushType {
    match name {
        "background" => PushType::Background,
        "location" => PushType::Location,
        "voip" => PushType::Voip,
        "fileprovider" => PushType::FileProvider,
        "mdm" => PushType::Mdm,
        "liveactivity" => PushType::LiveActivity,
        "pushtotalk" => PushType::PushToTalk,
        _ => PushType::Alert,
    }
}

/// A body built by [`super::command`], sent as it is.
#[derive(Debug)]
struct Prebuilt<'a> {
    options: NotificationOptions<'a>,
    token: &'a str,
    body: &'a RawValue,
}

impl serde::Serialize for Prebuilt<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.body.serialize(serializer)
    }
}

impl PayloadLike for Prebuilt<'_> {
    fn get_device_token(&self) -> &str {
        self.token
    }

    fn get_options(&self) -> &NotificationOptions<'_> {
        &self.options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_apns_answer_is_classified() {
        assert_eq!(classify(200, None, Some("id-1".into())), Outcome::Sent(Some("id-1".into())));
        assert_eq!(
            classify(410, Some("Unregistered"), None),
            Outcome::TokenRejected("Unregistered".into())
        );
        assert_eq!(
            classify(400, Some("BadDeviceToken"), None),
            Outcome::TokenRejected("BadDeviceToken".into())
        );
        assert_eq!(
            classify(400, Some("DeviceTokenNotForTopic"), None),
            Outcome::TokenRejected("DeviceTokenNotForTopic".into())
        );
        for (status, reason) in
            [(429, "TooManyRequests"), (500, "InternalServerError"), (503, "ServiceUnavailable")]
        {
            assert_eq!(
                classify(status, Some(reason), None),
                Outcome::Retry { reason: reason.into(), retry_after: None }
            );
        }
        assert_eq!(
            classify(403, Some("InvalidProviderToken"), None),
            Outcome::Failed("InvalidProviderToken".into())
        );
        assert_eq!(
            classify(413, Some("PayloadTooLarge"), None),
            Outcome::Failed("PayloadTooLarge".into())
        );
        assert_eq!(classify(400, None, None), Outcome::Failed("HTTP 400".into()));
    }

    #[test]
    fn the_prebuilt_body_goes_out_verbatim_with_its_headers() {
        let body = RawValue::from_string(r#"{"aps":{"sound":"s"},"payload":{"a":1}}"#.into())
            .expect("json");
        let payload =
            Prebuilt { options: NotificationOptions::default(), token: "ab", body: &body };
        assert_eq!(
            payload.to_json_string().expect("json"),
            r#"{"aps":{"sound":"s"},"payload":{"a":1}}"#
        );
        assert_eq!(payload.get_device_token(), "ab");
        assert_eq!(push_type("background"), PushType::Background);
        assert_eq!(push_type("alert"), PushType::Alert);
    }

    #[test]
    fn token_auth_clients_load_from_a_p8_and_bad_files_name_the_key() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let build = |name: &str, file: &str, own: bool| ApnsBuild {
            name: name.into(),
            sandbox: false,
            topic: Some("com.example.app".into()),
            auth: ApnsAuth::Token {
                key_file: fixtures.join(file),
                key_id: "ABCDE12345".into(),
                team_id: "TEAM123456".into(),
                own,
            },
        };
        let token = |file: &str| build("store", file, false);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let _guard = rt.enter();
        let sender =
            A2Sender::new(&[token("apns-test-key.p8")], Duration::from_secs(5)).expect("loads");
        assert!(format!("{sender:?}").contains("store"));
        let err =
            A2Sender::new(&[token("missing.p8")], Duration::from_secs(5)).expect_err("missing");
        assert!(err.to_string().starts_with("incus.apns_key_file: "), "{err}");
        let err =
            A2Sender::new(&[token("fcm-test-key.pem")], Duration::from_secs(5)).expect_err("RSA");
        assert!(err.to_string().starts_with("incus.apns_key_file: "), "{err}");
        // A build with its own token key: its errors name its own key.
        let own = |file: &str| build("enterprise", file, true);
        let sender = A2Sender::new(
            &[token("apns-test-key.p8"), own("apns-test-key.p8")],
            Duration::from_secs(5),
        )
        .expect("both load");
        assert!(format!("{sender:?}").contains("enterprise"));
        let err =
            A2Sender::new(&[token("apns-test-key.p8"), own("missing.p8")], Duration::from_secs(5))
                .expect_err("missing");
        assert!(err.to_string().starts_with("incus.apns_enterprise_key_file: "), "{err}");
        let err =
            A2Sender::new(&[own("fcm-test-key.pem")], Duration::from_secs(5)).expect_err("RSA");
        assert!(err.to_string().starts_with("incus.apns_enterprise_key_file: "), "{err}");
        let cert = ApnsBuild {
            auth: ApnsAuth::Certificate {
                cert_file: fixtures.join("localhost.crt"),
                key_file: fixtures.join("missing.key"),
            },
            ..token("x")
        };
        let err = A2Sender::new(&[cert], Duration::from_secs(5)).expect_err("missing key");
        assert!(err.to_string().starts_with("incus.apns_store_private_key: "), "{err}");
    }
}
