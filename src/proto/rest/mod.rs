//! The Pusher HTTP API: request signing, request bodies, errors, handlers.

pub mod api;
pub mod channels;
pub mod console;
pub mod error;
pub mod events;
pub mod signature;
