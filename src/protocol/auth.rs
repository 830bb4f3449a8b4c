//! Channel and user authorization signatures (placeholder until the full module lands).

/// Auth failure.
#[derive(Debug, thiserror::Error)]
#[error("Invalid signature")]
pub struct AuthError;
/// Presence data failure.
#[derive(Debug, thiserror::Error)]
#[error("Invalid channel_data")]
pub struct PresenceDataError;
/// A presence member.
#[derive(Debug)]
pub struct PresenceMember {
    /// User id.
    pub user_id: String,
    /// Info JSON.
    pub user_info: Option<String>,
}
/// Verify.
pub fn verify_channel(
    _app_key: &str,
    _secret: &str,
    _socket_id: &str,
    _channel: &str,
    _channel_data: Option<&str>,
    auth: &str,
) -> Result<(), AuthError> {
    if auth.is_empty() { Err(AuthError) } else { Ok(()) }
}
/// Parse.
pub fn parse_presence_data(
    channel_data: &str,
    _max_id_chars: usize,
    _max_info_bytes: usize,
) -> Result<PresenceMember, PresenceDataError> {
    let v: serde_json::Value = serde_json::from_str(channel_data).map_err(|_| PresenceDataError)?;
    let user_id = match &v["user_id"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(PresenceDataError),
    };
    let user_info = v.get("user_info").map(|i| i.to_string());
    Ok(PresenceMember { user_id, user_info })
}
