// corelay test page: a mediasoup-client peer speaking the request/response dialect
// (shared/PROTOCOLS.md section 1). Used headless by msc.test.mjs and by a person in two
// tabs. Everything the test reads lives on window.__e2e.
import { Device } from 'mediasoup-client';

const REQUEST_TIMEOUT_MS = 10_000;

const params = new URLSearchParams(location.search);
const config = {
  server: params.get('server') || 'ws://127.0.0.1:3001',
  token: params.get('token') || '',
  room: params.get('room') || undefined,
  // `produce` absent means audio+video (handy for a person); present but empty means none.
  produce: (params.has('produce') ? params.get('produce') : 'audio,video')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s === 'audio' || s === 'video'),
  consume: params.get('consume') !== '0',
  // join=0: only open the WebSocket (negative tests drive requests via __e2e.request).
  join: params.get('join') !== '0',
};

const ui = {
  state: document.getElementById('state'),
  errors: document.getElementById('errors'),
  peers: document.getElementById('peers'),
  media: document.getElementById('media'),
  log: document.getElementById('log'),
  audioUnlock: document.getElementById('audio-unlock'),
};

let ws;
let nextRequestId = 1;
const pending = new Map(); // requestId -> {resolve, reject, timer}
let device;
let sendTransport;
let recvTransport;
let resolveRecvReady;
const recvReady = new Promise((resolve) => (resolveRecvReady = resolve));
const producers = new Map(); // kind -> mediasoup Producer
const consumers = new Map(); // consumerId -> mediasoup Consumer
const producerInfo = new Map(); // producerId -> {userId, userName, kind} (remote)
const requestedProducers = new Set(); // producer ids we consumed or are consuming
const closedProducers = new Set(); // producer-closed seen (maybe while a consume was in flight)
const peers = new Map(); // userId -> userName

// The test's window into the page. Timestamps are performance.now() values (ms).
const e2e = (window.__e2e = {
  state: 'idle',
  errors: [],
  events: [], // every server event, as received: {type, data, at}
  config,
  handlerName: undefined,
  userId: tokenUserId(config.token),
  roomId: undefined,
  joinStartedAt: undefined, // just before `new WebSocket(...)`
  wsOpenAt: undefined,
  wsClose: undefined, // {code, reason, wasClean, opened, at}
  joinedAt: undefined, // join-room answered
  firstFrameAt: undefined, // first remote video frame (rVFC, or framesDecoded > 0)
  firstFrameSource: undefined,
  producers: {}, // kind -> producer id
  consumers: [], // [{id, producerId, kind}]
  transports: {}, // direction -> connection state
  peers: [],
  async closeProducer(kind) {
    const producer = producers.get(kind);
    if (!producer) throw new Error(`no ${kind} producer`);
    try {
      await request('close-producer', { producerId: producer.id });
    } finally {
      producer.close();
      producers.delete(kind);
      delete e2e.producers[kind];
      document.getElementById(`local-${kind}`)?.remove();
    }
  },
  async stats() {
    const out = {
      videoFramesDecoded: 0,
      videoPacketsReceived: 0,
      audioPacketsReceived: 0,
      consumers: consumers.size,
    };
    for (const consumer of consumers.values()) {
      const report = await consumer.getStats();
      report.forEach((s) => {
        if (s.type !== 'inbound-rtp') return;
        if (s.kind === 'video') {
          out.videoFramesDecoded += s.framesDecoded || 0;
          out.videoPacketsReceived += s.packetsReceived || 0;
        } else if (s.kind === 'audio') {
          out.audioPacketsReceived += s.packetsReceived || 0;
        }
      });
    }
    return out;
  },
  // Send side: the browser's bandwidth estimate for the send transport. It starts near
  // 300 kbps and only grows with congestion feedback (transport-cc) from the server.
  async sendStats() {
    const out = { availableOutgoingBitrate: 0, videoTargetBitrate: 0 };
    if (!sendTransport) return out;
    const report = await sendTransport.getStats();
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.availableOutgoingBitrate) {
        out.availableOutgoingBitrate = Math.max(out.availableOutgoingBitrate, s.availableOutgoingBitrate);
      }
      if (s.type === 'outbound-rtp' && s.kind === 'video' && s.targetBitrate) {
        out.videoTargetBitrate += s.targetBitrate;
      }
    });
    return out;
  },
  // Raw request for negative tests: resolves with the whole response message
  // ({type: "response", requestId, data} or {..., error: {code, message}}); rejects only
  // on timeout or a closed socket.
  request(type, data = {}) {
    return sendRequest(type, data);
  },
});

function setState(state) {
  e2e.state = state;
  ui.state.textContent = state;
}

function reportError(context, err) {
  const code = err && err.code ? ` [${err.code}]` : '';
  const line = `${context}: ${err && err.message ? err.message : String(err)}${code}`;
  e2e.errors.push(line);
  ui.errors.textContent = e2e.errors.join('\n');
  console.error(line);
}

function logLine(text) {
  const div = document.createElement('div');
  div.textContent = `${(performance.now() / 1000).toFixed(3)} ${text}`;
  ui.log.prepend(div);
  while (ui.log.childNodes.length > 200) ui.log.lastChild.remove();
}

// userId from the JWT payload (not verified here: the server does that). Lets us skip our
// own producers should the server announce them to us.
function tokenUserId(token) {
  try {
    const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(b64));
    return claims.userId ?? claims.sub;
  } catch {
    return undefined;
  }
}

// ---- signaling -------------------------------------------------------------------------

function sendRequest(type, data) {
  return new Promise((resolve, reject) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      reject(new Error(`${type}: WebSocket is not open`));
      return;
    }
    const requestId = String(nextRequestId++);
    const timer = setTimeout(() => {
      pending.delete(requestId);
      reject(new Error(`${type}: no response within ${REQUEST_TIMEOUT_MS} ms`));
    }, REQUEST_TIMEOUT_MS);
    pending.set(requestId, { resolve, reject, timer });
    ws.send(JSON.stringify({ type, data, requestId }));
  });
}

// Request that resolves with `data` and rejects (Error with .code) on an error response.
async function request(type, data = {}) {
  const msg = await sendRequest(type, data);
  if (msg.error) {
    const err = new Error(`${type}: ${msg.error.message}`);
    err.code = msg.error.code;
    throw err;
  }
  return msg.data ?? {};
}

function onMessage(raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch (err) {
    reportError('bad message from server', err);
    return;
  }
  if (msg.type === 'response') {
    const p = pending.get(msg.requestId);
    if (!p) {
      reportError('response', new Error(`unknown requestId ${msg.requestId}`));
      return;
    }
    pending.delete(msg.requestId);
    clearTimeout(p.timer);
    p.resolve(msg);
    return;
  }
  e2e.events.push({ type: msg.type, data: msg.data, at: performance.now() });
  logLine(`${msg.type} ${JSON.stringify(msg.data)}`);
  handleEvent(msg.type, msg.data || {}).catch((err) => reportError(`event ${msg.type}`, err));
}

async function handleEvent(type, data) {
  switch (type) {
    case 'new-producer':
      await consumeProducer(data);
      break;
    case 'producer-closed':
      closedProducers.add(data.producerId);
      for (const consumer of consumers.values()) {
        if (consumer.producerId === data.producerId) dropConsumer(consumer);
      }
      break;
    case 'consumer-closed': {
      const consumer = consumers.get(data.consumerId);
      if (consumer) dropConsumer(consumer);
      break;
    }
    case 'peer-joined':
      peers.set(data.userId, data.userName ?? data.userId);
      renderPeers();
      break;
    case 'peer-left':
      peers.delete(data.userId);
      renderPeers();
      break;
    default:
      break; // recorded in e2e.events; nothing else to do
  }
}

function renderPeers() {
  e2e.peers = [...peers].map(([userId, userName]) => ({ userId, userName }));
  ui.peers.textContent = e2e.peers.length
    ? e2e.peers.map((p) => `${p.userName} (${p.userId})`).join(', ')
    : 'none';
}

function openSocket() {
  return new Promise((resolve, reject) => {
    const url = `${config.server.replace(/\/+$/, '')}/ws?token=${encodeURIComponent(config.token)}`;
    e2e.joinStartedAt = performance.now();
    ws = new WebSocket(url);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      e2e.wsOpenAt = performance.now();
      resolve();
    };
    ws.onmessage = (ev) => onMessage(ev.data);
    // A refused upgrade (e.g. HTTP 401) shows up in the browser only as error + close 1006
    // without an open: the status code is not visible to scripts.
    ws.onclose = (ev) => {
      e2e.wsClose = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean, opened, at: performance.now() };
      for (const [id, p] of pending) {
        clearTimeout(p.timer);
        p.reject(new Error(`WebSocket closed (code ${ev.code}) before response ${id}`));
      }
      pending.clear();
      if (!opened) {
        setState('refused');
        reject(new Error(`WebSocket closed without opening (code ${ev.code})`));
      } else {
        setState('closed');
        reportError('WebSocket', new Error(`closed (code ${ev.code} ${ev.reason})`));
      }
    };
  });
}

// ---- media ----------------------------------------------------------------------------

function transportOptions(info) {
  return {
    id: info.id,
    iceParameters: info.iceParameters,
    iceCandidates: info.iceCandidates,
    dtlsParameters: info.dtlsParameters,
    sctpParameters: info.sctpParameters,
  };
}

function watchTransport(transport, direction) {
  transport.on('connect', ({ dtlsParameters }, callback, errback) => {
    request('connect-transport', { transportId: transport.id, dtlsParameters })
      .then(() => callback())
      .catch((err) => {
        reportError(`connect-transport (${direction})`, err);
        errback(err);
      });
  });
  transport.on('connectionstatechange', (state) => {
    e2e.transports[direction] = state;
    logLine(`${direction} transport ${state}`);
    if (state === 'failed') reportError(`${direction} transport`, new Error('ICE/DTLS connection failed'));
  });
}

async function createSendTransport() {
  const info = await request('create-transport', { direction: 'send', sctpCapabilities: device.sctpCapabilities });
  sendTransport = device.createSendTransport(transportOptions(info));
  watchTransport(sendTransport, 'send');
  sendTransport.on('produce', ({ kind, rtpParameters, appData }, callback, errback) => {
    request('produce', { transportId: sendTransport.id, kind, rtpParameters, appData })
      .then(({ id }) => callback({ id }))
      .catch((err) => {
        reportError(`produce ${kind}`, err);
        errback(err);
      });
  });
}

async function produceAll() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: config.produce.includes('audio'),
    video: config.produce.includes('video') ? { width: 640, height: 360 } : false,
  });
  // Produce in the order the `produce` parameter lists: browsers number RTP header
  // extensions in the order a peer connection first uses them, so camera-first and
  // microphone-first give different numberings, and the server must take either.
  const tracks = stream.getTracks()
    .sort((x, y) => config.produce.indexOf(x.kind) - config.produce.indexOf(y.kind));
  for (const track of tracks) {
    if (!device.canProduce(track.kind)) {
      reportError('produce', new Error(`device cannot produce ${track.kind} with the router's codecs`));
      continue;
    }
    const producer = await sendTransport.produce({ track, appData: { source: track.kind } });
    producers.set(track.kind, producer);
    e2e.producers[track.kind] = producer.id;
    if (track.kind === 'video') {
      addMedia(`local-video`, 'video', new MediaStream([track]), 'me (local preview)', true);
    }
  }
}

async function createRecvTransport() {
  const info = await request('create-transport', { direction: 'recv', sctpCapabilities: device.sctpCapabilities });
  recvTransport = device.createRecvTransport(transportOptions(info));
  watchTransport(recvTransport, 'recv');
  resolveRecvReady();
}

async function consumeProducer({ producerId, userId, userName, kind }) {
  if (!config.consume) return;
  if (userId !== undefined && userId === e2e.userId) return; // our own (another tab of us too)
  if (Object.values(e2e.producers).includes(producerId)) return;
  if (requestedProducers.has(producerId)) return;
  requestedProducers.add(producerId);
  producerInfo.set(producerId, { userId, userName, kind });
  await recvReady;
  const info = await request('consume', {
    transportId: recvTransport.id,
    producerId,
    rtpCapabilities: device.rtpCapabilities,
  });
  const consumer = await recvTransport.consume({
    id: info.id,
    producerId: info.producerId,
    kind: info.kind,
    rtpParameters: info.rtpParameters,
  });
  consumers.set(consumer.id, consumer);
  e2e.consumers.push({ id: consumer.id, producerId, kind: consumer.kind });
  consumer.on('transportclose', () => dropConsumer(consumer));
  consumer.on('trackended', () => dropConsumer(consumer));
  if (closedProducers.has(producerId)) {
    // producer-closed arrived while we were setting up.
    dropConsumer(consumer);
    return;
  }
  const label = `${userName ?? userId ?? 'peer'} ${consumer.kind}`;
  const el = addMedia(`consumer-${consumer.id}`, consumer.kind, new MediaStream([consumer.track]), label, false);
  if (consumer.kind === 'video') watchFirstFrame(el, consumer);
  // The consumer starts paused on the server; resume only once we are ready to render.
  await request('resume-consumer', { consumerId: consumer.id });
}

function dropConsumer(consumer) {
  if (!consumers.has(consumer.id)) return;
  consumers.delete(consumer.id);
  e2e.consumers = e2e.consumers.filter((c) => c.id !== consumer.id);
  if (!consumer.closed) consumer.close();
  document.getElementById(`consumer-${consumer.id}`)?.remove();
}

function addMedia(id, kind, stream, label, local) {
  const figure = document.createElement('figure');
  figure.id = id;
  const el = document.createElement(kind === 'video' ? 'video' : 'audio');
  el.autoplay = true;
  el.playsInline = true;
  // Video is muted so that autoplay is always allowed; sound comes from <audio>.
  el.muted = kind === 'video' || local;
  el.srcObject = stream;
  el.play().catch((err) => {
    // Audio autoplay can be blocked until the person interacts with the page.
    if (err.name === 'NotAllowedError') ui.audioUnlock.style.display = 'inline';
    else reportError(`play ${kind}`, err);
  });
  const caption = document.createElement('figcaption');
  caption.textContent = label;
  figure.append(el, caption);
  ui.media.append(figure);
  return el;
}

ui.audioUnlock.addEventListener('click', () => {
  for (const el of ui.media.querySelectorAll('audio, video')) el.play().catch(() => {});
  ui.audioUnlock.style.display = 'none';
});

// First remote video frame: requestVideoFrameCallback fires when a frame is presented; the
// stats poll is a fallback for a page that renders nothing (hidden, throttled).
function watchFirstFrame(el, consumer) {
  const mark = (source) => {
    if (e2e.firstFrameAt !== undefined) return;
    e2e.firstFrameAt = performance.now();
    e2e.firstFrameSource = source;
    logLine(`first video frame (${source}) ${(e2e.firstFrameAt - e2e.joinStartedAt).toFixed(0)} ms after join start`);
  };
  if (typeof el.requestVideoFrameCallback === 'function') {
    el.requestVideoFrameCallback(() => mark('requestVideoFrameCallback'));
  }
  const poll = async () => {
    if (e2e.firstFrameAt !== undefined || consumer.closed) return;
    try {
      const report = await consumer.getStats();
      let decoded = 0;
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') decoded += s.framesDecoded || 0;
      });
      if (decoded > 0) mark('framesDecoded');
    } catch {
      // closed meanwhile
    }
    if (e2e.firstFrameAt === undefined && !consumer.closed) setTimeout(poll, 50);
  };
  poll();
}

// ---- main -----------------------------------------------------------------------------

async function main() {
  // Handler detection happens here (Chrome111 on current Chromium); no server needed.
  device = new Device();
  e2e.handlerName = device.handlerName;
  if (!config.token) throw new Error('missing ?token=');

  setState('connecting');
  await openSocket();
  if (!config.join) {
    setState('connected');
    return;
  }

  setState('joining');
  const joinData = {};
  if (config.room) joinData.roomId = config.room;
  const joined = await request('join-room', joinData);
  e2e.joinedAt = performance.now();
  e2e.roomId = joined.roomId;
  for (const p of joined.peers || []) peers.set(p.userId, p.userName ?? p.userId);
  renderPeers();

  setState('loading-device');
  await device.load({ routerRtpCapabilities: joined.routerRtpCapabilities });

  // Create the recv transport first so that consumers of the producers already in the room
  // do not wait for our camera.
  if (config.consume) {
    setState('consuming');
    await createRecvTransport();
    for (const p of joined.producers || []) {
      consumeProducer(p).catch((err) => reportError(`consume ${p.producerId}`, err));
    }
  }
  if (config.produce.length) {
    setState('producing');
    await createSendTransport();
    await produceAll();
  }
  setState('joined');
}

main().catch((err) => {
  reportError('setup', err);
  if (e2e.state !== 'refused' && e2e.state !== 'closed') setState('failed');
});
