//! stapes: a realtime messaging server speaking Pusher Channels protocol 7.
//!
//! (Module tour written with the runtime; see README.md for the overview.)

pub mod config;
pub mod http;
pub mod index;
pub mod mesh;
pub mod protocol;
pub mod rest;
pub mod runtime;
pub mod tls;
pub mod ws;
