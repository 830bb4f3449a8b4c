// What the browser tests share: a stapes binary started on a port the
// kernel picks (its log line names it) with one app, and headless Chromium.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
export const HOST = '127.0.0.1';
export const WAIT_MS = 10_000;

/**
 * stapes with two shards and `app` (id, key, secret; client events on);
 * `server` adds lines to the server section (e.g. `console: true`).
 * Returns its port, its log so far, and `stop()`.
 */
export async function startStapes(app, server = '') {
  const bin = process.env.STAPES_BIN ?? resolve(HERE, '..', '..', 'target', 'debug', 'stapes');
  const dir = mkdtempSync(join(tmpdir(), 'stapes-browser-'));
  const config = join(dir, 'config.yml');
  const extra = server ? `  ${server}\n` : '';
  writeFileSync(
    config,
    `server:\n  host: ${HOST}\n  port: 0\n  shards: 2\n${extra}apps:\n` +
      `  - id: "${app.id}"\n    key: ${app.key}\n    secret: ${app.secret}\n    client_events: true\n`,
  );
  const child = spawn(bin, ['--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.setEncoding('utf8');
  const port = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`stapes did not start; log:\n${log}`)), WAIT_MS);
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = /stapes listening.*plain=Some\(127\.0\.0\.1:(\d+)\)/.exec(log);
      if (m) {
        clearTimeout(timer);
        res(Number(m[1]));
      }
    });
    child.once('exit', (code) => rej(new Error(`stapes exited (${code}); log:\n${log}`)));
  });
  return {
    port,
    log: () => log,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Debian's Chromium (or $CHROMIUM), headless. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
}

/** Resolves with what `register(resolve)` delivers, or fails naming `what`. */
export function waitFor(what, register) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), WAIT_MS);
    register((value) => {
      clearTimeout(timer);
      res(value);
    });
  });
}
