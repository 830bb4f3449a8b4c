//! Subscriptions and fan-out: subscribe and unsubscribe, client events,
//! publishes, and the delivery of one framed event to every local
//! subscriber and every other shard.

use std::time::Instant;

use arcstr::ArcStr;
use bytes::Bytes;

use super::{Shard, Sub, SubState, is_authorizing, slow_consumer};
use crate::{
    core::{AppIdx, CloseCode, ConnKey, ConnRef, HookKind, SocketId},
    proto::{
        cluster::ClusterUp,
        console::ConsoleEvent,
        index::{Interest, owner_shard},
        msg::ShardMsg,
        pusher::{
            auth::PresenceMember,
            channel::{self, ChannelFlags, ChannelKind},
            messages,
            shard::{MAX_SUBSCRIPTIONS_PER_CONNECTION, ShardEvent},
        },
    },
};

/// Local subscribers from which a frame that arrived from another shard is
/// copied once before the fan-out.
const LOCAL_COPY_THRESHOLD: usize = 64;

impl Shard {
    pub(super) fn subscribe(
        &mut self,
        key: ConnKey,
        channel: &str,
        flags: ChannelFlags,
        member: Option<PresenceMember>,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let app = conn.session.app;
        let me = ConnRef { shard: self.id as u16, key, generation: conn.generation };
        let existing = conn.subs.iter().find(|s| *s.channel == *channel);
        match (existing, flags.kind) {
            // Spec §5.3: a repeated subscribe is confirmed again, never counted twice.
            (Some(Sub { state: SubState::Active, user_id, .. }), ChannelKind::Presence) => {
                let user_id: Box<str> = user_id.as_deref().unwrap_or_default().into();
                if self.settings.cluster {
                    let channel = channel.into();
                    self.up(ClusterUp::Join {
                        app,
                        channel,
                        user_id,
                        user_info: None,
                        conn: me,
                        again: true,
                    });
                    return;
                }
                self.send_to_owner(
                    app,
                    channel,
                    ShardMsg::PresenceJoin {
                        app,
                        channel: channel.into(),
                        user_id,
                        user_info: None,
                        conn: me,
                        at: now,
                    },
                );
                return;
            }
            (Some(Sub { state: SubState::Active, .. }), _) => {
                self.send(key, messages::subscription_succeeded(channel));
                return;
            }
            (
                Some(Sub {
                    state: SubState::Joining | SubState::Fetching | SubState::Announcing,
                    ..
                }),
                _,
            ) => return,
            (None, _) => {}
        }
        if conn.subs.len() >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            let msg = format!(
                "Cannot subscribe to {channel}: a connection may hold {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions"
            );
            self.send(key, messages::error(None, &msg));
            return;
        }
        if self.watch.any(app) {
            let socket_id = conn.session.socket_id;
            let channel = channel.into();
            self.console_out.push((app, ConsoleEvent::Subscribed { socket_id, channel }));
        }
        // Announced ahead of anything this subscription sends, so that the
        // channel's owner hears of it before the join or fetch on the same
        // ring, and before the client can hear it confirmed.
        self.interest.add(app, channel);
        match (flags.kind, member) {
            (ChannelKind::Presence, Some(member)) if self.settings.cluster => {
                // The cluster's roster answers: the subscription counts on
                // the node at once, and completes with the verdict.
                let user_id: Box<str> = member.user_id.into();
                conn.subs.push(Sub {
                    channel: channel.into(),
                    user_id: Some(ArcStr::from(&*user_id)),
                    state: SubState::Joining,
                });
                let shard = self.id as u16;
                let name: Box<str> = channel.into();
                self.up(ClusterUp::Sub { app, channel: name.clone(), shard, delta: 1, conn: None });
                let user_info = member.user_info.map(Into::into);
                self.up(ClusterUp::Join {
                    app,
                    channel: name,
                    user_id,
                    user_info,
                    conn: me,
                    again: false,
                });
            }
            _ if flags.cache && self.settings.cluster => {
                // The node subscribes to the channel before the fetch, so no
                // event after the cached one can be missed; the subscription
                // completes with the replay.
                conn.subs.push(Sub {
                    channel: channel.into(),
                    user_id: None,
                    state: SubState::Fetching,
                });
                let (shard, name): (u16, Box<str>) = (self.id as u16, channel.into());
                self.up(ClusterUp::Sub { app, channel: name.clone(), shard, delta: 1, conn: None });
                self.up(ClusterUp::CacheFetch { app, channel: name, conn: me });
            }
            _ if self.settings.cluster => {
                // Confirmed once the node is subscribed to the channel's
                // events and its count is in the cluster's view, so what the
                // client hears after `subscription_succeeded` includes every
                // node's publishes, and any node's API counts it.
                conn.subs.push(Sub {
                    channel: channel.into(),
                    user_id: None,
                    state: SubState::Announcing,
                });
                let (shard, name) = (self.id as u16, channel.into());
                self.up(ClusterUp::Sub { app, channel: name, shard, delta: 1, conn: Some(me) });
            }
            (ChannelKind::Presence, Some(member)) => {
                let user_id: Box<str> = member.user_id.into();
                conn.subs.push(Sub {
                    channel: channel.into(),
                    user_id: Some(ArcStr::from(&*user_id)),
                    state: SubState::Joining,
                });
                let owner = owner_shard(app, channel, self.shards);
                self.send_to_shard(
                    owner,
                    ShardMsg::PresenceJoin {
                        app,
                        channel: channel.into(),
                        user_id,
                        user_info: member.user_info.map(Into::into),
                        conn: me,
                        at: now,
                    },
                );
            }
            _ if flags.cache => {
                // The owner answers with the replay; the subscription
                // completes then, so that no live event overtakes it.
                conn.subs.push(Sub {
                    channel: channel.into(),
                    user_id: None,
                    state: SubState::Fetching,
                });
                let msg = ShardMsg::CacheFetch { app, channel: channel.into(), conn: me, at: now };
                self.send_to_owner(app, channel, msg);
            }
            _ => {
                let (name, added) = self.index.subscribe(app, channel, key);
                conn.subs.push(Sub { channel: name, user_id: None, state: SubState::Active });
                if is_authorizing(flags.kind) {
                    conn.session.authorize();
                }
                self.send(key, messages::subscription_succeeded(channel));
                // After the confirmation, so the new subscriber hears its
                // count only once it knows it is subscribed.
                if added {
                    self.count_subscription(app, channel, flags.kind, 1);
                }
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, key: ConnKey, channel: &str) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let Some(at) = conn.subs.iter().position(|s| &*s.channel == channel) else { return };
        let sub = conn.subs.swap_remove(at);
        let (app, generation) = (conn.session.app, conn.generation);
        let socket_id = conn.session.socket_id;
        let me = self.conn_ref(key, generation);
        self.leave(app, key, me, sub, socket_id);
    }

    /// Undoes one subscription: the index entry, and the presence membership.
    pub(super) fn leave(
        &mut self,
        app: AppIdx,
        key: ConnKey,
        me: ConnRef,
        sub: Sub,
        socket_id: SocketId,
    ) {
        let channel = &*sub.channel;
        self.tap(app, || ConsoleEvent::Unsubscribed { socket_id, channel: channel.into() });
        self.interest.remove(app, channel);
        if self.settings.cluster {
            if let SubState::Active = sub.state {
                self.index.unsubscribe(app, channel, key);
            }
            let shard = self.id as u16;
            self.up(ClusterUp::Sub { app, channel: channel.into(), shard, delta: -1, conn: None });
            if let Some(user_id) = sub.user_id {
                let user_id = user_id.as_str().into();
                self.up(ClusterUp::Leave { app, channel: channel.into(), user_id, conn: me });
            }
            return;
        }
        if let SubState::Active = sub.state {
            self.index.unsubscribe(app, channel, key);
            let kind = channel::classify(channel).kind;
            self.count_subscription(app, channel, kind, -1);
        }
        if let Some(user_id) = sub.user_id {
            let user_id = user_id.as_str().into();
            let msg = ShardMsg::PresenceLeave { app, channel: channel.into(), user_id, conn: me };
            self.send_to_owner(app, channel, msg);
        }
    }

    pub(super) fn client_event(&mut self, key: ConnKey, event: &str, channel: &str, data: &[u8]) {
        let Some(conn) = self.conns.get(key as usize) else { return };
        let sub = conn
            .subs
            .iter()
            .find(|s| &*s.channel == channel && matches!(s.state, SubState::Active));
        let Some(sub) = sub else {
            let msg = format!("Client event rejected: not subscribed to {channel}");
            self.send(key, messages::error(Some(CloseCode::CLIENT_EVENT_REJECTED.0), &msg));
            return;
        };
        let (app, socket_id) = (conn.session.app, conn.session.socket_id);
        let frame = messages::client_event(event, channel, data, sub.user_id.as_deref());
        if self.wants(app, HookKind::ClientEvent) {
            self.events.push(ShardEvent::ClientEvent {
                app,
                channel: channel.into(),
                event: event.into(),
                data: String::from_utf8_lossy(data).into(),
                socket_id,
                user_id: sub.user_id.as_deref().map(Into::into),
            });
        }
        if self.watched(app) {
            let user_id = sub.user_id.as_deref().map(Into::into);
            self.tap(app, || ConsoleEvent::ClientEvent {
                channel: channel.into(),
                event: event.into(),
                data: String::from_utf8_lossy(data).into(),
                socket_id,
                user_id,
            });
        }
        self.broadcast(app, channel, frame.clone(), Some(socket_id));
        if self.settings.cluster {
            let channel = channel.into();
            self.up(ClusterUp::Publish { app, channel, frame, exclude: Some(socket_id) });
        }
    }

    /// In a cluster: the node's view of the channel now holds the
    /// subscription, so it completes (spec §5: `subscription_succeeded`).
    pub(super) fn sub_ready(&mut self, app: AppIdx, channel: &str, me: ConnRef) {
        let Some(conn) = self.conns.get_mut(me.key as usize) else { return };
        if conn.generation != me.generation {
            return;
        }
        let Some(sub) = conn.subs.iter_mut().find(|s| &*s.channel == channel) else { return };
        if !matches!(sub.state, SubState::Announcing) {
            return;
        }
        let (name, _) = self.index.subscribe(app, channel, me.key);
        (sub.channel, sub.state) = (name, SubState::Active);
        if is_authorizing(channel::classify(channel).kind) {
            conn.session.authorize();
        }
        self.send(me.key, messages::subscription_succeeded(channel));
    }

    /// Publishes an event from the HTTP API (or any server-side source) to
    /// every subscriber of `channel` on every shard. On a cache channel the
    /// event goes through the channel's owner, which remembers it (spec §8).
    pub fn publish(
        &mut self,
        app: AppIdx,
        channel: &str,
        event: &str,
        data: &str,
        exclude: Option<SocketId>,
        now: Instant,
    ) {
        self.now = Some(now);
        self.tap(app, || ConsoleEvent::ApiMessage {
            channel: channel.into(),
            event: event.into(),
            data: data.into(),
        });
        let frame = messages::channel_event(event, channel, data);
        if self.settings.cluster {
            let name = channel.into();
            if channel::classify(channel).cache {
                // Stored and sent by the cluster, this node included, so
                // that every node keeps stores and replays in one order.
                self.up(ClusterUp::CachePublish { app, channel: name, frame, exclude });
            } else {
                self.broadcast(app, channel, frame.clone(), exclude);
                self.up(ClusterUp::Publish { app, channel: name, frame, exclude });
            }
            return;
        }
        if channel::classify(channel).cache {
            let msg =
                ShardMsg::CachePublish { app, channel: channel.into(), frame, exclude, at: now };
            self.send_to_owner(app, channel, msg);
        } else {
            self.broadcast(app, channel, frame, exclude);
        }
    }

    /// Local fan-out plus one `Deliver` per other shard, all sharing `frame`;
    /// [`Shard::drain_mesh_out`] holds back those to shards that hold no
    /// subscriber of the channel.
    pub(super) fn broadcast(
        &mut self,
        app: AppIdx,
        channel: &str,
        frame: Bytes,
        exclude: Option<SocketId>,
    ) {
        if self.shards > 1 {
            // Worth settling the rings for only if some shard looks not to
            // hold the channel: bits that say "held" are never wrong to
            // act on, only, at worst, late to say "not held".
            let bucket = Interest::bucket(app, channel);
            let interest = &self.interest;
            self.crossing |=
                (0..self.shards).any(|to| to != self.id && !interest.held_by(to, bucket));
        }
        for (to, out) in self.mesh_out.iter_mut().enumerate() {
            if to != self.id {
                out.push(ShardMsg::Deliver {
                    app,
                    channel: channel.into(),
                    frame: frame.clone(),
                    exclude,
                });
            }
        }
        self.deliver_local(app, channel, &frame, exclude, false);
    }

    pub(super) fn deliver_local(
        &mut self,
        app: AppIdx,
        channel: &str,
        frame: &Bytes,
        exclude: Option<SocketId>,
        remote: bool,
    ) {
        let Some(subscribers) = self.index.lookup(app, channel) else { return };
        // A frame built on another shard shares its refcount with that
        // shard's subscribers; for a large fan-out one local copy is cheaper
        // than bouncing that cache line between cores (STACK.md pitfall 14).
        let local;
        let frame = if remote && subscribers.len() >= LOCAL_COPY_THRESHOLD {
            local = Bytes::copy_from_slice(frame);
            &local
        } else {
            frame
        };
        let limit = self.settings.max_outbox_bytes;
        let counters = self.counters.app(app as usize);
        // Deliveries are counted as they are written (Outbox::consume), so
        // a frame a slow consumer's close cuts off is never counted.
        for &key in subscribers {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            // The sender is told apart by its id, read only when there is
            // one to skip, rather than found through a map from ids to
            // keys, which cost every connection about 50 bytes.
            if exclude.is_some_and(|id| conn.session.socket_id == id) {
                continue;
            }
            match conn.outbox.push_unless_slow(frame.clone(), true, limit, &mut self.dirty) {
                Ok(past_limit) => self.behind |= past_limit,
                Err(_) => slow_consumer(&mut conn.outbox, &mut self.dirty, counters),
            }
        }
    }
}
