//! The app model: one Pusher app's settings ([`AppConfig`]), the webhook
//! event kinds it may ask for ([`HookKind`]), and every configured app
//! looked up by key (WebSocket path) or id (HTTP API) ([`Apps`]). Built once
//! at start-up and shared read-only by every shard.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use super::AppIdx;

/// Every app of this instance.
#[derive(Debug, Default)]
pub struct Apps {
    list: Vec<Arc<AppConfig>>,
    by_key: HashMap<String, AppIdx>,
    by_id: HashMap<String, AppIdx>,
}

impl Apps {
    /// Indexes the apps; keys and ids are unique after config validation.
    pub fn new(list: Vec<Arc<AppConfig>>) -> Self {
        let by_key = list.iter().enumerate().map(|(i, a)| (a.key.clone(), i as AppIdx)).collect();
        let by_id = list.iter().enumerate().map(|(i, a)| (a.id.clone(), i as AppIdx)).collect();
        Self { list, by_key, by_id }
    }

    /// The app with this public key.
    pub fn by_key(&self, key: &str) -> Option<AppIdx> {
        self.by_key.get(key).copied()
    }

    /// The app with this id.
    pub fn by_id(&self, id: &str) -> Option<AppIdx> {
        self.by_id.get(id).copied()
    }

    /// The app at `idx`.
    ///
    /// # Panics
    /// If `idx` did not come from this registry.
    pub fn get(&self, idx: AppIdx) -> &Arc<AppConfig> {
        &self.list[idx as usize]
    }

    /// Number of apps.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when there is no app (never, after validation).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// One Pusher app (`apps:` in `config.yml`).
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// App id as used in `/apps/{id}/…`; digits only (the Python SDK insists).
    pub id: String,
    /// Public key, used in `/app/{key}` and `auth_key`.
    pub key: String,
    /// Secret for HMAC signatures.
    pub secret: String,
    /// A disabled app refuses WebSockets (4003) and HTTP calls (403). Default true.
    pub enabled: bool,
    /// Whether `client-` events are relayed. Default false.
    pub client_events: bool,
    /// Refuse plain (non-TLS) WebSockets with 4000. Default false.
    pub only_ssl: bool,
    /// Connection quota for this app across the node; `None` = unlimited.
    /// Beyond it new connections get 4004.
    pub max_connections: Option<usize>,
    /// Largest event `data`, for the HTTP API and client events. Default 10240 B.
    pub max_event_bytes: usize,
    /// Members (unique users) per presence channel. Default 100.
    pub max_presence_members: usize,
    /// Largest presence `user_info`, serialised. Default 1024 B.
    pub max_presence_user_info_bytes: usize,
    /// Longest presence user id, in characters. Default 128.
    pub max_presence_user_id_chars: usize,
    /// Client events a connection may send per second. Default 10.
    pub client_event_rate: u32,
    /// Longest channel name, in characters. Default 200.
    pub max_channel_name_chars: usize,
    /// Longest event name, in characters. Default 200.
    pub max_event_name_chars: usize,
    /// Send `pusher_internal:subscription_count` to the subscribers of
    /// non-presence channels when their node-wide count changes (spec §11).
    /// Default false, as in Pusher, where it is opt-in per app.
    pub subscription_count: bool,
    /// How long the last API-published event of a cache channel is kept
    /// (spec §8). Default 30 minutes, Pusher's documented maximum.
    pub cache_ttl: Duration,
    /// Close a connection that has not signed in within this time with 4009
    /// (spec §10.4, "authorized connections"). `None` (the default) = off.
    pub authorized_timeout: Option<Duration>,
    /// Where this app's webhooks go (spec §13); empty (the default) = none.
    pub webhooks: Vec<WebhookConfig>,
    /// How long `channel_vacated` and `member_removed` are held back, and
    /// dropped if the channel or member comes back meanwhile. Default 3 s.
    pub webhook_delay: Duration,
    /// Longest an event waits for others to share its POST; zero (the
    /// default) sends one event per request, as Pusher does unless asked.
    pub webhook_batch: Duration,
    /// Most events in one POST when batching. Default 50.
    pub webhook_batch_max: usize,
}

/// One webhook receiver of an app (`apps[].webhooks[]` in `config.yml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `http://host[:port]/path`, POSTed to.
    pub url: String,
    /// The event types this URL receives. Default: all of them.
    pub event_types: HookKinds,
}

impl AppConfig {
    /// Every event type some webhook of this app wants; the shards raise
    /// no other.
    pub fn webhook_kinds(&self) -> HookKinds {
        self.webhooks.iter().fold(HookKinds::NONE, |acc, w| acc.union(w.event_types))
    }
}

impl AppConfig {
    /// An app with the given credentials and every other field at its default.
    pub fn new(id: impl Into<String>, key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            client_events: false,
            only_ssl: false,
            max_connections: None,
            max_event_bytes: 10 * 1024,
            max_presence_members: 100,
            max_presence_user_info_bytes: 1024,
            max_presence_user_id_chars: 128,
            client_event_rate: 10,
            max_channel_name_chars: 200,
            max_event_name_chars: 200,
            subscription_count: false,
            cache_ttl: Duration::from_secs(30 * 60),
            authorized_timeout: None,
            webhooks: Vec::new(),
            webhook_delay: Duration::from_secs(3),
            webhook_batch: Duration::ZERO,
            webhook_batch_max: 50,
        }
    }
}

/// One kind of webhook event, as named in the body and in `event_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookKind {
    /// A channel got its first subscriber, node-wide.
    ChannelOccupied,
    /// A channel lost its last subscriber, node-wide (sent after the delay).
    ChannelVacated,
    /// A user's first connection joined a presence channel.
    MemberAdded,
    /// A user's last connection left a presence channel (after the delay).
    MemberRemoved,
    /// A connection sent a `client-` event.
    ClientEvent,
    /// A cache channel subscriber found nothing cached.
    CacheMiss,
    /// A channel's node-wide subscription count changed.
    SubscriptionCount,
}

impl HookKind {
    /// Every kind, in the order `config.yml` lists them.
    pub const ALL: [HookKind; 7] = [
        HookKind::ChannelOccupied,
        HookKind::ChannelVacated,
        HookKind::MemberAdded,
        HookKind::MemberRemoved,
        HookKind::ClientEvent,
        HookKind::CacheMiss,
        HookKind::SubscriptionCount,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::ChannelOccupied => "channel_occupied",
            HookKind::ChannelVacated => "channel_vacated",
            HookKind::MemberAdded => "member_added",
            HookKind::MemberRemoved => "member_removed",
            HookKind::ClientEvent => "client_event",
            HookKind::CacheMiss => "cache_miss",
            HookKind::SubscriptionCount => "subscription_count",
        }
    }

    /// The kind with this wire name.
    pub fn parse(name: &str) -> Option<Self> {
        HookKind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`HookKind`]s: one URL's `event_types`, or the union over an
/// app's URLs, which the shards consult before raising an event at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HookKinds(u8);

impl HookKinds {
    /// No kind.
    pub const NONE: HookKinds = HookKinds(0);
    /// Every kind.
    pub const ALL: HookKinds = HookKinds((1 << HookKind::ALL.len()) - 1);

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: HookKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Adds `kind`.
    pub fn insert(&mut self, kind: HookKind) {
        self.0 |= kind.bit();
    }

    /// Both sets together.
    #[must_use]
    pub fn union(self, other: HookKinds) -> HookKinds {
        HookKinds(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names in the set, in [`HookKind::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        HookKind::ALL.into_iter().filter(|k| self.contains(*k)).map(HookKind::name).collect()
    }
}

impl FromIterator<HookKind> for HookKinds {
    fn from_iter<I: IntoIterator<Item = HookKind>>(iter: I) -> Self {
        let mut set = HookKinds::NONE;
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_their_own_names_and_nothing_else() {
        for kind in HookKind::ALL {
            assert_eq!(HookKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(HookKind::parse("channel_existence"), None);
        assert_eq!(HookKind::parse("Channel_Occupied"), None);
    }

    #[test]
    fn filter_holds_exactly_what_was_inserted() {
        let set: HookKinds =
            [HookKind::ChannelVacated, HookKind::ClientEvent].into_iter().collect();
        for kind in HookKind::ALL {
            let expected = matches!(kind, HookKind::ChannelVacated | HookKind::ClientEvent);
            assert_eq!(set.contains(kind), expected, "{kind}");
            assert!(HookKinds::ALL.contains(kind));
            assert!(!HookKinds::NONE.contains(kind));
        }
        assert_eq!(set.names(), ["channel_vacated", "client_event"]);
        assert_eq!(set.union(HookKinds::NONE), set);
    }
}
