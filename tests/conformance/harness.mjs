// Test harness for the stapes conformance suite.
//
// Starts a real stapes binary on a free loopback port with a temporary YAML
// config, and hands out the real clients: pusher-js (the browser/Node client
// library) and the official `pusher` Node server SDK. Every wait here is
// bounded; a wait that runs out rejects with a message that names what was
// awaited and carries the tail of the server's stderr.
//
// With STAPES_CONFORMANCE_NODES=2 the same tests run against a cluster of
// two nodes on a redis-server started here (issue #12): pusher-js clients
// connect to node A, the server SDK and the signed HTTP helpers talk to node
// B, so every event and every API answer crosses Redis.

import { spawn } from 'node:child_process';
import { createHmac, createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = resolve(HERE, '..', '..');

export const HOST = '127.0.0.1';

/** The apps written into every test config. */
export const APPS = {
  main: { id: '1001', key: 'conformance-key', secret: 'conformance-secret', clientEvents: true },
  noClient: { id: '1002', key: 'noclient-key', secret: 'noclient-secret', clientEvents: false },
  counting: {
    id: '1003',
    key: 'counting-key',
    secret: 'counting-secret',
    clientEvents: false,
    subscriptionCount: true,
  },
};

/** Default bound for waiting on something the server should do promptly. */
export const WAIT_MS = 5000;

/** 1 (default): one stapes; 2: two stapes nodes sharing a redis-server. */
export const NODES = (() => {
  const v = process.env.STAPES_CONFORMANCE_NODES ?? '1';
  if (v !== '1' && v !== '2') throw new Error(`STAPES_CONFORMANCE_NODES must be 1 or 2, got ${v}`);
  return Number(v);
})();
export const TWO_NODES = NODES === 2;

/**
 * `test()` options for a test that is about one node and does not run in
 * the two-node mode; `reason` says why, and shows in the report as the skip.
 */
export function oneNodeOnly(reason) {
  return TWO_NODES ? { skip: `one node only: ${reason}` } : {};
}

const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 10_000;
const STDERR_KEEP = 64 * 1024;

export function serverBinary() {
  const bin = process.env.STAPES_BIN;
  return bin ? resolve(process.cwd(), bin) : join(REPO_ROOT, 'target', 'debug', 'stapes');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * `promise`, or `null` once `ms` have passed. The timer is cleared either
 * way: a pending one would keep Node alive after the last test.
 */
async function within(promise, ms) {
  let timer;
  const expired = new Promise((r) => {
    timer = setTimeout(() => r(null), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** A free TCP port on 127.0.0.1 (asked from the kernel, then released). */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

function configYaml(port, serverExtra = {}, appExtra = {}, redis = null) {
  const apps = Object.values(APPS)
    .map(
      (a) =>
        `  - id: "${a.id}"\n` +
        `    key: ${a.key}\n` +
        `    secret: ${a.secret}\n` +
        `    client_events: ${a.clientEvents}\n` +
        (a.subscriptionCount ? '    subscription_count: true\n' : '') +
        (appExtra[a.id] || ''),
    )
    .join('');
  const extra = Object.entries(serverExtra)
    .map(([k, v]) => `  ${k}: ${v}\n`)
    .join('');
  // A short reconnect bound: a node that tried Redis before it was up must
  // not sit out a long back-off.
  const cluster = redis
    ? `redis:\n  url: ${redis.url}\n  instance: ${redis.instance}\n  reconnect_max_ms: 500\n`
    : '';
  return `server:\n  host: ${HOST}\n  port: ${port}\n  shards: 2\n${extra}apps:\n${apps}${cluster}`;
}

function tryConnect(port) {
  return new Promise((res) => {
    const sock = connect({ host: HOST, port });
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      res(ok);
    };
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
    sock.setTimeout(500, () => done(false));
  });
}

/**
 * Start stapes. Resolves to
 * `{host, port, wsPort, appId, key, secret, apps, stderr(), sdk(), client(), stop()}`.
 * `opts.port` reuses a given port (no retry); `opts.serverConfig` adds keys
 * to the `server:` section of the config; `opts.appConfig` maps an app id to
 * YAML lines (indented by four spaces) appended to that app. `opts.ipe`
 * serves IPÊ's README sample config instead (tests/fixtures/ipe-readme.yml,
 * app IPE_APP), started as IPÊ is: `-logtostderr -config FILE`, with the
 * address from STAPES_HOST and STAPES_PORT.
 *
 * In the two-node mode (TWO_NODES) the object has the same shape, but
 * `client()` connects to node A (`wsPort`) while `sdk()` and `port` (the
 * signed HTTP helpers) are node B's; `nodes` holds both. `opts.port` and
 * `opts.ipe` are one-node cases there (see oneNodeOnly).
 */
export async function startServer(opts = {}) {
  const bin = serverBinary();
  if (!existsSync(bin)) {
    throw new Error(`stapes binary not found at ${bin} (set STAPES_BIN or build it first)`);
  }
  if (!TWO_NODES) return startNode(bin, opts, null);
  if (opts.port || opts.ipe) {
    throw new Error('opts.port and opts.ipe start one node: mark the test oneNodeOnly(reason)');
  }
  return startCluster(bin, opts);
}

async function startNode(bin, opts, redis) {
  let lastError;
  // A port found free can be taken again before the server binds it; retry
  // with a new port when the server exits during start-up.
  if (opts.port) return launch(bin, opts.port, opts.serverConfig, opts.appConfig, opts.ipe, redis);
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    try {
      return await launch(bin, port, opts.serverConfig, opts.appConfig, opts.ipe, redis);
    } catch (e) {
      lastError = e;
      if (!e.serverExited) throw e;
    }
  }
  throw lastError;
}

/** The app of IPÊ's README sample, with the secret its ${APP_SECRET} gets. */
export const IPE_APP = { id: '1', key: '278d525bdf162c739803', secret: 'ipe-secret', clientEvents: true };

async function launch(bin, port, serverExtra, appExtra, ipe, redis) {
  const dir = mkdtempSync(join(tmpdir(), 'stapes-conformance-'));
  const configPath = join(dir, 'config.yml');
  const sample = join(REPO_ROOT, 'tests', 'fixtures', 'ipe-readme.yml');
  writeFileSync(configPath, ipe ? readFileSync(sample) : configYaml(port, serverExtra, appExtra, redis));
  const args = ipe ? ['-logtostderr', '-config', configPath] : ['--config', configPath];
  const ipeEnv = { APP_SECRET: IPE_APP.secret, STAPES_HOST: HOST, STAPES_PORT: String(port) };

  const child = spawn(bin, args, {
    env: { ...process.env, STAPES_SHARDS: '2', ...(ipe ? ipeEnv : {}) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderrBuf = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderrBuf += chunk;
    if (stderrBuf.length > STDERR_KEEP) stderrBuf = stderrBuf.slice(-STDERR_KEEP);
  });
  let exited = null;
  const exitPromise = new Promise((res) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      res(exited);
    });
    child.once('error', (err) => {
      exited = { code: null, signal: null, error: err };
      res(exited);
    });
  });
  const stderr = () => stderrBuf;
  const cleanupDir = () => rmSync(dir, { recursive: true, force: true });

  const deadline = performance.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exited) {
      cleanupDir();
      const e = new Error(
        `stapes exited during start-up (${JSON.stringify(exited)}); stderr:\n${stderr()}`,
      );
      e.serverExited = true;
      throw e;
    }
    if (await tryConnect(port)) break;
    if (performance.now() > deadline) {
      child.kill('SIGKILL');
      await within(exitPromise, 2000);
      cleanupDir();
      throw new Error(
        `stapes did not accept connections on ${HOST}:${port} within ${START_TIMEOUT_MS} ms; stderr:\n${stderr()}`,
      );
    }
    await sleep(50);
  }

  const clients = new Set();
  // The WebSocket objects under the pusher-js clients (see disconnectClients).
  const sockets = new Set();
  const main = ipe ? IPE_APP : APPS.main;

  const server = {
    host: HOST,
    port,
    wsPort: port,
    appId: main.id,
    key: main.key,
    secret: main.secret,
    apps: APPS,
    stderr,

    /** The official server SDK pointed at this server (app 1001 unless overridden). */
    sdk(overrides = {}) {
      return new PusherServer({
        appId: main.id,
        key: main.key,
        secret: main.secret,
        host: HOST,
        port: String(port),
        useTLS: false,
        timeout: WAIT_MS,
        ...overrides,
      });
    },

    /**
     * A pusher-js client. Channel authorization is signed locally with the
     * server SDK (`authorizeChannel`); `opts.authorize(params, sdk)` may
     * replace the answer; `opts.user` is the presence channel_data.
     */
    client(opts = {}) {
      const app = opts.app || main;
      const signer = new PusherServer({
        appId: app.id,
        key: app.key,
        secret: app.secret,
        host: HOST,
        port: String(port),
        useTLS: false,
        ...(opts.encryptionMasterKeyBase64
          ? { encryptionMasterKeyBase64: opts.encryptionMasterKeyBase64 }
          : {}),
      });
      const customHandler = (params, cb) => {
        try {
          const answer = opts.authorize
            ? opts.authorize(params, signer)
            : signer.authorizeChannel(
                params.socketId,
                params.channelName,
                params.channelName.startsWith('presence-') ? opts.user : undefined,
              );
          cb(null, answer);
        } catch (e) {
          cb(e, null);
        }
      };
      const c = new PusherClient(opts.key || app.key, {
        cluster: 'local',
        wsHost: HOST,
        wsPort: port,
        forceTLS: false,
        enabledTransports: ['ws'],
        disableStats: true,
        channelAuthorization: { customHandler },
        ...(opts.pusherOptions || {}),
      });
      clients.add(c);
      c.connection.bind('connected', () => {
        const socket = c.connection.connection?.transport?.socket;
        if (socket) sockets.add(socket);
      });
      return c;
    },

    /** Disconnect every pusher-js client made by client(). */
    disconnectClients() {
      for (const c of clients) {
        try {
          c.disconnect();
        } catch {
          /* already gone */
        }
      }
      clients.clear();
      // When the server closes with a 40xx code, pusher-js reacts to the
      // close event ("refused") by closing its transport again before it lets
      // go of the socket, and the WebSocket library arms a 30 s close timer
      // even on a socket that is already closed. Nothing clears that timer,
      // so it would keep Node alive 30 s after the last test.
      for (const socket of sockets) {
        if (socket.readyState === 3 && socket._closeTimer) clearTimeout(socket._closeTimer);
      }
      sockets.clear();
    },

    /**
     * Disconnect clients, send SIGTERM and wait (bounded) for the process to
     * exit. A server that has to be SIGKILLed makes stop() reject.
     * `keepClients` leaves the pusher-js clients running (restart tests).
     */
    async stop({ keepClients = false } = {}) {
      if (!keepClients) server.disconnectClients();
      if (!exited) {
        child.kill('SIGTERM');
        const r = await within(exitPromise, STOP_TIMEOUT_MS);
        if (!r) {
          child.kill('SIGKILL');
          await within(exitPromise, 2000);
          cleanupDir();
          throw new Error(
            `stapes did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM; stderr:\n${stderr()}`,
          );
        }
      }
      cleanupDir();
      return exited;
    },
  };
  return server;
}

// ---------------------------------------------------------------------------
// Two nodes on one redis-server (STAPES_CONFORMANCE_NODES=2)

/** `redis-server` on a free loopback port, nothing persisted; `{url, stderr(), stop()}`. */
async function startRedis() {
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    try {
      return await launchRedis(port);
    } catch (e) {
      lastError = e;
      if (!e.serverExited) throw e;
    }
  }
  throw lastError;
}

/** PING answered with PONG on `port`. */
function redisPong(port) {
  return new Promise((res) => {
    const sock = connect({ host: HOST, port });
    let got = '';
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      res(ok);
    };
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      got += d.toString('utf8');
      if (got.includes('\r\n')) done(got.startsWith('+PONG'));
    });
    sock.once('error', () => done(false));
    sock.setTimeout(500, () => done(false));
  });
}

async function launchRedis(port) {
  const dir = mkdtempSync(join(tmpdir(), 'stapes-conformance-redis-'));
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  const keep = (chunk) => {
    out = (out + chunk).slice(-STDERR_KEEP);
  };
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((res) => {
    child.once('exit', (code, signal) => res((exited = { code, signal })));
    child.once('error', (error) => res((exited = { code: null, signal: null, error })));
  });
  const cleanupDir = () => rmSync(dir, { recursive: true, force: true });
  const deadline = performance.now() + START_TIMEOUT_MS;
  while (!(await redisPong(port))) {
    if (exited) {
      cleanupDir();
      const e = new Error(`redis-server exited during start-up (${JSON.stringify(exited)}):\n${out}`);
      e.serverExited = true;
      throw e;
    }
    if (performance.now() > deadline) {
      child.kill('SIGKILL');
      await within(exitPromise, 2000);
      cleanupDir();
      throw new Error(`redis-server did not answer PING on ${HOST}:${port} within ${START_TIMEOUT_MS} ms:\n${out}`);
    }
    await sleep(50);
  }
  return {
    url: `redis://${HOST}:${port}`,
    stderr: () => out,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        if (!(await within(exitPromise, STOP_TIMEOUT_MS))) {
          child.kill('SIGKILL');
          await within(exitPromise, 2000);
        }
      }
      cleanupDir();
    },
  };
}

/**
 * A redis-server and two stapes nodes on it, both with the test's apps and
 * config. The returned object is shaped as one node's: pusher-js clients
 * on A, everything on the HTTP API (sdk(), port) on B.
 */
async function startCluster(bin, opts) {
  const redis = await startRedis();
  const started = [];
  try {
    for (const name of ['a', 'b']) {
      started.push(await startNode(bin, opts, { url: redis.url, instance: `conformance-${name}` }));
    }
  } catch (e) {
    for (const node of started) await node.stop().catch(() => {});
    await redis.stop();
    throw e;
  }
  const [a, b] = started;
  const server = {
    host: HOST,
    port: b.port,
    wsPort: a.port,
    appId: a.appId,
    key: a.key,
    secret: a.secret,
    apps: APPS,
    nodes: { a, b },
    redis,
    stderr: () => `--- node a ---\n${a.stderr()}\n--- node b ---\n${b.stderr()}`,
    sdk: (overrides) => b.sdk(overrides),
    client: (opts) => a.client(opts),
    disconnectClients: () => a.disconnectClients(),
    /** Stops A, then B, then Redis (a node leaves the cluster through it). */
    async stop() {
      let failed = null;
      for (const node of [a, b]) {
        try {
          await node.stop();
        } catch (e) {
          failed ??= e;
        }
      }
      await redis.stop();
      if (failed) throw failed;
    },
  };
  try {
    await joined(server);
  } catch (e) {
    await server.stop().catch(() => {});
    throw e;
  }
  return server;
}

/**
 * Resolves once both nodes are in the cluster, shown by the traffic the
 * tests make: a subscription on A is seen through B's HTTP API, and an
 * event triggered on B reaches it on A. The probe channel is vacated (as B
 * sees it) before the tests start, so no listing meets it.
 */
async function joined(server) {
  const probe = uniq('cluster-probe-');
  const occupied = async () => {
    const r = await signedFetch(server, { method: 'GET', path: `/apps/${server.appId}/channels/${probe}` });
    if (r.status !== 200) throw new Error(`GET /channels/${probe} on node B answered ${r.status}: ${r.text}`);
    return JSON.parse(r.text).occupied;
  };
  const ms = START_TIMEOUT_MS;
  const c = server.client();
  try {
    await connected(c, server, ms);
    const ch = await subscribed(c, probe, server, ms);
    await waitUntil(occupied, 'a subscription on node A seen through node B', { ms, server });
    const got = nextEvent(ch, 'probe', 'an event triggered on node B, on node A', { ms, server });
    const reply = await server.sdk().trigger(probe, 'probe', {});
    if (reply.status !== 200) throw new Error(`probe trigger on node B answered ${reply.status}`);
    await got;
  } finally {
    server.disconnectClients();
  }
  await waitUntil(async () => !(await occupied()), 'the probe channel vacated, seen through node B', {
    ms,
    server,
  });
  // A node takes its place in the cluster's view at a heartbeat (every 2 s)
  // once its pub/sub is up, and says so at info level; until then it serves
  // API calls but is not yet registered. Other log levels skip this wait.
  const level = process.env.STAPES_LOG;
  if (!level || /info|debug|trace/.test(level)) {
    for (const [name, node] of Object.entries(server.nodes)) {
      await waitUntil(() => node.stderr().includes('in the cluster'), `node ${name} logs "in the cluster"`, {
        ms,
        server,
      });
    }
  }
}

// ---------------------------------------------------------------------------
// Bounded waiting helpers

function stderrTail(server) {
  if (!server) return '';
  if (server.nodes) {
    return Object.entries(server.nodes)
      .map(([name, node]) => `\n--- stapes node ${name} stderr (tail) ---\n${node.stderr().slice(-3000)}`)
      .join('');
  }
  const s = server.stderr();
  return s ? `\n--- stapes stderr (tail) ---\n${s.slice(-4000)}` : '';
}

/**
 * Resolve once `predicate()` (or the promise it returns) is truthy (polled),
 * or reject after `ms`.
 */
export async function waitUntil(predicate, label, { ms = WAIT_MS, server } = {}) {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (performance.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for: ${label}${stderrTail(server)}`);
    }
    await sleep(20);
  }
}

/**
 * Resolve with the first `event` emitted by a pusher-js emitter (channel,
 * connection or client) for which `filter(data, meta)` holds; reject after `ms`.
 */
export function nextEvent(emitter, event, label, { ms = WAIT_MS, server, filter } = {}) {
  const p = new Promise((res, rej) => {
    const handler = (data, meta) => {
      if (filter && !filter(data, meta)) return;
      clearTimeout(timer);
      emitter.unbind(event, handler);
      res({ data, meta });
    };
    const timer = setTimeout(() => {
      emitter.unbind(event, handler);
      rej(new Error(`timed out after ${ms} ms waiting for ${event}: ${label}${stderrTail(server)}`));
    }, ms);
    emitter.bind(event, handler);
  });
  // A test that fails before awaiting this must not also report a stray
  // rejection afterwards; awaiting it still throws.
  p.catch(() => {});
  return p;
}

/** Record every `event` on a pusher-js emitter into an array. */
export function record(emitter, event) {
  const seen = [];
  emitter.bind(event, (data, meta) => seen.push({ data, meta }));
  return seen;
}

/** Wait until a pusher-js client is `connected`; resolves with its socket id. */
export async function connected(client, server, ms = WAIT_MS) {
  if (client.connection.state !== 'connected') {
    await nextEvent(client.connection, 'connected', 'pusher-js connection', { ms, server });
  }
  return client.connection.socket_id;
}

/**
 * Subscribe and wait for `pusher:subscription_succeeded`. Rejects early if
 * pusher-js reports a channel subscription error; connection errors seen
 * meanwhile are named in the timeout message.
 */
export function subscribed(client, channelName, server, ms = WAIT_MS) {
  return new Promise((res, rej) => {
    const channel = client.subscribe(channelName);
    const connErrors = [];
    let timer;
    const connErr = (e) => connErrors.push(e);
    const cleanup = () => {
      clearTimeout(timer);
      channel.unbind('pusher:subscription_succeeded', ok);
      channel.unbind('pusher:subscription_error', bad);
      client.connection.unbind('error', connErr);
    };
    const ok = () => {
      cleanup();
      res(channel);
    };
    const bad = (e) => {
      cleanup();
      rej(new Error(`subscription to ${channelName} failed: ${describeError(e)}${stderrTail(server)}`));
    };
    if (channel.subscribed) return ok();
    timer = setTimeout(() => {
      cleanup();
      const errs = connErrors.length ? `; connection errors meanwhile: ${describeError(connErrors)}` : '';
      rej(new Error(`timed out after ${ms} ms subscribing to ${channelName}${errs}${stderrTail(server)}`));
    }, ms);
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', bad);
    client.connection.bind('error', connErr);
  });
}

/** The Pusher error code carried by a pusher-js connection `error` event, if any. */
export function errorCode(e) {
  if (!e) return undefined;
  if (e.data && 'code' in e.data) return e.data.code; // PusherError from a pusher:error frame
  if (e.error && e.error.data && 'code' in e.error.data) return e.error.data.code; // wrapped (handshake)
  return undefined;
}

export function describeError(e) {
  try {
    return JSON.stringify(e);
  } catch {
    return String(e);
  }
}

/** A unique channel-name suffix for one test. */
let counter = 0;
export function uniq(prefix) {
  counter += 1;
  return `${prefix}${process.pid}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
}

// ---------------------------------------------------------------------------
// HTTP API requests signed here (spec §12.2), independent of the SDK.

/**
 * auth_signature for an HTTP API request: hex HMAC-SHA256 over
 * `METHOD\npath\nparams`, params (without auth_signature) sorted by key and
 * joined as k=v with & without URL-escaping.
 */
export function restSignature(secret, method, path, params) {
  const paramString = Object.keys(params)
    .map((k) => [k.toLowerCase(), params[k]])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  return createHmac('sha256', secret).update(`${method.toUpperCase()}\n${path}\n${paramString}`).digest('hex');
}

/**
 * Send a request signed per auth_version 1.0: string to sign is
 * `METHOD\npath\nparams` with params sorted by key, joined unescaped.
 */
export async function signedFetch(server, { method, path, body, secret, key, timestamp, extraParams = {}, md5Of }) {
  const raw = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  const params = {
    auth_key: key || server.key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    ...extraParams,
  };
  // `md5Of` lets a test sign the MD5 of a different body than the one sent.
  const md5Source = md5Of ?? raw;
  if (md5Source !== undefined) params.body_md5 = createHash('md5').update(md5Source, 'utf8').digest('hex');
  const signature = restSignature(secret || server.secret, method, path, params);
  const query = Object.keys(params)
    .sort()
    .map((k) => `${encodeURIComponent(k)}=${encodeURIComponent(params[k])}`)
    .join('&');
  const url = `http://${server.host}:${server.port}${path}?${query}&auth_signature=${signature}`;
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), WAIT_MS);
  try {
    const res = await fetch(url, {
      method,
      body: raw,
      headers: raw !== undefined ? { 'content-type': 'application/json' } : {},
      signal: ac.signal,
    });
    const text = await res.text();
    return { status: res.status, text };
  } finally {
    clearTimeout(timer);
  }
}

/** Await a promise expected to reject with a pusher SDK RequestError; return it. */
export async function sdkRejection(promiseOrFn) {
  try {
    const p = typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn;
    const res = await p;
    let body = '';
    try {
      body = await res.text();
    } catch {
      /* ignore */
    }
    throw Object.assign(new Error(`expected the SDK call to fail, got status ${res.status} body ${body}`), {
      unexpectedSuccess: true,
    });
  } catch (e) {
    if (e.unexpectedSuccess) throw e;
    return e;
  }
}

/**
 * Frames are handled in order per connection: once a fresh subscription made
 * after some earlier frame succeeds, the server has processed that frame.
 */
export async function barrier(client, server) {
  const name = uniq('barrier-');
  await subscribed(client, name, server);
  client.unsubscribe(name);
}

/**
 * A marker for "nothing else arrived": publishes `marker` on `channel`
 * through the HTTP API (`sdk`) and resolves once `client`, subscribed to it,
 * has it. Whatever reached the client before was sent before the marker.
 */
export async function marker(sdk, client, channel) {
  const got = nextEvent(client.channel(channel), 'marker', `marker on ${channel}`);
  const reply = await sdk.trigger(channel, 'marker', {});
  if (reply.status !== 200) throw new Error(`marker trigger answered ${reply.status}`);
  await got;
}

/** WebSockets open on each shard, from `GET /metrics`. */
export async function shardConnections(server) {
  // The node the pusher-js clients are on.
  const text = await (await fetch(`http://${HOST}:${server.wsPort}/metrics`)).text();
  const out = [];
  for (const m of text.matchAll(/^stapes_shard_connections\{shard="(\d+)"\} (\d+)$/gm)) {
    out[Number(m[1])] = Number(m[2]);
  }
  return out;
}

/**
 * One connected client from `make()` on each shard, told apart by the
 * per-shard gauge (nothing else may connect or disconnect meanwhile), and
 * the extra ones opened on the way, left connected so the gauge holds.
 */
export async function clientOnEachShard(server, make) {
  const on = (await shardConnections(server)).map(() => null);
  const extra = [];
  while (on.includes(null)) {
    const before = await shardConnections(server);
    const c = make();
    // Counted before connection_established is sent.
    await connected(c, server);
    const after = await shardConnections(server);
    const shard = after.findIndex((n, i) => n > before[i]);
    if (shard < 0) throw new Error(`no shard gained the connection: ${before} -> ${after}`);
    if (on[shard] === null) on[shard] = c;
    else extra.push(c);
  }
  return { clients: on, extra };
}

/** The server SDK of `app` (one of APPS) on `server`. */
export function sdkFor(server, app) {
  return server.sdk({ appId: app.id, key: app.key, secret: app.secret });
}

/** Record raw frames (decoded by pusher-js) that a client receives for `event` on `channel`. */
export function recordFrames(client, channel, event) {
  const seen = [];
  client.connection.bind('message', (m) => {
    if (m.channel === channel && m.event === event) seen.push(m);
  });
  return seen;
}
