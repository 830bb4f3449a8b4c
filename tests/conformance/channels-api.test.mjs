// Channel queries through the official Node SDK's `get` (spec §12.4), with
// subscriptions made by real pusher-js clients on a two-shard server, and
// subscription_count as pusher-js sees it (spec §11).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServer,
  connected,
  subscribed,
  waitUntil,
  sdkRejection,
  uniq,
  sleep,
  APPS,
  WAIT_MS,
} from './harness.mjs';

let server;
let sdk;
before(async () => {
  server = await startServer();
  sdk = server.sdk();
});
after(async () => {
  await server?.stop();
});

async function getJson(path, params = {}) {
  const res = await sdk.get({ path, params });
  assert.equal(res.status, 200);
  return res.json();
}

test('channels, one channel and presence users, counted across shards', async () => {
  const news = uniq('news-');
  const room = uniq('presence-room-');
  const users = ['ann', 'ann', 'ben', 'cy'];
  const clients = [];
  for (const [i, id] of users.entries()) {
    const c = server.client({ user: { user_id: id, user_info: { n: i } } });
    await connected(c, server);
    await subscribed(c, news, server);
    await subscribed(c, room, server);
    clients.push(c);
  }

  const all = await getJson('/channels');
  assert.deepEqual(all.channels[news], {});
  assert.deepEqual(all.channels[room], {});

  const counted = await getJson('/channels', { filter_by_prefix: news, info: 'subscription_count' });
  assert.deepEqual(counted, { channels: { [news]: { subscription_count: 4 } } });

  const presence = await getJson('/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
  assert.deepEqual(presence.channels[room], { user_count: 3 });

  const none = await getJson('/channels', { filter_by_prefix: uniq('nobody-') });
  assert.deepEqual(none, { channels: {} });

  assert.deepEqual(await getJson(`/channels/${news}`, { info: 'subscription_count' }), {
    occupied: true,
    subscription_count: 4,
  });
  assert.deepEqual(await getJson(`/channels/${room}`, { info: 'user_count' }), {
    occupied: true,
    user_count: 3,
  });
  assert.deepEqual(await getJson(`/channels/${uniq('empty-')}`), { occupied: false });

  const members = await getJson(`/channels/${room}/users`);
  assert.deepEqual(members.users.map((u) => u.id).sort(), ['ann', 'ben', 'cy']);

  // The last of a user's connections leaving removes the user.
  clients[3].disconnect();
  let after;
  for (const deadline = performance.now() + WAIT_MS; ; await sleep(50)) {
    after = await getJson(`/channels/${room}/users`);
    if (after.users.length === 2) break;
    assert.ok(performance.now() < deadline, `cy still listed: ${JSON.stringify(after)}`);
  }
  assert.deepEqual(after.users.map((u) => u.id).sort(), ['ann', 'ben']);
});

test('invalid channel queries are 400 through the SDK', async () => {
  for (const [path, params] of [
    ['/channels', { info: 'user_count' }],
    ['/channels', { info: 'bogus' }],
    ['/channels/public-x', { info: 'user_count' }],
    ['/channels/public-x/users', {}],
  ]) {
    const err = await sdkRejection(() => sdk.get({ path, params }));
    assert.equal(err.status, 400, `${path} ${JSON.stringify(params)}: ${err.body ?? err.message}`);
  }
});

test('pusher-js hears subscription_count on an app that enables it', async () => {
  const name = uniq('counted-');
  const app = APPS.counting;
  const a = server.client({ app });
  await connected(a, server);
  const chA = await subscribed(a, name, server);
  await waitUntil(() => chA.subscriptionCount === 1, 'first count', { server });
  const b = server.client({ app });
  await connected(b, server);
  const chB = await subscribed(b, name, server);
  await waitUntil(() => chA.subscriptionCount === 2 && chB.subscriptionCount === 2, 'count of 2', {
    server,
  });
  b.disconnect();
  await waitUntil(() => chA.subscriptionCount === 1, 'count back to 1', { server });
});

test('the main app (subscription_count off) sends no counts', async () => {
  const name = uniq('uncounted-');
  const a = server.client();
  await connected(a, server);
  const seen = [];
  a.connection.bind('message', (m) => {
    if (m.event === 'pusher_internal:subscription_count') seen.push(m);
  });
  await subscribed(a, name, server);
  const b = server.client();
  await connected(b, server);
  await subscribed(b, name, server);
  // Both subscriptions are visible to the API, so any count would have
  // been sent before this answer.
  const res = await getJson(`/channels/${name}`, { info: 'subscription_count' });
  assert.equal(res.subscription_count, 2);
  assert.deepEqual(seen, []);
});
