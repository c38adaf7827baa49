// The plain-WebRTC test page (no mediasoup-client): WHIP, WHEP and the /pubsub dialect from
// RTCPeerConnections. Shared by sdp.test.mjs and firefox.test.mjs; written to run in
// Chromium and Firefox alike. Serve RTC_HTML (e.g. at /rtc.html) from an http://127.0.0.1
// origin: Firefox only exposes getUserMedia on a secure context.
//
// Runs in the page (serialized with toString): everything the test drives lives on
// window.lib. Peer connections by name in lib.pcs, WebSockets by name in lib.sockets.
export function pageLib() {
  const lib = { pcs: {}, sockets: {}, errors: [] };
  window.lib = lib;

  const waitGathering = (pc, ms) => new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve(true);
    const timer = setTimeout(() => resolve(false), ms);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') {
        clearTimeout(timer);
        resolve(true);
      }
    });
  });

  const sdpLine = (sdp, prefix) => sdp.split(/\r?\n/).find((l) => l.startsWith(prefix))?.slice(prefix.length);

  // First decoded video frame of a receiving peer connection (stats poll every 20 ms).
  function watchFirstFrame(rec) {
    const poll = async () => {
      if (rec.firstFrameAt !== undefined || rec.pc.signalingState === 'closed') return;
      try {
        let decoded = 0;
        (await rec.pc.getStats()).forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') decoded += s.framesDecoded || 0;
        });
        if (decoded > 0) {
          rec.firstFrameAt = performance.now();
          return;
        }
      } catch {
        return;
      }
      setTimeout(poll, 20);
    };
    poll();
  }

  function show(rec, stream) {
    const video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    video.playsInline = true;
    video.srcObject = stream;
    document.body.append(video);
    video.play().catch(() => {});
    rec.video = video;
  }

  async function camera() {
    return navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360, frameRate: 30 } });
  }

  // WHIP: a sendonly audio+video offer with every candidate in it (waits for gathering),
  // no trickle.
  lib.whip = async (name, { url, token }) => {
    const stream = await camera();
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    const rec = { pc, stream, token, url, patches: [] };
    lib.pcs[name] = rec;
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    await pc.setLocalDescription(await pc.createOffer());
    const gathered = await waitGathering(pc, 5000);
    rec.t0 = performance.now();
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    const out = { status: res.status, location: res.headers.get('Location'), contentType: res.headers.get('Content-Type'), gathered, body };
    if (res.status !== 201) return out;
    rec.location = new URL(out.location, url).href;
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    return out;
  };

  // WHEP: recvonly audio and video, POSTed at once without candidates; the candidates follow
  // by PATCH (application/trickle-ice-sdpfrag, RFC 8840) once the Location is known.
  lib.whep = async (name, { url, token }) => {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    const rec = { pc, token, url, patches: [], queue: [] };
    lib.pcs[name] = rec;
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const stream = new MediaStream();
    pc.ontrack = (ev) => {
      stream.addTrack(ev.track);
      if (ev.track.kind === 'video' && !rec.video) show(rec, stream);
    };
    const offer = await pc.createOffer();
    const ufrag = sdpLine(offer.sdp, 'a=ice-ufrag:');
    const pwd = sdpLine(offer.sdp, 'a=ice-pwd:');
    const patch = async (frag) => {
      try {
        const res = await fetch(rec.location, {
          method: 'PATCH',
          headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', Authorization: `Bearer ${token}` },
          body: frag,
        });
        rec.patches.push(res.status);
      } catch (err) {
        rec.patches.push(`error: ${err.message}`);
      }
    };
    pc.onicecandidate = (ev) => {
      const c = ev.candidate;
      if (!c || !c.candidate) return;
      const frag = `a=ice-ufrag:${ufrag}\r\na=ice-pwd:${pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n` +
        `a=mid:${c.sdpMid}\r\na=${c.candidate}\r\n`;
      if (rec.location) patch(frag);
      else rec.queue.push(frag);
    };
    await pc.setLocalDescription(offer);
    rec.t0 = performance.now();
    watchFirstFrame(rec);
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
      body: offer.sdp, // created before gathering started: no candidates in it
    });
    const body = await res.text();
    const out = { status: res.status, location: res.headers.get('Location'), contentType: res.headers.get('Content-Type'), body };
    if (res.status !== 201) return out;
    rec.location = new URL(out.location, url).href;
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    for (const frag of rec.queue.splice(0)) await patch(frag);
    return out;
  };

  // DELETE on a WHIP/WHEP resource (optionally with another token).
  lib.del = async (name, token) => {
    const rec = lib.pcs[name];
    const res = await fetch(rec.location, { method: 'DELETE', headers: { Authorization: `Bearer ${token ?? rec.token}` } });
    return res.status;
  };

  lib.stats = async (name) => {
    const rec = lib.pcs[name];
    const out = {
      connectionState: rec.pc.connectionState,
      videoFramesDecoded: 0,
      videoPacketsReceived: 0,
      audioPacketsReceived: 0,
      videoFramesEncoded: 0,
      audioPacketsSent: 0,
      firstFrameMs: rec.firstFrameAt === undefined ? undefined : rec.firstFrameAt - rec.t0,
      patches: rec.patches,
    };
    (await rec.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out.videoFramesDecoded += s.framesDecoded || 0;
        out.videoPacketsReceived += s.packetsReceived || 0;
      } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out.audioPacketsReceived += s.packetsReceived || 0;
      } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out.videoFramesEncoded += s.framesEncoded || 0;
      } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
        out.audioPacketsSent += s.packetsSent || 0;
      }
    });
    return out;
  };

  lib.close = (name) => {
    const rec = lib.pcs[name];
    rec.pc.close();
    for (const t of rec.stream?.getTracks() ?? []) t.stop();
  };

  // ---- /pubsub --------------------------------------------------------------------------

  // Opens a WebSocket; every message received goes into sock.messages (parsed when JSON).
  // Resolves when it opened or closed. `auto`: subscribe to every announced publisher.
  lib.socket = (name, url, { auto = null } = {}) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    const sock = { ws, messages: [], opened: false, closed: null, auto };
    lib.sockets[name] = sock;
    ws.onopen = () => {
      sock.opened = true;
      resolve({ opened: true });
    };
    ws.onclose = (ev) => {
      sock.closed = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean };
      resolve({ opened: sock.opened, closed: sock.closed });
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        msg = { unparsed: String(ev.data) };
      }
      sock.messages.push(msg);
      if (auto) autoSubscriber(name, sock, msg).catch((err) => lib.errors.push(`${name}: ${msg.type}: ${err.message}`));
    };
  });

  // Sends a string as is, an object as JSON, an ArrayBuffer as a binary frame.
  lib.send = (name, msg) => {
    lib.sockets[name].ws.send(typeof msg === 'string' || msg instanceof ArrayBuffer ? msg : JSON.stringify(msg));
  };

  lib.sockState = (name) => {
    const s = lib.sockets[name];
    return { readyState: s.ws.readyState, closed: s.closed, messages: s.messages };
  };

  // A subscriber speaking PROTOCOLS.md section 2: auth, join, a subscribe-request per
  // new-publisher, an answer per subscribe-offer, local candidates trickled.
  async function autoSubscriber(name, sock, msg) {
    const { room } = sock.auto;
    if (msg.type === 'auth-ok') {
      lib.send(name, { type: 'join', roomName: room });
    } else if (msg.type === 'new-publisher') {
      lib.send(name, { type: 'subscribe-request', roomName: room, publisherId: msg.publisherId });
    } else if (msg.type === 'subscribe-offer') {
      await lib.answerSubscribe(name, msg);
    }
  }

  // Answers a subscribe-offer on a new peer connection named `${socket}:${publisherId}`.
  lib.answerSubscribe = async (name, msg, { garbageFirst = false } = {}) => {
    const pcName = `${name}:${msg.publisherId}`;
    const pc = new RTCPeerConnection();
    const rec = { pc, patches: [], t0: performance.now() };
    lib.pcs[pcName] = rec;
    const stream = new MediaStream();
    pc.ontrack = (ev) => {
      stream.addTrack(ev.track);
      if (ev.track.kind === 'video' && !rec.video) show(rec, stream);
    };
    const queued = [];
    let answered = false;
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || !ev.candidate.candidate) return;
      const m = { type: 'subscribe-ice-candidate', roomName: msg.roomName, publisherId: msg.publisherId, candidate: ev.candidate.candidate };
      if (answered) lib.send(name, m);
      else queued.push(m);
    };
    watchFirstFrame(rec);
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.offer });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (garbageFirst) {
      lib.send(name, { type: 'subscribe-answer', roomName: msg.roomName, publisherId: msg.publisherId, answer: 'v=0\r\nthis is no answer\r\n' });
    }
    lib.send(name, { type: 'subscribe-answer', roomName: msg.roomName, publisherId: msg.publisherId, answer: answer.sdp });
    answered = true;
    for (const m of queued) lib.send(name, m);
    return pcName;
  };

  // A real publish-offer (camera and mic) over socket `name`; the answer is applied by
  // lib.applyPublishAnswer.
  lib.publishOffer = async (name, room) => {
    const stream = await camera();
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    lib.pcs[`${name}:publish`] = { pc, stream, patches: [] };
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    pc.onicecandidate = (ev) => {
      if (ev.candidate?.candidate) lib.send(name, { type: 'publish-ice-candidate', roomName: room, candidate: ev.candidate.candidate });
    };
    const offer = await pc.createOffer();
    lib.send(name, { type: 'publish-offer', roomName: room, offer: offer.sdp });
    await pc.setLocalDescription(offer);
  };

  lib.applyPublishAnswer = async (name, answer) => {
    await lib.pcs[`${name}:publish`].pc.setRemoteDescription({ type: 'answer', sdp: answer });
  };

  // Offers a browser makes that corelay cannot publish.
  lib.hostileOffers = async () => {
    const dc = new RTCPeerConnection();
    dc.createDataChannel('only-data');
    const dataOnly = (await dc.createOffer()).sdp;
    dc.close();
    // Audio with PCMU (payload type 0) only: a codec corelay does not forward.
    const au = new RTCPeerConnection();
    au.addTransceiver('audio', { direction: 'sendonly' });
    const full = (await au.createOffer()).sdp;
    au.close();
    const pcmuOnly = full.split('\r\n')
      .map((l) => (l.startsWith('m=audio') ? `${l.split(' ').slice(0, 3).join(' ')} 0` : l))
      .filter((l) => {
        const m = /^a=(rtpmap|fmtp|rtcp-fb):(\d+)/.exec(l);
        return !m || m[2] === '0';
      })
      .join('\r\n');
    return { dataOnly, pcmuOnly };
  };
}

export const RTC_HTML = `<!doctype html><meta charset="utf-8"><title>corelay sdp e2e</title>
<body><script>(${pageLib.toString()})();</script></body>`;
