//! Signed-in users and their watchers, kept by each user's owner shard.
//!
//! Like presence rosters ([`super::presence`]), every sign-in, sign-out
//! (disconnect) and watchlist registration for a user id goes to one owner
//! shard, [`owner_shard`](super::owner_shard) of the user id. That shard alone
//! decides when the user goes online (first signed-in connection anywhere in
//! the node) or offline (last one gone), and whom to tell (spec §10.3).

use std::collections::HashMap;

use crate::core::{AppIdx, ConnRef};

/// Online users and watchers of the user ids this shard owns.
#[derive(Debug, Default)]
pub struct UserRegistry {
    /// Signed-in connections per user.
    online: HashMap<(AppIdx, Box<str>), Vec<ConnRef>>,
    /// Connections watching each user id.
    watchers: HashMap<(AppIdx, Box<str>), Vec<ConnRef>>,
}

impl UserRegistry {
    /// Records a signed-in connection; true when the user just came online.
    pub fn sign_in(&mut self, app: AppIdx, user_id: &str, conn: ConnRef) -> bool {
        let conns = self.online.entry((app, user_id.into())).or_default();
        if conns.contains(&conn) {
            return false;
        }
        conns.push(conn);
        conns.len() == 1
    }

    /// Forgets a signed-in connection; true when it was the user's last.
    pub fn sign_out(&mut self, app: AppIdx, user_id: &str, conn: ConnRef) -> bool {
        let key = (app, Box::<str>::from(user_id));
        let Some(conns) = self.online.get_mut(&key) else { return false };
        let Some(at) = conns.iter().position(|c| *c == conn) else { return false };
        conns.swap_remove(at);
        if conns.is_empty() {
            self.online.remove(&key);
            return true;
        }
        false
    }

    /// Whether the user has a signed-in connection anywhere in the node.
    pub fn is_online(&self, app: AppIdx, user_id: &str) -> bool {
        self.online.contains_key(&(app, user_id.into()))
    }

    /// Registers `watcher` as watching `user_id`.
    pub fn watch(&mut self, app: AppIdx, user_id: &str, watcher: ConnRef) {
        let list = self.watchers.entry((app, user_id.into())).or_default();
        if !list.contains(&watcher) {
            list.push(watcher);
        }
    }

    /// Removes `watcher` from `user_id`'s watchers.
    pub fn unwatch(&mut self, app: AppIdx, user_id: &str, watcher: ConnRef) {
        let key = (app, Box::<str>::from(user_id));
        let Some(list) = self.watchers.get_mut(&key) else { return };
        list.retain(|w| *w != watcher);
        if list.is_empty() {
            self.watchers.remove(&key);
        }
    }

    /// The connections watching `user_id`.
    pub fn watchers(&self, app: AppIdx, user_id: &str) -> &[ConnRef] {
        self.watchers.get(&(app, user_id.into())).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(shard: u16, key: u32) -> ConnRef {
        ConnRef { shard, key, generation: 1 }
    }

    #[test]
    fn online_while_any_connection_is_signed_in() {
        let mut r = UserRegistry::default();
        assert!(r.sign_in(0, "u", conn(0, 1)));
        assert!(!r.sign_in(0, "u", conn(1, 1)));
        assert!(!r.sign_in(0, "u", conn(1, 1)), "repeated sign-in counts once");
        assert!(!r.is_online(1, "u"), "apps are separate");
        assert!(!r.sign_out(0, "u", conn(0, 1)));
        assert!(r.is_online(0, "u"));
        assert!(r.sign_out(0, "u", conn(1, 1)));
        assert!(!r.is_online(0, "u"));
        assert!(!r.sign_out(0, "u", conn(1, 1)), "stray sign-out is harmless");
    }

    #[test]
    fn watchers_come_and_go() {
        let mut r = UserRegistry::default();
        r.watch(0, "u", conn(0, 1));
        r.watch(0, "u", conn(0, 1));
        r.watch(0, "u", conn(1, 2));
        assert_eq!(r.watchers(0, "u"), [conn(0, 1), conn(1, 2)]);
        r.unwatch(0, "u", conn(0, 1));
        assert_eq!(r.watchers(0, "u"), [conn(1, 2)]);
        r.unwatch(0, "u", conn(1, 2));
        assert!(r.watchers(0, "u").is_empty());
    }
}
