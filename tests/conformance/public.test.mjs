// Public channels and publishing through the official server SDK (spec §5, §12.4).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, connected, subscribed, nextEvent, recordFrames, barrier, uniq } from './harness.mjs';

let server;
let sdk;
before(async () => {
  server = await startServer();
  sdk = server.sdk();
});
after(async () => {
  await server?.stop();
});

async function expectEmptyOk(res) {
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
}

test('subscribe to a public channel: pusher:subscription_succeeded', async () => {
  const c = server.client();
  await connected(c, server);
  const ch = await subscribed(c, uniq('public-'), server);
  assert.equal(ch.subscribed, true);
  c.disconnect();
});

test('trigger with string data reaches the client verbatim; response 200 {}', async () => {
  const c = server.client();
  await connected(c, server);
  const name = uniq('news-');
  const ch = await subscribed(c, name, server);
  const got = nextEvent(ch, 'headline', 'string event', { server });
  await expectEmptyOk(await sdk.trigger(name, 'headline', 'hello, world: ünïcødé ✓'));
  const { data } = await got;
  assert.equal(data, 'hello, world: ünïcødé ✓');
  c.disconnect();
});

test('trigger with object data reaches the client as the same object', async () => {
  const c = server.client();
  await connected(c, server);
  const name = uniq('objects-');
  const ch = await subscribed(c, name, server);
  const payload = { message: 'hi', n: [1, 2.5, { x: null, t: true }], nested: { s: 'quote " and \\ backslash' } };
  const got = nextEvent(ch, 'update', 'object event', { server });
  await expectEmptyOk(await sdk.trigger(name, 'update', payload));
  const { data } = await got;
  assert.deepEqual(data, payload);
  c.disconnect();
});

test('trigger to two channels reaches subscribers of each', async () => {
  const a = server.client();
  const b = server.client();
  await Promise.all([connected(a, server), connected(b, server)]);
  const n1 = uniq('multi-one-');
  const n2 = uniq('multi-two-');
  const chA = await subscribed(a, n1, server);
  const chB = await subscribed(b, n2, server);
  const gotA = nextEvent(chA, 'both', 'event on first channel', { server });
  const gotB = nextEvent(chB, 'both', 'event on second channel', { server });
  await expectEmptyOk(await sdk.trigger([n1, n2], 'both', { k: 'v' }));
  assert.deepEqual((await gotA).data, { k: 'v' });
  assert.deepEqual((await gotB).data, { k: 'v' });
  a.disconnect();
  b.disconnect();
});

test('triggerBatch delivers every event to its channel; response 200 {}', async () => {
  const c = server.client();
  await connected(c, server);
  const n1 = uniq('batch-a-');
  const n2 = uniq('batch-b-');
  const ch1 = await subscribed(c, n1, server);
  const ch2 = await subscribed(c, n2, server);
  const got1 = nextEvent(ch1, 'first', 'first batch event', { server });
  const got2 = nextEvent(ch2, 'second', 'second batch event', { server });
  await expectEmptyOk(
    await sdk.triggerBatch([
      { channel: n1, name: 'first', data: { i: 1 } },
      { channel: n2, name: 'second', data: 'two' },
    ]),
  );
  assert.deepEqual((await got1).data, { i: 1 });
  assert.equal((await got2).data, 'two');
  c.disconnect();
});

test('trigger with socket_id excludes that connection only', async () => {
  const a = server.client();
  const b = server.client();
  const [idA] = await Promise.all([connected(a, server), connected(b, server)]);
  const name = uniq('exclude-');
  const chA = await subscribed(a, name, server);
  const chB = await subscribed(b, name, server);
  const seenA = recordFrames(a, name, 'excluded');
  const gotB = nextEvent(chB, 'excluded', 'event for the other client', { server });
  await expectEmptyOk(await sdk.trigger(name, 'excluded', { from: 'server' }, { socket_id: idA }));
  assert.deepEqual((await gotB).data, { from: 'server' });
  // A later event without exclusion reaches A; the excluded one must not have.
  const sentinelA = nextEvent(chA, 'sentinel', 'sentinel event for the excluded client', { server });
  await expectEmptyOk(await sdk.trigger(name, 'sentinel', {}));
  await sentinelA;
  assert.equal(seenA.length, 0, 'excluded connection must not receive the event');
  a.disconnect();
  b.disconnect();
});

test('unsubscribed client stops receiving events', async () => {
  const a = server.client();
  const b = server.client();
  await Promise.all([connected(a, server), connected(b, server)]);
  const name = uniq('unsub-');
  await subscribed(a, name, server);
  const chB = await subscribed(b, name, server);
  const seenA = recordFrames(a, name, 'after');
  a.unsubscribe(name);
  // pusher:unsubscribe has no reply; a later subscription's success shows
  // the server has processed it.
  await barrier(a, server);
  // a's marker: the same trigger on a channel a still holds, framed right
  // after the one a left, on the same way to a.
  const markerName = uniq('unsub-marker-');
  const chMarker = await subscribed(a, markerName, server);
  const markerA = nextEvent(chMarker, 'after', 'the same event on the channel a still holds', { server });
  const gotB = nextEvent(chB, 'after', 'event for the still-subscribed client', { server });
  await expectEmptyOk(await sdk.trigger([name, markerName], 'after', 'x'));
  await gotB;
  await markerA;
  assert.equal(seenA.length, 0, 'unsubscribed client must not receive the event');
  a.disconnect();
  b.disconnect();
});
