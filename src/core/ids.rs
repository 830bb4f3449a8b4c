//! Identifiers that every layer passes around.

/// An app's index in the configured app list.
pub type AppIdx = u32;

/// A connection's key in its shard's slab.
pub type ConnKey = u32;

/// A connection anywhere in the node: its shard, its slab key, and the
/// generation that tells a reused slab slot from the connection that left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// Shard index.
    pub shard: u16,
    /// Slab key on that shard.
    pub key: u32,
    /// Generation of the slot.
    pub generation: u32,
}

/// Which push service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// APNs.
    Ios,
    /// FCM.
    Android,
}

impl Platform {
    /// The name in logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ios => "ios",
            Self::Android => "android",
        }
    }
}
