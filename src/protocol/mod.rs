//! The Pusher protocol 7 as sans-IO state machines: no sockets, no runtime,
//! no clock reads. Time comes in as an argument, output goes out as values.

pub mod apps;
pub mod auth;
pub mod channel;
pub mod close_code;
pub mod delayed;
pub mod handshake;
pub mod messages;
pub mod session;
pub mod shard;
pub mod socket_id;

pub use close_code::CloseCode;
pub use socket_id::SocketId;

/// An app's index in the configured app list.
pub type AppIdx = u32;

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
