//! Signed-in users (spec §10): sign-in, the watchlist (`online`/`offline`
//! decided on each user's owner shard), and terminating a user's
//! connections.

use super::{Shard, close_outbox};
use crate::{
    core::{AppIdx, CloseCode, ConnKey, ConnRef},
    proto::{
        cluster::ClusterUp,
        index::owner_shard,
        msg::ShardMsg,
        pusher::{auth::SignedInUser, messages, session::MAX_WATCHLIST},
    },
};

/// Groups user ids by their owner shard, so that one message per owner
/// carries them.
pub(super) fn by_owner(
    app: AppIdx,
    ids: Vec<Box<str>>,
    shards: usize,
) -> Vec<(usize, Vec<Box<str>>)> {
    let mut groups: Vec<(usize, Vec<Box<str>>)> = Vec::new();
    for id in ids {
        let owner = owner_shard(app, &id, shards);
        match groups.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, group)) => group.push(id),
            None => groups.push((owner, vec![id])),
        }
    }
    groups
}

impl Shard {
    /// On the user's owner: `conn` signed in; the user's first connection
    /// on the node tells its watchers it is online.
    pub(super) fn user_online(&mut self, app: AppIdx, user_id: &str, conn: ConnRef) {
        if self.users.sign_in(app, user_id, conn) {
            if self.settings.cluster {
                // The cluster decides whether this is the user's first
                // connection anywhere, and answers with `ClusterUser`.
                self.up(ClusterUp::SignedIn { app, user_id: user_id.into(), online: true });
            } else {
                self.announce_user(app, user_id, true);
            }
        }
    }

    /// On the user's owner: a signed-in connection left; the user's last one
    /// tells its watchers it is offline.
    pub(super) fn user_offline(&mut self, app: AppIdx, user_id: &str, conn: ConnRef) {
        if self.users.sign_out(app, user_id, conn) {
            if self.settings.cluster {
                self.up(ClusterUp::SignedIn { app, user_id: user_id.into(), online: false });
            } else {
                self.announce_user(app, user_id, false);
            }
        }
    }

    /// On the owner of every id in `user_ids`: `watcher` watches them, and
    /// hears at once which are online.
    pub(super) fn watch(&mut self, app: AppIdx, user_ids: Vec<Box<str>>, watcher: ConnRef) {
        if self.settings.cluster {
            // Later changes reach the watcher from here; who is online now
            // anywhere, the cluster says.
            for id in &user_ids {
                self.users.watch(app, id, watcher);
            }
            self.up(ClusterUp::Watch { app, user_ids, watcher });
            return;
        }
        let mut online = Vec::new();
        for id in user_ids {
            self.users.watch(app, &id, watcher);
            if self.users.is_online(app, &id) {
                online.push(id);
            }
        }
        if !online.is_empty() {
            let msg = ShardMsg::Watchlist { watcher, online: true, user_ids: online };
            self.send_to_shard(watcher.shard as usize, msg);
        }
    }

    /// On the owner of every id in `user_ids`: `watcher` is gone.
    pub(super) fn unwatch(&mut self, app: AppIdx, user_ids: Vec<Box<str>>, watcher: ConnRef) {
        for id in user_ids {
            self.users.unwatch(app, &id, watcher);
        }
    }

    /// Closes every connection signed in as `user_id`, on every shard, with
    /// 4009 (spec §10.5). Connections that only joined presence channels
    /// under that id are not signed in and stay.
    pub fn terminate_user(&mut self, app: AppIdx, user_id: &str) {
        if self.settings.cluster {
            self.up(ClusterUp::Terminate { app, user_id: user_id.into() });
        }
        for to in 0..self.shards {
            if to != self.id {
                self.send_to_shard(to, ShardMsg::TerminateUser { app, user_id: user_id.into() });
            }
        }
        self.terminate_local(app, user_id);
    }

    pub(super) fn terminate_local(&mut self, app: AppIdx, user_id: &str) {
        // A scan rather than a user index: termination is rare, and this
        // keeps sign-in free of per-shard bookkeeping.
        for (_, conn) in self.conns.iter_mut() {
            let session = &conn.session;
            if session.app == app && session.user.as_ref().is_some_and(|u| &*u.id == user_id) {
                close_outbox(&mut conn.outbox, CloseCode::UNAUTHORIZED, true, &mut self.dirty);
            }
        }
    }

    pub(super) fn signin(&mut self, key: ConnKey, user_data: &str, user: SignedInUser) {
        self.send(key, messages::signin_success(user_data));
        if user.watchlist_truncated {
            let msg = format!(
                "Watchlist limit exceeded: only the first {MAX_WATCHLIST} user ids are watched"
            );
            self.send(key, messages::error(Some(CloseCode::WATCHLIST_LIMIT.0), &msg));
        }
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        // A repeated sign-in (same user, the session refuses another) is
        // confirmed again but registered once.
        if conn.signed_in {
            return;
        }
        conn.signed_in = true;
        let watchlist: Vec<Box<str>> = user.watchlist.into_iter().map(Into::into).collect();
        conn.watchlist = watchlist.iter().map(|id| (id.clone(), false)).collect();
        let (app, generation) = (conn.session.app, conn.generation);
        let me = self.conn_ref(key, generation);
        let owner = owner_shard(app, &user.id, self.shards);
        self.send_to_shard(owner, ShardMsg::UserOnline { app, user_id: user.id.into(), conn: me });
        for (owner, user_ids) in by_owner(app, watchlist, self.shards) {
            self.send_to_shard(owner, ShardMsg::Watch { app, user_ids, watcher: me });
        }
    }

    /// On a user's owner shard: tells the user's watchers it went online or
    /// offline.
    pub(super) fn announce_user(&mut self, app: AppIdx, user_id: &str, online: bool) {
        let watchers = self.users.watchers(app, user_id).to_vec();
        for watcher in watchers {
            let user_ids = vec![user_id.into()];
            self.send_to_shard(
                watcher.shard as usize,
                ShardMsg::Watchlist { watcher, online, user_ids },
            );
        }
    }

    /// On a watcher's shard: passes a watchlist change to the connection,
    /// for the users whose state it changes. In a cluster a user's
    /// transition and the answer to the watcher's first question (who is
    /// online now) travel apart and may both say "online"; the watcher
    /// hears it once.
    pub(super) fn watchlist_event(
        &mut self,
        watcher: ConnRef,
        online: bool,
        user_ids: &[Box<str>],
    ) {
        let Some(conn) = self.conns.get_mut(watcher.key as usize) else { return };
        if conn.generation != watcher.generation {
            return;
        }
        let mut ids: Vec<&str> = Vec::with_capacity(user_ids.len());
        for id in user_ids {
            let told = conn.watchlist.iter_mut().find(|(watched, _)| watched == id);
            if let Some((_, told)) = told.filter(|(_, told)| *told != online) {
                *told = online;
                ids.push(id);
            }
        }
        if !ids.is_empty() {
            self.send(watcher.key, messages::watchlist_event(online, &ids));
        }
    }
}
