// Private and end-to-end encrypted channels (spec §3.5, §5.2, §5.4, §7).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import {
  startServer,
  connected,
  subscribed,
  nextEvent,
  record,
  recordFrames,
  barrier,
  uniq,
  describeError,
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

test('private channel: subscription authorized with the SDK signature succeeds and receives events', async () => {
  const c = server.client();
  await connected(c, server);
  const name = uniq('private-');
  const ch = await subscribed(c, name, server);
  const got = nextEvent(ch, 'secret', 'event on private channel', { server });
  const res = await sdk.trigger(name, 'secret', { ok: true });
  assert.equal(res.status, 200);
  assert.deepEqual((await got).data, { ok: true });
  c.disconnect();
});

const badAuths = {
  'a wrong signature': (p, s) => ({ auth: `${s.config.token.key}:${'0'.repeat(64)}` }),
  'a signature for another socket id': (p, s) => s.authorizeChannel('1234.5678', p.channelName),
  'a signature for another channel': (p, s) => s.authorizeChannel(p.socketId, `${p.channelName}-other`),
  'the wrong app key in front of a valid signature': (p, s) => {
    const { auth } = s.authorizeChannel(p.socketId, p.channelName);
    return { auth: `other-key:${auth.split(':')[1]}` };
  },
  'an auth string without a colon': () => ({ auth: 'garbage' }),
};

for (const [what, authorize] of Object.entries(badAuths)) {
  test(`private channel with ${what}: error, no subscription, connection kept`, async () => {
    const c = server.client({
      authorize: (params, signer) =>
        params.channelName.startsWith('private-bad-') ? authorize(params, signer) : signer.authorizeChannel(params.socketId, params.channelName),
    });
    const socketId = await connected(c, server);
    const states = record(c.connection, 'state_change');
    const connErrors = record(c.connection, 'error');
    const name = uniq('private-bad-');
    const ch = c.subscribe(name);
    const succeeded = record(ch, 'pusher:subscription_succeeded');
    // Spec §3.5/§5.4: a pusher:error (pusher-js: connection `error` event);
    // a channel-scoped pusher:subscription_error is an allowed extra.
    const gotError = nextEvent(c.connection, 'error', `pusher:error for ${what}`, {
      server,
      filter: (e) => e && e.type === 'PusherError',
    });
    const { data: err } = await gotError;
    assert.equal(typeof err.data.message, 'string', `error has a message: ${describeError(err)}`);
    // A good subscription on the same connection still works, and is handled
    // after the bad one, so the bad one has had its answer by then.
    const good = await subscribed(c, uniq('private-good-'), server);
    assert.equal(good.subscribed, true);
    assert.equal(succeeded.length, 0, 'bad subscription must not succeed');
    assert.equal(ch.subscribed, false);
    assert.equal(c.connection.state, 'connected');
    assert.equal(c.connection.socket_id, socketId, 'same connection');
    assert.deepEqual(states, [], 'no state changes');
    assert.ok(
      connErrors.every((e) => e.data.type === 'PusherError'),
      `only pusher:error frames, no close: ${describeError(connErrors)}`,
    );
    c.disconnect();
  });
}

test('private channel events are not delivered to a connection whose subscription failed', async () => {
  const good = server.client();
  const bad = server.client({ authorize: () => ({ auth: 'conformance-key:' + 'f'.repeat(64) }) });
  await Promise.all([connected(good, server), connected(bad, server)]);
  const name = uniq('private-');
  const chGood = await subscribed(good, name, server);
  bad.subscribe(name);
  await nextEvent(bad.connection, 'error', 'pusher:error for the bad subscription', { server });
  await barrier(bad, server);
  const seenBad = recordFrames(bad, name, 'leak');
  const got = nextEvent(chGood, 'leak', 'event for the authorized subscriber', { server });
  await sdk.trigger(name, 'leak', 'x');
  await got;
  await barrier(bad, server);
  assert.equal(seenBad.length, 0, 'unauthorized connection must not receive private events');
  good.disconnect();
  bad.disconnect();
});

test('encrypted channel: SDK-encrypted event is decrypted by pusher-js; server relays ciphertext untouched', async () => {
  const masterKey = randomBytes(32).toString('base64');
  const c = server.client({ encryptionMasterKeyBase64: masterKey });
  await connected(c, server);
  const name = uniq('private-encrypted-');
  const ch = await subscribed(c, name, server);
  const frames = recordFrames(c, name, 'sealed');
  const got = nextEvent(ch, 'sealed', 'decrypted event', { server });
  const sender = server.sdk({ encryptionMasterKeyBase64: masterKey });
  const payload = { msg: 'top secret', n: 42 };
  const res = await sender.trigger(name, 'sealed', payload);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  assert.deepEqual((await got).data, payload);
  assert.equal(frames.length, 1);
  const wire = frames[0].data;
  assert.equal(typeof wire.nonce, 'string', 'wire data carries the nonce');
  assert.equal(typeof wire.ciphertext, 'string', 'wire data carries the ciphertext');
  assert.ok(!JSON.stringify(wire).includes('top secret'), 'plaintext never on the wire');
  c.disconnect();
});
