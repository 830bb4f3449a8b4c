//! The Lua scripts that decide what must be decided once per cluster. Each
//! runs atomically in Redis and touches only keys of one app (one hash
//! slot on Redis Cluster, see [`crate::proto::cluster::keys`]). Every one is
//! idempotent for a node that says again what it already said, so a node
//! can re-announce its whole state after Redis came back without counting
//! anything twice.

/// A node's subscription count of a channel is now `ARGV[2]`.
///
/// KEYS: node's subs, totals, vacating. ARGV: channel, node count, token.
/// Returns `{transition, total}`: 0 none, 1 occupied, 2 vacated (the token
/// is held in `vacating`), 3 occupied again while a vacate was held (no
/// webhook either way), -1 nothing changed (a node saying its count again).
pub(super) const SUBSCRIPTIONS: &str = r"
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if new > 0 then redis.call('HSET', KEYS[1], ARGV[1], new) else redis.call('HDEL', KEYS[1], ARGV[1]) end
if new == old then
  return {-1, tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')}
end
local total = redis.call('HINCRBY', KEYS[2], ARGV[1], new - old)
local before = total - (new - old)
if total <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]); total = 0 end
if before <= 0 and total > 0 then
  if redis.call('HDEL', KEYS[3], ARGV[1]) == 1 then return {3, total} end
  return {1, total}
end
if before > 0 and total <= 0 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  return {2, 0}
end
return {0, total}
";

/// A held webhook (a vacate, a member's removal) is still due.
///
/// KEYS: the hash it is held in. ARGV: field, token. Returns 1 when it is
/// (and forgets it), 0 when the channel or member came back meanwhile.
pub(super) const CONFIRM: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// A node holds a presence member now (its first connection there).
///
/// KEYS: members, holders, node's presence, leaving. ARGV: channel, user,
/// user_info (empty for none), max members, field. Returns `{-1}` when the
/// channel is full, else `{added, id1, info1, …}`: added 1 for the user's
/// first connection anywhere, 2 for one back within the removal delay (no
/// webhook), 0 otherwise.
pub(super) const JOIN: &str = r"
local user = ARGV[2]
local added = 0
if redis.call('SISMEMBER', KEYS[3], ARGV[5]) == 0 then
  if redis.call('HEXISTS', KEYS[1], user) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    return {-1}
  end
  redis.call('SADD', KEYS[3], ARGV[5])
  if redis.call('HINCRBY', KEYS[2], user, 1) == 1 then
    redis.call('HSET', KEYS[1], user, ARGV[3])
    added = 1
    if redis.call('HDEL', KEYS[4], ARGV[5]) == 1 then added = 2 end
  end
end
local out = {added}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do out[#out + 1] = all[i] end
return out
";

/// A node no longer holds a presence member (its last connection there).
///
/// KEYS: members, holders, node's presence, leaving. ARGV: channel, user,
/// field, token. Returns 1 when that was the member's last node (the token
/// is held in `leaving`), else 0.
pub(super) const LEAVE: &str = r"
if redis.call('SREM', KEYS[3], ARGV[3]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
return 1
";

/// A user signed in on a node (ARGV[2] 1) or the node's last signed-in
/// connection of the user left (0).
///
/// KEYS: online, node's signed. ARGV: user, in. Returns 1 when the user
/// went online or offline in the cluster, else 0.
pub(super) const SIGNED: &str = r"
if ARGV[2] == '1' then
  if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
  if redis.call('HINCRBY', KEYS[1], ARGV[1], 1) == 1 then return 1 end
  return 0
end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
";

/// Stores a cache channel's event with its TTL and sends it to every node
/// in the same step, numbered, so that replays and live events keep one
/// order whichever node stores.
///
/// KEYS: seq, cache. ARGV: channel, TTL ms, event channel, envelope head,
/// envelope tail. The envelope's 8-byte sequence goes between head and
/// tail. Returns the sequence number.
pub(super) const CACHE_PUBLISH: &str = r"
local seq = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SET', KEYS[2], seq .. ' ' .. ARGV[5], 'PX', ARGV[2])
local hi = math.floor(seq / 4294967296)
local lo = seq % 4294967296
redis.call('PUBLISH', ARGV[3], ARGV[4] .. struct.pack('>I4>I4', hi, lo) .. ARGV[5])
return seq
";

/// Stores an event that reached every node by itself (a Redis-published
/// one), numbered like [`CACHE_PUBLISH`]'s but sent to nobody. Every node
/// runs it; only the holder of the store lease stores, and a node finding
/// the lease free takes it, so that one node stores each event from the
/// first event on.
///
/// KEYS: seq, cache, lease. ARGV: channel, TTL ms, frame, instance, lease
/// ms. Returns the sequence number, or 0 when another node stores.
pub(super) const CACHE_STORE: &str = r"
local holder = redis.call('GET', KEYS[3])
if holder ~= false and holder ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
local seq = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SET', KEYS[2], seq .. ' ' .. ARGV[3], 'PX', ARGV[2])
return seq
";

/// Frees the store lease if a (swept) node holds it.
///
/// KEYS: lease. ARGV: instance.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// Subscription and user counts of some channels.
///
/// KEYS: totals. ARGV: the members key of the app without the channel,
/// then the channels. Returns `{subs1, users1, subs2, users2, …}`, users
/// −1 for a channel that is not a presence channel. The members keys share
/// the app's hash tag, so they live in KEYS[1]'s slot.
pub(super) const COUNTS: &str = r"
local out = {}
for i = 2, #ARGV do
  local c = ARGV[i]
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], c) or '0')
  if string.sub(c, 1, 9) == 'presence-' then
    out[#out + 1] = redis.call('HLEN', ARGV[1] .. c)
  else
    out[#out + 1] = -1
  end
end
return out
";

/// Occupied channels whose name starts with a prefix.
///
/// KEYS: totals. ARGV: the members key of the app without the channel, the
/// prefix. Returns `{name1, subs1, users1, …}` as [`COUNTS`] does.
pub(super) const LIST: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local p = ARGV[2]
local out = {}
for i = 1, #all, 2 do
  local c = all[i]
  local n = tonumber(all[i + 1])
  if n > 0 and string.sub(c, 1, #p) == p then
    out[#out + 1] = c
    out[#out + 1] = n
    if string.sub(c, 1, 9) == 'presence-' then
      out[#out + 1] = redis.call('HLEN', ARGV[1] .. c)
    else
      out[#out + 1] = -1
    end
  end
end
return out
";

/// A node says it is alive, by Redis's clock (so the nodes' clocks need
/// not agree), and hears which nodes have been silent too long.
///
/// KEYS: nodes. ARGV: instance, silence in ms after which a node is dead.
/// Returns `{now_ms, {dead nodes}, {live nodes}, known}`, known 0 when the
/// node was not in the view before (a first start, or taken out while it
/// was silent: what it holds must be said again).
pub(super) const BEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = 1
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then known = 0 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
local limit = now - tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', limit)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. limit, '+inf')
return {now, dead, live, known}
";

/// Takes or keeps a lease.
///
/// KEYS: the lease. ARGV: instance, lease ms. Returns 1 when this node
/// holds it (now or still), 0 when another does.
pub(super) const LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";
