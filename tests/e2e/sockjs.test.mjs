// SockJS end-to-end tests (shared/PROTOCOLS.md section 5): the real npm sockjs-client 1.6.1,
// what the original videre clients load, relays peer-to-peer packets through a real corelay
// binary (2 shards) at the original prefix /echo. First two Node clients (sockjs-client's
// Node drivers: faye-websocket, http), then headless Chromium pages that load
// sockjs-client's own dist/sockjs.min.js from another origin (so every request is CORS):
// once with the default transports (websocket), once with WebSocket ruled out
// (`transports: ['xhr-streaming']` and `['xhr-polling']`), in a room owned by the other
// shard than the one the first session started on, so that the HTTP session moves; and
// once on `eventsource`.
//
//   CORELAY_BIN, CHROMIUM_BIN, E2E_SERVER_LOG=1: see harness.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import { createRequire } from 'node:module';
import SockJS from 'sockjs-client';
import {
  health, killAllServers, launchBrowser, mintToken, openPage, ownerShard, sleep, startServer, stopServer,
} from './harness.mjs';

const SECRET = 'corelay-sockjs-e2e-secret-0123456789';
const RUN = Date.now().toString(36);

// Hard stop: the whole file must finish well under 60 s even if something hangs.
const watchdog = setTimeout(() => {
  console.error('sockjs e2e watchdog: 50 s elapsed, killing the server and exiting');
  killAllServers();
  process.exit(1);
}, 50_000);
watchdog.unref();

let server;
let browser;
let pageServer;
let pageBase;

const tokenFor = (userId) => mintToken({ userId, exp: Math.floor(Date.now() / 1000) + 600 }, SECRET);
const pkt = (Event, UserId, RoomId, Payload = '') => JSON.stringify({ Header: { Event, UserId, RoomId }, Payload });

// A room of namespace "" owned by `shard` (the relay's routing key is `p2p:{ns}/{room}`).
function roomOn(shard, tag) {
  for (let i = 0; ; i++) {
    const room = `${tag}-${RUN}-${i}`;
    if (ownerShard(`p2p:/${room}`, server.shards) === shard) return room;
  }
}

// ---- Node clients -----------------------------------------------------------------------

function nodeClient(name, url, options) {
  const sock = new SockJS(url, null, options);
  const queue = [];
  const waiters = [];
  let closed = null;
  sock.onmessage = (e) => {
    const w = waiters.shift();
    if (w) w.resolve(e.data);
    else queue.push(e.data);
  };
  const opened = new Promise((resolve, reject) => {
    sock.onopen = () => resolve();
    sock.onclose = (e) => {
      closed = { code: e.code, reason: e.reason };
      reject(new Error(`${name}: closed ${e.code} ${e.reason} before opening`));
      for (const w of waiters.splice(0)) w.reject(new Error(`${name}: closed ${e.code} ${e.reason}`));
    };
  });
  return {
    sock,
    opened,
    get closed() { return closed; },
    send: (text) => sock.send(text),
    // The next relay packet, parsed.
    next(timeout = 5_000) {
      if (queue.length) return Promise.resolve(JSON.parse(queue.shift()));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${name}: no message within ${timeout} ms`)), timeout);
        waiters.push({
          resolve: (d) => { clearTimeout(timer); resolve(JSON.parse(d)); },
          reject: (e) => { clearTimeout(timer); reject(e); },
        });
      });
    },
  };
}

// ---- the browser page -------------------------------------------------------------------

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>sockjs relay</title>
<script src="/sockjs.min.js"></script></head>
<body><script>
  window.relay = {
    state: { messages: [], closed: null, transport: null, error: null },
    open(url, options) {
      const s = window.relay.state;
      const sock = new SockJS(url, null, options);
      window.relay.sock = sock;
      sock.onopen = () => { s.transport = sock.transport; };
      sock.onmessage = (e) => s.messages.push(e.data);
      sock.onclose = (e) => { s.closed = { code: e.code, reason: e.reason }; };
    },
    take() { const m = window.relay.state.messages; window.relay.state.messages = []; return m; },
  };
</script></body></html>`;

async function page(name) {
  const p = await openPage(browser.context, name, `${pageBase}relay.html`);
  p.inbox = [];
  return p;
}

async function context(pages) {
  const lines = await Promise.all(pages.map(async (p) => {
    const s = await p.page.evaluate(() => window.relay.state).catch((e) => `(${e.message})`);
    return `page ${p.name}: ${JSON.stringify(s)}\n  console: ${JSON.stringify(p.consoleLines.slice(-10))}`;
  }));
  return `${lines.join('\n')}\nserver log tail:\n${server.tail(30)}`;
}

// Opens SockJS on the page; resolves with the transport it opened with.
async function openRelay(p, user, options) {
  const url = `${server.base}/echo?token=${tokenFor(user)}`;
  await p.page.evaluate(([u, o]) => window.relay.open(u, o), [url, options]);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const s = await p.page.evaluate(() => window.relay.state);
    if (s.transport) return s.transport;
    if (s.closed || Date.now() > deadline) assert.fail(`${p.name}: SockJS did not open\n${await context([p])}`);
    await sleep(50);
  }
}

const pageSend = (p, text) => p.page.evaluate((t) => window.relay.sock.send(t), text);

async function pageNext(p, pages, timeout = 8_000) {
  const deadline = Date.now() + timeout;
  while (!p.inbox.length) {
    p.inbox.push(...(await p.page.evaluate(() => window.relay.take())));
    if (p.inbox.length) break;
    if (Date.now() > deadline) assert.fail(`${p.name}: no relay packet within ${timeout} ms\n${await context(pages)}`);
    await sleep(30);
  }
  return JSON.parse(p.inbox.shift());
}

// Two pages relay through one room: initiator flags, broadcasts both ways, ping.
async function relayBetween(a, b, room, users) {
  const pages = [a, b];
  await pageSend(a, pkt('connect', users[0], room));
  const ownA = await pageNext(a, pages);
  assert.equal(ownA.Header.Event, 'connect');
  assert.equal(JSON.parse(ownA.Payload), true, 'the first member is the initiator');
  await pageSend(b, pkt('connect', users[1], room));
  const ownB = await pageNext(b, pages);
  assert.equal(JSON.parse(ownB.Payload), false);
  const seen = await pageNext(a, pages);
  assert.equal(seen.Header.UserId, users[1]);
  const offer = pkt('broadcast', users[0], room, JSON.stringify({ sdp: 'v=0 offer' }));
  await pageSend(a, offer);
  assert.deepEqual(await pageNext(b, pages), JSON.parse(offer));
  const answer = pkt('broadcast', users[1], room, JSON.stringify({ sdp: 'v=0 answer' }));
  await pageSend(b, answer);
  assert.deepEqual(await pageNext(a, pages), JSON.parse(answer));
  await pageSend(b, pkt('ping', users[1], room));
  const pong = await pageNext(b, pages);
  assert.equal(pong.Header.Event, 'ping');
  assert.deepEqual(JSON.parse(pong.Payload), users);
}

async function totalConnections() {
  const { body } = await health(server);
  return body.shards.reduce((n, s) => n + s.connections, 0);
}

async function connectionsUntil(pred, what, timeout = 5_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const { body } = await health(server);
    if (pred(body.shards)) return body.shards;
    if (Date.now() > deadline) assert.fail(`${what}: ${JSON.stringify(body.shards)}\n${server.tail(20)}`);
    await sleep(50);
  }
}

// ---- setup ------------------------------------------------------------------------------

before(async () => {
  server = await startServer({ secret: SECRET, shards: 2 });
  const require = createRequire(import.meta.url);
  const sockjsDist = await readFile(require.resolve('sockjs-client/dist/sockjs.min.js'));
  pageServer = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/sockjs.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-store' });
      res.end(sockjsDist);
    } else if (path === '/relay.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(PAGE);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => pageServer.listen(0, '127.0.0.1', r));
  pageBase = `http://127.0.0.1:${pageServer.address().port}/`;
  browser = await launchBrowser('corelay-sockjs-e2e-profile-');
});

after(async () => {
  await browser?.close();
  await stopServer(server);
  await new Promise((r) => (pageServer ? pageServer.close(r) : r()));
  clearTimeout(watchdog);
});

// ---- tests ------------------------------------------------------------------------------

test('(a) two Node sockjs-client clients relay: connect, initiator flags, broadcast, ping, disconnect', { timeout: 20_000 }, async () => {
  const room = `node-${RUN}`;
  const alice = nodeClient('alice', `${server.base}/echo?token=${tokenFor('alice')}`);
  const bob = nodeClient('bob', `${server.base}/echo?token=${tokenFor('bob')}`);
  await Promise.all([alice.opened, bob.opened]);
  assert.equal(alice.sock.transport, 'websocket');
  assert.equal(bob.sock.transport, 'websocket');

  alice.send(pkt('connect', 'alice', room));
  const own = await alice.next();
  assert.equal(own.Header.Event, 'connect');
  assert.equal(own.Header.UserId, 'alice');
  assert.equal(JSON.parse(own.Payload), true, 'alice is the initiator');
  bob.send(pkt('connect', 'bob', room));
  assert.equal(JSON.parse((await bob.next()).Payload), false);
  const seen = await alice.next();
  assert.equal(seen.Header.UserId, 'bob');
  assert.equal(JSON.parse(seen.Payload), false);

  const offer = pkt('broadcast', 'alice', room, JSON.stringify({ type: 'offer', sdp: 'v=0\r\n' }));
  alice.send(offer);
  assert.deepEqual(await bob.next(), JSON.parse(offer));
  const ice = pkt('broadcast', 'bob', room, JSON.stringify({ candidate: 'candidate:1 1 udp 1 127.0.0.1 9 typ host' }));
  bob.send(ice);
  assert.deepEqual(await alice.next(), JSON.parse(ice));

  bob.send(pkt('ping', 'bob', room));
  const pong = await bob.next();
  assert.equal(pong.Header.Event, 'ping');
  assert.deepEqual(JSON.parse(pong.Payload), ['alice', 'bob']);

  // A forged UserId: an error packet for bob only.
  bob.send(pkt('broadcast', 'mallory', room, 'x'));
  assert.equal((await bob.next()).Header.Event, 'error');

  bob.send(pkt('disconnect', 'bob', room));
  const left = await alice.next();
  assert.equal(left.Header.Event, 'disconnect');
  assert.equal(left.Header.UserId, 'bob');

  // Closing the SockJS connection is a disconnect too.
  bob.send(pkt('connect', 'bob', room));
  assert.equal((await bob.next()).Header.Event, 'connect');
  assert.equal((await alice.next()).Header.UserId, 'bob');
  bob.sock.close();
  const closedGone = await alice.next();
  assert.equal(closedGone.Header.Event, 'disconnect');
  assert.equal(closedGone.Header.UserId, 'bob');
  alice.sock.close();
});

test('(a2) Node clients relay over xhr-streaming and xhr-polling (chunked xhr_send bodies)', { timeout: 15_000 }, async () => {
  const room = `node-xhr-${RUN}`;
  const sue = nodeClient('sue', `${server.base}/echo?token=${tokenFor('sue')}`, { transports: ['xhr-streaming'] });
  const pam = nodeClient('pam', `${server.base}/sockjs/team?token=${tokenFor('pam')}`, { transports: ['xhr-polling'] });
  await Promise.all([sue.opened, pam.opened]);
  assert.equal(sue.sock.transport, 'xhr-streaming');
  assert.equal(pam.sock.transport, 'xhr-polling');
  // Different prefixes, different namespaces: each is alone in its room.
  sue.send(pkt('connect', 'sue', room));
  pam.send(pkt('connect', 'pam', room));
  assert.equal(JSON.parse((await sue.next()).Payload), true);
  assert.equal(JSON.parse((await pam.next()).Payload), true);
  // pam joins sue's namespace through a second client.
  const pia = nodeClient('pia', `${server.base}/echo?token=${tokenFor('pia')}`, { transports: ['xhr-polling'] });
  await pia.opened;
  pia.send(pkt('connect', 'pia', room));
  assert.equal(JSON.parse((await pia.next()).Payload), false);
  assert.equal((await sue.next()).Header.UserId, 'pia');
  const hello = pkt('broadcast', 'pia', room, 'hello over polling');
  pia.send(hello);
  assert.deepEqual(await sue.next(), JSON.parse(hello));
  const back = pkt('broadcast', 'sue', room, 'hello over streaming');
  sue.send(back);
  assert.deepEqual(await pia.next(), JSON.parse(back));
  pia.send(pkt('disconnect', 'pia', room));
  assert.equal((await sue.next()).Header.Event, 'disconnect');
  for (const c of [sue, pam, pia]) c.sock.close();
});

test('(b) Chromium pages relay over SockJS, with the websocket transport', { timeout: 15_000 }, async () => {
  const a = await page('ws-a');
  const b = await page('ws-b');
  try {
    assert.equal(await openRelay(a, 'ann'), 'websocket');
    assert.equal(await openRelay(b, 'ben'), 'websocket');
    await relayBetween(a, b, `browser-ws-${RUN}`, ['ann', 'ben']);
  } finally {
    await a.page.close();
    await b.page.close();
  }
});

test('(c) Chromium pages relay over SockJS without WebSocket: xhr-streaming and xhr-polling, across shards', { timeout: 25_000 }, async () => {
  // The HTTP sessions of (a2) end 5 s after their clients went (the disconnect delay).
  await connectionsUntil((shards) => shards.every((s) => s.connections === 0), 'earlier sessions end', 9_000);
  const a = await page('xhr-streaming');
  const b = await page('xhr-polling');
  try {
    const ta = await openRelay(a, 'cat', { transports: ['xhr-streaming'] });
    assert.equal(ta, 'xhr-streaming');
    assert.notEqual(ta, 'websocket');
    // The room is owned by the other shard than the one the session started on.
    const shards = await connectionsUntil((s) => s.some((x) => x.connections === 1), 'the session is counted');
    const start = shards.findIndex((s) => s.connections === 1);
    const room = roomOn(1 - start, 'browser-xhr');
    const tb = await openRelay(b, 'dan', { transports: ['xhr-polling'] });
    assert.equal(tb, 'xhr-polling');
    await relayBetween(a, b, room, ['cat', 'dan']);
    const after = await connectionsUntil((s) => s[1 - start].connections === 2, 'both sessions on the room\'s shard');
    assert.equal(after[start].connections, 0);
    assert.ok(after.reduce((n, s) => n + s.relocatedIn, 0) >= 1);
    assert.equal(await totalConnections(), 2);
  } finally {
    await a.page.close();
    await b.page.close();
  }
});

test('(d) a Chromium page on the eventsource transport relays with a websocket page', { timeout: 15_000 }, async () => {
  const a = await page('eventsource');
  const b = await page('ws');
  try {
    assert.equal(await openRelay(a, 'eva', { transports: ['eventsource'] }), 'eventsource');
    assert.equal(await openRelay(b, 'wil'), 'websocket');
    await relayBetween(a, b, `browser-es-${RUN}`, ['eva', 'wil']);
  } finally {
    await a.page.close();
    await b.page.close();
  }
});
