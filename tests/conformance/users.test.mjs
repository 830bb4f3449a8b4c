// Users (spec §10) with the real clients: pusher-js `signin()` against a
// user-authentication handler signed by the Node SDK (`authenticateUser`),
// `sendToUser`, `terminateUserConnections`, presence without channel_data,
// and watchlist events.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, connected, subscribed, waitUntil, nextEvent, errorCode, uniq } from './harness.mjs';

let server;
let sdk;
before(async () => {
  server = await startServer();
  sdk = server.sdk();
});
after(async () => {
  await server?.stop();
});

/** A pusher-js client that signs in as `user` (id, user_info, watchlist). */
function userClient(user, extra = {}) {
  return server.client({
    ...extra,
    pusherOptions: {
      userAuthentication: {
        customHandler: (params, cb) => {
          try {
            cb(null, sdk.authenticateUser(params.socketId, user));
          } catch (e) {
            cb(e, null);
          }
        },
      },
    },
  });
}

/** Signs in and waits until the server-to-user channel is subscribed. */
async function signedIn(client) {
  await connected(client, server);
  client.signin();
  await client.user.signinDonePromise;
  assert.ok(client.user.user_data, 'signin succeeded');
  await waitUntil(
    () => client.user.serverToUserChannel && client.user.serverToUserChannel.subscribed,
    'server-to-user channel subscribed',
    { server },
  );
}

test('signin then sendToUser reaches every connection of that user only', async () => {
  const id = uniq('alice-');
  const tabs = [userClient({ id }), userClient({ id })];
  const other = userClient({ id: uniq('bob-') });
  for (const c of [...tabs, other]) await signedIn(c);
  assert.equal(tabs[0].user.user_data.id, id);

  const got = tabs.map((c) => nextEvent(c.user, 'note', 'note for the user', { server }));
  const stray = [];
  other.user.bind('note', (d) => stray.push(d));
  await sdk.sendToUser(id, 'note', { hello: 'you' });
  for (const g of got) assert.deepEqual((await g).data, { hello: 'you' });
  // Bob signs his own channel; a note to him proves ordering before we check.
  const bobNote = nextEvent(other.user, 'ping-bob', 'note for bob', { server });
  await sdk.sendToUser(other.user.user_data.id, 'ping-bob', {});
  await bobNote;
  assert.deepEqual(stray, []);
});

test('terminateUserConnections closes the user with 4009 and spares others', async () => {
  const id = uniq('carol-');
  const tabs = [userClient({ id }), userClient({ id })];
  const other = userClient({ id: uniq('dave-') });
  for (const c of [...tabs, other]) await signedIn(c);
  const errors = tabs.map((c) =>
    nextEvent(c.connection, 'error', 'pusher:error 4009', { server, filter: (e) => errorCode(e) === 4009 }),
  );
  const res = await sdk.terminateUserConnections(id);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  for (const e of errors) await e;
  for (const c of tabs) {
    await waitUntil(() => c.connection.state === 'disconnected', 'terminated tab disconnected', { server });
  }
  assert.equal(other.connection.state, 'connected');
  const note = nextEvent(other.user, 'still-here', 'note after terminate', { server });
  await sdk.sendToUser(other.user.user_data.id, 'still-here', {});
  await note;
});

test('a signed-in user joins a presence channel without channel_data', async () => {
  const id = uniq('erin-');
  const info = { name: 'Erin' };
  const c = userClient({ id, user_info: info }, {
    // The app's channel authorizer signs only socket_id:channel.
    authorize: (params, signer) => signer.authorizeChannel(params.socketId, params.channelName),
  });
  await signedIn(c);
  const observer = server.client({ user: { user_id: 'observer', user_info: {} } });
  await connected(observer, server);
  const room = uniq('presence-signed-');
  const chObserver = await subscribed(observer, room, server);
  const added = nextEvent(chObserver, 'pusher:member_added', 'erin joins', { server });
  const ch = await subscribed(c, room, server);
  assert.deepEqual(ch.members.me, { id, info });
  assert.equal(ch.members.count, 2);
  assert.deepEqual((await added).data, { id, info });
});

test('watchlist: online on sign-in of a watched user, offline when they leave', async () => {
  const watched = uniq('frank-');
  const early = uniq('gina-');
  const earlyClient = userClient({ id: early });
  await signedIn(earlyClient);

  const watcher = userClient({ id: uniq('watcher-'), watchlist: [watched, early] });
  const seen = [];
  watcher.user.watchlist.bind('online', (e) => seen.push(['online', ...e.user_ids]));
  watcher.user.watchlist.bind('offline', (e) => seen.push(['offline', ...e.user_ids]));
  await signedIn(watcher);
  await waitUntil(() => seen.some((e) => e[0] === 'online' && e.includes(early)), 'initial online', { server });

  const f = userClient({ id: watched });
  await signedIn(f);
  await waitUntil(() => seen.some((e) => e[0] === 'online' && e.includes(watched)), 'frank online', { server });
  f.disconnect();
  await waitUntil(() => seen.some((e) => e[0] === 'offline' && e.includes(watched)), 'frank offline', { server });
});
