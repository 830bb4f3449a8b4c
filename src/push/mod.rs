//! Mobile push (Incus spec §9): APNs over HTTP/2 and FCM HTTP v1.
pub mod command;
pub mod fcm;
pub mod oauth;
pub mod report;
pub mod retry;
