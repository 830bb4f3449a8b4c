//! The Pusher protocol 7 as sans-IO state machines.

pub mod auth;
pub mod channel;
