//! Exporting the counters the shards keep ([`crate::core::counters`]):
//! `GET /metrics` as Prometheus text, and Incus's `incus.*` names over
//! DogStatsD from a thread of its own.

pub mod prometheus;
pub mod statsd;
