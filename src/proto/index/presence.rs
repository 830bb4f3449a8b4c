//! Presence rosters, kept by each channel's owner shard.
//!
//! Every join and leave of a presence channel, from any shard, goes to the
//! channel's owner ([`owner_shard`]) over the rings. The owner is therefore
//! the single place that knows the node-wide member set, and because each
//! ring is FIFO, the member list it sends to a joining connection and the
//! `member_added`/`member_removed` events it sends afterwards reach every
//! shard in the order the owner decided them.
//!
//! A member is a user id; one user may be present through several
//! connections (browser tabs, shards). `member_added` is due only for the
//! first connection and `member_removed` only for the last (spec §6).

use std::collections::HashMap;

use indexmap::IndexMap;

use crate::core::{AppIdx, ConnRef, json::push_json_str};

/// Which shard owns `channel` of `app`, so every shard computes the same
/// answer without talking.
pub fn owner_shard(app: AppIdx, channel: &str, shards: usize) -> usize {
    (channel_hash(app, channel) % shards.max(1) as u64) as usize
}

/// FNV-1a over the app and the channel name: the same on every shard and
/// in every run.
pub fn channel_hash(app: AppIdx, channel: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in app.to_le_bytes().iter().chain(channel.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The outcome of a join.
#[derive(Debug, PartialEq, Eq)]
pub enum Join {
    /// The user was not present before: announce `member_added`.
    Added,
    /// Another connection of the same user is present: announce nothing.
    AlreadyPresent,
    /// The channel has `max_members` users and this is a new one.
    Full,
}

#[derive(Debug)]
struct Member {
    /// Compact JSON from the first connection's `channel_data`.
    info: Option<Box<str>>,
    /// The connections through which the user is present. Tracking them,
    /// not just counting, makes a repeated join or a stray leave harmless.
    connections: Vec<ConnRef>,
}

/// The rosters of the presence channels this shard owns.
#[derive(Debug, Default)]
pub struct PresenceRosters {
    channels: HashMap<(AppIdx, Box<str>), IndexMap<Box<str>, Member>>,
}

impl PresenceRosters {
    /// Records that `conn` is present in the channel as `user_id`.
    pub fn join(
        &mut self,
        app: AppIdx,
        channel: &str,
        user_id: &str,
        info: Option<Box<str>>,
        conn: ConnRef,
        max_members: usize,
    ) -> Join {
        let roster = self.channels.entry((app, channel.into())).or_default();
        if let Some(member) = roster.get_mut(user_id) {
            if !member.connections.contains(&conn) {
                member.connections.push(conn);
            }
            return Join::AlreadyPresent;
        }
        if roster.len() >= max_members {
            if roster.is_empty() {
                self.channels.remove(&(app, channel.into()));
            }
            return Join::Full;
        }
        roster.insert(user_id.into(), Member { info, connections: vec![conn] });
        Join::Added
    }

    /// Records that `conn` left. Returns true when it was the user's last
    /// connection, so `member_removed` is due. A connection that never joined
    /// (its join found the channel full) changes nothing.
    pub fn leave(&mut self, app: AppIdx, channel: &str, user_id: &str, conn: ConnRef) -> bool {
        let key = (app, Box::<str>::from(channel));
        let Some(roster) = self.channels.get_mut(&key) else { return false };
        let Some(member) = roster.get_mut(user_id) else { return false };
        let Some(at) = member.connections.iter().position(|c| *c == conn) else { return false };
        member.connections.swap_remove(at);
        if !member.connections.is_empty() {
            return false;
        }
        roster.swap_remove(user_id);
        if roster.is_empty() {
            self.channels.remove(&key);
        }
        true
    }

    /// Unique users present in the channel.
    pub fn user_count(&self, app: AppIdx, channel: &str) -> usize {
        self.channels.get(&(app, channel.into())).map_or(0, IndexMap::len)
    }

    /// The presence channels of `app` this shard owns, with their user counts.
    pub fn channels_of(&self, app: AppIdx) -> impl Iterator<Item = (&str, usize)> {
        self.channels
            .iter()
            .filter(move |((a, _), _)| *a == app)
            .map(|((_, name), roster)| (&**name, roster.len()))
    }

    /// The unique user ids present in the channel, in order of arrival.
    pub fn user_ids(&self, app: AppIdx, channel: &str) -> Vec<Box<str>> {
        self.channels
            .get(&(app, channel.into()))
            .map_or_else(Vec::new, |roster| roster.keys().cloned().collect())
    }

    /// The `{"ids":[…],"hash":{…},"count":n}` object of `subscription_succeeded`.
    pub fn snapshot_json(&self, app: AppIdx, channel: &str) -> String {
        let roster = self.channels.get(&(app, channel.into()));
        snapshot_json_of(
            roster.into_iter().flatten().map(|(id, member)| (&**id, member.info.as_deref())),
        )
    }
}

/// The `presence` object of `subscription_succeeded` (spec §6.1) for these
/// members and their `user_info` JSON, in order: `{"ids":[…],"hash":{…},
/// "count":n}`; a member without `user_info` gets `{}`.
pub fn snapshot_json_of<'a>(
    members: impl Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
) -> String {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"ids\":[");
    let mut count = 0;
    for (i, (id, _)) in members.clone().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, id);
        count += 1;
    }
    out.extend_from_slice(b"],\"hash\":{");
    for (i, (id, info)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, id);
        out.push(b':');
        out.extend_from_slice(info.unwrap_or("{}").as_bytes());
    }
    out.extend_from_slice(b"},\"count\":");
    out.extend_from_slice(count.to_string().as_bytes());
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(shard: u16, key: u32) -> ConnRef {
        ConnRef { shard, key, generation: 1 }
    }

    #[test]
    fn one_member_per_user_across_connections() {
        let mut r = PresenceRosters::default();
        let (a, b, c) = (conn(0, 1), conn(1, 1), conn(1, 2));
        assert_eq!(r.join(0, "presence-a", "u1", Some("{\"n\":1}".into()), a, 100), Join::Added);
        assert_eq!(r.join(0, "presence-a", "u1", None, b, 100), Join::AlreadyPresent);
        assert_eq!(r.join(0, "presence-a", "u1", None, b, 100), Join::AlreadyPresent);
        assert_eq!(r.join(0, "presence-a", "u2", None, c, 100), Join::Added);
        assert_eq!(r.user_count(0, "presence-a"), 2);
        let snap: serde_json::Value =
            serde_json::from_str(&r.snapshot_json(0, "presence-a")).expect("json");
        assert_eq!(snap["ids"], serde_json::json!(["u1", "u2"]));
        assert_eq!(snap["hash"]["u1"]["n"], 1);
        assert_eq!(snap["hash"]["u2"], serde_json::json!({}));
        assert_eq!(snap["count"], 2);
        assert!(!r.leave(0, "presence-a", "u1", a), "u1 still has a connection");
        assert!(!r.leave(0, "presence-a", "u1", a), "a stray leave changes nothing");
        assert!(r.leave(0, "presence-a", "u1", b));
        assert!(r.leave(0, "presence-a", "u2", c));
        assert_eq!(r.user_count(0, "presence-a"), 0);
        assert!(!r.leave(0, "presence-a", "u2", c), "leaving twice is harmless");
    }

    #[test]
    fn member_limit_counts_users_not_connections() {
        let mut r = PresenceRosters::default();
        assert_eq!(r.join(0, "presence-b", "u1", None, conn(0, 1), 1), Join::Added);
        assert_eq!(r.join(0, "presence-b", "u1", None, conn(0, 2), 1), Join::AlreadyPresent);
        assert_eq!(r.join(0, "presence-b", "u2", None, conn(0, 3), 1), Join::Full);
        assert!(!r.leave(0, "presence-b", "u2", conn(0, 3)), "the refused join left no trace");
        assert_eq!(r.user_count(0, "presence-b"), 1);
    }

    #[test]
    fn empty_snapshot_is_well_formed() {
        let r = PresenceRosters::default();
        assert_eq!(r.snapshot_json(0, "presence-x"), "{\"ids\":[],\"hash\":{},\"count\":0}");
    }

    #[test]
    fn owner_is_stable_and_spread() {
        let owners: Vec<usize> =
            (0..100).map(|i| owner_shard(0, &format!("presence-{i}"), 4)).collect();
        assert_eq!(
            owners,
            (0..100).map(|i| owner_shard(0, &format!("presence-{i}"), 4)).collect::<Vec<_>>()
        );
        for shard in 0..4 {
            assert!(owners.contains(&shard));
        }
    }
}
