//! Where the cluster keeps its state in Redis: every key and channel name,
//! in one place.
//!
//! An app's keys share one hash tag, `{<app id>}`, so that on Redis Cluster
//! every script that decides something for the app (a channel's first
//! subscriber anywhere, a presence member's last connection) touches keys
//! of one slot, as Cluster requires. Event channels are tagged per channel
//! instead, `{<app id>:<channel>}`, so that sharded pub/sub spreads one
//! app's traffic over the cluster's shards. Channel names (spec §4) cannot
//! hold `{` or `}`, so a tag always ends where it should.
//!
//! | name | type | holds |
//! |---|---|---|
//! | `stapes:nodes` | sorted set | instance → last heartbeat (Redis's clock, ms) |
//! | `stapes:sweep:<instance>` | string | the node sweeping a dead one (a lock with a TTL) |
//! | `stapes:{A}:store-lease` | string | the node storing Redis-published cache events |
//! | `stapes:{A}:subs:<instance>` | hash | channel → the node's subscriptions |
//! | `stapes:{A}:total` | hash | channel → subscriptions in the cluster |
//! | `stapes:{A}:vacating` | hash | channel → token of a held `channel_vacated` |
//! | `stapes:{A}:members:<channel>` | hash | user id → `user_info` JSON |
//! | `stapes:{A}:holders:<channel>` | hash | user id → nodes holding the user |
//! | `stapes:{A}:presence:<instance>` | set | `<channel>\n<user>` the node holds |
//! | `stapes:{A}:leaving` | hash | `<channel>\n<user>` → token of a held `member_removed` |
//! | `stapes:{A}:online` | hash | user id → nodes where the user is signed in |
//! | `stapes:{A}:signed:<instance>` | set | user ids signed in on the node |
//! | `stapes:{A}:conns` | hash | instance → the node's connections of the app |
//! | `stapes:{A}:cache:<channel>` | string | `<seq> <frame>` of a cache channel, with its TTL |
//! | `stapes:{A}:seq` | hash | channel → last cache sequence number |
//! | `stapes:ev:{A:<channel>}` | channel | the channel's events between nodes |
//! | `stapes:ctl:{A}` | channel | the app's user events (terminate, online, offline) |

/// Every name starts with this.
pub const PREFIX: &str = "stapes";

/// The sorted set of live nodes and their last heartbeat.
pub fn nodes() -> String {
    format!("{PREFIX}:nodes")
}

/// A node's subscription counts per channel of `app`.
pub fn node_subs(app: &str, node: &str) -> String {
    format!("{PREFIX}:{{{app}}}:subs:{node}")
}

/// The cluster's subscription counts per channel of `app`.
pub fn totals(app: &str) -> String {
    format!("{PREFIX}:{{{app}}}:total")
}

/// The `channel_vacated` webhooks held back for `app`, by channel.
pub fn vacating(app: &str) -> String {
    format!("{PREFIX}:{{{app}}}:vacating")
}

/// A presence channel's members and their `user_info`.
pub fn members(app: &str, channel: &str) -> String {
    format!("{PREFIX}:{{{app}}}:members:{channel}")
}

/// The start of every [`members`] key of `app`: the scripts that count
/// users add the channel.
pub fn members_prefix(app: &str) -> String {
    format!("{PREFIX}:{{{app}}}:members:")
}

/// A presence channel's members and how many nodes hold each.
pub fn holders(app: &str, channel: &str) -> String {
    format!("{PREFIX}:{{{app}}}:holders:{channel}")
}

/// The presence memberships a node holds, as [`member_field`]s.
pub fn node_presence(app: &str, node: &str) -> String {
    format!("{PREFIX}:{{{app}}}:presence:{node}")
}

/// The `member_removed` webhooks held back for `app`, by [`member_field`].
pub fn leaving(app: &str) -> String {
    format!("{PREFIX}:{{{app}}}:leaving")
}

/// One presence membership as a set member or hash field.
pub fn member_field(channel: &str, user: &str) -> String {
    format!("{channel}\n{user}")
}

/// Signed-in users of `app` and how many nodes hold each.
pub fn online(app: &str) -> String {
    format!("{PREFIX}:{{{app}}}:online")
}

/// The users signed in on a node.
pub fn node_signed(app: &str, node: &str) -> String {
    format!("{PREFIX}:{{{app}}}:signed:{node}")
}

/// Each node's connection count of `app`, for the app's quota.
pub fn conns(app: &str) -> String {
    format!("{PREFIX}:{{{app}}}:conns")
}

/// A cache channel's last event.
pub fn cache(app: &str, channel: &str) -> String {
    format!("{PREFIX}:{{{app}}}:cache:{channel}")
}

/// The lease of the node that stores `app`'s Redis-published cache events
/// (in the app's slot, beside the keys the storing script writes).
pub fn store_lease(app: &str) -> String {
    format!("{PREFIX}:{{{app}}}:store-lease")
}

/// The lock a node takes to sweep a dead node out of the view.
pub fn sweep_lock(node: &str) -> String {
    format!("{PREFIX}:sweep:{node}")
}

/// The cache channels' sequence numbers of `app`.
pub fn cache_seq(app: &str) -> String {
    format!("{PREFIX}:{{{app}}}:seq")
}

/// The pub/sub channel carrying a channel's events between nodes.
pub fn event_channel(app: &str, channel: &str) -> String {
    format!("{PREFIX}:ev:{{{app}:{channel}}}")
}

/// The pub/sub channel carrying an app's user events.
pub fn control_channel(app: &str) -> String {
    format!("{PREFIX}:ctl:{{{app}}}")
}

/// The app and channel an event channel name carries, if it is one.
pub fn parse_event_channel(name: &str) -> Option<(&str, &str)> {
    let inner = name.strip_prefix(PREFIX)?.strip_prefix(":ev:{")?.strip_suffix('}')?;
    inner.split_once(':')
}

/// The app a control channel name carries, if it is one.
pub fn parse_control_channel(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.strip_prefix(":ctl:{")?.strip_suffix('}')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster's slot rule: the part between the first `{` and the
    /// next `}` when it is not empty, else the whole name.
    fn tag(name: &str) -> &str {
        match name.find('{') {
            Some(open) => match name[open + 1..].find('}') {
                Some(len) if len > 0 => &name[open + 1..open + 1 + len],
                _ => name,
            },
            None => name,
        }
    }

    #[test]
    fn an_apps_keys_share_a_slot_and_channels_spread() {
        let app_keys = [
            node_subs("7", "n1"),
            totals("7"),
            vacating("7"),
            members("7", "presence-x"),
            format!("{}presence-x", members_prefix("7")),
            holders("7", "presence-x"),
            node_presence("7", "n1"),
            leaving("7"),
            online("7"),
            node_signed("7", "n1"),
            conns("7"),
            cache("7", "cache-x"),
            cache_seq("7"),
            control_channel("7"),
        ];
        for key in &app_keys {
            assert_eq!(tag(key), "7", "{key}");
        }
        assert_eq!(tag(&event_channel("7", "news")), "7:news");
        assert_ne!(tag(&event_channel("7", "a")), tag(&event_channel("7", "b")));
    }

    #[test]
    fn channel_names_parse_back() {
        let name = event_channel("12", "private-x;y=z@a.b");
        assert_eq!(parse_event_channel(&name), Some(("12", "private-x;y=z@a.b")));
        assert_eq!(parse_event_channel("stapes:ev:{nope"), None);
        assert_eq!(parse_control_channel(&control_channel("3")), Some("3"));
        assert_eq!(parse_control_channel("other"), None);
    }
}
