// corelay built-in demo: a small video room over the publish/subscribe SDP dialect
// (shared/PROTOCOLS.md section 2, WebSocket /pubsub). No dependencies, no build step.
//
// Flow: token (?token= in the address, else POST /login in dev mode) -> WebSocket /pubsub
// -> {"type":"auth"} -> auth-ok -> join -> camera + mic -> one sendonly publish peer
// connection (publish-offer / publish-answer) -> for every other publisher a
// subscribe-request and one peer connection answering the server's subscribe-offer.
// Local ICE candidates are trickled as "candidate:..." strings.
//
// For tests and the console: window.__demo = {state, errors, tiles(), leave(), ...}.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $('join-form'), room: $('room'), name: $('name'), join: $('join'),
    tokenHint: $('token-hint'), call: $('call'), roomLabel: $('room-label'),
    muteAudio: $('mute-audio'), muteVideo: $('mute-video'), leave: $('leave'),
    invite: $('invite'), tiles: $('tiles'), errors: $('errors'), log: $('log'),
    stState: $('st-state'), stWs: $('st-ws'), stPub: $('st-pub'),
  };

  const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
  const LOG_MAX = 200;
  const params = new URLSearchParams(location.search);
  const urlToken = params.get('token') || '';

  let session = null; // the current join attempt; every callback checks it is still current
  let sessionSeq = 0;

  const demo = {
    // idle | login | connecting | auth | joined | left | closed | error
    state: 'idle',
    errors: [], // {source, message, requestType?, at}
    wsState: 'closed', // connecting | open | closing | closed
    publishState: 'none', // none, then the publish RTCPeerConnection's connectionState
    room: null,
    userId: null,
    username: null,
    publisherId: null, // our own publisherId, when the server tells us (publish-answer)
    log: [], // recent signaling messages, SDP left out
    // Remote participants. framesDecoded is refreshed twice a second from getStats();
    // stats() refreshes it first.
    tiles: () => (session ? [...session.subs.values()].map(tileInfo) : []),
    stats: async () => {
      await pollStats();
      return demo.tiles();
    },
    leave: () => leave(),
  };
  window.__demo = demo;

  // ---- small helpers ---------------------------------------------------------------------

  function setBadge(el, v) {
    el.textContent = v;
    el.dataset.v = v;
  }
  function setState(v) {
    demo.state = v;
    setBadge(ui.stState, v);
  }
  function setWs(v) {
    demo.wsState = v;
    setBadge(ui.stWs, v);
  }
  function setPub(v) {
    demo.publishState = v;
    setBadge(ui.stPub, v);
  }

  function addError(source, message, requestType) {
    const e = { source, message: String(message), at: Date.now() };
    if (requestType) e.requestType = requestType;
    demo.errors.push(e);
    const p = document.createElement('p');
    p.textContent = `${source}: ${e.message}${requestType ? ` (request: ${requestType})` : ''}`;
    ui.errors.append(p);
    console.warn(`[demo] ${p.textContent}`);
  }
  function clearErrors() {
    demo.errors.length = 0;
    ui.errors.replaceChildren();
  }

  function logMsg(dir, msg) {
    const brief = {};
    for (const [k, v] of Object.entries(msg)) {
      if (k === 'token') brief[k] = '...';
      else if (typeof v === 'string' && v.length > 80) brief[k] = `${v.slice(0, 40)}... (${v.length} chars)`;
      else brief[k] = v;
    }
    const line = `${new Date().toISOString().slice(11, 23)} ${dir} ${JSON.stringify(brief)}`;
    demo.log.push(line);
    if (demo.log.length > LOG_MAX) demo.log.shift();
    const li = document.createElement('li');
    li.textContent = line;
    ui.log.append(li);
    while (ui.log.childElementCount > LOG_MAX) ui.log.firstElementChild.remove();
  }

  function send(s, msg) {
    if (!s.ws || s.ws.readyState !== WebSocket.OPEN) return false;
    logMsg('->', msg);
    s.ws.send(JSON.stringify(msg));
    return true;
  }

  // Claims of a JWT, unverified: only to prefill the form and to know canPublish.
  function tokenClaims(token) {
    try {
      const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === 'object' ? claims : {};
    } catch {
      return {};
    }
  }

  // Same origin as the page, relative to its path (works at / and /demo, and behind a
  // reverse proxy that mounts the server under a prefix).
  function serverUrl(path, ws) {
    const u = new URL(path, location.href);
    u.search = '';
    u.hash = '';
    if (ws) u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return u;
  }

  // ---- form ------------------------------------------------------------------------------

  function initForm() {
    const claims = urlToken ? tokenClaims(urlToken) : {};
    const tokenRoom = claims.roomId ?? claims.room;
    ui.room.value = params.get('room') || (typeof tokenRoom === 'string' ? tokenRoom : '') || 'demo';
    if (urlToken) {
      ui.tokenHint.hidden = false;
      // The server takes the name from the token; the field only shows it.
      ui.name.value = claims.userName ?? claims.name ?? claims.userId ?? claims.sub ?? '';
      ui.name.disabled = true;
      if (typeof tokenRoom === 'string') ui.room.readOnly = true; // valid for that room only
    } else {
      let saved = '';
      try {
        saved = localStorage.getItem('corelay-demo-name') || '';
      } catch { /* storage may be off */ }
      ui.name.value = params.get('name') || saved;
    }
    ui.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const room = ui.room.value.trim();
      const name = ui.name.value.trim();
      ui.room.setCustomValidity(ROOM_RE.test(room) ? '' : 'Room: 1-128 characters of A-Z a-z 0-9 _ . : -');
      ui.name.setCustomValidity(urlToken || (name && name.length <= 64) ? '' : 'Enter a name (1-64 characters)');
      if (!ui.form.reportValidity()) return;
      if (!urlToken) {
        try {
          localStorage.setItem('corelay-demo-name', name);
        } catch { /* storage may be off */ }
      }
      join(room, name);
    });
    ui.room.addEventListener('input', () => ui.room.setCustomValidity(''));
    ui.name.addEventListener('input', () => ui.name.setCustomValidity(''));
    ui.leave.addEventListener('click', () => leave());
    ui.muteAudio.addEventListener('click', () => toggleTrack('audio', ui.muteAudio, 'Mute mic', 'Unmute mic'));
    ui.muteVideo.addEventListener('click', () => toggleTrack('video', ui.muteVideo, 'Stop video', 'Start video'));
  }

  function showCall(inCall) {
    ui.form.hidden = inCall;
    ui.call.hidden = !inCall;
    ui.join.disabled = inCall;
  }

  // ---- join / leave ----------------------------------------------------------------------

  async function join(room, name) {
    if (session) teardown(session, 'left');
    clearErrors();
    demo.log.length = 0;
    ui.log.replaceChildren();
    const s = {
      id: ++sessionSeq,
      room,
      name,
      ws: null,
      opened: false,
      authed: false,
      userId: null,
      username: null,
      canPublish: true,
      canSubscribe: true,
      localStream: null,
      localTile: null,
      pub: null, // {pc, chain, queue, offerSent}
      publishOfferSent: false,
      publishSettled: false, // publish-answer applied, or publishing failed / not attempted
      ownPublisherId: null,
      subs: new Map(), // publisherId -> sub
      pending: new Map(), // publisherId -> new-publisher message not yet known to be someone else
      closed: false,
    };
    session = s;
    Object.assign(demo, { room, userId: null, username: null, publisherId: null });
    setPub('none');
    showCall(true);
    ui.roomLabel.textContent = `Room ${room}`;
    const invite = new URL(location.pathname, location.href);
    invite.searchParams.set('room', room);
    ui.invite.href = invite.href;
    resetMuteButtons();

    let token = urlToken;
    const claims0 = token ? tokenClaims(token) : {};
    // Ask for camera and mic while the login and the WebSocket are in flight.
    const mediaP = claims0.canPublish === false ? Promise.resolve(null) : getMedia(s);
    try {
      if (!token) {
        setState('login');
        token = await login(name, room);
      }
    } catch (err) {
      if (s !== session) return;
      addError('login', err.message);
      teardown(s, 'error');
      return;
    }
    if (s !== session) return;
    const claims = tokenClaims(token);
    s.canPublish = claims.canPublish !== false;
    s.canSubscribe = claims.canSubscribe !== false;
    connect(s, token, mediaP);
  }

  async function login(userName, roomId) {
    let res;
    try {
      res = await fetch(serverUrl('login'), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ userName, roomId }),
      });
    } catch (err) {
      throw new Error(`could not reach the server for POST /login (${err.message})`);
    }
    if (res.status === 404) {
      throw new Error('POST /login is disabled on this server (it runs with a JWT_SECRET). ' +
        'Open this page with ?token=<JWT> in the address, e.g. a token from ' +
        '`corelay token --room ROOM --user USER`.');
    }
    let body = null;
    try {
      body = await res.json();
    } catch { /* not JSON */ }
    if (!res.ok) {
      const why = body?.error?.message ?? body?.message ?? res.statusText;
      throw new Error(`POST /login failed: HTTP ${res.status}${why ? `: ${why}` : ''}`);
    }
    if (!body || typeof body.token !== 'string') throw new Error('POST /login answered without a token');
    return body.token;
  }

  function leave() {
    if (!session) return;
    teardown(session, 'left');
  }

  // Ends a session: closes peer connections and the WebSocket, stops the camera.
  function teardown(s, state) {
    if (s.closed) return;
    s.closed = true;
    for (const id of [...s.subs.keys()]) removeSub(s, id);
    s.pending.clear();
    if (s.pub) s.pub.pc.close();
    if (s.localStream) for (const t of s.localStream.getTracks()) t.stop();
    s.localTile?.remove();
    if (s.ws && s.ws.readyState <= WebSocket.OPEN) {
      setWs('closing');
      s.ws.close(1000, 'leave');
    }
    if (session === s) {
      session = null;
      setState(state);
      if (s.pub) setPub('closed');
      showCall(false);
      ui.join.focus();
    }
  }

  addEventListener('pagehide', () => leave());

  // ---- local media -----------------------------------------------------------------------

  async function getMedia(s) {
    if (!navigator.mediaDevices?.getUserMedia) {
      addError('media', 'getUserMedia is not available (the page needs https or localhost); joining to watch only');
      return null;
    }
    const video = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 30 } };
    let stream = null;
    let firstErr = null;
    // Camera and mic; failing that, whichever one works.
    for (const c of [{ audio: true, video }, { video }, { audio: true }]) {
      try {
        stream = await navigator.mediaDevices.getUserMedia(c);
        break;
      } catch (err) {
        firstErr ??= err;
        if (err.name === 'NotAllowedError' || err.name === 'SecurityError') break;
      }
    }
    if (s.closed) {
      if (stream) for (const t of stream.getTracks()) t.stop();
      return null;
    }
    if (!stream) {
      addError('media', `camera/microphone unavailable (${firstErr?.name}: ${firstErr?.message}); joining to watch only`);
      return null;
    }
    s.localStream = stream;
    const tile = makeTile(`You (${s.name || 'me'})`, true);
    tile.video.srcObject = stream;
    tile.video.play().catch(() => {});
    tile.pc.hidden = true;
    tile.el.dataset.local = '1';
    ui.tiles.prepend(tile.el);
    s.localTile = tile.el;
    ui.muteAudio.disabled = !stream.getAudioTracks().length;
    ui.muteVideo.disabled = !stream.getVideoTracks().length;
    return stream;
  }

  function resetMuteButtons() {
    for (const [b, label] of [[ui.muteAudio, 'Mute mic'], [ui.muteVideo, 'Stop video']]) {
      b.textContent = label;
      b.setAttribute('aria-pressed', 'false');
      b.disabled = true;
    }
  }

  // Mute = track.enabled = false: the track keeps flowing (silence / black frames), so
  // no renegotiation is needed.
  function toggleTrack(kind, button, onLabel, offLabel) {
    const stream = session?.localStream;
    if (!stream) return;
    const tracks = kind === 'audio' ? stream.getAudioTracks() : stream.getVideoTracks();
    if (!tracks.length) return;
    const enable = !tracks[0].enabled;
    for (const t of tracks) t.enabled = enable;
    button.textContent = enable ? onLabel : offLabel;
    button.setAttribute('aria-pressed', String(!enable));
  }

  // ---- signaling -------------------------------------------------------------------------

  function connect(s, token, mediaP) {
    setState('connecting');
    setWs('connecting');
    const url = serverUrl('pubsub', true);
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      addError('ws', `cannot open ${url}: ${err.message}`);
      teardown(s, 'error');
      return;
    }
    s.ws = ws;
    ws.onopen = () => {
      if (s !== session) return;
      s.opened = true;
      setWs('open');
      setState('auth');
      send(s, { type: 'auth', token });
    };
    ws.onmessage = (ev) => {
      if (s !== session) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        addError('client', `unparseable server message: ${String(ev.data).slice(0, 100)}`);
        return;
      }
      if (!msg || typeof msg !== 'object') return;
      logMsg('<-', msg);
      handle(s, msg, mediaP).catch((err) => addError('client', `${msg.type}: ${err.message}`));
    };
    ws.onclose = (ev) => {
      if (s.ws === ws && (session === s || !session)) setWs('closed');
      if (s !== session) return;
      const why = `code ${ev.code}${ev.reason ? `, ${ev.reason}` : ''}`;
      addError('ws', s.opened ? `WebSocket closed by the server (${why})` : `could not connect to ${url} (${why})`);
      teardown(s, s.authed ? 'closed' : 'error');
    };
  }

  async function handle(s, msg, mediaP) {
    switch (msg.type) {
      case 'auth-ok': {
        s.authed = true;
        s.userId = msg.userId ?? null;
        s.username = msg.username ?? s.name;
        Object.assign(demo, { userId: s.userId, username: s.username });
        if (s.localTile) s.localTile.querySelector('.label').textContent = `You (${s.username})`;
        send(s, { type: 'join', roomName: s.room });
        setState('joined');
        const stream = await mediaP;
        if (s !== session) return;
        if (stream && s.canPublish) await publish(s, stream);
        else settlePublish(s);
        return;
      }
      case 'new-publisher':
        onNewPublisher(s, msg);
        return;
      case 'publisher-left':
        s.pending.delete(msg.publisherId);
        removeSub(s, msg.publisherId);
        return;
      case 'publish-answer':
        return onPublishAnswer(s, msg);
      case 'subscribe-offer':
        return onSubscribeOffer(s, msg);
      // Not in PROTOCOLS.md (the server puts its candidates in its SDP); taken if sent.
      case 'publish-ice-candidate':
        if (s.pub) addRemoteCandidate(s.pub, msg);
        return;
      case 'subscribe-ice-candidate': {
        const sub = s.subs.get(msg.publisherId);
        if (sub) addRemoteCandidate(sub, msg);
        return;
      }
      case 'error':
        addError('server', msg.message ?? JSON.stringify(msg), msg.requestType);
        // Before auth-ok an error means the token was refused; the server closes.
        if (!s.authed) {
          s.authError = true;
          setState('error');
        }
        if (msg.requestType === 'publish-offer') settlePublish(s);
        return;
      default:
        // Unknown types are only logged: newer servers may send more.
        return;
    }
  }

  // Runs fn after everything queued on this peer connection record (offers, answers and
  // remote candidates are applied in order).
  function enqueue(rec, what, fn) {
    rec.chain = rec.chain.then(fn).catch((err) => {
      if (!rec.closed) addError(what, err.message);
    });
    return rec.chain;
  }

  function addRemoteCandidate(rec, msg) {
    if (typeof msg.candidate !== 'string' || !msg.candidate) return;
    const init = msg.sdpMid != null
      ? { candidate: msg.candidate, sdpMid: msg.sdpMid }
      : { candidate: msg.candidate, sdpMLineIndex: msg.sdpMLineIndex ?? 0 };
    enqueue(rec, 'ice', async () => {
      if (rec.pc && rec.pc.remoteDescription) await rec.pc.addIceCandidate(init);
    });
  }

  // ---- publish ---------------------------------------------------------------------------

  async function publish(s, stream) {
    // max-bundle: one ICE transport, so the trickled "candidate:..." strings (which carry
    // no sdpMid) are unambiguous and none are gathered twice.
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    const pub = { pc, chain: Promise.resolve(), queue: [], offerSent: false, closed: false };
    s.pub = pub;
    setPub(pc.connectionState);
    pc.onconnectionstatechange = () => {
      if (s !== session) return;
      setPub(pc.connectionState);
      if (pc.connectionState === 'failed') addError('publish', 'publish peer connection failed');
    };
    pc.onicecandidate = (ev) => {
      const c = ev.candidate?.candidate;
      if (!c || s !== session) return; // null / "" = end of candidates: nothing to send
      const m = { type: 'publish-ice-candidate', roomName: s.room, candidate: c };
      if (pub.offerSent) send(s, m);
      else pub.queue.push(m);
    };
    try {
      for (const track of stream.getTracks()) {
        pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      }
      await pc.setLocalDescription(await pc.createOffer());
    } catch (err) {
      addError('publish', `cannot create the offer: ${err.message}`);
      settlePublish(s);
      return;
    }
    if (s !== session) return;
    s.publishOfferSent = true;
    pub.offerSent = true;
    send(s, { type: 'publish-offer', roomName: s.room, offer: pc.localDescription.sdp });
    for (const m of pub.queue.splice(0)) send(s, m);
  }

  async function onPublishAnswer(s, msg) {
    const pub = s.pub;
    if (!pub) {
      addError('client', 'publish-answer without a publish-offer');
      return;
    }
    if (typeof msg.publisherId === 'number') {
      s.ownPublisherId = msg.publisherId;
      demo.publisherId = msg.publisherId;
      s.pending.delete(msg.publisherId);
      removeSub(s, msg.publisherId); // in case we had taken it for someone else
    }
    settlePublish(s);
    return enqueue(pub, 'publish', () => pub.pc.setRemoteDescription({ type: 'answer', sdp: msg.answer }));
  }

  function settlePublish(s) {
    if (s.publishSettled) return;
    s.publishSettled = true;
    const waiting = [...s.pending.values()];
    s.pending.clear();
    for (const m of waiting) onNewPublisher(s, m);
  }

  // ---- subscribe -------------------------------------------------------------------------

  // Is this publisher us? The server may or may not announce our own publisher. Signals,
  // best first:
  //  1. our publisherId, when publish-answer carries one: exact;
  //  2. a publisher announced before we sent publish-offer cannot be ours (we had none);
  //  3. a userId on new-publisher (not in PROTOCOLS.md, used if present) against auth-ok's;
  //  4. otherwise a username different from ours (auth-ok's username) is someone else;
  //  5. same username: wait for publish-answer (it may bring signal 1). If it brings no
  //     publisherId, take it to be us. Last resort, and the one weak case: two people in
  //     one room with the same display name who publish at the same moment would not see
  //     each other. A same-named publisher announced before our offer (2) is still shown.
  function whoIs(s, msg) {
    if (s.ownPublisherId !== null) return msg.publisherId === s.ownPublisherId ? 'self' : 'other';
    if (!s.publishOfferSent) return 'other';
    if (typeof msg.userId === 'string' && s.userId) return msg.userId === s.userId ? 'self' : 'other';
    if (msg.username !== s.username) return 'other';
    return s.publishSettled ? 'self' : 'unknown';
  }

  function onNewPublisher(s, msg) {
    const id = msg.publisherId;
    if (typeof id !== 'number') {
      addError('client', `new-publisher without a numeric publisherId: ${JSON.stringify(msg)}`);
      return;
    }
    if (!s.canSubscribe || s.subs.has(id) || s.pending.has(id)) return;
    const who = whoIs(s, msg);
    if (who === 'self') return;
    if (who === 'unknown') {
      s.pending.set(id, msg);
      return;
    }
    makeSub(s, id, msg.username);
    send(s, { type: 'subscribe-request', roomName: s.room, publisherId: id });
  }

  function makeSub(s, id, username) {
    const name = typeof username === 'string' && username ? username : `publisher ${id}`;
    const tile = makeTile(name, false);
    tile.el.dataset.publisherId = String(id);
    tile.el.dataset.username = name;
    ui.tiles.append(tile.el);
    const sub = {
      publisherId: id,
      username: name,
      pc: null,
      stream: new MediaStream(),
      tile,
      framesDecoded: 0,
      chain: Promise.resolve(),
      queue: [],
      answerSent: false,
      closed: false,
    };
    s.subs.set(id, sub);
    return sub;
  }

  function onSubscribeOffer(s, msg) {
    const id = msg.publisherId;
    if (typeof msg.offer !== 'string') {
      addError('client', 'subscribe-offer without an SDP offer');
      return;
    }
    if (id === s.ownPublisherId) return; // never watch ourselves
    let sub = s.subs.get(id);
    if (!sub) {
      // An offer we did not ask for (or for a publisher still being identified).
      sub = makeSub(s, id, msg.username ?? s.pending.get(id)?.username);
      s.pending.delete(id);
    }
    return enqueue(sub, 'subscribe', async () => {
      if (sub.closed) return;
      if (!sub.pc) sub.pc = makeSubPc(s, sub);
      await sub.pc.setRemoteDescription({ type: 'offer', sdp: msg.offer });
      await sub.pc.setLocalDescription(await sub.pc.createAnswer());
      if (s !== session || sub.closed) return;
      send(s, { type: 'subscribe-answer', roomName: s.room, publisherId: id, answer: sub.pc.localDescription.sdp });
      sub.answerSent = true;
      for (const m of sub.queue.splice(0)) send(s, m);
    });
  }

  function makeSubPc(s, sub) {
    const pc = new RTCPeerConnection();
    const badge = sub.tile.pc;
    setBadge(badge, pc.connectionState);
    pc.onconnectionstatechange = () => {
      setBadge(badge, pc.connectionState);
      if (pc.connectionState === 'failed' && !sub.closed) addError('subscribe', `connection to ${sub.username} failed`);
    };
    pc.onicecandidate = (ev) => {
      const c = ev.candidate?.candidate;
      if (!c || sub.closed || s !== session) return;
      const m = { type: 'subscribe-ice-candidate', roomName: s.room, publisherId: sub.publisherId, candidate: c };
      if (sub.answerSent) send(s, m);
      else sub.queue.push(m);
    };
    pc.ontrack = (ev) => {
      sub.stream.addTrack(ev.track);
      const video = sub.tile.video;
      if (video.srcObject !== sub.stream) {
        video.srcObject = sub.stream;
        playWithSound(sub);
      }
    };
    return pc;
  }

  function playWithSound(sub) {
    const video = sub.tile.video;
    video.play().catch((err) => {
      if (sub.closed || err.name !== 'NotAllowedError') return;
      // Autoplay with sound refused: play muted and offer a button.
      video.muted = true;
      video.play().catch(() => {});
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'unmute';
      b.textContent = 'Click for sound';
      b.onclick = () => {
        video.muted = false;
        video.play().catch(() => {});
        b.remove();
      };
      sub.tile.el.append(b);
    });
  }

  function removeSub(s, id) {
    const sub = s.subs.get(id);
    if (!sub) return;
    sub.closed = true;
    s.subs.delete(id);
    sub.pc?.close();
    for (const t of sub.stream.getTracks()) t.stop();
    sub.tile.video.srcObject = null;
    sub.tile.el.remove();
  }

  function tileInfo(sub) {
    return {
      publisherId: sub.publisherId,
      username: sub.username,
      framesDecoded: sub.framesDecoded,
      connectionState: sub.pc ? sub.pc.connectionState : 'new',
    };
  }

  // ---- tiles and stats -------------------------------------------------------------------

  function makeTile(label, local) {
    const el = document.createElement('figure');
    el.className = local ? 'tile local' : 'tile';
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = local; // never play our own mic back
    const cap = document.createElement('figcaption');
    cap.className = 'label';
    cap.textContent = label;
    const pc = document.createElement('span');
    pc.className = 'pc';
    setBadge(pc, 'new');
    const info = document.createElement('span');
    info.className = 'info';
    el.append(video, cap, pc, info);
    return { el, video, pc, info };
  }

  async function pollStats() {
    const s = session;
    if (!s) return;
    await Promise.all([...s.subs.values()].map(async (sub) => {
      if (!sub.pc || sub.closed) return;
      let frames = 0;
      let fps = 0;
      let size = '';
      try {
        const report = await sub.pc.getStats();
        report.forEach((r) => {
          if (r.type === 'inbound-rtp' && (r.kind ?? r.mediaType) === 'video') {
            frames += r.framesDecoded ?? 0;
            fps = Math.max(fps, r.framesPerSecond ?? 0);
            if (r.frameWidth) size = `${r.frameWidth}x${r.frameHeight}`;
          }
        });
      } catch {
        return; // closed meanwhile
      }
      sub.framesDecoded = frames;
      sub.tile.info.textContent = frames ? `${size} ${Math.round(fps)} fps` : '';
    }));
  }
  setInterval(pollStats, 500);

  initForm();
})();
