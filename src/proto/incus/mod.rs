//! The Incus protocol (Imgur's Incus, spec `incus.md`), sans-IO: delivered
//! messages formatted and framed once ([`message`]), and the per-shard
//! routing state ([`state`]) behind `/socket` WebSockets and `/lp`
//! long-polls.
//!
//! # Where things live
//!
//! - A WebSocket is held by the shard that accepted it, indexed there by
//!   user and by page. A routed message goes to every shard, and each one
//!   delivers to its own sockets, so a message is framed once and every
//!   recipient gets a refcounted handle to the same [`bytes::Bytes`].
//! - Everything that must be decided once per *user* lives on the user's
//!   owner shard ([`owner_shard`], a hash of the user id), as Pusher
//!   presence does for channels: the long-poll mailbox and waiting polls.
//!   A poll arriving on another shard is forwarded there over the rings,
//!   and the answer comes back the same way.
//! - `setpresence` is only ever read by `pushormessage`, a command that
//!   comes from Redis alone, so it is kept in Redis alone
//!   (`ClientPresence:<uid>`, written by the bridge); without Redis it is
//!   accepted and has no effect.
//!
//! # Long-poll without loss (spec §5.4, bug §13.3 fixed)
//!
//! The original delivered at most one message per poll and dropped the
//! rest, and everything sent between polls. Here a user who long-polls
//! gets a mailbox on their owner shard: a message for them while no poll
//! waits is kept (at most `incus.mailbox_messages`, at most
//! `incus.mailbox_ttl_secs` old), and the next poll returns the oldest at
//! once. A message that finds polls waiting goes to all of them, as it
//! went to every open socket in the original. The mailbox itself expires
//! `mailbox_ttl_secs` after the user's last poll. Every drop is counted
//! and logged.

pub mod command;
pub mod http;
pub mod message;
pub mod push;
pub mod state;

#[cfg(test)]
mod tests;

use bytes::Bytes;
pub use message::{Delivery, format};
pub use state::{IncusShard, PollResult, SockKey};

use crate::core::ConnRef;

/// Which sockets a `message` command reaches (spec §6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every socket.
    All,
    /// The user's sockets; with a page, only those currently on it.
    User {
        /// User id; an empty one matches nobody.
        user: Box<str>,
        /// Page filter, never empty.
        page: Option<Box<str>>,
    },
    /// Every socket on the page.
    Page(Box<str>),
}

impl Target {
    /// The rule of spec §6.2: a `user` key wins even when empty (and then
    /// matches nobody); an empty `page` beside a user means no page filter.
    pub fn of(user: Option<&str>, page: Option<&str>) -> Target {
        match (user, page) {
            (Some(user), page) => Target::User {
                user: user.into(),
                page: page.filter(|p| !p.is_empty()).map(Into::into),
            },
            (None, Some(page)) => Target::Page(page.into()),
            (None, None) => Target::All,
        }
    }

    /// Whether a socket of `user` currently on `page` is a recipient.
    pub fn matches(&self, user: &str, page: Option<&str>) -> bool {
        match self {
            Target::All => true,
            Target::User { user: u, page: p } => {
                **u == *user && p.as_deref().is_none_or(|p| Some(p) == page)
            }
            Target::Page(p) => Some(&**p) == page,
        }
    }
}

/// Incus messages between shards, and from the bridge to shards.
#[derive(Debug)]
pub enum IncusMsg {
    /// Deliver to the receiving shard's matching sockets, and to the
    /// mailboxes of the long-polling users it owns.
    Deliver {
        /// Recipients.
        target: Target,
        /// The message, framed once.
        delivery: Delivery,
    },
    /// To the user's owner: a long-poll started on shard `from`.
    Poll {
        /// User id.
        user: Box<str>,
        /// Page of this poll, never empty.
        page: Option<Box<str>>,
        /// Shard holding the HTTP request.
        from: usize,
        /// Poll id on that shard.
        id: u64,
    },
    /// To the user's owner: the poll ended without an answer.
    PollCancel {
        /// User id.
        user: Box<str>,
        /// Shard of the poll.
        from: usize,
        /// Poll id on that shard.
        id: u64,
    },
    /// From the owner back to the poll's shard.
    PollDone {
        /// Poll id.
        id: u64,
        /// The poll's user, to give the message back if the poll is gone.
        user: Box<str>,
        /// A message, a timeout, or the owner's refusal.
        result: PollResult,
        /// When the message reached the owner, so that if it must go back
        /// to the mailbox it expires as if it had never left.
        at: std::time::Instant,
    },
    /// To the user's owner: an answer whose poll ended on its way back or
    /// before it was written; it goes to the front of the mailbox, so
    /// nothing is lost.
    Requeue {
        /// User id.
        user: Box<str>,
        /// The message body.
        body: Bytes,
        /// When the message first reached the owner.
        at: std::time::Instant,
    },
    /// From the bridge: the long-poll kill switch key appeared (true) or
    /// went away (spec §5.6).
    KillSwitch(bool),
}

/// What a shard asks the bridge to write to Redis when Redis is on (spec
/// §8.2, §8.3). The bridge turns each into Incus's commands.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisUpdate {
    /// A client's `message` command, to PUBLISH on the Incus channel as a
    /// client's ([`command::ClientMessage::encode`]): every node routes it
    /// from there, and none can take it for a backend's command.
    ClientMessage(command::ClientMessage),
    /// A socket authenticated as `user`, or a long-poll session began
    /// (`SADD SocketClients`).
    SocketOpen {
        /// User id.
        user: Box<str>,
    },
    /// A socket went away (`SREM SocketClients` once the user has no
    /// socket left on this node, page count down, presence removed).
    SocketClose {
        /// User id.
        user: Box<str>,
        /// The socket, `None` for the user's long-poll session.
        conn: Option<ConnRef>,
        /// Its page, if it had one.
        page: Option<Box<str>>,
    },
    /// A socket changed page (`HINCRBY PageClients`).
    Page {
        /// Page left, if any.
        old: Option<Box<str>>,
        /// Page joined.
        new: Box<str>,
    },
    /// Users with a socket or long-poll session on this shard, sent every
    /// `online_every` so the bridge re-marks them in `stapes:online:<uid>`.
    Online(Vec<Box<str>>),
    /// `setpresence` (`ClientPresence:<user>`); `conn` is `None` for the
    /// user's long-poll session.
    Presence {
        /// User id.
        user: Box<str>,
        /// The socket.
        conn: Option<ConnRef>,
        /// Present or not.
        active: bool,
    },
}

/// The shard that owns `user`: its mailbox and its waiting polls.
pub fn owner_shard(user: &str, shards: usize) -> usize {
    // FNV-1a, as the Pusher owners use; a different seed byte keeps Incus
    // users and Pusher channels of the same name from always colliding.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"i:".iter().chain(user.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}
