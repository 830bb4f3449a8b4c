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
  sleep,
  describeError,
} from './harness.mjs';

let server;
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
  await barrier(a, server);
  await sleep(200);
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
  await barrier(a, server);
  await sleep(200);
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
  await barrier(b, server);
  await sleep(300);
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
  await barrier(b, server);
  await sleep(300);
  assert.equal(atB.length, 0);
  assert.equal(a.connection.state, 'connected');
  a.disconnect();
  b.disconnect();
});

test('client event rate limit: a burst of 15 gives 4301 errors, at most 10 delivered, connection kept', async () => {
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

  const started = Date.now();
  for (let i = 0; i < 15; i++) chA.trigger('client-burst', { i });
  const sendMs = Date.now() - started;

  const rateErrors = () => errors.filter((e) => errorCode(e.data) === 4301);
  await waitUntil(() => rateErrors().length >= 1, 'a 4301 pusher:error for the sender', { server });
  // Everything the server accepted is delivered promptly; count what arrived
  // within the same second as the burst.
  await waitUntil(() => delivered.length >= 1, 'at least one client event delivered', { server });
  await sleep(Math.max(0, 900 - (Date.now() - started)));
  const deliveredInSecond = delivered.length;
  assert.ok(sendMs < 500, `burst was sent in ${sendMs} ms`);
  assert.ok(deliveredInSecond <= 10, `at most 10 delivered within the second, got ${deliveredInSecond}`);
  assert.deepEqual(
    delivered.map((d) => d.data.i),
    [...Array(deliveredInSecond).keys()],
    'the accepted events are the first ones, in order',
  );
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
  await barrier(a, server);
  await barrier(b, server);
  await sleep(300);
  assert.equal(atB.length, 0);
  assert.equal(a.connection.state, 'connected');
  a.disconnect();
  b.disconnect();
});
