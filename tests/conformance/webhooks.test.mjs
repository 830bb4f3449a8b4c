// Webhooks (spec §13) checked by the official Node SDK's own validator:
// `pusher.webhook({headers, rawBody})` must find stapes's requests valid
// (key, HMAC-SHA256 signature, Content-Type) and read their events.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';

import { startServer, connected, subscribed, waitUntil, uniq, HOST } from './harness.mjs';

/** A loopback receiver that keeps every request's headers and raw body. */
async function receiver() {
  const requests = [];
  const srv = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      requests.push({ headers: req.headers, rawBody: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
    });
  });
  await new Promise((res) => srv.listen(0, HOST, res));
  const { port } = srv.address();
  return {
    url: `http://${HOST}:${port}/pusher/webhooks`,
    requests,
    close: () => new Promise((res) => {
      srv.closeAllConnections();
      srv.close(res);
    }),
  };
}

test('webhooks from stapes pass the Node SDK validator and carry the events', async () => {
  const hooks = await receiver();
  const server = await startServer({
    appConfig: {
      1001: `    webhook_delay_ms: 200\n    webhooks:\n      - url: ${hooks.url}\n        event_types: [channel_occupied, channel_vacated]\n`,
    },
  });
  const c = server.client();
  try {
    await connected(c, server);
    const name = uniq('hooked-');
    await subscribed(c, name, server);
    const matching = (event) =>
      hooks.requests.filter((r) => JSON.parse(r.rawBody).events.some((e) => e.channel === name && e.name === event));
    await waitUntil(() => matching('channel_occupied').length === 1, 'channel_occupied webhook', { server });
    c.unsubscribe(name);
    await waitUntil(() => matching('channel_vacated').length === 1, 'channel_vacated webhook', { server });
    // Decided once, on two nodes too: no second channel_occupied came
    // before the vacated one.
    assert.equal(matching('channel_occupied').length, 1);

    const sdk = server.sdk();
    for (const request of [...matching('channel_occupied'), ...matching('channel_vacated')]) {
      const hook = sdk.webhook(request);
      assert.equal(hook.isValid(), true, `valid: ${JSON.stringify(request.headers)} ${request.rawBody}`);
      assert.ok(hook.getTime() instanceof Date && Math.abs(hook.getTime() - Date.now()) < 60_000);
      assert.equal(hook.getEvents().length, 1);
      assert.equal(hook.getEvents()[0].channel, name);
    }
    assert.deepEqual(sdk.webhook(matching('channel_occupied')[0]).getEvents(), [
      { name: 'channel_occupied', channel: name },
    ]);
    assert.deepEqual(sdk.webhook(matching('channel_vacated')[0]).getEvents(), [
      { name: 'channel_vacated', channel: name },
    ]);

    // The validator is not a rubber stamp: a changed body or another app's
    // secret fails it.
    const original = matching('channel_occupied')[0];
    const tampered = { ...original, rawBody: original.rawBody.replace(name, `${name}x`) };
    assert.equal(sdk.webhook(tampered).isValid(), false);
    const other = server.sdk({ key: server.apps.noClient.key, secret: server.apps.noClient.secret });
    assert.equal(other.webhook(original).isValid(), false);
  } finally {
    c.disconnect();
    await server.stop();
    await hooks.close();
  }
});
