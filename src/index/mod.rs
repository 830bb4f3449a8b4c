//! Per-shard channel and presence index.
