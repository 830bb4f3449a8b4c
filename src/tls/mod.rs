//! TLS (rustls).
