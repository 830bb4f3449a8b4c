//! The debug console (issue #16), sans-IO: a page that shows what happens
//! in one app as it happens, and publishes test events.
//!
//! - The page ([`PAGE`]) is served at `GET /console` when `server.console`
//!   is on. It asks for the app id, key and secret, and opens a WebSocket
//!   to `/console/stream` signed like an HTTP API request, so the secret
//!   never leaves the browser.
//! - Shards raise a [`ConsoleEvent`] for what happens in an app only while
//!   the app has a viewer somewhere on the node: [`Watch`] holds the
//!   viewer counts every shard reads with one relaxed load.
//! - Each shard numbers its events and frames each once ([`Viewers::stamp`]);
//!   the frame goes to its own viewers and, over the rings, to the shards
//!   that have viewers of the app. Viewers' outboxes are bounded and drop
//!   what does not fit; gaps in the numbers and the drops are the
//!   viewer's `missed` count ([`Viewers`]).
//! - What the page sends back is a publish, in the body format of the HTTP
//!   API's `POST /apps/{id}/events`.
//!
//! The stream's signature and the page's publishes are checked as the HTTP
//! API checks its requests, in [`crate::proto::rest::console`].

mod event;
mod viewers;

use std::sync::atomic::{AtomicU32, Ordering};

pub use event::ConsoleEvent;
pub use viewers::{ViewerKey, Viewers};

use crate::core::AppIdx;

/// The console page: HTML with its CSS and JavaScript inline, no external
/// resources.
pub const PAGE: &str = include_str!("page.html");

/// Where the page is served.
pub const PAGE_PATH: &str = "/console";

/// Where the page's WebSocket connects.
pub const STREAM_PATH: &str = "/console/stream";

/// How many console viewers each app has on each shard, shared by the
/// node's shards: a shard raises console events only for apps with a
/// viewer ([`Watch::any`]), and sends them only to the shards with one.
#[derive(Debug)]
pub struct Watch {
    apps: usize,
    /// Viewers per shard and app, `shard * apps + app`.
    per_shard: Box<[AtomicU32]>,
    /// Viewers per app, node-wide.
    total: Box<[AtomicU32]>,
}

impl Watch {
    /// No viewers, for `shards` shards serving `apps` apps.
    pub fn new(shards: usize, apps: usize) -> Self {
        Self {
            apps,
            per_shard: (0..shards * apps).map(|_| AtomicU32::new(0)).collect(),
            total: (0..apps).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// A viewer of `app` connected to `shard`.
    pub fn add(&self, shard: usize, app: AppIdx) {
        if let Some(n) = self.per_shard.get(shard * self.apps + app as usize) {
            n.fetch_add(1, Ordering::Relaxed);
            self.total[app as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A viewer added with [`Watch::add`] went.
    pub fn remove(&self, shard: usize, app: AppIdx) {
        if let Some(n) = self.per_shard.get(shard * self.apps + app as usize) {
            n.fetch_sub(1, Ordering::Relaxed);
            self.total[app as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether `app` has a viewer anywhere on the node.
    pub fn any(&self, app: AppIdx) -> bool {
        self.total.get(app as usize).is_some_and(|n| n.load(Ordering::Relaxed) > 0)
    }

    /// Whether `app` has a viewer on `shard`.
    pub fn on(&self, shard: usize, app: AppIdx) -> bool {
        self.per_shard
            .get(shard * self.apps + app as usize)
            .is_some_and(|n| n.load(Ordering::Relaxed) > 0)
    }
}

/// The counters the page shows, once a second: the app's connections and
/// occupied channels on the node, the messages written to its clients so
/// far (the page turns them into a rate), and what this viewer missed.
pub fn stats_json(connections: u64, channels: usize, messages_out: u64, missed: u64) -> Vec<u8> {
    format!(
        "{{\"type\":\"stats\",\"connections\":{connections},\"channels\":{channels},\
         \"messages_out\":{messages_out},\"missed\":{missed}}}"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_counts_per_shard_and_node() {
        let watch = Watch::new(2, 3);
        assert!(!watch.any(1));
        watch.add(1, 1);
        assert!(watch.any(1) && watch.on(1, 1) && !watch.on(0, 1) && !watch.any(0));
        watch.add(0, 1);
        watch.remove(1, 1);
        assert!(watch.any(1) && watch.on(0, 1) && !watch.on(1, 1));
        watch.remove(0, 1);
        assert!(!watch.any(1));
    }

    #[test]
    fn the_page_needs_nothing_from_elsewhere() {
        for external in ["http://", "https://", "//fonts", "@import"] {
            assert!(!PAGE.contains(external), "the page refers to {external}");
        }
    }
}
