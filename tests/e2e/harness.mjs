// Shared helpers for every browser end-to-end test (msc.test.mjs, demo.test.mjs,
// sdp.test.mjs, firefox.test.mjs): start the real corelay binary, mint HS256 tokens, launch
// Debian chromium (playwright-core) or Debian firefox-esr (puppeteer-core over WebDriver
// BiDi) with the settings WebRTC on loopback needs, open pages that collect their console
// errors, and a watchdog that ends a hung test file.
//
//   CORELAY_BIN   server binary (default ../../target/debug/corelay from this folder)
//   CHROMIUM_BIN  browser (default /usr/bin/chromium)
//   FIREFOX_BIN   browser (default /usr/bin/firefox-esr)
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
import puppeteer from 'puppeteer-core';

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
export const FIREFOX_BIN = process.env.FIREFOX_BIN || '/usr/bin/firefox-esr';
// Firefox preferences (user.js of the fresh profile) for fake media and WebRTC on loopback.
export const FIREFOX_PREFS = {
  // Fake camera and microphone, no permission prompt.
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  // Camera and microphone allowed for every origin. Without such a permission Firefox gathers
  // only its "default address" (the interface of the default route), never 127.0.0.1,
  // whatever the ICE prefs below say; seen here even while a fake getUserMedia capture ran in
  // the page (permission.disabled grants nothing). corelay's candidates are on 127.0.0.1.
  'permissions.default.camera': 1,
  'permissions.default.microphone': 1,
  // Gather 127.0.0.1 host candidates (Firefox skips loopback by default), on every interface,
  // written as addresses rather than mDNS .local names.
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.default_address_only': false,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  // Let remote media play without a click (the pages fall back to muted anyway).
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
};
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

// Hard stop for a whole test file: after `ms`, says so on stderr, kills every server started
// here, runs `kill` (e.g. a Firefox's kill()) and exits 1, even if something hangs. The
// timer does not keep the process alive; call clear() when the file is done.
export function startWatchdog(name, ms, { kill = () => {}, what = 'the servers' } = {}) {
  const timer = setTimeout(() => {
    console.error(`${name} watchdog: ${ms / 1000} s elapsed, killing ${what} and exiting`);
    killAllServers();
    kill();
    process.exit(1);
  }, ms);
  timer.unref();
  return { clear: () => clearTimeout(timer) };
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
// args, and this way the profile is ours to delete. close() removes it. `options` go to
// launchPersistentContext as well (e.g. a viewport).
export async function launchBrowser(prefix = 'corelay-e2e-profile-', options = {}) {
  const profileDir = await mkdtemp(join(tmpdir(), prefix));
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 20_000,
    ...options,
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      await rm(profileDir, { recursive: true, force: true });
    },
  };
}

// Headless Debian firefox-esr over WebDriver BiDi (puppeteer-core) on a fresh temporary
// profile, with FIREFOX_PREFS. `browser` has newPage(), so openPage() takes it as its
// `context`. Pages must come from http://127.0.0.1 (a secure context): Firefox has no
// getUserMedia on about:blank or other insecure origins. close() removes the profile.
export async function launchFirefox(prefix = 'corelay-e2e-firefox-') {
  if (!existsSync(FIREFOX_BIN)) {
    throw new Error(`firefox not found at ${FIREFOX_BIN}: apt-get install firefox-esr or set FIREFOX_BIN`);
  }
  const profileDir = await mkdtemp(join(tmpdir(), prefix));
  let browser;
  try {
    browser = await puppeteer.launch({
      browser: 'firefox',
      executablePath: FIREFOX_BIN,
      headless: true,
      userDataDir: profileDir,
      extraPrefsFirefox: FIREFOX_PREFS,
      timeout: 20_000,
      protocolTimeout: 20_000,
    });
  } catch (err) {
    await rm(profileDir, { recursive: true, force: true });
    throw err;
  }
  return {
    browser,
    context: browser,
    version: await browser.version(),
    // For a watchdog: end the browser at once.
    kill() {
      browser.process()?.kill('SIGKILL');
    },
    async close() {
      await Promise.race([browser.close(), sleep(5_000)]).catch(() => {});
      browser.process()?.kill('SIGKILL');
      await rm(profileDir, { recursive: true, force: true });
    },
  };
}

// Opens a page, collecting its console errors/warnings and uncaught errors. `context`: a
// playwright BrowserContext or a puppeteer Browser (Firefox); both pages have the same
// goto(), evaluate(fn, arg), on('console'), on('pageerror') and close().
export async function openPage(context, name, url) {
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => {
    // playwright says 'warning', puppeteer 'warn'.
    if (['error', 'warning', 'warn'].includes(m.type())) consoleLines.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  const res = await page.goto(url);
  if (res && !res.ok()) throw new Error(`${name}: GET ${url} answered ${res.status()}`);
  return { name, page, consoleLines };
}
