//! Mobile push services, sans-IO: the Redis error-list entries ([`report`])
//! and the retry schedule ([`retry`]). Decoding Incus's push commands is
//! [`crate::proto::incus::push`]'s; the senders are [`crate::io::push`]'s.

pub mod report;
pub mod retry;
