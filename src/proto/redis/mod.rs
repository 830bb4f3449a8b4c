//! What arrives over Redis, sans-IO: Pusher events published by backends
//! ([`pusher`]). Incus commands, which clients send too, are
//! [`crate::proto::incus::command`].

pub mod pusher;
