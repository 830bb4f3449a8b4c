// Server-side liveness and restarts as pusher-js sees them (spec §3.2–§3.4).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServer,
  connected,
  subscribed,
  nextEvent,
  record,
  errorCode,
  waitUntil,
  uniq,
  oneNodeOnly,
} from './harness.mjs';

test('short server activity_timeout: announced to pusher-js, and a live client is never dropped', async () => {
  const server = await startServer({ serverConfig: { activity_timeout_secs: 1, pong_timeout_secs: 2 } });
  try {
    // pusher-js uses min(its own activityTimeout, the server's) for pinging.
    const c = server.client();
    const socketId = await connected(c, server);
    assert.equal(c.connection.activityTimeout, 1000, 'activity_timeout from connection_established, in ms');
    const states = record(c.connection, 'state_change');
    const errors = record(c.connection, 'error');
    const beats = [];
    c.connection.bind('message', (m) => {
      if (m.event === 'pusher:ping' || m.event === 'pusher:pong') beats.push(m.event);
    });
    // Several activity periods, counted by their pings and pongs rather than
    // timed: each silent second gets a ping from one side and its answer.
    await waitUntil(() => beats.length >= 4, 'four pings or pongs', { ms: 15000, server });
    assert.equal(c.connection.state, 'connected');
    assert.equal(c.connection.socket_id, socketId, 'same connection throughout');
    assert.deepEqual(states, [], 'no state changes');
    assert.deepEqual(errors, [], 'no errors');
    c.disconnect();
  } finally {
    await server.stop();
  }
});

test(
  'server stop (SIGTERM): pusher-js does not give up, and reconnects and resubscribes when the server is back',
  oneNodeOnly('restarts the one server on its own port'),
  async () => {
    const first = await startServer();
    let second;
    const c = first.client();
    try {
      const oldId = await connected(c, first);
      const name = uniq('restart-');
      const ch = await subscribed(c, name, first);
      const errors = record(c.connection, 'error');
      const states = record(c.connection, 'state_change');
      const resubscribed = nextEvent(ch, 'pusher:subscription_succeeded', 'resubscription after restart', {
        ms: 30_000,
      });

      await first.stop({ keepClients: true });
      // The close must not be one pusher-js treats as "refused" (4000-4099,
      // 4300+), or it would stay disconnected for good.
      await waitUntil(() => c.connection.state !== 'connected', 'pusher-js notices the server went away', {
        ms: 5000,
      });
      const codes = errors.map((e) => errorCode(e.data)).filter((x) => x !== undefined);
      for (const code of codes) {
        assert.ok(!(code >= 4000 && code < 4100) && !(code >= 4300), `shutdown used a refusing code ${code}`);
      }
      assert.ok(
        !states.some((s) => s.data.current === 'disconnected' || s.data.current === 'failed'),
        `pusher-js keeps trying: ${states.map((s) => s.data.current)}`,
      );

      second = await startServer({ port: first.port });
      // pusher-js's own back-off after failed attempts decides when it comes
      // back (about 15 s here), hence the long bound.
      await waitUntil(() => c.connection.state === 'connected', 'pusher-js reconnects to the restarted server', {
        ms: 30_000,
        server: second,
      });
      assert.notEqual(c.connection.socket_id, oldId, 'a new socket id after reconnecting');
      await resubscribed;
      assert.equal(ch.subscribed, true);
    } finally {
      c.disconnect();
      if (second) await second.stop();
      else await first.stop();
    }
  },
);
