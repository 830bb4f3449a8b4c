//! HTTP/1.1 responses.
