//! Pusher HTTP API request signing (auth_version 1.0).
