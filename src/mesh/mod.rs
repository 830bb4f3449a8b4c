//! SPSC rings between shards.
