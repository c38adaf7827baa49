// Browser end-to-end test of the built-in demo page (src/demo/, served by the server at /
// and /demo) over the publish/subscribe SDP dialect, shared/PROTOCOLS.md section 2.
// Real corelay binary in dev mode (no JWT_SECRET: the page gets its token from POST /login),
// headless Debian chromium with fake camera and microphone, two people typing into the
// page's form. Needs no build step: `node --test demo.test.mjs`.
//
//   CORELAY_BIN, CHROMIUM_BIN, E2E_SERVER_LOG=1: see harness.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  launchBrowser, mintToken, openPage, sleep, startServer, startWatchdog, stopServer,
} from './harness.mjs';

const RUN = Date.now().toString(36);
const ROOM = `demo-e2e-${RUN}`;

// Hard stop: the whole file must finish well under two minutes even if something hangs.
const watchdog = startWatchdog('demo e2e', 110_000);

let devServer; // harness server in dev mode (no JWT_SECRET)
let browser; // {context, close}: playwright persistent context on a fresh profile

// ---- helpers ----------------------------------------------------------------------------

function logTail(server, n = 40) {
  return server ? server.tail(n) : '(server not started)';
}

// Opens the demo page (`server.base` + `path`) as one person.
async function openPeer(name, server, path = '') {
  const peer = await openPage(browser.context, name, `${server.base}/${path}`).catch((err) => {
    // openPage's "answered <status>": say what that means here.
    if (/ answered \d+$/.test(err.message)) {
      throw new Error(`${err.message}: the server does not serve the demo page (src/demo/)`);
    }
    throw err;
  });
  await peer.page.waitForFunction(() => window.__demo !== undefined, null, { timeout: 5_000 });
  return { ...peer, server };
}

// Fills the form the way a person does: click, select all, type, click Join.
async function joinViaForm(peer, room, name) {
  const { page } = peer;
  for (const [selector, text] of [['#room', room], ['#name', name]]) {
    if (text === undefined) continue;
    const box = page.locator(selector);
    await box.click();
    await box.press('ControlOrMeta+A');
    await box.press('Backspace');
    await box.pressSequentially(text);
  }
  await page.getByRole('button', { name: 'Join' }).click();
}

// A serializable copy of the page's window.__demo, tiles() evaluated.
function snapshot(peer) {
  return peer.page.evaluate(() => {
    const d = window.__demo;
    return d ? JSON.parse(JSON.stringify({ ...d, tiles: d.tiles() })) : undefined;
  });
}

function describePeer(peer, snap) {
  return [
    `peer ${peer.name}: state=${snap?.state} ws=${snap?.wsState} publish=${snap?.publishState} ` +
      `userId=${snap?.userId} username=${snap?.username} publisherId=${snap?.publisherId}`,
    `  errors=${JSON.stringify(snap?.errors)}`,
    `  tiles=${JSON.stringify(snap?.tiles)}`,
    `  signaling:\n    ${(snap?.log ?? []).slice(-20).join('\n    ')}`,
    `  console=${JSON.stringify(peer.consoleLines.slice(-10))}`,
  ].join('\n');
}

// Polls the page until `pred(snapshot)` holds. Fails at once when the page reports an
// error (unless allowErrors), so a broken server answer shows up fast and with context.
async function waitFor(peer, what, pred, { timeout = 15_000, allowErrors = false, others = [] } = {}) {
  const deadline = Date.now() + timeout;
  const fail = async (why, snap) => {
    const more = [];
    for (const o of others) more.push(describePeer(o, await snapshot(o).catch(() => undefined)));
    return new Error([
      `${what}: ${why}`,
      describePeer(peer, snap),
      ...more,
      `server log tail:\n${logTail(peer.server)}`,
    ].join('\n'));
  };
  for (;;) {
    const snap = await snapshot(peer);
    if (snap && pred(snap)) return snap;
    if (!allowErrors && snap?.errors?.length) throw await fail('page reported errors', snap);
    if (Date.now() > deadline) throw await fail(`not within ${timeout} ms`, snap);
    await sleep(200);
  }
}

// ---- setup ------------------------------------------------------------------------------

before(async () => {
  devServer = await startServer({ shards: 2 });
  browser = await launchBrowser('corelay-demo-profile-', { viewport: { width: 1280, height: 800 } });
});

after(async () => {
  await browser?.close();
  await stopServer(devServer);
  watchdog.clear();
});

// ---- scenarios --------------------------------------------------------------------------

test('the demo page and its assets are served', { timeout: 10_000 }, async () => {
  for (const path of ['', 'demo']) {
    const res = await fetch(`${devServer.base}/${path}`);
    const body = await res.text();
    assert.equal(res.status, 200, `GET /${path}`);
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/, `GET /${path} content-type`);
    assert.match(body, /demo\.js/, `GET /${path} is the demo page`);
  }
  for (const [path, type] of [['demo.js', /^(text|application)\/javascript/], ['demo.css', /^text\/css/]]) {
    const res = await fetch(`${devServer.base}/${path}`);
    await res.body?.cancel();
    assert.equal(res.status, 200, `GET /${path}`);
    assert.match(res.headers.get('content-type') ?? '', type, `GET /${path} content-type`);
  }
});

test('two people join through the form, see each other, one leaves', { timeout: 60_000 }, async () => {
  const alice = await openPeer('Alice', devServer);
  const bob = await openPeer('Bob', devServer, 'demo');
  await joinViaForm(alice, ROOM, 'Alice');
  await joinViaForm(bob, ROOM, 'Bob');
  const started = Date.now();

  // Each sees the other, decoding video, within 30 s.
  const seen = (peer, other) =>
    waitFor(peer, `${peer.name} shows ${other.name}'s video (framesDecoded >= 30)`, (s) =>
      s.tiles.some((t) => t.username === other.name && t.framesDecoded >= 30),
    { timeout: 30_000, others: [other] });
  const [a, b] = await Promise.all([seen(alice, bob), seen(bob, alice)]);
  console.log(`both pages decoded >= 30 frames of each other ${Date.now() - started} ms after the second Join`);

  for (const [peer, snap, other] of [[alice, a, bob], [bob, b, alice]]) {
    assert.equal(snap.state, 'joined', `${peer.name} state`);
    assert.equal(snap.wsState, 'open', `${peer.name} WebSocket`);
    assert.equal(snap.publishState, 'connected', `${peer.name} publish peer connection`);
    assert.equal(snap.username, peer.name, `${peer.name}: auth-ok username (from POST /login)`);
    assert.deepEqual(snap.errors, [], `${peer.name} errors`);
    assert.equal(snap.tiles.length, 1, `${peer.name} has exactly one remote tile (not its own): ${JSON.stringify(snap.tiles)}`);
    const [tile] = snap.tiles;
    assert.equal(typeof tile.publisherId, 'number', 'publisherId is a number');
    assert.equal(tile.connectionState, 'connected');
    // The tile on screen is labelled with the other person's name.
    const label = peer.page.locator(`#tiles figure[data-publisher-id="${tile.publisherId}"] figcaption`);
    assert.equal(await label.textContent(), other.name);
    assert.ok(await label.isVisible(), `${peer.name}: tile label visible`);
    assert.ok(!(await peer.page.locator('#join-form').isVisible()), `${peer.name}: the form is hidden in the call`);
  }
  assert.notEqual(a.tiles[0].publisherId, b.tiles[0].publisherId, 'the two publishers have distinct ids');

  const shot = join(tmpdir(), `corelay-demo-${RUN}.png`);
  await alice.page.screenshot({ path: shot, fullPage: true });
  console.log(`demo-screenshot: ${shot}`);

  // Bob leaves with the button; his tile goes away on Alice's page (publisher-left).
  const bobId = a.tiles[0].publisherId;
  await bob.page.getByRole('button', { name: 'Leave' }).click();
  await waitFor(bob, 'Bob is out', (s) => s.state === 'left' && s.tiles.length === 0, { timeout: 5_000 });
  assert.ok(await bob.page.locator('#join-form').isVisible(), 'Bob sees the join form again');
  await waitFor(alice, 'Bob\'s tile disappears from Alice\'s page', (s) =>
    !s.tiles.some((t) => t.publisherId === bobId || t.username === 'Bob'),
  { timeout: 10_000, others: [bob] });
  assert.equal(await alice.page.locator(`#tiles figure[data-publisher-id="${bobId}"]`).count(), 0, 'tile removed from the DOM');
  const aliceAfter = await snapshot(alice);
  assert.equal(aliceAfter.state, 'joined', 'Alice is still in the room');
  assert.deepEqual(aliceAfter.errors, []);

  await alice.page.getByRole('button', { name: 'Leave' }).click();
  await waitFor(alice, 'Alice is out', (s) => s.state === 'left', { timeout: 5_000 });
  await alice.page.close();
  await bob.page.close();
});

test('with JWT_SECRET: login is off (clear error) and ?token= joins', { timeout: 40_000 }, async () => {
  const secret = `corelay-demo-e2e-secret-${RUN}`;
  const server = await startServer({ secret, shards: 2 });
  try {
    // No token in the address: POST /login answers 404, the page says why.
    const nobody = await openPeer('nobody', server);
    await joinViaForm(nobody, `${ROOM}-s`, 'Nobody');
    const n = await waitFor(nobody, 'login-disabled error shown', (s) => s.errors.length > 0,
      { timeout: 10_000, allowErrors: true });
    assert.equal(n.state, 'error');
    assert.match(n.errors[0].message, /login is disabled/i);
    assert.match(await nobody.page.locator('#errors').innerText(), /login is disabled/i);
    assert.ok(await nobody.page.locator('#join-form').isVisible(), 'the form stays usable');
    await nobody.page.close();

    // A token minted here, in the address: name and room come from it.
    const now = Math.floor(Date.now() / 1000);
    const token = mintToken({ userId: 'carol', userName: 'Carol', roomId: `${ROOM}-s`, exp: now + 600 }, secret);
    const carol = await openPeer('Carol', server, `?token=${encodeURIComponent(token)}`);
    assert.equal(await carol.page.locator('#name').inputValue(), 'Carol');
    assert.equal(await carol.page.locator('#room').inputValue(), `${ROOM}-s`);
    await carol.page.getByRole('button', { name: 'Join' }).click();
    const c = await waitFor(carol, 'Carol joined and publishes', (s) =>
      s.state === 'joined' && s.publishState === 'connected', { timeout: 15_000 });
    assert.equal(c.userId, 'carol');
    assert.equal(c.username, 'Carol');
    await carol.page.close();

    // A token signed with another secret is refused, visibly.
    const forged = mintToken({ userId: 'mallory', roomId: `${ROOM}-s`, exp: now + 600 }, `${secret}-not`);
    const mallory = await openPeer('mallory', server, `?token=${encodeURIComponent(forged)}`);
    await mallory.page.getByRole('button', { name: 'Join' }).click();
    const m = await waitFor(mallory, 'forged token refused', (s) => s.state === 'error' && s.errors.length > 0,
      { timeout: 10_000, allowErrors: true });
    assert.ok(m.tiles.length === 0 && m.publishState !== 'connected');
    await mallory.page.close();
  } finally {
    await stopServer(server);
  }
});
