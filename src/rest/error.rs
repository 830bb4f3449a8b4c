//! HTTP API errors.
