//! Channel names and kinds (placeholder until the full module lands).

/// Channel kind by prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// Public.
    Public,
    /// private-.
    Private,
    /// private-encrypted-.
    PrivateEncrypted,
    /// presence-.
    Presence,
    /// #server-to-user-.
    ServerToUser,
}
/// Kind and cache flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelFlags {
    /// Kind.
    pub kind: ChannelKind,
    /// Cache channel.
    pub cache: bool,
}
/// Bad name.
#[derive(Debug, thiserror::Error)]
#[error("invalid name")]
pub struct NameError;
/// Classify.
pub fn classify(name: &str) -> ChannelFlags {
    let kind = if name.starts_with("private-encrypted-") {
        ChannelKind::PrivateEncrypted
    } else if name.starts_with("private-") {
        ChannelKind::Private
    } else if name.starts_with("presence-") {
        ChannelKind::Presence
    } else if name.starts_with("#server-to-user-") {
        ChannelKind::ServerToUser
    } else {
        ChannelKind::Public
    };
    ChannelFlags { kind, cache: false }
}
/// Validate.
pub fn validate(name: &str, max_chars: usize) -> Result<ChannelFlags, NameError> {
    if name.is_empty() || name.len() > max_chars {
        return Err(NameError);
    }
    Ok(classify(name))
}
/// Validate event name.
pub fn validate_event_name(name: &str, max_chars: usize) -> Result<(), NameError> {
    if name.is_empty() || name.len() > max_chars { Err(NameError) } else { Ok(()) }
}
impl ChannelKind {
    /// Needs auth.
    pub fn needs_auth(self) -> bool {
        matches!(self, Self::Private | Self::PrivateEncrypted | Self::Presence)
    }
    /// Client events allowed.
    pub fn allows_client_events(self) -> bool {
        self.needs_auth()
    }
}
