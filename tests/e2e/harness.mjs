// Shared helpers for the browser end-to-end tests that use it (sdp.test.mjs): start the real
// corelay binary, mint HS256 tokens, launch Debian chromium with the flags WebRTC on
// loopback needs. Same patterns as msc.test.mjs and demo.test.mjs (which keep their own
// copies).
//
//   CORELAY_BIN   server binary (default ../../target/debug/corelay from this folder)
//   CHROMIUM_BIN  browser (default /usr/bin/chromium)
//   E2E_SERVER_LOG=1  stream the server's log to stderr
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const here = dirname(fileURLToPath(import.meta.url));
export const CORELAY_BIN = process.env.CORELAY_BIN
  ? resolve(process.env.CORELAY_BIN)
  : resolve(here, '../../target/debug/corelay');
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  // Without it Chromium gathers no 127.0.0.1 candidate (DESIGN.md section 5).
  '--allow-loopback-in-peer-connection',
  '--disable-quic',
];
// Settings from the caller's environment that would take the server off our --listen port
// or change its mode.
const ENV_DROP = ['JWT_SECRET', 'CORELAY_LOGIN', 'CORELAY_CONFIG', 'LISTEN', 'PORT', 'CORELAY_TLS_CERT', 'CORELAY_TLS_KEY'];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

// HS256 JWT, as PROTOCOLS.md "Identity and tokens" describes.
export function mintToken(claims, secret) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const signingInput = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  const sig = createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${sig}`;
}

// The shard that owns a room: FNV-1a 64 of the room id, modulo the shard count
// (src/routing.rs).
export function ownerShard(room, shards) {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(room, 'utf8')) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return Number(h % BigInt(shards));
}

const running = new Set();

// Kills every server started here (for a watchdog that must exit at once).
export function killAllServers() {
  for (const s of running) s.proc.kill('SIGKILL');
}

// Starts corelay on a free loopback port with `shards` shards and any free UDP ports.
// `secret` set: JWT_SECRET; unset: dev mode. Resolves once GET /health answers 200.
export async function startServer({ secret, shards = 2, env = {}, args = [] } = {}) {
  if (!existsSync(CORELAY_BIN)) {
    throw new Error(`corelay binary not found at ${CORELAY_BIN}: run \`cargo build\` or set CORELAY_BIN`);
  }
  const port = await freePort();
  const baseEnv = { ...process.env };
  for (const k of ENV_DROP) delete baseEnv[k];
  if (secret) baseEnv.JWT_SECRET = secret;
  const proc = spawn(
    CORELAY_BIN,
    ['--listen', `127.0.0.1:${port}`, '--shards', String(shards), '--udp-port-base', '0', ...args],
    { env: { ...baseEnv, RUST_LOG: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const log = [];
  const collect = (chunk) => {
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      log.push(line);
      if (log.length > 2000) log.shift();
      if (process.env.E2E_SERVER_LOG) process.stderr.write(`[corelay:${port}] ${line}\n`);
    }
  };
  proc.stdout.on('data', collect);
  proc.stderr.on('data', collect);
  const server = {
    proc,
    port,
    shards,
    log,
    exited: null,
    base: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}`,
    tail: (n = 40) => log.slice(-n).join('\n'),
  };
  proc.on('exit', (code, signal) => {
    server.exited = { code, signal };
    running.delete(server);
  });
  running.add(server);

  const deadline = Date.now() + 15_000;
  for (;;) {
    if (server.exited) {
      throw new Error(`corelay exited early (${JSON.stringify(server.exited)}):\n${server.tail()}`);
    }
    try {
      const res = await fetch(`${server.base}/health`, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.status === 200) return server;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`corelay /health not 200 within 15 s:\n${server.tail()}`);
    await sleep(100);
  }
}

export async function stopServer(server) {
  if (!server) return;
  const { proc } = server;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const gone = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
  await gone;
  clearTimeout(timer);
}

// GET /health as JSON.
export async function health(server) {
  const res = await fetch(`${server.base}/health`, { signal: AbortSignal.timeout(3000) });
  return { status: res.status, body: await res.json() };
}

// A persistent context on a fresh temporary profile: Playwright refuses --user-data-dir in
// args, and this way the profile is ours to delete. close() removes it.
export async function launchBrowser(prefix = 'corelay-e2e-profile-') {
  const profileDir = await mkdtemp(join(tmpdir(), prefix));
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 20_000,
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      await rm(profileDir, { recursive: true, force: true });
    },
  };
}

// Opens a page, collecting its console errors/warnings and uncaught errors.
export async function openPage(context, name, url) {
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') consoleLines.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  const res = await page.goto(url);
  if (res && !res.ok()) throw new Error(`${name}: GET ${url} answered ${res.status()}`);
  return { name, page, consoleLines };
}
