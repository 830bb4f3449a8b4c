// Cache channels (spec §8) with the real clients: pusher-js gets the last
// event triggered through the Node SDK right after subscribing, or
// `pusher:cache_miss` on the channel; the Node SDK reads `info=cache`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, connected, nextEvent, record, sdkRejection, uniq } from './harness.mjs';

let server;
let sdk;
before(async () => {
  server = await startServer();
  sdk = server.sdk();
});
after(async () => {
  await server?.stop();
});

/**
 * Subscribes and resolves with the first `event` on the channel. Handlers
 * are bound in the same turn as the subscribe, before any reply can arrive.
 */
async function subscribeFor(client, channelName, event, opts = {}) {
  await connected(client, server);
  const channel = client.subscribe(channelName);
  const got = nextEvent(channel, event, `${event} on ${channelName}`, { server, ...opts });
  const seen = {
    succeeded: record(channel, 'pusher:subscription_succeeded'),
    misses: record(channel, 'pusher:cache_miss'),
    all: [],
  };
  channel.bind_global((name) => seen.all.push(name));
  return { channel, seen, got: await got };
}

test('cache_miss first, then every new subscriber gets the last triggered event', async () => {
  const name = uniq('cache-prices-');
  const first = server.client();
  const miss = await subscribeFor(first, name, 'pusher:cache_miss');
  assert.equal(miss.seen.succeeded.length, 1, 'cache_miss comes after subscription_succeeded');

  for (const p of [1, 2]) {
    const live = nextEvent(miss.channel, 'price', `live price ${p}`, { server });
    await sdk.trigger(name, 'price', { p });
    assert.deepEqual((await live).data, { p });
  }
  // Several connections, so that both shards have subscribers.
  for (let i = 0; i < 4; i++) {
    const c = server.client();
    const { got, seen } = await subscribeFor(c, name, 'price');
    assert.deepEqual(got.data, { p: 2 }, 'the last event, not the first');
    assert.equal(seen.succeeded.length, 1);
    assert.equal(seen.misses.length, 0);
  }
});

test('private-cache and presence-cache replay too; client events are not cached', async () => {
  const priv = uniq('private-cache-doc-');
  const room = uniq('presence-cache-room-');
  await sdk.trigger([priv, room], 'state', 'v1');
  const a = server.client({ user: { user_id: 'a', user_info: {} } });
  const b = server.client({ user: { user_id: 'b', user_info: {} } });
  for (const c of [a, b]) {
    assert.equal((await subscribeFor(c, priv, 'state')).got.data, 'v1');
    const presence = await subscribeFor(c, room, 'state');
    assert.equal(presence.got.data, 'v1');
    assert.ok(presence.channel.members.count >= 1, 'member list came first');
  }
  const relayed = nextEvent(b.channel(priv), 'client-edit', 'client event relayed', { server });
  a.channel(priv).trigger('client-edit', { x: 1 });
  await relayed;
  const late = server.client();
  const replay = await subscribeFor(late, priv, 'state');
  assert.equal(replay.got.data, 'v1');
  assert.deepEqual(replay.seen.all, ['pusher:subscription_succeeded', 'state']);
});

test('the Node SDK reads info=cache: data and ttl, or null', async () => {
  const name = uniq('cache-info-');
  const read = async () => {
    const res = await sdk.get({ path: `/channels/${name}`, params: { info: 'cache' } });
    assert.equal(res.status, 200);
    return res.json();
  };
  assert.deepEqual(await read(), { occupied: false, cache: null });
  await sdk.trigger(name, 'state', { on: true });
  const info = await read();
  assert.equal(info.occupied, false);
  assert.deepEqual(JSON.parse(info.cache.data), { on: true });
  assert.ok(info.cache.ttl > 0 && info.cache.ttl <= 1800, JSON.stringify(info));

  const err = await sdkRejection(() =>
    sdk.get({ path: `/channels/${uniq('plain-')}`, params: { info: 'cache' } }),
  );
  assert.equal(err.status, 400);
});
