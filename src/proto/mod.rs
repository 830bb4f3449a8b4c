//! The sans-IO layer: every protocol stapes speaks, as state machines that
//! take bytes, events and the time and return what to do. Nothing here
//! opens a socket, reads the clock or knows the configuration file; it
//! imports only [`crate::core`], and `tests/layers.rs` fails the build's
//! tests when that stops being true.

pub mod cluster;
pub mod console;
pub mod http;
pub mod incus;
pub mod index;
pub mod msg;
pub mod push;
pub mod pusher;
pub mod redis;
pub mod rest;
pub mod webhook;
pub mod ws;
