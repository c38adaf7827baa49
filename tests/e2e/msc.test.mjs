// Browser end-to-end test of the request/response (mediasoup-client) dialect,
// shared/PROTOCOLS.md section 1: real corelay binary, headless Debian chromium, the page in
// page/ bundled into dist/ (run `npm run build` first; `npm test` does).
//
//   CORELAY_BIN   server binary (default ../../target/debug/corelay from this folder)
//   CHROMIUM_BIN  browser (default /usr/bin/chromium)
//   E2E_SERVER_LOG=1  stream the server's log to stderr
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { createStaticServer } from './serve.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const CORELAY_BIN = process.env.CORELAY_BIN
  ? resolve(process.env.CORELAY_BIN)
  : resolve(here, '../../target/debug/corelay');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const JWT_SECRET = 'corelay-e2e-test-secret-0123456789';
const ROOM = `e2e-${Date.now().toString(36)}`;
const CHROMIUM_ARGS = [
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

// Hard stop: the whole file must finish well under 90 s even if something hangs.
const watchdog = setTimeout(() => {
  console.error('e2e watchdog: 85 s elapsed, killing the server and exiting');
  server?.proc.kill('SIGKILL');
  process.exit(1);
}, 85_000);
watchdog.unref();

let server; // {proc, port, log: string[]}
let pageServer; // http.Server over dist/
let pageBase; // http://127.0.0.1:PORT/
let context; // playwright persistent context (fresh profile)
let profileDir;

// ---- helpers ----------------------------------------------------------------------------

function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// HS256 JWT, as PROTOCOLS.md "Identity and tokens" describes.
function mintToken(claims, secret = JWT_SECRET) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const signingInput = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  const sig = createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${sig}`;
}

function tokenFor(userId, { roomId = ROOM, ttlSec = 600, secret } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return mintToken({ userId, userName: `User ${userId}`, roomId, exp: now + ttlSec }, secret);
}

function serverLogTail(n = 40) {
  return server ? server.log.slice(-n).join('\n') : '(server not started)';
}

async function startServer() {
  if (!existsSync(CORELAY_BIN)) {
    throw new Error(`corelay binary not found at ${CORELAY_BIN}: run \`cargo build\` or set CORELAY_BIN`);
  }
  const port = await freePort();
  const proc = spawn(
    CORELAY_BIN,
    ['--listen', `127.0.0.1:${port}`, '--shards', '2', '--udp-port-base', '0'],
    {
      env: { ...process.env, JWT_SECRET, RUST_LOG: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const log = [];
  const collect = (chunk) => {
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      log.push(line);
      if (log.length > 500) log.shift();
      if (process.env.E2E_SERVER_LOG) process.stderr.write(`[corelay] ${line}\n`);
    }
  };
  proc.stdout.on('data', collect);
  proc.stderr.on('data', collect);
  let exited = null;
  proc.on('exit', (code, signal) => (exited = { code, signal }));
  server = { proc, port, log };

  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited) {
      throw new Error(`corelay exited early (${JSON.stringify(exited)}):\n${serverLogTail()}`);
    }
    try {
      const res = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`corelay /health not 200 within 15 s:\n${serverLogTail()}`);
    await sleep(100);
  }
}

async function stopServer() {
  if (!server || server.proc.exitCode !== null || server.proc.signalCode !== null) return;
  const { proc } = server;
  const gone = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
  await gone;
  clearTimeout(timer);
}

// Opens the test page as one peer. `opts` become query parameters.
async function openPeer(name, token, opts = {}) {
  const q = new URLSearchParams({ server: `ws://127.0.0.1:${server.port}`, token, ...opts });
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') consoleLines.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(`${pageBase}?${q}`);
  return { name, page, consoleLines };
}

// A serializable copy of the page's window.__e2e (without the functions).
function snapshot(peer) {
  return peer.page.evaluate(() => {
    const e = window.__e2e;
    return e ? JSON.parse(JSON.stringify(e)) : undefined;
  });
}

function describePeer(peer, snap) {
  return [
    `peer ${peer.name}: state=${snap?.state} errors=${JSON.stringify(snap?.errors)}`,
    `  wsClose=${JSON.stringify(snap?.wsClose)} transports=${JSON.stringify(snap?.transports)}`,
    `  consumers=${JSON.stringify(snap?.consumers)} producers=${JSON.stringify(snap?.producers)}`,
    `  events=${JSON.stringify(snap?.events?.map((e) => e.type))}`,
    `  console=${JSON.stringify(peer.consoleLines.slice(-10))}`,
  ].join('\n');
}

// Polls the page until `pred(snapshot)` holds. Fails at once when the page reports an
// error (unless allowErrors), so a broken server answer shows up fast and with context.
// `others`: more peers whose state goes into the failure message (e.g. the producer).
async function waitFor(peer, what, pred, { timeout = 15_000, allowErrors = false, others = [] } = {}) {
  const deadline = Date.now() + timeout;
  const fail = async (why, snap) => {
    const more = [];
    for (const o of others) more.push(describePeer(o, await snapshot(o).catch(() => undefined)));
    return new Error(
      [`${what}: ${why}`, describePeer(peer, snap), ...more, `server log tail:\n${serverLogTail()}`].join('\n'),
    );
  };
  for (;;) {
    const snap = await snapshot(peer);
    if (snap && pred(snap)) return snap;
    if (!allowErrors && snap?.errors?.length) throw await fail('page reported errors', snap);
    if (Date.now() > deadline) throw await fail(`not within ${timeout} ms`, snap);
    await sleep(100);
  }
}

// Plain HTTP upgrade request, to see the status code a browser hides.
function rawUpgrade(port, token) {
  return new Promise((resolveRes, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      path: `/ws?token=${encodeURIComponent(token)}`,
      agent: false,
      timeout: 5_000,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolveRes({ status: res.statusCode, body: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolveRes({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('upgrade request timed out')));
    req.on('error', reject);
    req.end();
  });
}

// ---- setup ------------------------------------------------------------------------------

before(async () => {
  if (!existsSync(join(here, 'dist', 'app.js'))) throw new Error('dist/ missing: run `npm run build`');
  await startServer();

  pageServer = createStaticServer(join(here, 'dist'));
  await new Promise((r) => pageServer.listen(0, '127.0.0.1', r));
  pageBase = `http://127.0.0.1:${pageServer.address().port}/`;

  // A persistent context on a fresh temporary profile: Playwright refuses --user-data-dir
  // in args, and this way the profile is ours to delete.
  profileDir = await mkdtemp(join(tmpdir(), 'corelay-e2e-profile-'));
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 20_000,
  });
});

after(async () => {
  await context?.close().catch(() => {});
  await stopServer();
  await new Promise((r) => (pageServer ? pageServer.close(r) : r()));
  if (profileDir) await rm(profileDir, { recursive: true, force: true });
  clearTimeout(watchdog);
});

// ---- scenarios --------------------------------------------------------------------------

let peerA; // producer
let peerB; // consumer

test('(a) B joins later and receives A\'s video and audio (camera produced first)', { timeout: 40_000 }, async () => {
  // Camera first, then microphone: the browser numbers header extensions in that order
  // (PROTOCOLS.md section 1, produce), which differs from microphone first.
  peerA = await openPeer('A', tokenFor('alice'), { produce: 'video,audio', consume: '0' });
  const a = await waitFor(peerA, 'A joined and produced audio+video', (s) =>
    s.state === 'joined' && s.producers.audio && s.producers.video,
  );
  assert.equal(a.roomId, ROOM, 'join-room answers the token\'s roomId');
  assert.equal(a.handlerName, 'Chrome111');

  const bStarted = Date.now();
  peerB = await openPeer('B', tokenFor('bob'), { produce: '', consume: '1' });
  await waitFor(peerB, 'B consumes audio and video', (s) =>
    s.consumers.some((c) => c.kind === 'video' && c.producerId === a.producers.video) &&
    s.consumers.some((c) => c.kind === 'audio' && c.producerId === a.producers.audio),
  { others: [peerA] });
  const b = await waitFor(peerB, 'B has its first video frame', (s) => s.firstFrameAt !== undefined, {
    timeout: Math.max(1, bStarted + 20_000 - Date.now()),
    others: [peerA],
  });
  const joinTimeMs = Math.round(b.firstFrameAt - b.joinStartedAt);
  // Read by people and scripts: WebSocket creation to first decoded remote video frame.
  console.log(`join-time-ms: ${joinTimeMs}`);

  let stats;
  for (;;) {
    stats = await peerB.page.evaluate(() => window.__e2e.stats());
    if (stats.videoFramesDecoded >= 60) break;
    if (Date.now() > bStarted + 20_000) {
      assert.fail(`B decoded ${stats.videoFramesDecoded} video frames in 20 s (want >= 60)\n` +
        `${describePeer(peerB, await snapshot(peerB))}\n${describePeer(peerA, await snapshot(peerA))}\n` +
        `server log tail:\n${serverLogTail()}`);
    }
    await sleep(200);
  }
  const framesAfterMs = Date.now() - bStarted;
  const first = stats.audioPacketsReceived;
  await sleep(1_000);
  const second = (await peerB.page.evaluate(() => window.__e2e.stats())).audioPacketsReceived;
  assert.ok(second > first, `audio packets keep arriving at B (${first} -> ${second})`);
  console.log(`B: first frame via ${b.firstFrameSource}; ${stats.videoFramesDecoded} video frames decoded ` +
    `${framesAfterMs} ms after opening the page; audio packets ${first} -> ${second} in 1 s`);
  // Congestion feedback works: A's send-side estimate leaves its start value (~300 kbps).
  let send;
  const sendDeadline = Date.now() + 15_000;
  for (;;) {
    send = await peerA.page.evaluate(() => window.__e2e.sendStats());
    if (send.availableOutgoingBitrate > 600_000) break;
    if (Date.now() > sendDeadline) {
      assert.fail(`A's available outgoing bitrate stayed at ${send.availableOutgoingBitrate} bps`);
    }
    await sleep(250);
  }
  console.log(`A: available outgoing bitrate ${Math.round(send.availableOutgoingBitrate / 1000)} kbps, ` +
    `video target ${Math.round(send.videoTargetBitrate / 1000)} kbps`);
  const bSnap = await snapshot(peerB);
  assert.deepEqual(bSnap.errors, []);
  assert.ok(
    bSnap.events.some((e) => e.type === 'peer-joined') || bSnap.peers.some((p) => p.userId === 'alice'),
    'B knows about A (join-room peers or peer-joined)',
  );
});

test('(b) A closes its video producer: B gets producer-closed', { timeout: 10_000 }, async () => {
  assert.ok(peerA && peerB, 'scenario (a) set up A and B');
  const videoId = (await snapshot(peerA)).producers.video;
  await peerA.page.evaluate(() => window.__e2e.closeProducer('video'));
  await waitFor(peerB, 'B got producer-closed for A\'s video', (s) =>
    s.events.some((e) => e.type === 'producer-closed' && e.data?.producerId === videoId),
  { timeout: 5_000, others: [peerA] });
  await waitFor(peerB, 'B dropped its video consumer', (s) =>
    !s.consumers.some((c) => c.producerId === videoId),
  { timeout: 2_000 });
});

test('(c) bad tokens are refused before the upgrade', { timeout: 10_000 }, async () => {
  const expired = tokenFor('eve', { ttlSec: -3600 });
  const forged = tokenFor('mallory', { secret: 'some-other-secret' });
  for (const [name, token] of [['expired', expired], ['wrong-secret', forged]]) {
    const peer = await openPeer(name, token, { produce: '', consume: '0' });
    const snap = await waitFor(peer, `${name} token refused`, (s) => s.wsClose !== undefined, {
      timeout: 5_000,
      allowErrors: true,
    });
    assert.equal(snap.wsClose.opened, false, `${name}: WebSocket never opened`);
    assert.equal(snap.state, 'refused');
    await peer.page.close();

    const res = await rawUpgrade(server.port, token);
    assert.equal(res.status, 401, `${name}: HTTP status of the upgrade request`);
    assert.doesNotThrow(() => JSON.parse(res.body), `${name}: 401 body is JSON (${res.body})`);
  }
  // Control: a good token does upgrade.
  assert.equal((await rawUpgrade(server.port, tokenFor('carol'))).status, 101);
});

test('(d) join-room naming another room than the token\'s is an error', { timeout: 10_000 }, async () => {
  const peer = await openPeer('D', tokenFor('dave'), { join: '0' });
  await waitFor(peer, 'D connected', (s) => s.state === 'connected', { timeout: 5_000 });
  const res = await peer.page.evaluate(() =>
    window.__e2e.request('join-room', { roomId: 'some-other-room' }),
  );
  assert.equal(res.type, 'response');
  assert.equal(typeof res.requestId, 'string');
  assert.equal(res.data, undefined, `no data on an error response: ${JSON.stringify(res)}`);
  assert.equal(typeof res.error?.code, 'string', `error.code: ${JSON.stringify(res)}`);
  assert.ok(res.error.code.length > 0);
  assert.equal(typeof res.error.message, 'string');
  await peer.page.close();
});

test('(e) a video-only producer (a screen share) reaches a consumer', { timeout: 30_000 }, async () => {
  const sharer = await openPeer('S', tokenFor('sharer'), { produce: 'video', consume: '0' });
  const s = await waitFor(sharer, 'S produced video only', (x) =>
    x.state === 'joined' && x.producers.video && !x.producers.audio,
  );
  const viewer = await openPeer('V', tokenFor('viewer'), { produce: '', consume: '1' });
  await waitFor(viewer, 'V consumes S\'s video', (x) =>
    x.consumers.some((c) => c.kind === 'video' && c.producerId === s.producers.video),
  { others: [sharer] });
  const started = Date.now();
  let stats;
  for (;;) {
    stats = await viewer.page.evaluate(() => window.__e2e.stats());
    if (stats.videoFramesDecoded >= 30) break;
    if (Date.now() > started + 15_000) {
      assert.fail(`V decoded ${stats.videoFramesDecoded} video frames of a video-only producer in 15 s\n` +
        `${describePeer(sharer, await snapshot(sharer))}\nserver log tail:\n${serverLogTail()}`);
    }
    await sleep(200);
  }
  assert.deepEqual((await snapshot(sharer)).errors, []);
  await viewer.page.close();
  await sharer.page.close();
});
