//! Webhooks (spec §13): what the shards noticed, POSTed to each app's URLs
//! from a thread of its own.
//!
//! **Deciding** happens in the shards, sans-IO ([`crate::proto::pusher::shard`]):
//! node-wide events (occupied/vacated, members, counts, cache misses) on the
//! channel's owner shard, so a channel busy on two shards still makes one
//! `channel_occupied` and one `channel_vacated`; `client_event` on the
//! sender's shard. The owner also holds `channel_vacated` and
//! `member_removed` for the app's `webhook_delay` and drops them when the
//! channel or member comes back ([`crate::proto::pusher::delayed`]).
//!
//! **Sending** happens here. Each shard has one bounded SPSC ring to this
//! thread ([`rings`]); it pushes and moves on, and an event that finds the
//! ring full is dropped and counted, so a slow or dead receiver never slows
//! message delivery. The thread runs a current-thread tokio runtime with a
//! keep-alive HTTP/1.1 client (`sender`), over rustls for `https://`
//! ([`tls`]): per URL a bounded [`crate::proto::webhook::queue`]
//! (optionally batching), one request at a time so that a receiver sees
//! events in order, each body signed with the app secret and retried on
//! failure with jittered exponential back-off for up to five minutes
//! ([`crate::proto::webhook::retry`]).
//!
//! It is a thread of its own rather than a task on the Redis bridge thread:
//! it starts only when some app has a webhook, with or without Redis, and a
//! burst of retries cannot delay Redis input.

mod sender;
pub mod tls;

use std::{path::PathBuf, sync::Arc, thread, time::Instant};

use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use crate::{
    core::Apps,
    io::rings::fanin::{DropRing, FanIn, fan_in},
    proto::pusher::shard::ShardEvent,
};

/// Events one shard's ring holds; more are dropped (and counted) until the
/// webhook thread catches up.
pub const RING_CAPACITY: usize = 8192;

/// One event on its way from a shard to the webhook thread.
#[derive(Debug)]
pub struct Outgoing {
    /// When the shard handed it over, in Unix milliseconds.
    pub time_ms: u64,
    /// What happened.
    pub event: ShardEvent,
}

/// A shard's end of its ring to the webhook thread.
pub type HookOutlet = DropRing<Outgoing>;

/// The webhook thread's ends of every shard's ring.
pub type HookInlets = FanIn<Outgoing>;

/// One ring per shard, all ringing the same doorbell.
pub fn rings(shards: usize) -> (Vec<HookOutlet>, HookInlets) {
    fan_in(shards, RING_CAPACITY)
}

/// Why the webhook thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The thread could not be spawned.
    #[error("cannot start the webhook thread: {0}")]
    Thread(#[from] std::io::Error),
    /// `server.webhook_ca_file` is missing or holds no usable certificate.
    #[error("server.webhook_ca_file: cannot load CA certificates from {}: {reason}", path.display())]
    CaFile {
        /// The file named by the config.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the client settings.
    #[error("webhook TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The running webhook thread.
pub struct Webhooks {
    stop: watch::Sender<bool>,
    thread: thread::JoinHandle<()>,
}

impl Webhooks {
    /// Spawns the thread that sends the apps' webhooks; `https://` URLs
    /// trust the system's CAs and `extra_roots` (see [`tls::load_ca_file`]).
    ///
    /// # Errors
    ///
    /// [`WebhookError`] if the TLS settings or the thread cannot be set up.
    pub fn start(
        apps: Arc<Apps>,
        inlets: HookInlets,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, WebhookError> {
        let tls = tls::client_config(extra_roots)?;
        let (stop, stopped) = watch::channel(false);
        let thread = crate::io::threads::spawn("stapes-webhooks", move || {
            sender::thread_main(apps, inlets, tls, stopped)
        })?;
        Ok(Self { stop, thread })
    }

    /// Asks the thread to stop and waits for it until `deadline`. Bodies
    /// still queued or being retried are dropped, and their number logged.
    pub fn stop(self, deadline: Instant) {
        let _ = self.stop.send(true);
        if crate::io::threads::join_until(self.thread, deadline).is_none() {
            tracing::warn!("the webhook thread did not stop in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miss(n: usize) -> Outgoing {
        Outgoing {
            time_ms: 0,
            event: ShardEvent::CacheMiss { app: 0, channel: format!("c{n}").into() },
        }
    }

    #[test]
    fn a_full_ring_drops_and_counts_instead_of_waiting() {
        let (mut outlets, mut inlets) = rings(2);
        for n in 0..RING_CAPACITY {
            assert!(outlets[0].push(miss(n)).is_ok());
        }
        assert_eq!(outlets[0].push(miss(0)).expect_err("full"), 1);
        assert_eq!(outlets[0].push(miss(0)).expect_err("full"), 2);
        // The other shard's ring is its own.
        assert!(outlets[1].push(miss(0)).is_ok());
        outlets[0].flush();
        let mut first = None;
        inlets.drain(1, |out| first = Some(out));
        let first = first.expect("queued");
        assert_eq!(first.event, ShardEvent::CacheMiss { app: 0, channel: "c0".into() });
        assert!(outlets[0].push(miss(1)).is_ok(), "room again once the thread took one");
    }
}
