//! The shard in a cluster (`Settings::cluster`): what it hands the cluster
//! side, and what it waits for before it answers a client.

use super::*;
use crate::proto::{
    cluster::{ClusterQuery, ClusterUp},
    msg::JoinOutcome,
};

fn cluster_node(n: usize) -> Node {
    let mut node = node(n);
    for shard in &mut node.shards {
        shard.settings.cluster = true;
    }
    node
}

impl Node {
    /// Everything the shards handed to the cluster side, with the shard.
    fn ups(&mut self) -> Vec<(usize, ClusterUp)> {
        let mut out = Vec::new();
        for shard in &mut self.shards {
            let id = shard.id();
            shard.drain_cluster_out(|up| out.push((id, up)));
        }
        out
    }
}

#[test]
fn a_subscription_completes_only_once_the_cluster_has_it() {
    let mut node = cluster_node(2);
    let c = node.open(1);
    assert_eq!(node.subscribe(c, "news"), Vec::<Value>::new(), "nothing before the cluster");
    let ups = node.ups();
    let [(1, ClusterUp::Sub { app: 0, channel, delta: 1, conn: Some(conn), .. })] = &ups[..] else {
        panic!("one subscription update with the waiting connection: {ups:?}");
    };
    assert_eq!(&**channel, "news");
    // The cluster side's answer: now the client is in, and gets events.
    node.shards[1].handle_mesh(ShardMsg::SubReady { app: 0, channel: "news".into(), conn: *conn });
    let got = node.take(c);
    assert_eq!(got[0]["event"], "pusher_internal:subscription_succeeded", "{got:?}");
    let frame = messages::channel_event("e", "news", "x");
    node.shards[1].handle_mesh(ShardMsg::Deliver {
        app: 0,
        channel: "news".into(),
        frame,
        exclude: None,
    });
    assert_eq!(node.take(c)[0]["data"], "x");
}

#[test]
fn a_publish_is_served_locally_and_handed_on_once() {
    let mut node = cluster_node(2);
    let subs = [node.open(0), node.open(1)];
    for c in subs {
        node.subscribe(c, "news");
    }
    for (shard, up) in node.ups() {
        if let ClusterUp::Sub { channel, conn: Some(conn), .. } = up {
            node.shards[shard].handle_mesh(ShardMsg::SubReady { app: 0, channel, conn });
        }
    }
    node.pump();
    for c in subs {
        node.take(c);
    }
    let now = node.at(1);
    node.shards[0].publish(0, "news", "e", "hello", None, now);
    node.pump();
    // Both local shards have it without a round trip through Redis.
    for c in subs {
        assert_eq!(node.take(c)[0]["data"], "hello");
    }
    // One update for the other nodes, whatever the number of subscribers.
    let ups = node.ups();
    assert!(
        matches!(&ups[..], [(0, ClusterUp::Publish { channel, exclude: None, .. })] if &**channel == "news"),
        "{ups:?}"
    );
}

#[test]
fn an_http_publish_waits_for_its_events_to_be_sent() {
    let mut node = cluster_node(1);
    let id = node.shards[0].start_sent(0).expect("a cluster waits");
    let ups = node.ups();
    assert!(
        matches!(&ups[..], [(0, ClusterUp::Query { id: asked, query: ClusterQuery::Sent, .. })] if *asked == id),
        "{ups:?}"
    );
    assert!(!node.shards[0].is_answered(id));
    node.shards[0].handle_mesh(ShardMsg::QueryReply { id, counts: Vec::new() });
    assert!(node.shards[0].is_answered(id));
    // Alone, nothing to wait for.
    assert_eq!(super::node(1).shards[0].start_sent(0), None);
}

#[test]
fn a_presence_join_is_decided_by_the_cluster() {
    let mut node = cluster_node(2);
    let c = node.open(0);
    assert_eq!(node.join(c, "presence-room", "u1"), Vec::<Value>::new());
    let ups = node.ups();
    let join = ups.iter().find_map(|(_, up)| match up {
        ClusterUp::Join { channel, user_id, conn, again: false, .. } => {
            Some((channel.clone(), user_id.clone(), *conn))
        }
        _ => None,
    });
    let Some((channel, user, conn)) = join else { panic!("a join for the cluster: {ups:?}") };
    assert_eq!((&*channel, &*user), ("presence-room", "u1"));
    let frame = messages::presence_subscription_succeeded(&channel, "{}");
    let outcome = JoinOutcome::Joined(frame);
    node.shards[0].handle_mesh(ShardMsg::PresenceJoined { app: 0, channel, conn, outcome });
    let got = node.take(c);
    assert_eq!(got[0]["event"], "pusher_internal:subscription_succeeded", "{got:?}");
}

/// In a cluster the answer to a watcher's "who is online now" and a
/// user's transition travel apart: both may say a user came online. The
/// watcher hears each change once (tests/cluster.rs saw "online" twice).
#[test]
fn a_watcher_hears_each_change_once_whichever_way_it_came() {
    let mut node = cluster_node(2);
    let watcher = node.open(0);
    let got = node.signin(watcher, r#"{"id":"w","watchlist":["u2","u3"]}"#);
    assert_eq!(events(&got), ["pusher:signin_success"], "the cluster answers who is online");
    let watcher_ref = node
        .ups()
        .into_iter()
        .find_map(|(_, up)| match up {
            ClusterUp::Watch { watcher, .. } => Some(watcher),
            _ => None,
        })
        .expect("the watch went to the cluster side");
    // u2's transition arrives first, at its owner shard ...
    for shard in 0..2 {
        node.shards[shard].handle_mesh(ShardMsg::ClusterUser {
            app: 0,
            user_id: "u2".into(),
            online: true,
        });
    }
    node.pump();
    let got = node.take(watcher);
    assert_eq!(data_of(&got[0]), json!({"events":[{"name":"online","user_ids":["u2"]}]}));
    // ... then the cluster's answer, read after it, names u2 (and u3) online.
    let answer = ShardMsg::Watchlist {
        watcher: watcher_ref,
        online: true,
        user_ids: vec!["u2".into(), "u3".into()],
    };
    node.shards[watcher.shard].handle_mesh(answer);
    let got = node.take(watcher);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(data_of(&got[0]), json!({"events":[{"name":"online","user_ids":["u3"]}]}));
    // Offline once, and an offline for a user never said online is not sent.
    for user_id in ["u2", "u2", "nobody"] {
        let msg = ShardMsg::Watchlist {
            watcher: watcher_ref,
            online: false,
            user_ids: vec![user_id.into()],
        };
        node.shards[watcher.shard].handle_mesh(msg);
    }
    let got = node.take(watcher);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(data_of(&got[0]), json!({"events":[{"name":"offline","user_ids":["u2"]}]}));
}
