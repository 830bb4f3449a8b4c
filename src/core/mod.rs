//! The leaf layer: what every other layer names and nothing here depends on
//! anything above it. Identifiers, the close-code table, the app model with
//! its webhook kinds, the counters shards write and exporters read, the
//! reconnect back-off, JSON (the strict input policy and hand-written
//! output), and the throttle for repeated warnings.

pub mod admission;
pub mod app;
pub mod backoff;
pub mod close_code;
pub mod counters;
pub mod ids;
pub mod json;
pub mod socket_id;
pub mod throttle;
pub mod tick;

pub use app::{AppConfig, Apps, HookKind, HookKinds, WebhookConfig};
pub use close_code::CloseCode;
pub use ids::{AppIdx, ConnKey, ConnRef, Platform};
pub use socket_id::SocketId;
pub use tick::Tick;
