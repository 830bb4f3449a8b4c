//! The Pusher protocol 7 as sans-IO state machines: no sockets, no runtime,
//! no clock reads. Time comes in as an argument, output goes out as values.

pub mod auth;
pub mod channel;
pub mod delayed;
pub mod handshake;
pub mod messages;
pub mod session;
pub mod shard;
pub mod xhr;
