// pusher-js's HTTP fallback transports from its Node build (which carries
// an XMLHttpRequest of its own): xhr_streaming and xhr_polling sessions are
// connections like WebSockets: channels of every kind, client events with a
// WebSocket peer, presence, and a session whose client went away removed
// (as a member) once it expires.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';

import { startServer, connected, subscribed, nextEvent, uniq, waitUntil, HOST } from './harness.mjs';

// 32 bytes, base64: the master key for private-encrypted channels.
const MASTER_KEY = Buffer.alloc(32, 3).toString('base64');

let server;
let sdk;
before(async () => {
  // A short expiry, so that a gone client's session ends within the test.
  server = await startServer({ serverConfig: { http_session_timeout_secs: 1 } });
  sdk = server.sdk({ encryptionMasterKeyBase64: MASTER_KEY });
});
after(async () => {
  await server?.stop();
});

/** A pusher-js client on one HTTP transport, at the node it would connect to. */
function httpClient(transport, opts = {}) {
  return server.client({
    encryptionMasterKeyBase64: MASTER_KEY,
    ...opts,
    pusherOptions: { enabledTransports: [transport], httpHost: server.host, httpPort: server.wsPort },
  });
}

for (const transport of ['xhr_streaming', 'xhr_polling']) {
  test(`${transport}: connects on that transport and receives events on every channel kind`, async () => {
    const c = httpClient(transport, { user: { user_id: 'h1' } });
    await connected(c, server);
    assert.equal(c.connection.connection.transport.name, transport);
    for (const prefix of ['public-', 'private-', 'presence-', 'private-encrypted-']) {
      const name = uniq(prefix);
      const ch = await subscribed(c, name, server);
      const got = nextEvent(ch, 'e', `an event on ${name}`, { server });
      await sdk.trigger(name, 'e', { on: name });
      assert.deepEqual((await got).data, { on: name });
    }
    c.disconnect();
  });

  test(`${transport}: client events and presence with a WebSocket peer; a gone session is removed`, async () => {
    const name = uniq('presence-room-');
    const h = httpClient(transport, { user: { user_id: 'http-user' } });
    const w = server.client({ user: { user_id: 'ws-user' } });
    await Promise.all([connected(h, server), connected(w, server)]);
    const hc = await subscribed(h, name, server);
    const added = nextEvent(hc, 'pusher:member_added', 'the WebSocket member', { server });
    const wc = await subscribed(w, name, server);
    assert.equal((await added).data.id, 'ws-user');
    assert.equal(wc.members.count, 2);

    const toWs = nextEvent(wc, 'client-ping', 'a client event from the HTTP session', { server });
    hc.trigger('client-ping', { from: 'http' });
    assert.deepEqual((await toWs).data, { from: 'http' });
    const toHttp = nextEvent(hc, 'client-pong', 'a client event from the WebSocket', { server });
    wc.trigger('client-pong', { from: 'ws' });
    assert.deepEqual((await toHttp).data, { from: 'ws' });

    // pusher-js gives up its request without telling the server; the
    // session expires (1 s here) and leaves as a closed WebSocket would.
    const removed = nextEvent(wc, 'pusher:member_removed', 'the expired session leaving', {
      server,
      ms: 10_000,
    });
    h.disconnect();
    assert.equal((await removed).data.id, 'http-user');
    w.disconnect();
  });
}

test('a refused session closes pusher-js as a refused WebSocket would (4001)', async () => {
  const c = server.client({ key: 'no-such-key', pusherOptions: {
    enabledTransports: ['xhr_polling'], httpHost: server.host, httpPort: server.wsPort,
  } });
  const err = nextEvent(c.connection, 'error', 'the refusal', { server });
  const { data } = await err;
  assert.equal(data?.data?.code ?? data?.error?.data?.code, 4001);
  c.disconnect();
});

test('an HTTP-transport session raises the webhooks a WebSocket would, its expiry those of a close', async () => {
  const events = [];
  const hooks = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      events.push(...JSON.parse(body).events);
      res.writeHead(200).end('ok');
    });
  });
  await new Promise((res) => hooks.listen(0, HOST, res));
  const url = `http://${HOST}:${hooks.address().port}/hooks`;
  const hooked = await startServer({
    serverConfig: { http_session_timeout_secs: 1 },
    appConfig: {
      1001:
        `    webhook_delay_ms: 100\n    webhooks:\n      - url: ${url}\n` +
        '        event_types: [channel_occupied, channel_vacated, member_added, member_removed]\n',
    },
  });
  const c = hooked.client({
    user: { user_id: 'hooked-user' },
    pusherOptions: { enabledTransports: ['xhr_polling'], httpHost: hooked.host, httpPort: hooked.wsPort },
  });
  try {
    await connected(c, hooked);
    const name = uniq('presence-hooked-');
    await subscribed(c, name, hooked);
    const seen = (event) => events.some((e) => e.channel === name && e.name === event);
    await waitUntil(() => seen('channel_occupied') && seen('member_added'), 'occupied and member_added', {
      server: hooked,
    });
    c.disconnect();
    await waitUntil(() => seen('channel_vacated') && seen('member_removed'), 'vacated and member_removed', {
      server: hooked,
      ms: 10_000,
    });
    assert.equal(events.find((e) => e.name === 'member_removed' && e.channel === name).user_id, 'hooked-user');
  } finally {
    await hooked.stop();
    hooks.closeAllConnections();
    await new Promise((res) => hooks.close(res));
  }
});
