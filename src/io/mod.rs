//! The IO layer: threads, sockets, Redis and HTTP clients. Everything here
//! drives a sans-IO state machine from [`crate::proto`] or carries its
//! output somewhere; [`crate::server`] wires them together.

// The IO layer is where the clock is read; everything below it takes `now`.
#![allow(clippy::disallowed_methods)]

pub mod bridge;
pub mod doctor;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod push;
pub mod redis_link;
pub mod rings;
pub mod shard;
pub mod threads;
pub mod tls;
pub mod webhooks;
