// Browser end-to-end test of the request/response (mediasoup-client) dialect,
// shared/PROTOCOLS.md section 1: real corelay binary, headless Debian chromium, the page in
// page/ bundled into dist/ (run `npm run build` first; `npm test` does).
//
//   CORELAY_BIN, CHROMIUM_BIN, E2E_SERVER_LOG=1: see harness.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import {
  here, launchBrowser, mintToken, openPage, sleep, startServer, startWatchdog, stopServer,
} from './harness.mjs';
import { createStaticServer } from './serve.mjs';

const JWT_SECRET = 'corelay-e2e-test-secret-0123456789';
const ROOM = `e2e-${Date.now().toString(36)}`;

// Hard stop: the whole file must finish well under 90 s even if something hangs.
const watchdog = startWatchdog('e2e', 85_000, { what: 'the server' });

let server; // harness server
let pageServer; // http.Server over dist/
let pageBase; // http://127.0.0.1:PORT/
let browser; // {context, close}: playwright persistent context on a fresh profile

// ---- helpers ----------------------------------------------------------------------------

function tokenFor(userId, { roomId = ROOM, ttlSec = 600, secret = JWT_SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return mintToken({ userId, userName: `User ${userId}`, roomId, exp: now + ttlSec }, secret);
}

function serverLogTail(n = 40) {
  return server ? server.tail(n) : '(server not started)';
}

// Opens the test page as one peer. `opts` become query parameters.
function openPeer(name, token, opts = {}) {
  const q = new URLSearchParams({ server: server.ws, token, ...opts });
  return openPage(browser.context, name, `${pageBase}?${q}`);
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
  server = await startServer({ secret: JWT_SECRET, shards: 2 });

  pageServer = createStaticServer(join(here, 'dist'));
  await new Promise((r) => pageServer.listen(0, '127.0.0.1', r));
  pageBase = `http://127.0.0.1:${pageServer.address().port}/`;

  browser = await launchBrowser('corelay-e2e-profile-');
});

after(async () => {
  await browser?.close();
  await stopServer(server);
  await new Promise((r) => (pageServer ? pageServer.close(r) : r()));
  watchdog.clear();
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
