//! Channel and user authorization signatures.
