//! Incus's Redis bookkeeping (spec §8.3), as commands: what the bridge
//! writes for each [`RedisUpdate`] a shard sent over its uplink ring.

use std::collections::HashMap;

use crate::{config::IncusConfig, core::ConnRef, proto::incus::RedisUpdate};

/// How often each shard reports the users connected to it, to be marked
/// online again.
pub const ONLINE_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a mark counts: three refreshes, so one slow round trip is
/// harmless, and a node that died stops counting within three minutes.
pub(crate) const ONLINE_TTL_SECS: u64 = 180;

/// The key that says on which instances `user` has a socket (or a
/// long-poll session): a sorted set of instance names scored with the time
/// of their last mark. stapes's own, beside Incus's keys: Incus's
/// `SocketClients` cannot tell when a user's last socket anywhere closed.
pub(crate) fn online_key(user: &str) -> String {
    format!("stapes:online:{user}")
}

/// Decrements a page's count and deletes it at zero, atomically, as Incus
/// does with two commands.
const PAGE_LEAVE: &str = "local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1) \
    if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end return n";

/// Turns the shards' [`RedisUpdate`]s into Incus's Redis commands (spec
/// §8.3), with two of Incus's bugs fixed: `SocketClients` loses a user only
/// when their last socket on this node closes (not on every close), and
/// `ClientPresence:<uid>` expires `presence_window` after the last
/// `setpresence true` (Incus passed an absolute time as a relative TTL).
/// Socket ids carry the instance name, so two nodes never share one.
pub(crate) struct IncusWriter {
    instance: String,
    presence_ttl: u64,
    /// Whether `stapes:online:<uid>` is kept (`pushormessage_connected`).
    mark_online: bool,
    sockets: HashMap<Box<str>, usize>,
}

impl IncusWriter {
    pub(crate) fn new(instance: String, incus: &IncusConfig) -> Self {
        Self {
            instance,
            presence_ttl: incus.presence_window.as_secs(),
            mark_online: incus.push.connected_is_active,
            sockets: HashMap::new(),
        }
    }

    /// The socket id written to Redis: unique across the nodes sharing it.
    fn sid(&self, conn: Option<ConnRef>) -> String {
        match conn {
            Some(c) => format!("{}:{}.{}.{}", self.instance, c.shard, c.key, c.generation),
            None => format!("{}:lp", self.instance),
        }
    }

    fn mark_online(&self, pipe: &mut redis::Pipeline, user: &str, now: u64) {
        let key = online_key(user);
        pipe.cmd("ZADD").arg(&key).arg(now).arg(&self.instance).ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(ONLINE_TTL_SECS).ignore();
    }

    /// Removes this instance's online marks for every user it counts, for
    /// a node that is stopping: its sockets close after the bridge is gone.
    pub(crate) fn forget_online(&self, pipe: &mut redis::Pipeline) {
        if !self.mark_online {
            return;
        }
        for user in self.sockets.keys() {
            pipe.cmd("ZREM").arg(online_key(user)).arg(&self.instance).ignore();
        }
    }

    /// Adds the commands for `update` to `pipe`.
    pub(crate) fn add(
        &mut self,
        pipe: &mut redis::Pipeline,
        update: RedisUpdate,
        channel: &str,
        now: u64,
    ) {
        match update {
            RedisUpdate::ClientMessage(message) => {
                pipe.cmd("PUBLISH").arg(channel).arg(message.encode()).ignore();
            }
            RedisUpdate::SocketOpen { user } => {
                pipe.cmd("SADD").arg("SocketClients").arg(&*user).ignore();
                let count = self.sockets.entry(user.clone()).or_default();
                *count += 1;
                if *count == 1 && self.mark_online {
                    self.mark_online(pipe, &user, now);
                }
            }
            RedisUpdate::SocketClose { user, conn, page } => {
                if let Some(page) = page {
                    pipe.cmd("EVAL").arg(PAGE_LEAVE).arg(1).arg("PageClients").arg(&*page).ignore();
                }
                let sid = self.sid(conn);
                pipe.cmd("ZREM").arg(format!("ClientPresence:{user}")).arg(sid).ignore();
                let left = self.sockets.get_mut(&user).map(|n| {
                    *n = n.saturating_sub(1);
                    *n
                });
                if left == Some(0) {
                    self.sockets.remove(&user);
                    pipe.cmd("SREM").arg("SocketClients").arg(&*user).ignore();
                    if self.mark_online {
                        pipe.cmd("ZREM").arg(online_key(&user)).arg(&self.instance).ignore();
                    }
                }
            }
            RedisUpdate::Online(users) => {
                if self.mark_online {
                    for user in users {
                        self.mark_online(pipe, &user, now);
                    }
                }
            }
            RedisUpdate::Page { old, new } => {
                if let Some(old) = old {
                    pipe.cmd("EVAL").arg(PAGE_LEAVE).arg(1).arg("PageClients").arg(&*old).ignore();
                }
                pipe.cmd("HINCRBY").arg("PageClients").arg(&*new).arg(1).ignore();
            }
            RedisUpdate::Presence { user, conn, active } => {
                let key = format!("ClientPresence:{user}");
                let sid = self.sid(conn);
                if active {
                    pipe.cmd("ZADD").arg(&key).arg(now).arg(sid).ignore();
                    pipe.cmd("EXPIRE").arg(&key).arg(self.presence_ttl).ignore();
                } else {
                    pipe.cmd("ZREM").arg(&key).arg(sid).ignore();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::incus::command::ClientMessage;

    fn commands(pipe: &redis::Pipeline) -> Vec<String> {
        pipe.cmd_iter()
            .map(|cmd| {
                let args: Vec<String> = cmd
                    .args_iter()
                    .map(|arg| match arg {
                        redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                        _ => "<other>".to_owned(),
                    })
                    .collect();
                args.join(" ")
            })
            .collect()
    }

    #[test]
    fn incus_keys_with_the_bugs_fixed() {
        let incus = IncusConfig {
            presence_window: Duration::from_secs(60),
            push: crate::config::PushConfig { connected_is_active: true, ..Default::default() },
            ..IncusConfig::default()
        };
        let mut writer = IncusWriter::new("node-a".into(), &incus);
        let conn = |key| Some(ConnRef { shard: 1, key, generation: 3 });
        let updates = [
            RedisUpdate::SocketOpen { user: "u".into() },
            RedisUpdate::SocketOpen { user: "u".into() },
            RedisUpdate::Page { old: None, new: "/p".into() },
            RedisUpdate::Presence { user: "u".into(), conn: conn(4), active: true },
            RedisUpdate::SocketClose { user: "u".into(), conn: conn(4), page: Some("/p".into()) },
            RedisUpdate::Presence { user: "u".into(), conn: None, active: false },
            RedisUpdate::SocketClose { user: "u".into(), conn: conn(5), page: None },
            RedisUpdate::ClientMessage(ClientMessage {
                user: None,
                page: None,
                message: simd_json::json!({"event": "e", "data": {}}),
            }),
        ];
        let mut pipe = redis::pipe();
        for update in updates {
            writer.add(&mut pipe, update, "Incus", 1000);
        }
        let got = commands(&pipe);
        let page_leave = format!("EVAL {PAGE_LEAVE} 1 PageClients /p");
        assert_eq!(
            got,
            [
                "SADD SocketClients u",
                "ZADD stapes:online:u 1000 node-a",
                "EXPIRE stapes:online:u 180",
                "SADD SocketClients u",
                "HINCRBY PageClients /p 1",
                "ZADD ClientPresence:u 1000 node-a:1.4.3",
                // A relative TTL of the window, not Incus's absolute time.
                "EXPIRE ClientPresence:u 60",
                page_leave.as_str(),
                "ZREM ClientPresence:u node-a:1.4.3",
                // The user still has a socket: no SREM yet (Incus bug §13.6).
                "ZREM ClientPresence:u node-a:lp",
                "ZREM ClientPresence:u node-a:1.5.3",
                "SREM SocketClients u",
                "ZREM stapes:online:u node-a",
                r#"PUBLISH Incus {"command":{"command":"message"},"message":{"data":{},"event":"e"},"origin":"client"}"#,
            ]
        );
        // The shards' reports mark users again; a stopping node removes its marks.
        let mut pipe = redis::pipe();
        writer.add(&mut pipe, RedisUpdate::SocketOpen { user: "v".into() }, "Incus", 1000);
        let mut pipe = redis::pipe();
        let online = RedisUpdate::Online(vec!["v".into(), "w".into()]);
        writer.add(&mut pipe, online, "Incus", 1060);
        writer.forget_online(&mut pipe);
        assert_eq!(
            commands(&pipe),
            [
                "ZADD stapes:online:v 1060 node-a",
                "EXPIRE stapes:online:v 180",
                "ZADD stapes:online:w 1060 node-a",
                "EXPIRE stapes:online:w 180",
                "ZREM stapes:online:v node-a",
            ]
        );
        // Without pushormessage_connected, no online marks at all.
        let off = IncusConfig {
            push: crate::config::PushConfig { connected_is_active: false, ..Default::default() },
            ..IncusConfig::default()
        };
        let mut writer = IncusWriter::new("node-a".into(), &off);
        let mut pipe = redis::pipe();
        writer.add(&mut pipe, RedisUpdate::SocketOpen { user: "u".into() }, "Incus", 1);
        writer.add(&mut pipe, RedisUpdate::Online(vec!["u".into()]), "Incus", 1);
        writer.add(
            &mut pipe,
            RedisUpdate::SocketClose { user: "u".into(), conn: None, page: None },
            "Incus",
            1,
        );
        assert!(
            commands(&pipe).iter().all(|c| !c.contains("stapes:online")),
            "{:?}",
            commands(&pipe)
        );
    }
}
