// Browser end-to-end tests of the SDP dialects (shared/PROTOCOLS.md sections 2 and 3):
// WHIP and WHEP from plain RTCPeerConnections, the /pubsub dialect, and media across
// dialects (mediasoup-client <-> /pubsub, WHIP -> mediasoup-client), plus hostile /pubsub
// input while calls are up. Real corelay binary, headless Debian chromium, fake camera and
// microphone. The mediasoup-client page is dist/ (run `npm run build` first); the plain
// WebRTC page (rtc-page.mjs, pageLib) is served by this process, on another
// origin than the server, so WHIP/WHEP also go through CORS.
//
//   CORELAY_BIN, CHROMIUM_BIN, E2E_SERVER_LOG=1: see harness.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import {
  here, health, launchBrowser, mintToken, openPage, ownerShard, sleep, startServer, startWatchdog,
  stopServer,
} from './harness.mjs';
import { RTC_HTML } from './rtc-page.mjs';
import { createStaticServer } from './serve.mjs';

const SECRET = 'corelay-sdp-e2e-secret-0123456789';
const RUN = Date.now().toString(36);
const ROOM_A = `sdp-a-${RUN}`; // (a) WHIP -> WHEP
const ROOM_B = `sdp-b-${RUN}`; // (b) mediasoup-client -> /pubsub
const ROOM_C = `sdp-c-${RUN}`; // (c) WHIP -> mediasoup-client; (d) hostile input here too

// Hard stop: the whole file must finish well under 90 s even if something hangs.
const watchdog = startWatchdog('sdp e2e', 85_000, { what: 'the server' });

let server; // harness server
let browser; // {context, close}
let pageServer; // http.Server: /rtc.html (rtc-page.mjs) and dist/ (mediasoup-client page)
let pageBase; // http://127.0.0.1:PORT/

function tokenFor(userId, roomId, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  return mintToken({ userId, userName: `User ${userId}`, roomId, exp: now + 600, ...extra }, SECRET);
}

// ---- helpers ----------------------------------------------------------------------------

async function rtcPage(name) {
  const peer = await openPage(browser.context, name, `${pageBase}rtc.html`);
  await peer.page.waitForFunction(() => window.lib !== undefined, null, { timeout: 5_000 });
  return peer;
}

// The mediasoup-client page (dist/), as msc.test.mjs opens it.
async function mscPage(name, token, opts) {
  const q = new URLSearchParams({ server: server.ws, token, ...opts });
  return openPage(browser.context, name, `${pageBase}?${q}`);
}

const mscSnapshot = (peer) => peer.page.evaluate(() => JSON.parse(JSON.stringify(window.__e2e)));
const stats = (peer, name) => peer.page.evaluate((n) => window.lib.stats(n), name);

function context(peers) {
  return Promise.all(peers.map(async (p) => {
    const lib = await p.page.evaluate(() => (window.lib ? {
      errors: window.lib.errors,
      sockets: Object.fromEntries(Object.entries(window.lib.sockets).map(([k, s]) => [k, {
        closed: s.closed,
        messages: s.messages.map((m) => ({ ...m, offer: m.offer && '...', answer: m.answer && '...' })).slice(-15),
      }])),
    } : { e2e: { state: window.__e2e?.state, errors: window.__e2e?.errors, consumers: window.__e2e?.consumers } }))
      .catch((e) => `(${e.message})`);
    return `page ${p.name}: ${JSON.stringify(lib)}\n  console: ${JSON.stringify(p.consoleLines.slice(-10))}`;
  })).then((lines) => `${lines.join('\n')}\nserver log tail:\n${server.tail(30)}`);
}

// Polls `probe()` until `pred(value)` holds; fails with the last value and the pages' state.
async function until(what, probe, pred, { timeout = 15_000, peers = [], interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let value;
  for (;;) {
    value = await probe();
    if (pred(value)) return value;
    if (Date.now() > deadline) {
      assert.fail(`${what}: not within ${timeout} ms; last: ${JSON.stringify(value)}\n${await context(peers)}`);
    }
    await sleep(interval);
  }
}

const sockState = (peer, name) => peer.page.evaluate((n) => window.lib.sockState(n), name);

// Sends `msg` on socket `name` and waits for the first later message whose type is in
// `types`. Returns {reply, state}.
async function exchange(peer, name, msg, types = ['error'], timeout = 5_000) {
  const before = (await sockState(peer, name)).messages.length;
  await peer.page.evaluate(([n, m]) => {
    window.lib.send(n, m && m.__binary ? new Uint8Array(m.__binary).buffer : m);
  }, [name, msg]);
  const state = await until(
    `reply of type ${types} to ${JSON.stringify(msg).slice(0, 120)}`,
    () => sockState(peer, name),
    (s) => s.messages.slice(before).some((m) => types.includes(m.type)) || s.closed,
    { timeout, peers: [peer], interval: 30 },
  );
  return { reply: state.messages.slice(before).find((m) => types.includes(m.type)), state };
}

async function framesGrow(what, probe, peers) {
  const first = await probe();
  await sleep(1_000);
  const second = await probe();
  assert.ok(second > first, `${what}: video frames keep being decoded (${first} -> ${second})\n${second <= first ? await context(peers) : ''}`);
  return [first, second];
}

// ---- setup ------------------------------------------------------------------------------

before(async () => {
  if (!existsSync(join(here, 'dist', 'app.js'))) throw new Error('dist/ missing: run `npm run build`');
  server = await startServer({ secret: SECRET, shards: 2 });
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
  browser = await launchBrowser('corelay-sdp-e2e-profile-');
});

after(async () => {
  await browser?.close();
  await stopServer(server);
  await new Promise((r) => (pageServer ? pageServer.close(r) : r()));
  watchdog.clear();
});

// ---- scenarios --------------------------------------------------------------------------

test('(a) WHIP publisher and WHEP viewer in chromium; DELETE ends the publication', { timeout: 40_000 }, async () => {
  // CORS preflight, as a browser on another origin sends it.
  const pre = await fetch(`${server.base}/whip/${ROOM_A}`, {
    method: 'OPTIONS',
    headers: { Origin: pageBase.slice(0, -1), 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization, content-type' },
  });
  assert.equal(pre.status, 204, 'OPTIONS /whip/{room}');
  assert.equal(pre.headers.get('access-control-allow-origin'), '*');
  assert.match(pre.headers.get('access-control-allow-methods') ?? '', /POST/);

  const A = await rtcPage('A');
  const B = await rtcPage('B');
  const peers = [A, B];
  const tokenA = tokenFor('whip-alice', ROOM_A);
  const tokenB = tokenFor('whep-bob', ROOM_A);

  const a = await A.page.evaluate(([url, token]) => window.lib.whip('A', { url, token }), [`${server.base}/whip/${ROOM_A}`, tokenA]);
  assert.equal(a.status, 201, `WHIP POST: ${a.body}`);
  assert.match(a.location ?? '', new RegExp(`^/whip/${ROOM_A}/[^/]+$`), 'Location (exposed by CORS)');
  assert.match(a.contentType ?? '', /^application\/sdp/);
  assert.ok(a.gathered, 'A gathered its candidates before the POST');
  await until('A (WHIP) connected', () => stats(A, 'A'), (s) => s.connectionState === 'connected', { timeout: 10_000, peers });

  const b = await B.page.evaluate(([url, token]) => window.lib.whep('B', { url, token }), [`${server.base}/whep/${ROOM_A}`, tokenB]);
  assert.equal(b.status, 201, `WHEP POST: ${b.body}`);
  assert.match(b.location ?? '', new RegExp(`^/whep/${ROOM_A}/[^/]+$`));
  assert.match(b.contentType ?? '', /^application\/sdp/);
  assert.equal((b.body.match(/^m=/gm) ?? []).length, 2, 'the answer has the offer\'s two m-lines');

  const bStarted = Date.now();
  const s = await until('B decodes >= 60 video frames', () => stats(B, 'B'),
    (v) => v.videoFramesDecoded >= 60, { timeout: 20_000, peers, interval: 200 });
  // Read by people and scripts: WHEP POST sent to first decoded video frame.
  console.log(`join-time-ms whep: ${Math.round(s.firstFrameMs)}`);
  const audio1 = s.audioPacketsReceived;
  await sleep(1_000);
  const s2 = await stats(B, 'B');
  assert.ok(s2.audioPacketsReceived > audio1, `audio packets keep arriving at B (${audio1} -> ${s2.audioPacketsReceived})`);
  assert.ok(Date.now() - bStarted < 20_000, 'within 20 s');
  assert.ok(s2.patches.length >= 1, 'B trickled at least one candidate by PATCH');
  assert.deepEqual(s2.patches.filter((p) => p !== 204), [], `PATCH answers 204: ${JSON.stringify(s2.patches)}`);
  console.log(`B (WHEP): ${s2.videoFramesDecoded} frames, audio ${audio1} -> ${s2.audioPacketsReceived} packets in 1 s, ` +
    `${s2.patches.length} PATCH(es)`);

  const shard = ownerShard(ROOM_A, server.shards);
  const h = await health(server);
  assert.equal(h.body.shards[shard].producers, 2, `room ${ROOM_A}'s shard ${shard} has A's audio and video producers: ${JSON.stringify(h.body.shards)}`);

  // Another user may not end A's session.
  assert.equal(await A.page.evaluate(([t]) => window.lib.del('A', t), [tokenB]), 403, 'DELETE with another user\'s token');
  assert.equal(await A.page.evaluate(() => window.lib.del('A')), 200, 'DELETE A\'s WHIP resource');
  assert.equal(await A.page.evaluate(() => window.lib.del('A')), 404, 'a second DELETE finds nothing');

  // A's browser keeps sending, but the server forwards nothing more to B.
  await sleep(1_000);
  const f1 = await stats(B, 'B');
  await sleep(1_500);
  const f2 = await stats(B, 'B');
  assert.ok(f2.videoFramesDecoded - f1.videoFramesDecoded <= 1 || f2.connectionState !== 'connected',
    `B's video stops after the DELETE (${f1.videoFramesDecoded} -> ${f2.videoFramesDecoded}, ${f2.connectionState})`);
  const aAfter = await stats(A, 'A');
  console.log(`after DELETE: B decoded ${f1.videoFramesDecoded} -> ${f2.videoFramesDecoded} frames in 1.5 s ` +
    `(B ${f2.connectionState}) while A's browser still encodes (${aAfter.videoFramesEncoded} frames, A ${aAfter.connectionState})`);
  await until(`/health: shard ${shard} has no producers`, () => health(server),
    (r) => r.body.shards[shard].producers === 0, { timeout: 5_000, peers });

  assert.equal(await B.page.evaluate(() => window.lib.del('B')), 200, 'DELETE B\'s WHEP resource');
  await A.page.evaluate(() => window.lib.close('A'));
  await B.page.evaluate(() => window.lib.close('B'));
  await A.page.close();
  await B.page.close();
});

let callB; // {producer, subscriber, pcName}: (b) stays up during (d)
let callC; // {publisher, consumer}: (c) stays up during (d)

test('(b) a mediasoup-client producer is received by a /pubsub subscriber', { timeout: 30_000 }, async () => {
  const producer = await mscPage('B-msc', tokenFor('msc-pub', ROOM_B), { produce: 'audio,video', consume: '0' });
  const p = await until('mediasoup-client page produced audio+video', () => mscSnapshot(producer),
    (e) => e.errors.length > 0 || (e.state === 'joined' && e.producers.audio && e.producers.video), { peers: [producer] });
  assert.deepEqual(p.errors, []);

  const subscriber = await rtcPage('B-pubsub');
  const peers = [producer, subscriber];
  const started = Date.now();
  // The token comes in the first message (auth), not in the address.
  const opened = await subscriber.page.evaluate(([url, room]) => window.lib.socket('S', url, { auto: { room } }),
    [`${server.ws}/pubsub`, ROOM_B]);
  assert.ok(opened.opened, `/pubsub WebSocket opened: ${JSON.stringify(opened)}`);
  await subscriber.page.evaluate(([t]) => window.lib.send('S', { type: 'auth', token: t }), [tokenFor('pubsub-sub', ROOM_B)]);

  const st = await until('auth-ok, new-publisher and subscribe-offer', () => sockState(subscriber, 'S'),
    (v) => v.closed || v.messages.some((m) => m.type === 'subscribe-offer' || m.type === 'error'), { peers });
  const m = st.messages;
  assert.equal(st.closed, null, 'socket open');
  assert.deepEqual(m.filter((x) => x.type === 'error'), [], 'no error messages');
  assert.deepEqual(m[0], { type: 'auth-ok', userId: 'pubsub-sub', username: 'User pubsub-sub' });
  const np = m.find((x) => x.type === 'new-publisher');
  assert.ok(np, 'the mediasoup-client producer is announced as new-publisher');
  assert.equal(typeof np.publisherId, 'number');
  assert.equal(np.roomName, ROOM_B);
  assert.equal(np.username, 'User msc-pub');
  const offer = m.find((x) => x.type === 'subscribe-offer');
  assert.equal(offer.publisherId, np.publisherId);
  assert.equal((offer.offer.match(/^m=/gm) ?? []).length, 2, 'one m-line per producer (audio, video)');

  const pcName = `S:${np.publisherId}`;
  const s = await until('/pubsub subscriber decodes >= 30 video frames', () => stats(subscriber, pcName),
    (v) => v.videoFramesDecoded >= 30, { timeout: 20_000, peers, interval: 200 });
  assert.ok(s.audioPacketsReceived > 0, 'audio arrives too');
  console.log(`join-time-ms pubsub: ${Math.round(s.firstFrameMs)} (subscribe-offer received to first decoded frame); ` +
    `${s.videoFramesDecoded} frames after ${Date.now() - started} ms`);
  callB = { producer, subscriber, pcName };
});

test('(c) a WHIP publisher is consumed by a mediasoup-client page', { timeout: 30_000 }, async () => {
  const publisher = await rtcPage('C-whip');
  const w = await publisher.page.evaluate(([url, token]) => window.lib.whip('C', { url, token }),
    [`${server.base}/whip/${ROOM_C}`, tokenFor('whip-carol', ROOM_C)]);
  assert.equal(w.status, 201, w.body);
  await until('C (WHIP) connected', () => stats(publisher, 'C'), (s) => s.connectionState === 'connected', { timeout: 10_000, peers: [publisher] });

  const consumer = await mscPage('C-msc', tokenFor('msc-sub', ROOM_C), { produce: '', consume: '1' });
  const peers = [publisher, consumer];
  const e = await until('mediasoup-client consumes the WHIP audio and video', () => mscSnapshot(consumer),
    (v) => v.errors.length > 0 || (v.consumers.some((c) => c.kind === 'video') && v.consumers.some((c) => c.kind === 'audio')), { peers });
  assert.deepEqual(e.errors, []);
  const s = await until('mediasoup-client decodes >= 30 video frames', () => consumer.page.evaluate(() => window.__e2e.stats()),
    (v) => v.videoFramesDecoded >= 30, { timeout: 20_000, peers, interval: 200 });
  const snap = await mscSnapshot(consumer);
  console.log(`join-time-ms msc<-whip: ${Math.round(snap.firstFrameAt - snap.joinStartedAt)}; ` +
    `${s.videoFramesDecoded} frames, ${s.audioPacketsReceived} audio packets`);
  callC = { publisher, consumer };
});

test('(d) hostile /pubsub input gets errors and disturbs no call', { timeout: 40_000 }, async () => {
  assert.ok(callB && callC, 'scenarios (b) and (c) set up their calls');
  const H = await rtcPage('hostile');
  const peers = [H];
  const tokenH = tokenFor('hostile', ROOM_C);
  const ws = `${server.ws}/pubsub`;
  const bad = (r, requestType, what) => {
    assert.equal(r.reply?.type, 'error', `${what}: error reply (${JSON.stringify(r.reply)})`);
    assert.equal(typeof r.reply.message, 'string', `${what}: error message`);
    if (requestType) assert.equal(r.reply.requestType, requestType, `${what}: requestType`);
    assert.equal(r.state.closed, null, `${what}: the connection lives on`);
  };

  // H: authenticated by ?token=, in the room of call (c).
  assert.ok((await H.page.evaluate(([u]) => window.lib.socket('H', u), [`${ws}?token=${encodeURIComponent(tokenH)}`])).opened);
  bad(await exchange(H, 'H', 'this is {not json'), null, 'malformed JSON');
  bad(await exchange(H, 'H', { type: 'publish-ice-candidate', roomName: ROOM_C, candidate: 'candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host' }),
    'publish-ice-candidate', 'publish-ice-candidate before publish-offer');
  bad(await exchange(H, 'H', { type: 'publish-offer', roomName: ROOM_C, offer: 'this is not SDP' }), 'publish-offer', 'invalid SDP');
  bad(await exchange(H, 'H', { type: 'publish-offer', roomName: ROOM_C, offer: 'v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video' }), 'publish-offer', 'truncated SDP');
  bad(await exchange(H, 'H', { type: 'publish-offer', roomName: ROOM_C, offer: 42 }), 'publish-offer', 'offer not a string');
  const offers = await H.page.evaluate(() => window.lib.hostileOffers());
  bad(await exchange(H, 'H', { type: 'publish-offer', roomName: ROOM_C, offer: offers.dataOnly }), 'publish-offer', 'data-channel-only offer');
  bad(await exchange(H, 'H', { type: 'publish-offer', roomName: ROOM_C, offer: offers.pcmuOnly }), 'publish-offer', 'PCMU-only offer');
  bad(await exchange(H, 'H', { type: 'subscribe-request', roomName: ROOM_C, publisherId: 987654321 }), 'subscribe-request', 'unknown publisherId');
  bad(await exchange(H, 'H', { type: 'subscribe-request', roomName: ROOM_C, publisherId: 'abc' }), 'subscribe-request', 'publisherId not a number');
  bad(await exchange(H, 'H', { type: 'subscribe-request', roomName: ROOM_C }), 'subscribe-request', 'no publisherId');
  bad(await exchange(H, 'H', { type: 'no-such-type', roomName: ROOM_C }), 'no-such-type', 'unknown type');
  bad(await exchange(H, 'H', { type: 'join', roomName: ROOM_B }), 'join', 'another room on the same connection');
  bad(await exchange(H, 'H', { type: 'join' }), 'join', 'no roomName');
  bad(await exchange(H, 'H', { type: 'auth', token: tokenH }), 'auth', 'second auth');
  bad(await exchange(H, 'H', { __binary: [1, 2, 3] }), null, 'binary frame');

  // The WHIP publisher of call (c) was announced when H joined.
  const whipPub = (await sockState(H, 'H')).messages.find((m) => m.type === 'new-publisher' && m.username === 'User whip-carol');
  assert.ok(whipPub, 'H was told about call (c)\'s WHIP publisher');
  bad(await exchange(H, 'H', { type: 'subscribe-answer', roomName: ROOM_C, publisherId: whipPub.publisherId, answer: 'v=0' }),
    'subscribe-answer', 'subscribe-answer without a subscription');
  bad(await exchange(H, 'H', { type: 'subscribe-ice-candidate', roomName: ROOM_C, publisherId: whipPub.publisherId, candidate: 'candidate:x' }),
    'subscribe-ice-candidate', 'subscribe-ice-candidate without a subscription');

  // The publisherId /pubsub announced names the same publisher in a WHEP path.
  const tokenW = tokenFor('whep-walter', ROOM_C);
  const unknown = await H.page.evaluate(([url, token]) => window.lib.whep('W0', { url, token }),
    [`${server.base}/whep/${ROOM_C}/987654321`, tokenW]);
  assert.equal(unknown.status, 404, `WHEP for an unknown publisherId: ${unknown.body}`);
  const w = await H.page.evaluate(([url, token]) => window.lib.whep('W', { url, token }),
    [`${server.base}/whep/${ROOM_C}/${whipPub.publisherId}`, tokenW]);
  assert.equal(w.status, 201, `WHEP /whep/{room}/{publisherId}: ${w.body}`);
  await until('WHEP viewer of one publisher decodes video', () => stats(H, 'W'), (v) => v.videoFramesDecoded >= 10,
    { timeout: 15_000, peers, interval: 200 });
  assert.equal(await H.page.evaluate(() => window.lib.del('W')), 200, 'DELETE the WHEP viewer');
  await H.page.evaluate(() => window.lib.close('W'));

  // After all that, the same connection still subscribes (a garbage answer first, then the
  // real one) and publishes.
  const so = await exchange(H, 'H', { type: 'subscribe-request', roomName: ROOM_C, publisherId: whipPub.publisherId }, ['subscribe-offer', 'error']);
  assert.equal(so.reply.type, 'subscribe-offer', `subscribe-request answered: ${JSON.stringify(so.reply).slice(0, 300)}`);
  const before = so.state.messages.length;
  const pcName = await H.page.evaluate(([m]) => window.lib.answerSubscribe('H', m, { garbageFirst: true }), [so.reply]);
  const afterAnswers = await until('error for the garbage subscribe-answer', () => sockState(H, 'H'),
    (v) => v.messages.slice(before).some((m) => m.type === 'error'), { timeout: 5_000, peers });
  const answerErrors = afterAnswers.messages.slice(before).filter((m) => m.type === 'error');
  assert.equal(answerErrors[0].requestType, 'subscribe-answer');
  await until('H decodes the WHIP publisher after a bad then a good answer', () => stats(H, pcName),
    (v) => v.videoFramesDecoded >= 10, { timeout: 15_000, peers, interval: 200 });
  const afterSub = await sockState(H, 'H');
  assert.equal(afterSub.messages.slice(before).filter((m) => m.type === 'error').length, 1,
    `only the garbage answer was refused: ${JSON.stringify(afterSub.messages.slice(before))}`);

  const pubBefore = afterSub.messages.length;
  await H.page.evaluate(([room]) => window.lib.publishOffer('H', room), [ROOM_C]);
  const pa = await until('publish-answer after the failed offers', () => sockState(H, 'H'),
    (v) => v.closed || v.messages.slice(pubBefore).some((m) => m.type === 'publish-answer' || m.type === 'error'), { timeout: 5_000, peers });
  const answer = pa.messages.slice(pubBefore).find((m) => m.type === 'publish-answer' || m.type === 'error');
  assert.equal(answer.type, 'publish-answer', JSON.stringify(answer));
  await H.page.evaluate(([sdp]) => window.lib.applyPublishAnswer('H', sdp), [answer.answer]);
  await until('H\'s publish peer connection connects', () => stats(H, 'H:publish'), (v) => v.connectionState === 'connected', { timeout: 10_000, peers });
  bad(await exchange(H, 'H', { type: 'publish-offer', roomName: ROOM_C, offer: offers.dataOnly }), 'publish-offer', 'a second publish-offer');

  // Before auth: an error, then the server closes the socket.
  assert.ok((await H.page.evaluate(([u]) => window.lib.socket('N', u), [ws])).opened);
  const n = await exchange(H, 'N', { type: 'join', roomName: ROOM_C });
  assert.equal(n.reply?.type, 'error', `message before auth: ${JSON.stringify(n.reply)}`);
  await until('the unauthenticated socket is closed', () => sockState(H, 'N'), (v) => v.closed !== null, { timeout: 5_000, peers });
  // A forged token in auth: an error, then close.
  assert.ok((await H.page.evaluate(([u]) => window.lib.socket('F', u), [ws])).opened);
  const forged = mintToken({ userId: 'mallory', roomId: ROOM_C, exp: Math.floor(Date.now() / 1000) + 600 }, `${SECRET}-not`);
  const f = await exchange(H, 'F', { type: 'auth', token: forged });
  assert.equal(f.reply?.type, 'error', `forged token: ${JSON.stringify(f.reply)}`);
  await until('the socket with the forged token is closed', () => sockState(H, 'F'), (v) => v.closed !== null, { timeout: 5_000, peers });
  // A message over limits.max_message_bytes (1 MiB): an error, then close 1009.
  assert.ok((await H.page.evaluate(([u]) => window.lib.socket('L', u), [`${ws}?token=${encodeURIComponent(tokenH)}`])).opened);
  await H.page.evaluate(([room]) => window.lib.send('L', { type: 'join', roomName: room, pad: 'x'.repeat(1_100_000) }), [ROOM_C]);
  const big = await until('the oversized message closes its socket', () => sockState(H, 'L'), (v) => v.closed !== null, { timeout: 5_000, peers });
  assert.equal(big.closed.code, 1009, `close code for an oversized message: ${JSON.stringify(big.closed)}`);
  assert.equal(big.messages[0]?.type, 'error');
  assert.equal((await sockState(H, 'H')).closed, null, 'H is still open');

  // The calls of (b) and (c) went on.
  await framesGrow('call (b): /pubsub subscriber', () => stats(callB.subscriber, callB.pcName).then((s) => s.videoFramesDecoded),
    [callB.producer, callB.subscriber]);
  await framesGrow('call (c): mediasoup-client consumer', () => callC.consumer.page.evaluate(() => window.__e2e.stats()).then((s) => s.videoFramesDecoded),
    [callC.publisher, callC.consumer]);
  assert.deepEqual((await mscSnapshot(callB.producer)).errors, [], 'call (b) producer page errors');
  assert.deepEqual((await mscSnapshot(callC.consumer)).errors, [], 'call (c) consumer page errors');
  assert.equal((await sockState(callB.subscriber, 'S')).messages.filter((m) => m.type === 'error').length, 0, 'call (b) subscriber got no error');
  assert.equal((await stats(callB.subscriber, callB.pcName)).connectionState, 'connected');

  const h = await health(server);
  assert.equal(h.status, 200);
  assert.equal(server.exited, null, 'the server is running');
  assert.ok(!server.log.some((l) => /panick/i.test(l)), `no panic in the server log:\n${server.log.filter((l) => /panick/i.test(l)).join('\n')}`);
});
