//! Connection admission: the node-wide and per-app connection counts, and
//! the node's socket budget.
//!
//! These counters are the one piece of state that shards share outside the
//! rings, on purpose: every WebSocket handshake must know the node-wide count
//! to enforce `max_connections` (4100) and the app's quota (4004). Asking an
//! owner shard over the rings would put a cross-core round trip into every
//! connect; a relaxed atomic add costs a few nanoseconds and is exact. They
//! are plain atomics in a fixed array, never a map, and nothing else is shared.
//! In a cluster the bridge also writes, once per heartbeat, each app's
//! connections on the other nodes, which count against its quota too.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::core::{AppIdx, Apps, CloseCode};

/// Connection counts for the node and each app.
#[derive(Debug)]
pub struct Admission {
    node: AtomicUsize,
    node_max: usize,
    per_app: Vec<(AtomicUsize, Option<usize>)>,
    /// Per app, its connections on the cluster's other nodes, as the
    /// bridge last read them (0 on a node alone).
    elsewhere: Vec<AtomicUsize>,
    /// Every accepted socket, WebSocket or plain HTTP.
    sockets: AtomicUsize,
    sockets_max: usize,
    /// HTTP-transport sessions (pusher-js's `xhr_streaming`/`xhr_polling`),
    /// which are connections too.
    http_sessions: AtomicUsize,
    http_sessions_max: usize,
}

impl Admission {
    /// Counters for `apps`, with the node-wide WebSocket limit `node_max`
    /// and room for `sockets_max` sockets in all.
    pub fn new(apps: &Apps, node_max: usize, sockets_max: usize) -> Self {
        let per_app = (0..apps.len())
            .map(|i| (AtomicUsize::new(0), apps.get(i as AppIdx).max_connections))
            .collect();
        Self {
            node: AtomicUsize::new(0),
            node_max,
            elsewhere: (0..apps.len()).map(|_| AtomicUsize::new(0)).collect(),
            per_app,
            sockets: AtomicUsize::new(0),
            sockets_max,
            http_sessions: AtomicUsize::new(0),
            http_sessions_max: usize::MAX,
        }
    }

    /// The same counters with room for `max` HTTP-transport sessions.
    pub fn with_max_http_sessions(mut self, max: usize) -> Self {
        self.http_sessions_max = max;
        self
    }

    /// Counts one more HTTP-transport session of `app`, against the
    /// session limit and then as a connection of `app` ([`Admission::admit`]).
    /// A successful call must be matched by one
    /// [`Admission::release_http_session`].
    pub fn admit_http_session(&self, app: AppIdx) -> Result<(), CloseCode> {
        if self.http_sessions.fetch_add(1, Ordering::Relaxed) >= self.http_sessions_max {
            self.http_sessions.fetch_sub(1, Ordering::Relaxed);
            return Err(CloseCode::OVER_CAPACITY);
        }
        self.admit(app).inspect_err(|_| {
            self.http_sessions.fetch_sub(1, Ordering::Relaxed);
        })
    }

    /// Forgets one session counted by [`Admission::admit_http_session`].
    pub fn release_http_session(&self, app: AppIdx) {
        self.http_sessions.fetch_sub(1, Ordering::Relaxed);
        self.release(app);
    }

    /// HTTP-transport sessions open on the node.
    pub fn http_sessions(&self) -> usize {
        self.http_sessions.load(Ordering::Relaxed)
    }

    /// Counts one more accepted socket, or false when the node has no room
    /// for it (it should be answered 503 and closed). A successful call must
    /// be matched by one [`Admission::release_socket`].
    pub fn admit_socket(&self) -> bool {
        if self.sockets.fetch_add(1, Ordering::Relaxed) >= self.sockets_max {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Forgets one socket counted by [`Admission::admit_socket`].
    pub fn release_socket(&self) {
        self.sockets.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one more connection of `app`, or says which limit refuses it.
    /// A successful call must be matched by one [`Admission::release`].
    pub fn admit(&self, app: AppIdx) -> Result<(), CloseCode> {
        if self.node.fetch_add(1, Ordering::Relaxed) >= self.node_max {
            self.node.fetch_sub(1, Ordering::Relaxed);
            return Err(CloseCode::OVER_CAPACITY);
        }
        let (count, max) = &self.per_app[app as usize];
        if let Some(max) = max {
            let elsewhere = self.elsewhere[app as usize].load(Ordering::Relaxed);
            if count.fetch_add(1, Ordering::Relaxed).saturating_add(elsewhere) >= *max {
                count.fetch_sub(1, Ordering::Relaxed);
                self.node.fetch_sub(1, Ordering::Relaxed);
                return Err(CloseCode::APP_OVER_QUOTA);
            }
        } else {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Forgets one connection of `app`.
    pub fn release(&self, app: AppIdx) {
        self.per_app[app as usize].0.fetch_sub(1, Ordering::Relaxed);
        self.node.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one more connection that belongs to no app (an Incus
    /// `/socket`), against the node-wide limit only. A successful call must
    /// be matched by one [`Admission::release_node`].
    pub fn admit_node(&self) -> Result<(), CloseCode> {
        if self.node.fetch_add(1, Ordering::Relaxed) >= self.node_max {
            self.node.fetch_sub(1, Ordering::Relaxed);
            return Err(CloseCode::OVER_CAPACITY);
        }
        Ok(())
    }

    /// Forgets one connection counted by [`Admission::admit_node`].
    pub fn release_node(&self) {
        self.node.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections of `app` open on the node.
    pub fn app_connections(&self, app: AppIdx) -> usize {
        self.per_app[app as usize].0.load(Ordering::Relaxed)
    }

    /// In a cluster: the connections of `app` on the other nodes, which
    /// count against its quota here too.
    pub fn set_elsewhere(&self, app: AppIdx, connections: usize) {
        self.elsewhere[app as usize].store(connections, Ordering::Relaxed);
    }

    /// Connections open on the node.
    pub fn connections(&self) -> usize {
        self.node.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::AppConfig;

    #[test]
    fn quotas_refuse_with_their_codes_and_release() {
        let mut limited = AppConfig::new("2", "k2", "s");
        limited.max_connections = Some(1);
        let apps = Apps::new(vec![Arc::new(AppConfig::new("1", "k1", "s")), Arc::new(limited)]);
        let adm = Admission::new(&apps, 2, 10);
        assert_eq!(adm.admit(1), Ok(()));
        assert_eq!(adm.admit(1), Err(CloseCode::APP_OVER_QUOTA));
        assert_eq!(adm.admit(0), Ok(()));
        assert_eq!(adm.admit(0), Err(CloseCode::OVER_CAPACITY));
        adm.release(1);
        assert_eq!(adm.admit(0), Ok(()));
        assert_eq!(adm.connections(), 2);
    }

    #[test]
    fn app_less_connections_count_against_the_node() {
        let apps = Apps::new(vec![Arc::new(AppConfig::new("1", "k1", "s"))]);
        let adm = Admission::new(&apps, 2, 10);
        assert_eq!(adm.admit_node(), Ok(()));
        assert_eq!(adm.admit(0), Ok(()));
        assert_eq!(adm.admit_node(), Err(CloseCode::OVER_CAPACITY));
        assert_eq!(adm.admit(0), Err(CloseCode::OVER_CAPACITY));
        adm.release_node();
        assert_eq!(adm.connections(), 1);
        assert_eq!(adm.admit_node(), Ok(()));
    }

    #[test]
    fn http_sessions_count_as_connections_within_their_own_limit() {
        let apps = Apps::new(vec![Arc::new(AppConfig::new("1", "k1", "s"))]);
        let adm = Admission::new(&apps, 2, 10).with_max_http_sessions(1);
        assert_eq!(adm.admit_http_session(0), Ok(()));
        assert_eq!(adm.admit_http_session(0), Err(CloseCode::OVER_CAPACITY));
        assert_eq!((adm.http_sessions(), adm.connections()), (1, 1));
        assert_eq!(adm.admit(0), Ok(()));
        adm.release_http_session(0);
        assert_eq!(adm.admit(0), Ok(()));
        // Room for a session again, but the node is full of WebSockets.
        assert_eq!(adm.admit_http_session(0), Err(CloseCode::OVER_CAPACITY));
        assert_eq!((adm.http_sessions(), adm.connections()), (0, 2));
    }

    #[test]
    fn sockets_beyond_the_budget_are_refused_until_one_closes() {
        let apps = Apps::new(vec![Arc::new(AppConfig::new("1", "k1", "s"))]);
        let adm = Admission::new(&apps, 1, 2);
        assert!(adm.admit_socket());
        assert!(adm.admit_socket());
        assert!(!adm.admit_socket());
        adm.release_socket();
        assert!(adm.admit_socket());
    }
}
