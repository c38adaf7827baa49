// Browser end-to-end tests with Firefox next to Chromium: Debian firefox-esr headless over
// WebDriver BiDi (puppeteer-core), Debian chromium (playwright-core), the real corelay
// binary. Media crosses browsers on every path a person uses:
//   (a) Firefox produces with mediasoup-client (page/app.js, /ws?token=), Chromium consumes;
//   (b) Chromium produces, Firefox consumes;
//   (c) Firefox publishes by WHIP, a Firefox and a Chromium WHEP viewer watch it;
//   (d) the built-in demo page (/, /pubsub): a Firefox and a Chromium person join one room
//       through the form and see each other.
// Each prints its join time as `join-time-ms firefox: N` / `join-time-ms chromium: N`
// lines (suffixed by the path when it is not mediasoup-client).
// Firefox has getUserMedia only on a secure context, so every page comes from
// http://127.0.0.1:PORT (this process, or corelay itself for the demo), never about:blank.
// dist/ must be built first (`npm run build`; `npm test` does).
//
//   CORELAY_BIN, CHROMIUM_BIN, FIREFOX_BIN, E2E_SERVER_LOG=1: see harness.mjs
//   RUST_LOG      the servers' log filter (default info), e.g. debug with E2E_SERVER_LOG=1
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import {
  here, launchBrowser, launchFirefox, mintToken, openPage, sleep, startServer, startWatchdog,
  stopServer,
} from './harness.mjs';
import { RTC_HTML } from './rtc-page.mjs';
import { createStaticServer } from './serve.mjs';

const SECRET = 'corelay-firefox-e2e-secret-0123456789';
const RUN = Date.now().toString(36);
const ROOM_FC = `ff-fc-${RUN}`; // (a) Firefox -> Chromium, mediasoup-client
const ROOM_CF = `ff-cf-${RUN}`; // (b) Chromium -> Firefox, mediasoup-client
const ROOM_W = `ff-whip-${RUN}`; // (c) WHIP -> WHEP
const ROOM_D = `ff-demo-${RUN}`; // (d) demo page
const SERVER_ENV = process.env.RUST_LOG ? { RUST_LOG: process.env.RUST_LOG } : {};

let server; // harness server with JWT_SECRET: (a)-(c)
let demoServer; // harness server in dev mode (POST /login): (d)
let chromium; // {context, close}
let firefox; // {browser, context, version, kill, close}
let pageServer; // http.Server: dist/ (mediasoup-client page) and /rtc.html (rtc-page.mjs)
let pageBase; // http://127.0.0.1:PORT/

// Hard stop: the whole file must finish well under 90 s even if something hangs.
const watchdog = startWatchdog('firefox e2e', 85_000, {
  what: 'the servers and browsers',
  kill: () => firefox?.kill(),
});

function tokenFor(userId, roomId) {
  const now = Math.floor(Date.now() / 1000);
  return mintToken({ userId, userName: `User ${userId}`, roomId, exp: now + 600 }, SECRET);
}

// ---- pages ------------------------------------------------------------------------------

// `which`: 'firefox' | 'chromium'. The peer remembers its browser for messages and input.
async function open(which, name, url) {
  const b = which === 'firefox' ? firefox : chromium;
  const peer = await openPage(b.context, `${name} (${which})`, url);
  peer.browser = which;
  return peer;
}

// The mediasoup-client page (dist/), as msc.test.mjs opens it.
function mscPage(which, name, token, opts) {
  const q = new URLSearchParams({ server: server.ws, token, ...opts });
  return open(which, name, `${pageBase}?${q}`);
}

async function rtcPage(which, name) {
  const peer = await open(which, name, `${pageBase}rtc.html`);
  await until(`${peer.name}: window.lib`, () => peer.page.evaluate(() => window.lib !== undefined), (v) => v,
    { timeout: 5_000, peers: [peer] });
  return peer;
}

// The demo page served by corelay itself.
async function demoPage(which, name, path) {
  const peer = await open(which, name, `${demoServer.base}/${path}`);
  await until(`${peer.name}: window.__demo`, () => peer.page.evaluate(() => window.__demo !== undefined), (v) => v,
    { timeout: 5_000, peers: [peer] });
  return peer;
}

const mscSnapshot = (peer) => peer.page.evaluate(() => JSON.parse(JSON.stringify(window.__e2e)));
const mscStats = (peer) => peer.page.evaluate(() => window.__e2e.stats());
const rtcStats = (peer, name) => peer.page.evaluate((n) => window.lib.stats(n), name);
const demoSnapshot = (peer) => peer.page.evaluate(async () => {
  const d = window.__demo;
  const tiles = await d.stats();
  return JSON.parse(JSON.stringify({ ...d, tiles }));
});

// What a page knows, for failure messages: whichever of the three pages it is.
async function describe(peer) {
  const state = await peer.page.evaluate(() => {
    if (window.__e2e) {
      const e = window.__e2e;
      return { msc: { state: e.state, handler: e.handlerName, errors: e.errors, transports: e.transports,
        producers: e.producers, consumers: e.consumers, events: e.events.map((x) => x.type) } };
    }
    if (window.__demo) {
      const d = window.__demo;
      return { demo: { state: d.state, ws: d.wsState, publish: d.publishState, errors: d.errors,
        tiles: d.tiles(), log: d.log.slice(-15) } };
    }
    if (window.lib) {
      return { rtc: { errors: window.lib.errors, pcs: Object.fromEntries(Object.entries(window.lib.pcs)
        .map(([k, r]) => [k, { connection: r.pc.connectionState, ice: r.pc.iceConnectionState, patches: r.patches }])) } };
    }
    return { url: location.href };
  }).catch((e) => `(${e.message})`);
  return `page ${peer.name}: ${JSON.stringify(state)}\n  console: ${JSON.stringify(peer.consoleLines.slice(-10))}`;
}

async function context(peers, srv = server) {
  const lines = [];
  for (const p of peers) lines.push(await describe(p));
  return `${lines.join('\n')}\nserver log tail:\n${srv?.tail(30) ?? '(none)'}`;
}

// Polls `probe()` until `pred(value)` holds; fails with the last value and the pages' state.
// `failIf(value)`: a reason to fail at once (e.g. the page reported an error).
async function until(what, probe, pred, { timeout = 15_000, peers = [], interval = 100, failIf, srv } = {}) {
  const deadline = Date.now() + timeout;
  let value;
  for (;;) {
    value = await probe();
    if (pred(value)) return value;
    const bad = failIf?.(value);
    if (bad) assert.fail(`${what}: ${bad}; last: ${JSON.stringify(value)}\n${await context(peers, srv)}`);
    if (Date.now() > deadline) {
      assert.fail(`${what}: not within ${timeout} ms; last: ${JSON.stringify(value)}\n${await context(peers, srv)}`);
    }
    await sleep(interval);
  }
}

const pageErrors = (s) => (s.errors?.length ? `page reported errors ${JSON.stringify(s.errors)}` : undefined);

async function closeAll(peers) {
  for (const p of peers) await p.page.close().catch(() => {});
}

// ---- setup ------------------------------------------------------------------------------

before(async () => {
  if (!existsSync(join(here, 'dist', 'app.js'))) throw new Error('dist/ missing: run `npm run build`');
  const dist = createStaticServer(join(here, 'dist')).listeners('request')[0];
  pageServer = http.createServer((req, res) => {
    if (new URL(req.url, 'http://x').pathname === '/rtc.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(RTC_HTML);
    } else {
      dist(req, res);
    }
  });
  await new Promise((r) => pageServer.listen(0, '127.0.0.1', r));
  pageBase = `http://127.0.0.1:${pageServer.address().port}/`;
  [server, demoServer, chromium, firefox] = await Promise.all([
    startServer({ secret: SECRET, shards: 2, env: SERVER_ENV }),
    startServer({ shards: 2, env: SERVER_ENV }),
    launchBrowser('corelay-ff-e2e-chromium-'),
    launchFirefox('corelay-ff-e2e-firefox-'),
  ]);
  console.log(`firefox: ${firefox.version}`);
});

after(async () => {
  await Promise.all([firefox?.close(), chromium?.close()]);
  await Promise.all([stopServer(server), stopServer(demoServer)]);
  await new Promise((r) => (pageServer ? pageServer.close(r) : r()));
  watchdog.clear();
});

// ---- scenarios --------------------------------------------------------------------------

// One mediasoup-client call: `pubWhich` produces audio+video, then `subWhich` joins and
// consumes. Returns the consumer's join time.
async function mscCall(pubWhich, subWhich, room) {
  const opened = Date.now();
  const pub = await mscPage(pubWhich, 'pub', tokenFor(`${pubWhich}-pub`, room), { produce: 'audio,video', consume: '0' });
  const peers = [pub];
  const loaded = Date.now();
  const p = await until(`${pub.name} joined and produced audio+video`, () => mscSnapshot(pub),
    (s) => s.state === 'joined' && s.producers.audio && s.producers.video, { peers, failIf: pageErrors });
  assert.equal(p.roomId, room);
  const pubReady = [loaded - opened, Date.now() - opened];
  // mediasoup-client picks its handler from the browser (Firefox120, Chrome111, ...).
  assert.match(p.handlerName, pubWhich === 'firefox' ? /^Firefox/ : /^Chrome/, `${pub.name} handler`);

  const sub = await mscPage(subWhich, 'sub', tokenFor(`${subWhich}-sub`, room), { produce: '', consume: '1' });
  peers.push(sub);
  const started = Date.now();
  const s = await until(`${sub.name} consumes audio and video`, () => mscSnapshot(sub),
    (v) => v.consumers.some((c) => c.kind === 'video' && c.producerId === p.producers.video) &&
      v.consumers.some((c) => c.kind === 'audio' && c.producerId === p.producers.audio),
    { peers, failIf: pageErrors });
  assert.match(s.handlerName, subWhich === 'firefox' ? /^Firefox/ : /^Chrome/, `${sub.name} handler`);
  const withErrors = async (peer) => ({ ...(await mscStats(peer)), errors: (await mscSnapshot(peer)).errors });
  const st = await until(`${sub.name} decodes >= 30 video frames`, () => withErrors(sub), (v) => v.videoFramesDecoded >= 30,
    { timeout: 20_000, peers, interval: 200, failIf: pageErrors });
  const snap = await until(`${sub.name} marked its first frame`, () => mscSnapshot(sub), (v) => v.firstFrameAt !== undefined,
    { timeout: 2_000, peers });
  const joinMs = Math.round(snap.firstFrameAt - snap.joinStartedAt);
  const a1 = st.audioPacketsReceived;
  await sleep(1_000);
  const st2 = await mscStats(sub);
  assert.ok(st2.audioPacketsReceived > a1, `${sub.name}: audio packets keep arriving (${a1} -> ${st2.audioPacketsReceived})`);
  assert.ok(st2.videoFramesDecoded > st.videoFramesDecoded, `${sub.name}: video frames keep being decoded`);
  for (const peer of peers) assert.deepEqual((await mscSnapshot(peer)).errors, [], `${peer.name} errors`);
  console.log(`${pubWhich} producer page loaded in ${pubReady[0]} ms, producing after ${pubReady[1]} ms; ` +
    `${pubWhich} (${p.handlerName}) -> ${subWhich} (${s.handlerName}): ${st2.videoFramesDecoded} frames, ` +
    `audio ${a1} -> ${st2.audioPacketsReceived} packets in 1 s, ${Date.now() - started} ms after opening the consumer; ` +
    `first frame via ${snap.firstFrameSource}`);
  await closeAll(peers);
  return joinMs;
}

test('(a) Firefox produces with mediasoup-client, Chromium consumes video and audio', { timeout: 30_000 }, async () => {
  const joinMs = await mscCall('firefox', 'chromium', ROOM_FC);
  // WebSocket creation to first decoded remote video frame, as msc.test.mjs measures it.
  console.log(`join-time-ms chromium: ${joinMs}`);
});

test('(b) Chromium produces with mediasoup-client, Firefox consumes video and audio', { timeout: 30_000 }, async () => {
  const joinMs = await mscCall('chromium', 'firefox', ROOM_CF);
  console.log(`join-time-ms firefox: ${joinMs}`);
});

test('(c) Firefox publishes by WHIP; Firefox and Chromium WHEP viewers decode it', { timeout: 30_000 }, async () => {
  const A = await rtcPage('firefox', 'whip');
  const peers = [A];
  const w = await A.page.evaluate(([url, token]) => window.lib.whip('A', { url, token }),
    [`${server.base}/whip/${ROOM_W}`, tokenFor('ff-whip', ROOM_W)]);
  assert.equal(w.status, 201, `WHIP POST from Firefox: ${w.body}`);
  await until('Firefox WHIP publisher connected', () => rtcStats(A, 'A'), (s) => s.connectionState === 'connected',
    { timeout: 10_000, peers, failIf: (s) => (s.connectionState === 'failed' ? 'connection failed' : undefined) });

  const viewers = [];
  for (const which of ['firefox', 'chromium']) {
    const V = await rtcPage(which, 'whep');
    peers.push(V);
    const r = await V.page.evaluate(([url, token]) => window.lib.whep('V', { url, token }),
      [`${server.base}/whep/${ROOM_W}`, tokenFor(`${which}-whep`, ROOM_W)]);
    assert.equal(r.status, 201, `WHEP POST from ${which}: ${r.body}`);
    assert.equal((r.body.match(/^m=/gm) ?? []).length, 2, 'the answer has the offer\'s two m-lines');
    viewers.push([which, V]);
  }
  for (const [which, V] of viewers) {
    const s = await until(`${V.name} decodes >= 30 video frames`, () => rtcStats(V, 'V'), (v) => v.videoFramesDecoded >= 30,
      { timeout: 20_000, peers, interval: 200, failIf: (v) => (v.connectionState === 'failed' ? 'connection failed' : undefined) });
    const a1 = s.audioPacketsReceived;
    await sleep(500);
    const s2 = await rtcStats(V, 'V');
    assert.ok(s2.audioPacketsReceived > a1, `${V.name}: audio packets keep arriving (${a1} -> ${s2.audioPacketsReceived})`);
    assert.deepEqual(s2.patches.filter((p) => p !== 204), [], `${V.name}: PATCH answers 204: ${JSON.stringify(s2.patches)}`);
    // WHEP POST sent to first decoded video frame.
    console.log(`join-time-ms ${which} whep: ${Math.round(s.firstFrameMs)}`);
  }
  for (const [, V] of viewers) assert.equal(await V.page.evaluate(() => window.lib.del('V')), 200, `DELETE ${V.name}`);
  assert.equal(await A.page.evaluate(() => window.lib.del('A')), 200, 'DELETE the WHIP resource');
  await closeAll(peers);
});

// Fills the demo's form the way a person does: click into a box, select all, type.
async function joinViaForm(peer, room, name) {
  const { page } = peer;
  for (const [selector, text] of [['#room', room], ['#name', name]]) {
    await page.click(selector);
    await page.keyboard.down('Control');
    await page.keyboard.press('a');
    await page.keyboard.up('Control');
    await page.keyboard.press('Backspace');
    await page.keyboard.type(text);
    const value = await page.evaluate((sel) => document.querySelector(sel).value, selector);
    assert.equal(value, text, `${peer.name}: ${selector} holds what was typed`);
  }
  await page.click('#join');
}

test('(d) the demo page: a Firefox and a Chromium person join through the form and see each other', { timeout: 35_000 }, async () => {
  const cr = await demoPage('chromium', 'Crista', '');
  const ff = await demoPage('firefox', 'Felix', 'demo');
  const peers = [cr, ff];
  const opts = { peers, srv: demoServer, failIf: pageErrors, interval: 100 };
  await joinViaForm(cr, ROOM_D, 'Crista');
  await until('Crista (chromium) joined and publishes', () => demoSnapshot(cr),
    (s) => s.state === 'joined' && s.publishState === 'connected', opts);
  // Firefox joins a room where Chromium already publishes: its join time is the Join click
  // to its first decoded frame of Crista; Crista's is Felix's Join click to her first
  // decoded frame of Felix.
  const joinAt = Date.now();
  await joinViaForm(ff, ROOM_D, 'Felix');
  const firstFrame = async (peer, other) => {
    await until(`${peer.name} decodes ${other}'s video`, () => demoSnapshot(peer),
      (s) => s.tiles.some((t) => t.username === other && t.framesDecoded > 0), { ...opts, timeout: 20_000 });
    const ms = Date.now() - joinAt;
    const s = await until(`${peer.name} shows ${other}'s video (framesDecoded >= 30)`, () => demoSnapshot(peer),
      (v) => v.tiles.some((t) => t.username === other && t.framesDecoded >= 30), { ...opts, timeout: 20_000, interval: 200 });
    return [ms, s];
  };
  const [[ffMs, f], [crMs, c]] = await Promise.all([firstFrame(ff, 'Crista'), firstFrame(cr, 'Felix')]);
  console.log(`join-time-ms firefox demo: ${ffMs}`);
  console.log(`join-time-ms chromium demo: ${crMs}`);
  for (const [peer, snap, name] of [[ff, f, 'Felix'], [cr, c, 'Crista']]) {
    assert.equal(snap.state, 'joined', `${peer.name} state`);
    assert.equal(snap.publishState, 'connected', `${peer.name} publish peer connection`);
    assert.equal(snap.username, name, `${peer.name}: auth-ok username (from POST /login)`);
    assert.deepEqual(snap.errors, [], `${peer.name} errors`);
    assert.equal(snap.tiles.length, 1, `${peer.name}: one remote tile: ${JSON.stringify(snap.tiles)}`);
    assert.equal(snap.tiles[0].connectionState, 'connected');
    // The tile on screen is labelled with the other person's name.
    const label = await peer.page.evaluate((id) =>
      document.querySelector(`#tiles figure[data-publisher-id="${id}"] figcaption`)?.textContent, snap.tiles[0].publisherId);
    assert.equal(label, name === 'Felix' ? 'Crista' : 'Felix', `${peer.name}: tile label`);
  }
  await closeAll(peers);
});
