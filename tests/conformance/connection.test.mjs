// Connection lifecycle with the real pusher-js client (spec §3).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, connected, nextEvent, record, errorCode, waitUntil, sleep } from './harness.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test('pusher-js connects and gets a socket id of the form <digits>.<digits>', async () => {
  const c = server.client();
  const socketId = await connected(c, server);
  assert.equal(c.connection.state, 'connected');
  assert.match(socketId, /^\d+\.\d+$/);
  c.disconnect();
});

test('socket ids of two connections differ', async () => {
  const a = server.client();
  const b = server.client();
  const [ia, ib] = await Promise.all([connected(a, server), connected(b, server)]);
  assert.notEqual(ia, ib);
  a.disconnect();
  b.disconnect();
});

test('unknown app key: error 4001 reaches pusher-js, which gives up (disconnected, no retry)', async () => {
  const c = server.client({ key: 'no-such-key' });
  const states = record(c.connection, 'state_change');
  const { data: err } = await nextEvent(c.connection, 'error', 'error event for an unknown app key', {
    server,
    filter: (e) => errorCode(e) !== undefined,
  });
  assert.equal(errorCode(err), 4001, `expected code 4001, got ${JSON.stringify(err)}`);
  // pusher-js maps 4000-4099 to "refused": it disconnects and does not retry.
  await waitUntil(() => c.connection.state === 'disconnected', 'state disconnected after 4001', { server });
  await sleep(1500); // a retry would show up as a new `connecting` state within this window
  assert.equal(c.connection.state, 'disconnected');
  // Recording starts after the constructor's synchronous `connecting`.
  const reached = states.map((s) => s.data.current);
  assert.deepEqual(reached, ['disconnected'], 'never connected, no reconnect attempt');
  c.disconnect();
});

test('server answers pusher:ping with pusher:pong, so a client with a short activity timeout stays connected', async () => {
  // pusher-js pings after `activityTimeout` ms without inbound frames and
  // reconnects (new socket id) if no frame arrives within `pongTimeout`.
  const c = server.client({ pusherOptions: { activityTimeout: 400, pongTimeout: 2000 } });
  const socketId = await connected(c, server);
  const states = record(c.connection, 'state_change');
  const messages = record(c.connection, 'message');
  const pongs = () => messages.filter((m) => m.data.event === 'pusher:pong').length;
  await waitUntil(() => pongs() >= 3, 'three pusher:pong replies to pusher-js pings', { ms: 8000, server });
  assert.equal(c.connection.state, 'connected');
  assert.equal(c.connection.socket_id, socketId, 'same connection (no reconnect)');
  assert.deepEqual(
    states.map((s) => s.data.current),
    [],
    'no state changes while pinging',
  );
  const pong = messages.find((m) => m.data.event === 'pusher:pong');
  assert.equal(pong.data.channel, undefined, 'pusher:pong carries no channel');
  c.disconnect();
});
