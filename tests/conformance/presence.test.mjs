// Presence channels with a user in several tabs (spec §6). The server runs
// two shards; with four or more connections both are very likely involved.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, connected, subscribed, record, waitUntil, barrier, uniq, sleep } from './harness.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const ALICE = { user_id: 'user-a', user_info: { name: 'Alice', tabs: true } };
const BOB = { user_id: 'user-b', user_info: { name: 'Bob' } };

function ids(channel) {
  const out = [];
  channel.members.each((m) => out.push(m.id));
  return out.sort();
}

test('a user in several tabs is one member: one member_added, one member_removed after the last tab', async () => {
  const name = uniq('presence-tabs-');
  const bob = server.client({ user: BOB });
  await connected(bob, server);
  const chBob = await subscribed(bob, name, server);
  assert.equal(chBob.members.count, 1);
  assert.deepEqual(chBob.members.me, { id: 'user-b', info: BOB.user_info });
  const bobAdded = record(chBob, 'pusher:member_added');
  const bobRemoved = record(chBob, 'pusher:member_removed');

  // Alice opens three tabs, one after the other.
  const tabs = [];
  const tabChannels = [];
  const tabAdded = [];
  for (let i = 0; i < 3; i++) {
    const tab = server.client({ user: ALICE });
    await connected(tab, server);
    const ch = await subscribed(tab, name, server);
    tabs.push(tab);
    tabChannels.push(ch);
    tabAdded.push(record(ch, 'pusher:member_added'));
  }

  await waitUntil(() => bobAdded.length >= 1, 'Bob sees Alice join', { server });
  // Let any duplicate member_added arrive: barrier on every connection that
  // subscribed, then a short quiet period.
  for (const tab of tabs) await barrier(tab, server);
  await barrier(bob, server);
  await sleep(500);
  assert.equal(bobAdded.length, 1, `exactly one member_added for Alice, got ${JSON.stringify(bobAdded)}`);
  assert.deepEqual(bobAdded[0].data, { id: 'user-a', info: ALICE.user_info });
  for (const [i, added] of tabAdded.entries()) {
    assert.equal(added.length, 0, `tab ${i} must not see member_added for its own user`);
  }

  for (const ch of [chBob, ...tabChannels]) {
    assert.equal(ch.members.count, 2, `${ch.members.myID}: count of unique users`);
    assert.deepEqual(ids(ch), ['user-a', 'user-b']);
  }
  assert.deepEqual(chBob.members.me, { id: 'user-b', info: BOB.user_info });
  for (const ch of tabChannels) {
    assert.deepEqual(ch.members.me, { id: 'user-a', info: ALICE.user_info });
    assert.deepEqual(ch.members.get('user-b'), { id: 'user-b', info: BOB.user_info });
  }

  // Closing all but the last tab: Alice is still present.
  tabs[0].disconnect();
  tabs[1].disconnect();
  await sleep(1000);
  await barrier(bob, server);
  assert.equal(bobRemoved.length, 0, 'no member_removed while Alice has a tab open');
  assert.equal(chBob.members.count, 2);

  // The last tab goes: Bob sees Alice leave, once.
  tabs[2].disconnect();
  await waitUntil(() => bobRemoved.length >= 1, 'Bob sees Alice leave after her last tab closes', {
    ms: 8000,
    server,
  });
  await sleep(500);
  assert.equal(bobRemoved.length, 1);
  assert.equal(bobRemoved[0].data.id, 'user-a');
  assert.equal(chBob.members.count, 1);
  assert.deepEqual(ids(chBob), ['user-b']);
  bob.disconnect();
});

test('tabs joining at the same time still produce one member_added', async () => {
  const name = uniq('presence-race-');
  const bob = server.client({ user: BOB });
  await connected(bob, server);
  const chBob = await subscribed(bob, name, server);
  const bobAdded = record(chBob, 'pusher:member_added');

  const tabs = [0, 1, 2, 3].map(() => server.client({ user: ALICE }));
  await Promise.all(tabs.map((t) => connected(t, server)));
  const chans = await Promise.all(tabs.map((t) => subscribed(t, name, server)));

  await waitUntil(() => bobAdded.length >= 1, 'Bob sees Alice join', { server });
  for (const tab of tabs) await barrier(tab, server);
  await sleep(500);
  assert.equal(bobAdded.length, 1, `exactly one member_added, got ${bobAdded.length}`);
  for (const ch of chans) {
    assert.equal(ch.members.count, 2);
    assert.deepEqual(ids(ch), ['user-a', 'user-b']);
  }
  assert.equal(chBob.members.count, 2);

  const bobRemoved = record(chBob, 'pusher:member_removed');
  for (const t of tabs) t.disconnect();
  await waitUntil(() => bobRemoved.length >= 1, 'member_removed after every tab closed', { ms: 8000, server });
  await sleep(500);
  assert.equal(bobRemoved.length, 1, `exactly one member_removed, got ${bobRemoved.length}`);
  assert.equal(chBob.members.count, 1);
  bob.disconnect();
});

test('numeric user_id in channel_data is a member with the string id', async () => {
  const name = uniq('presence-num-');
  const a = server.client({ user: { user_id: 42, user_info: { n: 1 } } });
  const b = server.client({ user: { user_id: 'forty-three' } });
  await Promise.all([connected(a, server), connected(b, server)]);
  const chA = await subscribed(a, name, server);
  const chB = await subscribed(b, name, server);
  await waitUntil(() => chA.members.count === 2, 'A sees B', { server });
  assert.deepEqual(ids(chB), ['42', 'forty-three']);
  assert.deepEqual(chB.members.get('42'), { id: '42', info: { n: 1 } });
  a.disconnect();
  b.disconnect();
});
