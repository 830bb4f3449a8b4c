// IPÊ drop-in: IPÊ's README sample config, started with IPÊ's command line,
// serves pusher-js and the official Node SDK (issue #13).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, connected, subscribed, nextEvent, uniq, TWO_NODES, oneNodeOnly } from './harness.mjs';

// IPÊ's sample config is served as IPÊ would read it, which has no cluster.
const ONE_NODE = oneNodeOnly("IPÊ's sample config file has no redis section");

let server;
before(async () => {
  if (!TWO_NODES) server = await startServer({ ipe: true });
});
after(async () => {
  await server?.stop();
});

test('IPÊ config: a pusher-js client receives an event the Node SDK triggers', ONE_NODE, async () => {
  const c = server.client();
  await connected(c, server);
  const name = uniq('ipe-');
  const ch = await subscribed(c, name, server);
  const got = nextEvent(ch, 'hello', 'event through the IPÊ app', { server });
  const res = await server.sdk().trigger(name, 'hello', { from: 'ipe' });
  assert.equal(res.status, 200);
  assert.deepEqual((await got).data, { from: 'ipe' });
  c.disconnect();
});

test('IPÊ config: user_events lets clients trigger client events on private channels', ONE_NODE, async () => {
  const a = server.client();
  const b = server.client();
  await connected(a, server);
  await connected(b, server);
  const name = uniq('private-ipe-');
  const chA = await subscribed(a, name, server);
  const chB = await subscribed(b, name, server);
  const got = nextEvent(chB, 'client-ping', 'client event', { server });
  assert.equal(chA.trigger('client-ping', { n: 1 }), true);
  assert.deepEqual((await got).data, { n: 1 });
  a.disconnect();
  b.disconnect();
});
