//! Minimal HTTP/1.1: request heads and bodies in, responses out, sans-IO.

pub mod request;
pub mod response;
