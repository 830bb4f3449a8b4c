// The debug console in a real browser: headless Chromium (Debian's
// chromium, driven by playwright-core) opens stapes's /console page,
// signs in with the app's id, key and secret, and must show a pusher-js
// connection (in Node) appearing and an event the official pusher Node SDK
// publishes; then the page's own publish form must reach that subscriber.
// A screenshot of the console is kept as a test artifact:
// $STAPES_ARTIFACTS/console.png, default <repo>/target/test-artifacts/.
//
// Every wait is bounded and names what it waited for.

import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';

import PusherServer from 'pusher';
import PusherClient from 'pusher-js';

import { HOST, WAIT_MS, launchChromium, startStapes, waitFor } from './harness.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const APP = { id: '1001', key: 'console-key', secret: 'console-secret' };

let stapes;
let browser;

before(async () => {
  stapes = await startStapes(APP, 'console: true');
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await stapes?.stop();
});

test('the console shows a connection and an event, and its form publishes', async () => {
  const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`http://${HOST}:${stapes.port}/console?app_id=${APP.id}&key=${APP.key}`);
  await page.fill('#app-secret', APP.secret);
  await page.click('#connect');
  await page.waitForSelector('#status.on', { timeout: WAIT_MS });
  assert.match(await page.textContent('#status'), /Watching app 1001/);

  // A subscriber appears on the page: its connection, with its socket id.
  const client = new PusherClient(APP.key, {
    cluster: 'local',
    wsHost: HOST,
    wsPort: stapes.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
  });
  try {
    const channel = client.subscribe('console-test');
    await waitFor('the subscription', (done) => channel.bind('pusher:subscription_succeeded', done));
    const socketId = client.connection.socket_id;
    const events = [];
    let heard = () => {};
    channel.bind_global((name, data) => {
      events.push({ name, data });
      heard();
    });
    const received = (name) =>
      waitFor(`${name} at the subscriber`, (done) => {
        const check = () => {
          const e = events.find((x) => x.name === name);
          if (e) done(e);
        };
        heard = check;
        check();
      });

    const connected = page.locator('#events li[data-type="connected"]', { hasText: socketId });
    await connected.waitFor({ timeout: WAIT_MS });
    const subscribed = page.locator('#events li[data-type="subscribed"]', { hasText: 'console-test' });
    await subscribed.waitFor({ timeout: WAIT_MS });

    // An event published through the Node SDK shows, with its data.
    const sdk = new PusherServer({
      appId: APP.id,
      key: APP.key,
      secret: APP.secret,
      host: HOST,
      port: String(stapes.port),
      useTLS: false,
    });
    await sdk.trigger('console-test', 'sdk-event', { from: 'the node sdk' });
    await received('sdk-event');
    const shown = page.locator('#events li[data-type="api_message"]', { hasText: 'sdk-event' });
    await shown.waitFor({ timeout: WAIT_MS });
    assert.match(await shown.textContent(), /the node sdk/);

    // The counters came in: one connection on the node.
    await page.waitForFunction(() => document.getElementById('connections').textContent === '1', null, {
      timeout: WAIT_MS,
    });

    // The page's publish form reaches the subscriber.
    await page.fill('#pub-channel', 'console-test');
    await page.fill('#pub-event', 'from-the-page');
    await page.fill('#pub-data', '{"hello":"from the browser"}');
    await page.click('#publish');
    const got = await received('from-the-page');
    assert.deepEqual(got.data, { hello: 'from the browser' });
    await page.waitForSelector('#pub-result.ok', { timeout: WAIT_MS });

    // The type filter keeps only what it names.
    await page.locator('#events li[data-type="api_message"]', { hasText: 'from-the-page' }).waitFor({
      timeout: WAIT_MS,
    });
    await page.selectOption('#filter-type', 'api_message');
    const types = await page.$$eval('#events li[data-type]', (lis) => lis.map((li) => li.dataset.type));
    assert.ok(types.length >= 2 && types.every((t) => t === 'api_message'), String(types));
    await page.selectOption('#filter-type', '');
    // Open one event's JSON for the screenshot.
    await shown.locator('summary').click();

    const artifacts = process.env.STAPES_ARTIFACTS ?? resolve(HERE, '..', '..', 'target', 'test-artifacts');
    mkdirSync(artifacts, { recursive: true });
    const shot = join(artifacts, 'console.png');
    await page.screenshot({ path: shot });
    console.log(`console screenshot: ${shot}`);
    assert.deepEqual(errors, [], 'no script errors on the page');
  } finally {
    client.disconnect();
    await page.close();
  }
});
