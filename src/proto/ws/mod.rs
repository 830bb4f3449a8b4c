//! WebSocket (RFC 6455): the opening handshake and the frame codec, sans-IO.

pub mod codec;
pub mod handshake;
pub mod outbox;
