//! stapes: a realtime messaging server that speaks the Pusher Channels
//! protocol 7 and Imgur's Incus protocol, built thread-per-core on io_uring.
//!
//! # Layers
//!
//! The folders are the layers, and imports only point down
//! (`tests/layers.rs` fails the test run when one points up or two folders
//! depend on each other):
//!
//! ```text
//! main.rs            the binary: command line, config, signals → server::run
//! server.rs          composition root: Listeners, Shutdown, run(listeners, config, shutdown)
//! io/                threads and sockets; drives proto, carries its output
//!   shard/           one pinned thread per core: the event loop, its epoll set and send ring,
//!                    connections as slab entries, HTTP serving and upgrades, deadlines
//!   rings/           the SPSC rings between threads (the shard mesh, drop-on-full fan-in)
//!   bridge/          Redis (tokio thread): Pusher events and Incus commands in,
//!                    Incus bookkeeping out; cluster/: the nodes' shared view
//!                    (scripts, heartbeat, pub/sub of the channels with subscribers)
//!   redis_link.rs    how Redis is reached (standalone, Sentinel, Cluster; TLS),
//!                    for bridge/ and push/
//!   push/            APNs and FCM senders (tokio thread)
//!   webhooks/        the webhook sender (tokio thread)
//!   metrics/         /metrics text and the DogStatsD thread
//!   tls.rs threads.rs
//! config/            config.yml (or an IPÊ file) + environment → typed settings; imports only core
//! proto/             sans-IO: bytes, events and the time in, values out; imports only core
//!   ws/ http/        RFC 6455 frames and handshake; HTTP/1.1 requests and responses
//!   pusher/          the Pusher protocol: session, auth, channels, messages, the
//!                    per-shard state (shard/: delivery, presence, cache, queries,
//!                    counts, hooks, users), and pusher-js's HTTP fallback
//!                    transports (xhr: paths, frames, the session table)
//!   index/           channel → subscribers, presence rosters, signed-in users, cache
//!   rest/            the HTTP API: routes, signatures, bodies, pending queries
//!   incus/           the Incus protocol: commands, messages, per-shard routing state,
//!                    /lp and /ping, push commands
//!   webhook/ push/   webhook bodies and queues; push error lists and retries
//!   console/         the debug console: its events, the viewers' bounded
//!                    feeds, the page
//!   redis/           Pusher events as backends publish them on Redis
//!   cluster/         what shards tell the cluster side, the envelope between
//!                    nodes, Redis key names, a node's view of its channels
//!   msg.rs           what shards say to each other
//! core/              the leaf: ids, close codes, the app model and webhook kinds,
//!                    counters, back-off, JSON writing
//! ```
//!
//! # Threads
//!
//! ```text
//!            caller (main, or a test): binds Listeners, later triggers Shutdown
//!                 │ server::run: control ring (Shutdown)
//!     ┌───────────┴───────────┐
//!  shard 0  ◄── SPSC rings ──►  shard 1  …  (one per core, pinned; one event loop each)
//!  SO_REUSEPORT listener        SO_REUSEPORT listener
//!  sockets in one epoll set     sockets in one epoll set
//!  Pusher + Incus state         Pusher + Incus state
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
//!  statsd thread (only with incus.datadog_enabled)
//! ```
//!
//! # A shard's turn
//!
//! Each shard runs one task, [`io::shard`]'s event loop, which owns all of
//! the shard's state and moves it along in turns: (1) messages from its
//! rings, (2) sockets the epoll set reports ready and new connections,
//! (3) deadlines and the protocol clocks, (4) HTTP requests whose answers
//! came in, (5) one vectored write per socket that gained something to
//! write (HTTP answers first; 16 sockets a turn, so a wide fan-out is
//! written over several turns, and events that arrive meanwhile join it),
//! (6) what it owes other threads into their rings. Each step has a
//! budget; a turn that used one goes round again at once, any other parks
//! until the epoll set is readable, a ring rings, or a deadline comes.
//!
//! # The path of one message
//!
//! 1. `POST /apps/1/events` arrives on whichever shard the kernel gave the
//!    connection. The epoll set reports the socket readable; the loop reads
//!    it into the shard's shared buffer and parses the request
//!    ([`proto::http::request`]).
//! 2. [`proto::rest::api`] checks the signature ([`proto::rest::signature`])
//!    and the body ([`proto::rest::events`]) and calls
//!    [`proto::pusher::shard::Shard::publish`], which frames the event
//!    **once** into a [`bytes::Bytes`] ([`proto::pusher::messages`]).
//! 3. Every local subscriber's outbox gets a clone of that handle (a
//!    refcount bump, no copy) and lists its socket on the shard's dirty
//!    list once; every other shard that holds a subscriber of the channel
//!    gets one `Deliver` carrying the same handle ([`proto::msg`]), handed
//!    to its ring at the end of the turn. Which shards hold which channels
//!    each shard learns from the others' quiet announcements
//!    ([`proto::index::Interest`]), read again before the hand-off; a turn
//!    that cannot read them all sends to every shard.
//! 4. The HTTP response (`{}`) is queued for the publisher's socket.
//! 5. At the end of the turn the loop writes the HTTP answer, then each
//!    dirty socket's outbox, one `sendmsg` each, all of them submitted in
//!    one `io_uring_enter` (the shard's send ring; `writev` where io_uring
//!    is off), 16 sockets a turn (the rest in the next turns, which read the sockets
//!    first); a socket whose outbox passes `server.max_outbox_bytes` was
//!    closed with 4100 instead of growing.
//! 6. Each shard that got a `Deliver`, woken by its ring's doorbell,
//!    drains the ring at the start of its next turn and does steps 3 and 5
//!    for its own subscribers.
//!
//! A Pusher event published on Redis takes the same path from the bridge
//! thread: parsed and checked there ([`proto::redis::pusher`]), framed
//! once, one `Deliver` per shard over the bridge's own ring.
//!
//! What must be decided once per node lives on one *owner* shard, a hash
//! of the name: a presence channel's roster, a channel's subscription
//! count, occupancy and cached event, a signed-in user's watchers. Joins,
//! leaves, counts, cached publishes and queries travel to the owner over
//! the rings; webhooks are raised there, once per node.
//!
//! In a cluster (a `redis:` section), step 3 also hands the frame to the
//! bridge's cluster side over the shard's ring to it
//! ([`proto::cluster::ClusterUp`]); the bridge PUBLISHes it once on the
//! channel's Redis channel, and each node subscribed there (only nodes
//! with subscribers are) hands it to its shards as a `Deliver`. What is
//! decided once per node above is decided once per cluster instead, by
//! scripts in Redis ([`io::bridge::cluster`]), and the HTTP API's answer
//! waits until Redis has the event.
//!
//! # The path of one Incus message
//!
//! A `message` command (from a `/socket` client, a long-poll's `command`,
//! or Redis through the bridge) is formatted once into one allocation that
//! holds the WebSocket frame, whose middle is the long-poll body
//! ([`proto::incus::message`]). It goes to every shard, and each delivers
//! to its own matching sockets ([`proto::incus::state`]). Long-polls belong
//! to the user's owner shard: a poll arriving elsewhere is forwarded there,
//! waits there (or takes the oldest message from the user's mailbox at
//! once), and the answer comes back over the ring. Push commands never
//! reach a shard: the bridge decodes them ([`proto::incus::push`]) and
//! hands them to the push thread over a bounded queue.

pub mod config;
pub mod core;
pub mod io;
pub mod proto;
pub mod server;

/// Entry points for the fuzz targets in `fuzz/` that the public API does
/// not otherwise offer. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// `${VAR}` expansion of a config file's text, as [`crate::config::load_file`]
    /// runs it before parsing; `file` names the text in errors.
    ///
    /// # Errors
    ///
    /// [`crate::config::ConfigError::Expansion`], as for a file.
    pub fn expand_config(
        text: &str,
        file: &str,
        env: &crate::config::Env,
    ) -> Result<String, crate::config::ConfigError> {
        crate::config::expand(text, file, env)
    }
}
