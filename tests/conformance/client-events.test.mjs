// Client events (spec §9).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServer,
  connected,
  subscribed,
  nextEvent,
  record,
  recordFrames,
  barrier,
  errorCode,
  waitUntil,
  uniq,
  describeError,
  marker,
  sdkFor,
} from './harness.mjs';

let server;

/**
 * A marker for "a's client event did not reach b": a client event from a
 * on a private channel both hold takes the same way from a's shard to b's,
 * after anything a sent before it.
 */
async function clientMarker(a, b) {
  const name = uniq('private-marker-');
  const chA = await subscribed(a, name, server);
  const chB = await subscribed(b, name, server);
  const got = nextEvent(chB, 'client-marker', 'the client marker at b', { server });
  chA.trigger('client-marker', {});
  await got;
}

before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test('client event on a private channel reaches the other subscriber, not the sender', async () => {
  const a = server.client();
  const b = server.client();
  await Promise.all([connected(a, server), connected(b, server)]);
  const name = uniq('private-chat-');
  const chA = await subscribed(a, name, server);
  const chB = await subscribed(b, name, server);
  const echoed = recordFrames(a, name, 'client-msg');
  const got = nextEvent(chB, 'client-msg', 'client event at the receiver', { server });
  assert.equal(chA.trigger('client-msg', { text: 'hello', n: [1, 2] }), true);
  const { data, meta } = await got;
  assert.deepEqual(data, { text: 'hello', n: [1, 2] });
  assert.equal(meta.user_id, undefined, 'no user_id on private channels');
  // The fan-out that would echo it runs on the sender's shard before the
  // barrier's subscription there is answered.
  await barrier(a, server);
  assert.equal(echoed.length, 0, 'sender must not get its own client event');
  a.disconnect();
  b.disconnect();
});

test('client event on a presence channel carries the sender user_id in the metadata', async () => {
  const a = server.client({ user: { user_id: 'sender-1', user_info: { role: 'writer' } } });
  const b = server.client({ user: { user_id: 'reader-2' } });
  await Promise.all([connected(a, server), connected(b, server)]);
  const name = uniq('presence-chat-');
  const chA = await subscribed(a, name, server);
  const chB = await subscribed(b, name, server);
  const echoed = recordFrames(a, name, 'client-typing');
  const got = nextEvent(chB, 'client-typing', 'presence client event', { server });
  chA.trigger('client-typing', { typing: true });
  const { data, meta } = await got;
  assert.deepEqual(data, { typing: true });
  assert.equal(meta.user_id, 'sender-1');
  // The fan-out that would echo it runs on the sender's shard before the
  // barrier's subscription there is answered.
  await barrier(a, server);
  assert.equal(echoed.length, 0, 'sender must not get its own client event');
  a.disconnect();
  b.disconnect();
});

test('app with client events disabled: sender gets pusher:error, nothing is delivered', async () => {
  const app = server.apps.noClient;
  const a = server.client({ app });
  const b = server.client({ app });
  await Promise.all([connected(a, server), connected(b, server)]);
  const socketId = a.connection.socket_id;
  const name = uniq('private-quiet-');
  const chA = await subscribed(a, name, server);
  await subscribed(b, name, server);
  const atB = recordFrames(b, name, 'client-nope');
  const err = nextEvent(a.connection, 'error', 'pusher:error for a disabled client event', {
    server,
    filter: (e) => e && e.type === 'PusherError',
  });
  chA.trigger('client-nope', { x: 1 });
  const { data: e } = await err;
  assert.equal(typeof e.data.message, 'string', describeError(e));
  // The app takes no client events, so no client marker can follow the
  // same way; an API event published after the refusal was answered is the
  // closest.
  await marker(sdkFor(server, app), b, name);
  assert.equal(atB.length, 0, 'client event must not be delivered when the app disables them');
  assert.equal(a.connection.state, 'connected');
  assert.equal(a.connection.socket_id, socketId, 'same connection');
  a.disconnect();
  b.disconnect();
});

test('client event on a public channel is rejected with pusher:error and not delivered', async () => {
  const a = server.client();
  const b = server.client();
  await Promise.all([connected(a, server), connected(b, server)]);
  const name = uniq('public-chat-');
  const chA = await subscribed(a, name, server);
  await subscribed(b, name, server);
  const atB = recordFrames(b, name, 'client-public');
  const err = nextEvent(a.connection, 'error', 'pusher:error for a client event on a public channel', {
    server,
    filter: (e) => e && e.type === 'PusherError',
  });
  chA.trigger('client-public', {});
  await err;
  await clientMarker(a, b);
  assert.equal(atB.length, 0);
  assert.equal(a.connection.state, 'connected');
  a.disconnect();
  b.disconnect();
});

test('client event rate limit: a burst of 15 gives 4301 errors, the first 10 delivered, connection kept', async () => {
  const a = server.client();
  const b = server.client();
  await Promise.all([connected(a, server), connected(b, server)]);
  const socketId = a.connection.socket_id;
  const name = uniq('private-burst-');
  const chA = await subscribed(a, name, server);
  const chB = await subscribed(b, name, server);
  const states = record(a.connection, 'state_change');
  const errors = record(a.connection, 'error');
  const delivered = record(chB, 'client-burst');

  // One synchronous loop: far quicker than the 100 ms in which the bucket
  // (10, refilled at 10/s) gains a token, so the 11th on are refused. The
  // exact refill is the unit tests' (fake clock), not this one's.
  for (let i = 0; i < 15; i++) chA.trigger('client-burst', { i });

  const rateErrors = () => errors.filter((e) => errorCode(e.data) === 4301);
  // Every event is answered one way or the other: delivered to b, or
  // refused to a with 4301. The refusals are all in once a barrier on a
  // (same shard, after the burst) is answered.
  await barrier(a, server);
  const refused = rateErrors().length;
  assert.ok(refused >= 1, 'a 4301 pusher:error for the sender');
  await waitUntil(() => delivered.length >= 15 - refused, 'the accepted client events at b', { server });
  const got = delivered.map((d) => d.data.i);
  assert.equal(got.length, 15 - refused, `each event is either delivered or refused: ${got}`);
  assert.deepEqual(got.slice(0, 10), [...Array(10).keys()], 'the first 10 fit the bucket, in order');
  assert.deepEqual(got, [...got].sort((x, y) => x - y), 'in order');
  assert.equal(a.connection.state, 'connected');
  assert.equal(a.connection.socket_id, socketId, 'same connection (43xx is never a close code)');
  assert.deepEqual(states, [], 'no state changes');
  a.disconnect();
  b.disconnect();
});

test('client event from a connection not subscribed to the channel is not delivered', async () => {
  const a = server.client();
  const b = server.client();
  await Promise.all([connected(a, server), connected(b, server)]);
  const name = uniq('private-members-only-');
  await subscribed(b, name, server);
  const atB = recordFrames(b, name, 'client-intruder');
  // Send the raw frame, as pusher-js only triggers on channels it holds.
  a.send_event('client-intruder', { x: 1 }, name);
  await clientMarker(a, b);
  assert.equal(atB.length, 0);
  assert.equal(a.connection.state, 'connected');
  a.disconnect();
  b.disconnect();
});
