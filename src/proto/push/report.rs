//! The error lists backends read (Incus spec §9.2): after a push in which
//! some token failed, one JSON entry is RPUSHed to `android_error_queue`
//! (Android) or `ios_error_queue` (iOS, new in stapes), in Incus's shape:
//!
//! ```json
//! {"registration_ids":["good1","bad2"],
//!  "results":[{"message_id":"m1","registration_id":"","error":""},
//!             {"message_id":"","registration_id":"","error":"NotRegistered"}]}
//! ```
//!
//! One result per id, in order, all three fields always present. FCM v1's
//! error codes are written as the legacy names Incus's consumers know
//! ([`fcm_legacy_name`]); APNs reasons are written as APNs sends them
//! (`BadDeviceToken`, `Unregistered`, …).

use std::time::Duration;

use crate::core::json::write_str;

/// What one notification to one token came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; the service's id for it (`apns-id`, FCM's message name).
    Sent(Option<String>),
    /// The token is invalid or no longer registered: the backend should
    /// forget it.
    TokenRejected(String),
    /// Worth another try (429, 5xx, a timeout, a lost connection).
    Retry {
        /// The error name for the report if no retry succeeds.
        reason: String,
        /// The service's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Refused for a reason that is not the token's (credentials, payload,
    /// topic): logged and counted; reported, since this token got nothing.
    Failed(String),
}

impl Outcome {
    /// The error name for the report, empty for a success.
    pub fn error(&self) -> &str {
        match self {
            Self::Sent(_) => "",
            Self::TokenRejected(reason) | Self::Failed(reason) => reason,
            Self::Retry { reason, .. } => reason,
        }
    }
}

/// The legacy FCM/GCM error name for a v1 `errorCode` (Incus spec §9.5),
/// so that consumers written for Incus's queue keep working.
pub fn fcm_legacy_name(code: &str) -> &str {
    match code {
        "UNREGISTERED" => "NotRegistered",
        "INVALID_ARGUMENT" => "InvalidRegistration",
        "SENDER_ID_MISMATCH" => "MismatchSenderId",
        "UNAVAILABLE" => "Unavailable",
        "INTERNAL" => "InternalServerError",
        "QUOTA_EXCEEDED" => "DeviceMessageRateExceeded",
        "THIRD_PARTY_AUTH_ERROR" => "ThirdPartyAuthError",
        other => other,
    }
}

/// The list entry for one push, or `None` when every token succeeded.
pub fn entry(ids: &[&str], outcomes: &[Outcome]) -> Option<String> {
    if outcomes.iter().all(|o| matches!(o, Outcome::Sent(_))) {
        return None;
    }
    let mut json = String::from("{\"registration_ids\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        write_str(id, &mut json);
    }
    json.push_str("],\"results\":[");
    for (i, outcome) in outcomes.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let message_id = match outcome {
            Outcome::Sent(id) => id.as_deref().unwrap_or_default(),
            _ => "",
        };
        json.push_str("{\"message_id\":");
        write_str(message_id, &mut json);
        // Canonical ids were a legacy feature; v1 and APNs have none.
        json.push_str(",\"registration_id\":\"\",\"error\":");
        write_str(outcome.error(), &mut json);
        json.push('}');
    }
    json.push_str("]}");
    Some(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incus_shape_only_when_something_failed() {
        let ok = Outcome::Sent(Some("projects/p/messages/1".into()));
        assert_eq!(entry(&["a"], std::slice::from_ref(&ok)), None);
        let outcomes = [
            ok,
            Outcome::TokenRejected(fcm_legacy_name("UNREGISTERED").into()),
            Outcome::Retry { reason: "Unavailable".into(), retry_after: None },
            Outcome::Failed("ThirdPartyAuthError".into()),
        ];
        assert_eq!(
            entry(&["good1", "bad2", "slow3", "x\"4"], &outcomes).as_deref(),
            Some(
                r#"{"registration_ids":["good1","bad2","slow3","x\"4"],"results":[{"message_id":"projects/p/messages/1","registration_id":"","error":""},{"message_id":"","registration_id":"","error":"NotRegistered"},{"message_id":"","registration_id":"","error":"Unavailable"},{"message_id":"","registration_id":"","error":"ThirdPartyAuthError"}]}"#
            )
        );
    }

    #[test]
    fn legacy_names() {
        for (v1, legacy) in [
            ("UNREGISTERED", "NotRegistered"),
            ("INVALID_ARGUMENT", "InvalidRegistration"),
            ("SENDER_ID_MISMATCH", "MismatchSenderId"),
            ("UNAVAILABLE", "Unavailable"),
            ("INTERNAL", "InternalServerError"),
            ("QUOTA_EXCEEDED", "DeviceMessageRateExceeded"),
            ("SOMETHING_NEW", "SOMETHING_NEW"),
        ] {
            assert_eq!(fcm_legacy_name(v1), legacy);
        }
    }
}
