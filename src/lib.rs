//! stapes: a realtime messaging server that speaks the Pusher Channels
//! protocol 7 and Imgur's Incus protocol, built thread-per-core on io_uring.
//!
//! # Layout
//!
//! | module | what it owns |
//! |---|---|
//! | [`config`] | the typed configuration, `config.yml` and environment overrides |
//! | [`runtime`] | threads and sockets: one pinned monoio runtime per core (a *shard*), listeners, connection tasks, the HTTP API glue, signals |
//! | [`mesh`] | the SPSC rings that are the only path between threads |
//! | [`protocol`] | the Pusher protocol, sans-IO: per-connection [`protocol::session`], per-shard [`protocol::shard`], close codes, messages, auth |
//! | [`index`] | per-shard channel membership, the presence rosters, signed-in users and the cache-channel events |
//! | [`ws`] | RFC 6455 handshake and frame codec, sans-IO |
//! | [`http`] | HTTP/1.1 request parsing and responses, sans-IO |
//! | [`rest`] | the Pusher HTTP API: request signing, trigger bodies, errors |
//! | [`tls`] | rustls server settings |
//! | [`incus`] | the Incus protocol, sans-IO: message formatting, per-shard routing state for `/socket` and `/lp`, long-poll mailboxes on the user's owner shard |
//! | [`bridge`] | the Redis bridge thread (tokio): Pusher events and Incus commands from Redis, parsed and framed once, handed to every shard over its own rings; Incus bookkeeping written back from the shards' uplink rings |
//! | [`push`] | mobile push on a thread of its own (tokio): Incus push commands decoded once into ready bodies ([`push::command`]), APNs over HTTP/2 behind a sender trait (a2), FCM HTTP v1 with its OAuth2 grant, retries, and the Redis error lists |
//! | [`metrics`] | counters each shard writes alone and readers sum: `GET /metrics` (Prometheus text) and Incus's `incus.*` over DogStatsD |
//! | [`webhooks`] | the webhook thread (tokio): events the shards decided, taken from one bounded ring per shard, POSTed signed to each app's URLs with retries |
//!
//! Everything under `protocol`, `incus`, `index`, `ws`, `http` and `rest` is pure:
//! bytes and the current time in, values out, tested without sockets, and so
//! are the parsers under `bridge`. Only `runtime` and the bridge's Redis
//! driver touch the OS.
//!
//! # Threads
//!
//! ```text
//!            main thread: config, listeners, rings; then waits for SIGTERM
//!                 │ (control ring: Shutdown)
//!     ┌───────────┴───────────┐
//!  shard 0  ◄── SPSC rings ──►  shard 1  …  (one per core, pinned)
//!  SO_REUSEPORT listener        SO_REUSEPORT listener
//!  connections (slab)           connections (slab)
//!  channel index, rosters       channel index, rosters
//!     ▲                       ▲
//!     └── SPSC ring each ─────┘
//!  bridge thread (only with `redis:`): tokio, SUBSCRIBE + BLMOVE
//!
//!  shard 0 ─┐ one bounded SPSC ring each, never waited on
//!  shard 1 ─┴──► webhook thread (only with webhooks): tokio, HTTP client
//!
//!  bridge thread ── bounded queue, never waited on ──► push thread
//!  (only with a push platform enabled): tokio, APNs (a2) and FCM clients
//!
//!  statsd thread (only with incus.datadog_enabled): reads the counters
//!  the shards write ([`metrics`]), one UDP report per interval
//! ```
//!
//! # The path of one message
//!
//! `POST /apps/1/events` arrives on whichever shard the kernel gave the
//! connection. That shard's connection task parses the request
//! ([`http::request`]), the API glue checks the signature
//! ([`rest::signature`]) and the body ([`rest::events`]), and calls
//! [`protocol::shard::Shard::publish`]. The event is framed **once** into a
//! [`bytes::Bytes`] ([`protocol::messages`]); every local subscriber's outbox
//! gets a clone of that handle (a refcount bump, no copy), and every other
//! shard gets one `Deliver` message carrying the same handle over its ring.
//! The receiving shard's mesh task drains its rings in batches and does the
//! same local fan-out. Each connection task, woken by its outbox, writes
//! everything queued with one `writev`. A connection whose outbox passes
//! `server.max_outbox_bytes` is closed with 4100 instead of buffering more.
//!
//! A Pusher event published on Redis takes the same path from the bridge
//! thread: parsed and checked there ([`bridge::pusher`]), framed once, and
//! one `Deliver` per shard over the bridge's own ring to each shard.
//!
//! Presence is the one place shards must agree: every join and leave goes
//! to the channel's *owner* shard (a hash of the name), which keeps the
//! node-wide roster, decides `member_added`/`member_removed`, and answers
//! the joining connection with the member list.
//! The same owner rule (a hash of the user id) gives each signed-in user
//! one shard that decides online/offline for watchlists, and (a hash of the
//! channel) one shard that keeps a channel's node-wide `subscription_count`
//! and, for cache channels, the last event: cached publishes go through that
//! owner, which stores and then broadcasts them, and a new subscriber's
//! replay comes from it too, so the two stay in order.
//! Webhooks follow the same owner rule: a channel's owner decides
//! `channel_occupied`/`channel_vacated` from the node-wide count it keeps,
//! and a presence channel's owner `member_added`/`member_removed`; it holds
//! the vacate and the removal for the app's delay and drops them when the
//! channel or member comes back ([`protocol::delayed`]).
//! Queries the HTTP API answers with node-wide numbers (channel lists,
//! counts, presence users) ask every shard, or the owner, over the rings.
//!
//! # The path of one Incus message
//!
//! A `message` command (from a `/socket` client, a long-poll's `command`,
//! or Redis through the bridge) is formatted once into one allocation that
//! holds the WebSocket frame, whose middle is the long-poll body
//! ([`incus::message`]). The shard (or the bridge) sends an
//! `IncusMsg::Deliver` with that handle to every shard, and each delivers
//! to its own matching sockets ([`incus::state`]). Long-polls belong to the
//! user's *owner* shard, a hash of the user id:
//! a poll arriving elsewhere is forwarded there, waits there (or takes the
//! oldest message from the user's mailbox at once), and the answer comes
//! back over the ring. With Redis on, what Incus kept in Redis goes to the
//! bridge over each shard's uplink ring; a shard never waits on Redis.
//!
//! A push command (`push`, `pushios`, `pushandroid`, or a `pushormessage`
//! whose user is not active) never reaches a shard: the bridge decodes it
//! into a job with its APNs body or FCM `data` already built and hands it
//! to the push thread over a bounded queue, dropping (and counting) rather
//! than waiting when the queue is full.

pub mod config;
pub mod core;
pub mod io;
pub mod proto;
pub mod server;
