// HTTP API error statuses seen through the official SDK, plus requests signed
// here per spec §12.2 where the SDK validates locally (spec §12.3–§12.5).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServer,
  connected,
  subscribed,
  recordFrames,
  sdkRejection,
  signedFetch,
  uniq,
  waitUntil,
} from './harness.mjs';

let server;
let sdk;
before(async () => {
  server = await startServer();
  sdk = server.sdk();
});
after(async () => {
  await server?.stop();
});

test('request signed here (positive control for the hand-made signature) gets 200 {}', async () => {
  const res = await signedFetch(server, {
    method: 'POST',
    path: `/apps/${server.appId}/events`,
    body: { name: 'ping', channels: ['control'], data: '{}' },
  });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(JSON.parse(res.text), {});
});

test('wrong secret: SDK rejects with status 401', async () => {
  const bad = server.sdk({ secret: 'not-the-secret' });
  const err = await sdkRejection(() => bad.trigger('any-channel', 'e', 'x'));
  assert.equal(err.status, 401, `got ${err.status}: ${err.body ?? err.message}`);
});

test('unknown auth_key: 401', async () => {
  const bad = server.sdk({ key: 'not-the-key' });
  const err = await sdkRejection(() => bad.trigger('any-channel', 'e', 'x'));
  assert.equal(err.status, 401, `got ${err.status}: ${err.body ?? err.message}`);
});

test('expired auth_timestamp (over 600 s old): 401', async () => {
  const res = await signedFetch(server, {
    method: 'POST',
    path: `/apps/${server.appId}/events`,
    body: { name: 'e', channels: ['c'], data: 'x' },
    timestamp: Math.floor(Date.now() / 1000) - 1000,
  });
  assert.equal(res.status, 401, res.text);
});

test('body_md5 not matching the body: 401', async () => {
  const signed = JSON.stringify({ name: 'e', channels: ['c'], data: 'x' });
  const res = await signedFetch(server, {
    method: 'POST',
    path: `/apps/${server.appId}/events`,
    body: signed.replace('"x"', '"y"'),
    md5Of: signed,
  });
  assert.equal(res.status, 401, res.text);
});

test('data over 10 KB: 413; exactly 10240 bytes is accepted', async () => {
  const name = uniq('size-');
  const err = await sdkRejection(() => sdk.trigger(name, 'big', 'x'.repeat(10 * 1024 + 1)));
  assert.equal(err.status, 413, `got ${err.status}: ${err.body ?? err.message}`);
  const ok = await sdk.trigger(name, 'big', 'x'.repeat(10 * 1024));
  assert.equal(ok.status, 200);
  assert.deepEqual(await ok.json(), {});
});

test('batch with one event over 10 KB: 413', async () => {
  const err = await sdkRejection(() =>
    sdk.triggerBatch([
      { channel: 'a', name: 'e', data: 'small' },
      { channel: 'b', name: 'e', data: 'x'.repeat(11 * 1024) },
    ]),
  );
  assert.equal(err.status, 413, `got ${err.status}: ${err.body ?? err.message}`);
});

test('invalid channel name (SDK-signed request that skips local validation): 400', async () => {
  // sdk.trigger validates channel names locally, so post the body directly;
  // the SDK still signs it.
  const err = await sdkRejection(() =>
    sdk.post({ path: '/events', body: { name: 'e', channels: ['bad channel!'], data: 'x' } }),
  );
  assert.equal(err.status, 400, `got ${err.status}: ${err.body ?? err.message}`);
});

test('invalid channel name (request signed here, single `channel` field): 400', async () => {
  const res = await signedFetch(server, {
    method: 'POST',
    path: `/apps/${server.appId}/events`,
    body: { name: 'e', channel: 'dollar$sign', data: 'x' },
  });
  assert.equal(res.status, 400, res.text);
});

test('channel name over 200 characters: 400', async () => {
  const err = await sdkRejection(() =>
    sdk.post({ path: '/events', body: { name: 'e', channels: ['c'.repeat(201)], data: 'x' } }),
  );
  assert.equal(err.status, 400, `got ${err.status}: ${err.body ?? err.message}`);
});

test('more than 100 channels in one trigger: 400', async () => {
  const channels = [...Array(101).keys()].map((i) => `ch-${i}`);
  const err = await sdkRejection(() => sdk.post({ path: '/events', body: { name: 'e', channels, data: 'x' } }));
  assert.equal(err.status, 400, `got ${err.status}: ${err.body ?? err.message}`);
});

test('missing event name: 400', async () => {
  const err = await sdkRejection(() => sdk.post({ path: '/events', body: { channels: ['c'], data: 'x' } }));
  assert.equal(err.status, 400, `got ${err.status}: ${err.body ?? err.message}`);
});

test('unknown app id: 404', async () => {
  const other = server.sdk({ appId: '9999' });
  const err = await sdkRejection(() => other.trigger('any-channel', 'e', 'x'));
  assert.equal(err.status, 404, `got ${err.status}: ${err.body ?? err.message}`);
});

test('batch of 11 events: 400, and none of them is published', async () => {
  const c = server.client();
  await connected(c, server);
  const name = uniq('batch-too-big-');
  await subscribed(c, name, server);
  const seen = recordFrames(c, name, 'e');
  const oks = recordFrames(c, name, 'ok');
  const batch = [...Array(11).keys()].map((i) => ({ channel: name, name: 'e', data: String(i) }));
  const err = await sdkRejection(() => sdk.triggerBatch(batch));
  assert.equal(err.status, 400, `got ${err.status}: ${err.body ?? err.message}`);
  // A batch of 10 is fine and its events arrive; published after the
  // rejected one, they are the marker that it left nothing behind.
  const ok = await sdk.triggerBatch(batch.slice(0, 10).map((e) => ({ ...e, name: 'ok' })));
  assert.equal(ok.status, 200);
  assert.deepEqual(await ok.json(), {});
  await waitUntil(() => oks.length === 10, 'the 10 events of the accepted batch', { server });
  assert.equal(seen.length, 0, 'nothing from the rejected batch is delivered');
  c.disconnect();
});
