//! Webhooks (spec §13), sans-IO: the JSON a receiver gets, the per-URL
//! queue that batches and orders them, and the retry schedule. Deciding
//! which events happen is the shard's ([`crate::proto::pusher::shard`]);
//! sending is [`crate::io::webhooks`]'s.

pub mod event;
pub mod queue;
pub mod retry;
