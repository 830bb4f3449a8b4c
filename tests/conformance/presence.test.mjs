// Presence channels with a user in several tabs (spec §6). The server runs
// two shards; with four or more connections both are very likely involved.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServer,
  connected,
  subscribed,
  record,
  waitUntil,
  uniq,
  shardConnections,
  clientOnEachShard,
} from './harness.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const ALICE = { user_id: 'user-a', user_info: { name: 'Alice', tabs: true } };
const BOB = { user_id: 'user-b', user_info: { name: 'Bob' } };

/** A client present as a throwaway member, its id in `markerId`. */
function markerClient(server) {
  const id = uniq('marker-');
  const c = server.client({ user: { user_id: id } });
  c.markerId = id;
  return c;
}

/**
 * Markers for "no other member event came": each of `markers` (from
 * markerClient, connected) joins `name`, and bob (`added`/`removed` record
 * his channel) must see each arrive, then leave. The channel's owner
 * broadcasts members in the order it decides them, so whatever it decided
 * before a marker's join reached bob before the marker did. `observers`
 * are more channels (on other connections, maybe other shards) whose
 * rosters the test reads next: each must see the markers come and go too,
 * as each connection gets the broadcast in its own time.
 */
async function markerMembers(server, name, markers, added, removed, observers = []) {
  const ids = markers.map((c) => c.markerId);
  const watched = [{ added, removed }];
  const handlers = observers.map((ch) => {
    const seen = { added: [], removed: [] };
    const onAdded = (data) => seen.added.push({ data });
    const onRemoved = (data) => seen.removed.push({ data });
    ch.bind('pusher:member_added', onAdded);
    ch.bind('pusher:member_removed', onRemoved);
    watched.push(seen);
    return () => {
      ch.unbind('pusher:member_added', onAdded);
      ch.unbind('pusher:member_removed', onRemoved);
    };
  });
  try {
    await Promise.all(markers.map((c) => subscribed(c, name, server)));
    const all = (key) => () => watched.every((w) => ids.every((id) => w[key].some((e) => e.data.id === id)));
    await waitUntil(all('added'), 'bob and the observers see the markers join', { server });
    for (const c of markers) c.unsubscribe(name);
    await waitUntil(all('removed'), 'bob and the observers see the markers leave', { server });
  } finally {
    for (const unbind of handlers) unbind();
  }
}

/** Member events not about a marker. */
const real = (events) => events.filter((e) => !String(e.data.id).startsWith('marker-'));

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
  // Every tab's join was decided (and any member_added for it sent) before
  // the tab was answered, so before the marker's join.
  const mark = markerClient(server);
  await connected(mark, server);
  await markerMembers(server, name, [mark], bobAdded, bobRemoved, tabChannels);
  // `mark` stays connected until the count of open connections below is
  // done: its close could otherwise land in the middle of it.
  const added = real(bobAdded);
  assert.equal(added.length, 1, `exactly one member_added for Alice, got ${JSON.stringify(added)}`);
  assert.deepEqual(added[0].data, { id: 'user-a', info: ALICE.user_info });
  for (const [i, added] of tabAdded.entries()) {
    assert.equal(real(added).length, 0, `tab ${i} must not see member_added for its own user`);
  }

  for (const ch of [chBob, ...tabChannels]) {
    assert.equal(ch.members.count, 2, `${ch.members.myID}: count of unique users, members ${ids(ch)}`);
    assert.deepEqual(ids(ch), ['user-a', 'user-b']);
  }
  assert.deepEqual(chBob.members.me, { id: 'user-b', info: BOB.user_info });
  for (const ch of tabChannels) {
    assert.deepEqual(ch.members.me, { id: 'user-a', info: ALICE.user_info });
    assert.deepEqual(ch.members.get('user-b'), { id: 'user-b', info: BOB.user_info });
  }

  // Closing all but the last tab: Alice is still present. Once the closed
  // tabs are gone from their shards, a marker joining from each shard
  // reaches the owner after their leaves.
  const open = async () => (await shardConnections(server)).reduce((a, b) => a + b, 0);
  const before = await open();
  tabs[0].disconnect();
  tabs[1].disconnect();
  await waitUntil(async () => (await open()) === before - 2, 'the closed tabs to be gone', { server });
  const { clients: markers, extra } = await clientOnEachShard(server, () => markerClient(server));
  await markerMembers(server, name, markers, bobAdded, bobRemoved);
  for (const c of [mark, ...markers, ...extra]) c.disconnect();
  assert.equal(real(bobRemoved).length, 0, 'no member_removed while Alice has a tab open');
  assert.equal(chBob.members.count, 2);

  // The last tab goes: Bob sees Alice leave, once.
  tabs[2].disconnect();
  await waitUntil(() => real(bobRemoved).length >= 1, 'Bob sees Alice leave after her last tab closes', {
    ms: 8000,
    server,
  });
  const last = markerClient(server);
  await connected(last, server);
  await markerMembers(server, name, [last], bobAdded, bobRemoved);
  last.disconnect();
  assert.equal(real(bobRemoved).length, 1);
  assert.equal(real(bobRemoved)[0].data.id, 'user-a');
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
  const bobRemoved = record(chBob, 'pusher:member_removed');
  const mark = markerClient(server);
  await connected(mark, server);
  await markerMembers(server, name, [mark], bobAdded, bobRemoved, chans);
  mark.disconnect();
  assert.equal(real(bobAdded).length, 1, `exactly one member_added, got ${real(bobAdded).length}`);
  for (const ch of chans) {
    assert.equal(ch.members.count, 2, `${ch.members.myID}: count of unique users, members ${ids(ch)}`);
    assert.deepEqual(ids(ch), ['user-a', 'user-b']);
  }
  assert.equal(chBob.members.count, 2);

  for (const t of tabs) t.disconnect();
  await waitUntil(() => real(bobRemoved).length >= 1, 'member_removed after every tab closed', {
    ms: 8000,
    server,
  });
  const last = markerClient(server);
  await connected(last, server);
  await markerMembers(server, name, [last], bobAdded, bobRemoved);
  last.disconnect();
  assert.equal(real(bobRemoved).length, 1, `exactly one member_removed, got ${real(bobRemoved).length}`);
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
