// pusher-js's HTTP fallback transports in a real browser: headless Chromium
// (Debian's chromium, driven by playwright-core) loads a page with the
// unmodified pusher-js 8 browser build, forced onto `xhr_streaming`, then
// `xhr_polling`, then left to fall back by itself when `ws` fails. Events
// come from the official pusher Node SDK; a pusher-js client in Node, on a
// WebSocket, is the peer for client events and presence.
//
// Every wait is bounded and names what it waited for.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';

import PusherServer from 'pusher';
import PusherClient from 'pusher-js';

import { HOST, WAIT_MS, launchChromium, startStapes } from './harness.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const APP = { id: '1001', key: 'browser-key', secret: 'browser-secret' };
// A 32-byte key for private-encrypted channels, base64.
const MASTER_KEY = Buffer.alloc(32, 7).toString('base64');

const sdk = () =>
  new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: HOST,
    port: String(stapes.port),
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
  });

let stapes;
let page_server;
let browser;

/** A port nothing listens on: bound by the kernel, then released. */
function closedPort() {
  return new Promise((res) => {
    const srv = createTcpServer();
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

const PAGE = `<!doctype html>
<meta charset="utf-8">
<script src="/pusher.js"></script>
<script>
  const q = new URLSearchParams(location.search);
  window.log = [];
  window.pusher = new Pusher(q.get('key'), {
    cluster: 'local',
    wsHost: '${HOST}', wsPort: Number(q.get('wsPort')),
    httpHost: '${HOST}', httpPort: Number(q.get('port')),
    forceTLS: false,
    disableStats: true,
    enabledTransports: q.get('transports').split(','),
    channelAuthorization: { endpoint: '/auth', transport: 'ajax' },
    userAuthentication: { endpoint: '/signin', transport: 'ajax' },
  });
  pusher.connection.bind('state_change', (s) => log.push({ state: s.current }));
  window.record = (channel, event) =>
    pusher.channel(channel).bind(event, (data) => log.push({ channel, event, data }));
</script>`;

/** Reads a form body. */
function form(req) {
  return new Promise((res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => res(new URLSearchParams(body)));
  });
}

/** Serves the page, the pusher-js build, and the app's auth endpoints. */
function startPageServer() {
  const script = readFileSync(
    join(HERE, 'node_modules', 'pusher-js', 'dist', 'web', 'pusher-with-encryption.min.js'),
  );
  const srv = createServer(async (req, res) => {
    const url = new URL(req.url, `http://${HOST}`);
    if (url.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    } else if (url.pathname === '/pusher.js') {
      res.writeHead(200, { 'content-type': 'application/javascript' }).end(script);
    } else if (url.pathname === '/auth') {
      const f = await form(req);
      const channel = f.get('channel_name');
      const presence = channel.startsWith('presence-')
        ? { user_id: 'browser-user', user_info: { name: 'Browser' } }
        : undefined;
      const auth = sdk().authorizeChannel(f.get('socket_id'), channel, presence);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
    } else if (url.pathname === '/signin') {
      const f = await form(req);
      const auth = sdk().authenticateUser(f.get('socket_id'), { id: 'browser-user' });
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((res) => srv.listen(0, HOST, () => res(srv)));
}

/** A pusher-js client in Node on a WebSocket, authorized by the SDK. */
function wsClient() {
  const client = new PusherClient(APP.key, {
    cluster: 'local',
    wsHost: HOST,
    wsPort: stapes.port,
    forceTLS: false,
    disableStats: true,
    enabledTransports: ['ws'],
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        const presence = channelName.startsWith('presence-')
          ? { user_id: 'ws-user', user_info: { name: 'Node' } }
          : undefined;
        cb(null, sdk().authorizeChannel(socketId, channelName, presence));
      },
    },
  });
  return client;
}

function bounded(promise, what) {
  let timer;
  const expired = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** Waits until the page's log has an entry matching `match`. */
async function logged(page, match, what) {
  await page
    .waitForFunction(
      (m) => window.log.some((e) => Object.entries(m).every(([k, v]) => JSON.stringify(e[k]) === JSON.stringify(v))),
      match,
      { timeout: WAIT_MS },
    )
    .catch(async (e) => {
      const log = await page.evaluate(() => JSON.stringify(window.log));
      throw new Error(`timed out waiting for ${what}; page log: ${log}; ${e.message}`);
    });
}

/** Opens the page on `transports`; records which transport requests it made. */
async function openPage(transports, wsPort = stapes.port) {
  const page = await browser.newPage();
  const requests = [];
  const sockets = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('websocket', (ws) => sockets.push(ws.url()));
  const base = `http://${HOST}:${page_server.address().port}/`;
  const query = new URLSearchParams({
    key: APP.key,
    port: String(stapes.port),
    wsPort: String(wsPort),
    transports: transports.join(','),
  });
  await page.goto(`${base}?${query}`);
  await logged(page, { state: 'connected' }, `the page to connect over ${transports}`);
  return { page, requests, sockets };
}

async function subscribed(page, channel) {
  await page.evaluate((channel) => {
    const ch = pusher.subscribe(channel);
    ch.bind('pusher:subscription_succeeded', (data) =>
      log.push({ channel, event: 'subscribed', data: data && data.count !== undefined ? data.count : null }),
    );
    record(channel, 'news');
  }, channel);
  await logged(page, { channel, event: 'subscribed' }, `the subscription to ${channel}`);
}

before(async () => {
  stapes = await startStapes(APP);
  page_server = await startPageServer();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  page_server?.close();
  await stapes?.stop();
});

for (const [transport, path] of [
  ['xhr_streaming', '/xhr_streaming'],
  ['xhr_polling', '/xhr?'],
]) {
  describe(`pusher-js in Chromium on ${transport}`, () => {
    test('connects, subscribes to every channel kind, receives events, client events, presence and sendToUser', async () => {
      const { page, requests, sockets } = await openPage([transport]);
      assert.equal(sockets.length, 0, `no WebSocket was opened: ${sockets}`);
      assert.ok(
        requests.some((u) => u.includes(`/pusher/app/${APP.key}/`) && u.includes(path)),
        `requests went to ${path}: ${requests.join(' ')}`,
      );

      // A cached event, published before the subscription, is replayed.
      await sdk().trigger('cache-last', 'news', { n: 'cached' });
      for (const channel of ['public-news', 'private-room', 'presence-room', 'private-encrypted-secret', 'cache-last']) {
        await subscribed(page, channel);
      }
      await logged(page, { channel: 'cache-last', event: 'news', data: { n: 'cached' } }, 'the cache replay');

      for (const channel of ['public-news', 'private-room', 'presence-room', 'private-encrypted-secret']) {
        await sdk().trigger(channel, 'news', { n: channel });
        await logged(page, { channel, event: 'news', data: { n: channel } }, `the event on ${channel}`);
      }

      // Presence and client events with a WebSocket peer, both ways.
      await page.evaluate(() => {
        pusher.channel('presence-room').bind('pusher:member_added', (m) =>
          log.push({ channel: 'presence-room', event: 'added', data: m.id }),
        );
        record('private-room', 'client-from-ws');
      });
      const peer = wsClient();
      try {
        const got = [];
        const room = peer.subscribe('private-room');
        room.bind('client-from-browser', (d) => got.push(d));
        await bounded(
          new Promise((r) => room.bind('pusher:subscription_succeeded', r)),
          'the Node peer on private-room',
        );
        const presence = peer.subscribe('presence-room');
        await bounded(
          new Promise((r) => presence.bind('pusher:subscription_succeeded', r)),
          'the Node peer on presence-room',
        );
        assert.equal(presence.members.count, 2, 'the browser session is a member');
        await logged(page, { channel: 'presence-room', event: 'added', data: 'ws-user' }, 'member_added');

        await page.evaluate(() => pusher.channel('private-room').trigger('client-from-browser', { via: 'http' }));
        await bounded(
          (async () => {
            while (got.length === 0) await new Promise((r) => setTimeout(r, 20));
          })(),
          'the client event from the browser',
        );
        assert.deepEqual(got[0], { via: 'http' });
        room.trigger('client-from-ws', { via: 'ws' });
        await logged(page, { channel: 'private-room', event: 'client-from-ws', data: { via: 'ws' } }, 'the client event from Node');
      } finally {
        peer.disconnect();
      }

      // Sign in, then an event to the user.
      await page.evaluate(() => {
        pusher.user.bind('to-user', (data) => log.push({ event: 'to-user', data }));
        pusher.signin();
        return pusher.user.signinDonePromise;
      });
      // pusher-js subscribes to the user's channel once signed in.
      await page
        .waitForFunction(() => pusher.user.serverToUserChannel?.subscribed === true, null, {
          timeout: WAIT_MS,
        })
        .catch(() => assert.fail('timed out waiting for the sign-in and #server-to-user- channel'));
      await sdk().sendToUser('browser-user', 'to-user', { hi: 'user' });
      await logged(page, { event: 'to-user', data: { hi: 'user' } }, 'the event sent to the user');

      await page.evaluate(() => pusher.disconnect());
      await page.close();
    });
  });
}

test('xhr_streaming: past 256 KiB pusher-js opens the next stream and no event is lost or repeated', async () => {
  const { page, requests } = await openPage(['xhr_streaming']);
  await subscribed(page, 'public-bulk');
  await page.evaluate(() => record('public-bulk', 'bulk'));
  // 40 events of about 8 KB, some of it non-ASCII: about 320 KiB on the wire.
  const text = 'é✓'.repeat(500) + 'x'.repeat(6000);
  const n = 40;
  for (let i = 0; i < n; i++) await sdk().trigger('public-bulk', 'bulk', { i, text });
  await page
    .waitForFunction((n) => window.log.filter((e) => e.event === 'bulk').length >= n, n, { timeout: WAIT_MS })
    .catch(() => assert.fail('timed out waiting for every bulk event'));
  const got = await page.evaluate(() =>
    window.log.filter((e) => e.event === 'bulk').map((e) => (e.data.text.length === 7000 ? e.data.i : -1)),
  );
  assert.deepEqual(got, [...Array(n).keys()], 'every event once, in order, intact');
  const streams = requests.filter((u) => u.includes('/xhr_streaming'));
  assert.ok(streams.length >= 2, `pusher-js opened another stream: ${streams.length}`);
  await page.evaluate(() => pusher.disconnect());
  await page.close();
});

test('pusher-js falls back to the HTTP transports by itself when ws fails', async () => {
  const wsPort = await closedPort();
  const { page, requests } = await openPage(['ws', 'xhr_streaming', 'xhr_polling'], wsPort);
  assert.ok(
    requests.some((u) => u.includes('/xhr_streaming')),
    `fell back to xhr_streaming: ${requests.join(' ')}`,
  );
  await subscribed(page, 'public-fallback');
  await sdk().trigger('public-fallback', 'news', { n: 'after fallback' });
  await logged(page, { channel: 'public-fallback', event: 'news', data: { n: 'after fallback' } }, 'the event after the fallback');
  await page.evaluate(() => pusher.disconnect());
  await page.close();
});
