//! Webhook events (spec §13) decided by the shards, with the fake clock:
//! node-wide occupancy and members on the owner, the delay before
//! `channel_vacated`/`member_removed` and its cancellation, filters.

use super::*;
use crate::core::{HookKind, WebhookConfig};

const DELAY: u64 = 3;
const OCCUPANCY: [HookKind; 2] = [HookKind::ChannelOccupied, HookKind::ChannelVacated];

pub(super) fn hooked_app(kinds: &[HookKind]) -> AppConfig {
    let mut app = AppConfig::new("1", KEY, SECRET);
    app.client_events = true;
    app.webhook_delay = Duration::from_secs(DELAY);
    app.webhooks = vec![WebhookConfig {
        url: "http://127.0.0.1:9/hooks".into(),
        event_types: kinds.iter().copied().collect(),
    }];
    app
}

fn hooked_node(n: usize, kinds: &[HookKind]) -> Node {
    let mut node = node_with(n, hooked_app(kinds));
    // The runtime tells every shard the time before it handles mesh
    // messages; ticking at 0 does the same for the simulated node.
    node.tick(0);
    node
}

impl Node {
    /// Every shard's webhook events, each with the shard that raised it.
    fn hooks(&mut self) -> Vec<(usize, ShardEvent)> {
        let mut out = Vec::new();
        for shard in &mut self.shards {
            let id = shard.id();
            shard.drain_events(|e| out.push((id, e)));
        }
        out
    }

    /// The event names only.
    fn hook_names(&mut self) -> Vec<&'static str> {
        self.hooks().into_iter().map(|(_, e)| e.kind().name()).collect()
    }

    /// Sets every shard's clock (as the runtime does per mesh batch), then
    /// sends `msg` from `c`.
    fn send_at_secs(&mut self, c: C, msg: Value, secs: u64) {
        let now = self.at(secs);
        for shard in &mut self.shards {
            shard.set_now(now);
        }
        self.send_at(c, msg, now);
    }

    fn unsubscribe_at(&mut self, c: C, channel: &str, secs: u64) {
        self.send_at_secs(
            c,
            json!({"event":"pusher:unsubscribe","data":{"channel":channel}}),
            secs,
        );
    }

    fn subscribe_at_secs(&mut self, c: C, channel: &str, secs: u64) {
        self.send_at_secs(c, json!({"event":"pusher:subscribe","data":{"channel":channel}}), secs);
        self.take(c);
    }
}

fn occupancy(channel: &str) -> [ShardEvent; 2] {
    [
        ShardEvent::ChannelOccupied { app: 0, channel: channel.into() },
        ShardEvent::ChannelVacated { app: 0, channel: channel.into() },
    ]
}

#[test]
fn a_channel_on_several_shards_is_occupied_and_vacated_once_by_its_owner() {
    let mut node = hooked_node(3, &OCCUPANCY);
    let ch = owned_by(0, 3, "room-");
    let (a, b) = (node.open(1), node.open(2));
    node.subscribe_at_secs(a, &ch, 0);
    node.subscribe_at_secs(b, &ch, 0);
    let [occupied, vacated] = occupancy(&ch);
    assert_eq!(node.hooks(), [(0, occupied)], "one occupied, from the owner");
    node.unsubscribe_at(a, &ch, 1);
    node.shards[2].remove(b.key);
    node.pump();
    node.tick(1);
    assert!(node.hooks().is_empty());
    node.tick(3);
    assert!(node.hooks().is_empty(), "held for the delay, counted from the last leave");
    node.tick(4);
    assert_eq!(node.hooks(), [(0, vacated)]);
    node.tick(60);
    assert!(node.hooks().is_empty(), "exactly once");
}

#[test]
fn a_channel_that_comes_back_within_the_delay_is_neither_vacated_nor_occupied_again() {
    let mut node = hooked_node(2, &OCCUPANCY);
    let ch = owned_by(1, 2, "room-");
    let (a, b) = (node.open(0), node.open(1));
    node.subscribe_at_secs(a, &ch, 0);
    assert_eq!(node.hook_names(), ["channel_occupied"]);
    node.unsubscribe_at(a, &ch, 1);
    node.tick(2);
    // Back two seconds later, from the other shard.
    node.subscribe_at_secs(b, &ch, 3);
    node.tick(10);
    assert!(node.hooks().is_empty(), "the vacate was dropped, no second occupied");
    node.unsubscribe_at(b, &ch, 20);
    node.tick(22);
    assert!(node.hooks().is_empty());
    node.tick(23);
    assert_eq!(node.hook_names(), ["channel_vacated"]);
    // After a vacate went out, a new subscriber occupies the channel again.
    node.subscribe_at_secs(a, &ch, 30);
    assert_eq!(node.hook_names(), ["channel_occupied"]);
}

#[test]
fn members_are_added_once_per_user_and_removed_after_the_delay_unless_they_return() {
    let mut node = hooked_node(3, &[HookKind::MemberAdded, HookKind::MemberRemoved]);
    let ch = owned_by(2, 3, "presence-");
    let (tab1, tab2) = (node.open(0), node.open(1));
    node.join(tab1, &ch, "u1");
    node.join(tab2, &ch, "u1");
    let added =
        ShardEvent::MemberAdded { app: 0, channel: ch.as_str().into(), user_id: "u1".into() };
    let removed =
        ShardEvent::MemberRemoved { app: 0, channel: ch.as_str().into(), user_id: "u1".into() };
    assert_eq!(node.hooks(), [(2, added)], "two tabs, one member");
    node.unsubscribe_at(tab1, &ch, 1);
    node.tick(10);
    assert!(node.hooks().is_empty(), "the user still has a connection");
    // The last tab reloads: leaves at 11 and is back at 12.
    node.unsubscribe_at(tab2, &ch, 11);
    node.tick(12);
    let msg = {
        let data = json!({"user_id": "u1", "user_info": {"name": "u1"}}).to_string();
        let auth = sign(&format!("{}:{ch}:{data}", node.socket_id(tab2)));
        json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":auth,"channel_data":data}})
    };
    node.send_at_secs(tab2, msg, 12);
    node.tick(20);
    assert!(node.hooks().is_empty(), "a reload is neither a leave nor a join");
    node.shards[1].remove(tab2.key);
    node.set_clock(21);
    node.pump();
    node.tick(23);
    assert!(node.hooks().is_empty());
    node.tick(24);
    assert_eq!(node.hooks(), [(2, removed)]);
}

#[test]
fn presence_channels_are_occupied_and_vacated_too_but_never_counted() {
    let mut node = hooked_node(2, &HookKind::ALL);
    let ch = owned_by(0, 2, "presence-");
    let a = node.open(1);
    node.join(a, &ch, "u1");
    assert_eq!(node.hook_names(), ["member_added", "channel_occupied"]);
    node.shards[1].remove(a.key);
    node.set_clock(5);
    node.pump();
    node.tick(8);
    assert_eq!(node.hook_names(), ["channel_vacated", "member_removed"]);
}

#[test]
fn subscription_counts_reach_the_webhook_for_ordinary_channels() {
    let mut node = hooked_node(2, &[HookKind::SubscriptionCount]);
    let ch = owned_by(1, 2, "news-");
    let (a, b) = (node.open(0), node.open(1));
    node.subscribe_at_secs(a, &ch, 0);
    node.subscribe_at_secs(b, &ch, 0);
    node.unsubscribe_at(a, &ch, 1);
    let counts: Vec<usize> = node
        .hooks()
        .into_iter()
        .map(|(shard, e)| match e {
            ShardEvent::SubscriptionCount { count, .. } if shard == 1 => count,
            other => panic!("unexpected {other:?} from shard {shard}"),
        })
        .collect();
    assert_eq!(counts, [1, 2, 1]);
    // The app did not turn on subscription_count for clients.
    assert!(node.take(b).is_empty());
}

#[test]
fn client_events_are_reported_by_the_senders_shard() {
    let mut node = hooked_node(2, &[HookKind::ClientEvent]);
    let ch = owned_by(0, 2, "presence-");
    let (a, b) = (node.open(1), node.open(0));
    node.join(a, &ch, "u1");
    node.join(b, &ch, "u2");
    let sender = node.socket_id(a).parse().expect("socket id");
    node.send(a, json!({"event":"client-typing","channel":ch,"data":{"on":true}}));
    assert_eq!(
        node.hooks(),
        [(
            1,
            ShardEvent::ClientEvent {
                app: 0,
                channel: ch.as_str().into(),
                event: "client-typing".into(),
                data: r#"{"on":true}"#.into(),
                socket_id: sender,
                user_id: Some("u1".into()),
            }
        )]
    );
}

#[test]
fn filters_decide_what_is_raised_and_apps_without_webhooks_raise_nothing() {
    // Only vacates wanted: no occupied, but a quick return still cancels.
    let mut node = hooked_node(2, &[HookKind::ChannelVacated]);
    let ch = owned_by(0, 2, "room-");
    let a = node.open(1);
    node.subscribe_at_secs(a, &ch, 0);
    node.unsubscribe_at(a, &ch, 1);
    node.subscribe_at_secs(a, &ch, 2);
    node.unsubscribe_at(a, &ch, 3);
    node.tick(6);
    assert_eq!(node.hook_names(), ["channel_vacated"]);

    let mut plain = node_with(2, {
        let mut app = AppConfig::new("1", KEY, SECRET);
        app.client_events = true;
        app
    });
    plain.tick(0);
    let (a, b) = (plain.open(0), plain.open(1));
    plain.subscribe(a, "private-x");
    plain.subscribe(b, "private-x");
    plain.subscribe(b, "cache-y");
    plain.send(a, json!({"event":"client-x","channel":"private-x","data":"{}"}));
    plain.unsubscribe_at(a, "private-x", 1);
    plain.unsubscribe_at(b, "private-x", 1);
    plain.tick(10);
    assert!(plain.hooks().is_empty());
}

#[test]
fn simultaneous_cache_misses_make_one_webhook() {
    let mut node = hooked_node(2, &[HookKind::CacheMiss]);
    let ch = owned_by(0, 2, "cache-");
    let (a, b) = (node.open(1), node.open(1));
    // Both subscriptions reach the owner in one batch.
    for c in [a, b] {
        let msg = json!({"event":"pusher:subscribe","data":{"channel":ch}});
        node.shards[1].handle_text(c.key, msg.to_string().as_bytes(), node.t0);
    }
    node.pump();
    assert_eq!(node.hooks(), [(0, ShardEvent::CacheMiss { app: 0, channel: ch.as_str().into() })]);
    let c = node.open(0);
    node.subscribe(c, &ch);
    assert_eq!(node.hook_names(), ["cache_miss"], "a later subscriber misses again");
}

impl Node {
    fn set_clock(&mut self, secs: u64) {
        let now = self.at(secs);
        for shard in &mut self.shards {
            shard.set_now(now);
        }
    }
}
