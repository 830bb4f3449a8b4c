//! Per-shard indexes, single-threaded and lock-free by ownership: which local
//! connections are subscribed to which channel, and (on a channel's owner
//! shard) who is present in a presence channel across the whole node and
//! the last event of each cache channel.

pub mod cache;
pub mod channels;
pub mod interest;
pub mod presence;
pub mod users;

pub use cache::EventCache;
pub use channels::{ChannelIndex, ConnKey};
pub use interest::Interest;
pub use presence::{Join, PresenceRosters, channel_hash, owner_shard};
pub use users::UserRegistry;
