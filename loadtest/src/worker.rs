//! One worker thread: it owns its peers (signaling session, str0m client, UDP socket)
//! and runs a single epoll loop over all of their sockets until the run ends.
//!
//! A peer goes: WebSocket upgrade -> `join-room` -> `create-transport` (opens its UDP
//! socket, starts ICE and DTLS) -> `connect-transport` -> publishers `produce`;
//! subscribers `consume` + `resume-consumer` each producer of the join answer and of
//! `new-producer` events. Requests are pipelined; nothing in the loop blocks (the TCP
//! connect of a new peer is the only wait, bounded by a timeout).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelay::auth::{Authenticator, Grant};
use corelay::sfu::ortc::{OPUS, VP8};
use corelay_testkit::client::{Client, ClientEvent};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use str0m::rtp::RtpPacket;

use crate::cli::Target;
use crate::media::{self, Seen, SeqWindow, Stamp};
use crate::net::{self, Poller, RecvBatch, BATCH};
use crate::signal::{Incoming, Signal};
use crate::whip::{HttpPool, HttpTarget};

mod sdp;

pub type Hist = Histogram<u64>;

/// An auto-resizing histogram with 2 significant digits (1% resolution): small while
/// values are small, so one per room per worker stays cheap.
pub fn new_hist() -> Hist {
    Histogram::new(2).expect("2 significant digits are valid")
}

/// Requested SO_RCVBUF of each client socket.
const CLIENT_RECV_BUFFER: usize = 1 << 20;
/// How often a worker checks timeouts and publishes its live figures.
const HOUSEKEEPING: Duration = Duration::from_millis(10);
const LIVE_EVERY: Duration = Duration::from_millis(100);
/// Lower bound on the wait before a str0m timer is served again (no busy loops).
const TIMER_FLOOR: Duration = Duration::from_micros(200);
/// Datagram batches taken from one socket per readiness (fairness between sockets).
const ROUNDS_PER_WAKE: usize = 4;
/// Helper threads per worker for WHIP/WHEP requests.
const HTTP_THREADS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Video,
    Audio,
    Subscriber,
}

/// One peer to start.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Unique in the run; also the publisher id in stamps.
    pub id: u32,
    pub room: usize,
    pub role: Role,
    /// Offset from the start of the run.
    pub start: Duration,
}

pub enum Tokens {
    /// Mint one room-scoped token per peer with this HS256 secret.
    Mint(String),
    /// Use this token for everyone.
    Fixed(String),
}

/// What every worker knows about the run.
pub struct RunConfig {
    pub target: Target,
    pub rooms: Vec<String>,
    pub tokens: Tokens,
    pub t0: Instant,
    /// Publishers stop sending here; peers scheduled later never start.
    pub media_end: Instant,
    /// Everything closes here.
    pub hard_end: Instant,
    /// Payload sizes of the packets of one video frame.
    pub frame_sizes: Vec<usize>,
    pub frame_interval: Duration,
    pub fps: u32,
    pub keyframe_interval: Duration,
    pub connect_timeout: Duration,
    pub run_id: u32,
    /// Publishers publish over WHIP here instead of the `/ws` dialect.
    pub whip: Option<Arc<HttpTarget>>,
    /// Subscribers view over WHEP here instead of the `/ws` dialect.
    pub whep: Option<Arc<HttpTarget>>,
    /// Each room's publishers (id, role), in join order.
    pub room_publishers: Vec<Vec<(u32, Role)>>,
}

/// `Shared::pub_state`: a publisher has no producer yet, has one, or never will.
pub const PUB_PENDING: u8 = 0;
pub const PUB_READY: u8 = 1;
pub const PUB_GONE: u8 = 2;

/// A worker's running totals for the progress line, published every 100 ms.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerLive {
    pub packets_out: AtomicU64,
    pub packets_in: AtomicU64,
    pub connected: AtomicU64,
    /// Sum over received tracks of (highest - lowest sequence number + 1).
    pub span: AtomicU64,
    /// Distinct packets received.
    pub unique: AtomicU64,
    pub errors: AtomicU64,
    /// Latencies (us) since the progress line last took them.
    pub latency: Mutex<Option<Hist>>,
}

/// State shared by all workers.
pub struct Shared {
    pub live: Vec<WorkerLive>,
    /// Packets sent so far by each peer id (publishers only).
    pub sent: Vec<AtomicU64>,
    /// (room, producer id) -> publisher id.
    pub producers: Mutex<HashMap<(usize, String), u32>>,
    /// Per peer id (publishers only): [`PUB_PENDING`], [`PUB_READY`] or [`PUB_GONE`];
    /// WHEP subscribers wait until no publisher of their room is pending.
    pub pub_state: Vec<AtomicU8>,
}

pub struct PubResult {
    pub id: u32,
    pub room: usize,
    pub packets: u64,
    pub bytes: u64,
    pub keyframes: u64,
}

pub struct TrackResult {
    pub subscriber: u32,
    pub room: usize,
    pub publisher: Option<u32>,
    /// Distinct packets received.
    pub unique: u64,
    /// Lowest sequence number received (meaningful when `unique > 0`).
    pub min_seq: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub bytes: u64,
    /// Packets the publisher had sent when the consumer was resumed.
    pub resume_seq: Option<u64>,
}

pub struct RoomStats {
    /// One-way latency of received packets, microseconds.
    pub latency_us: Hist,
    /// Signaling connect to first media packet (sent for publishers, received for
    /// subscribers), milliseconds.
    pub join_ms: Hist,
    pub errors: BTreeMap<String, u64>,
    /// Peers that completed ICE and DTLS.
    pub peers_connected: u64,
}

impl RoomStats {
    pub fn new() -> Self {
        RoomStats {
            latency_us: new_hist(),
            join_ms: new_hist(),
            errors: BTreeMap::new(),
            peers_connected: 0,
        }
    }
}

impl Default for RoomStats {
    fn default() -> Self {
        Self::new()
    }
}

pub struct WorkerResult {
    pub publishers: Vec<PubResult>,
    pub tracks: Vec<TrackResult>,
    pub rooms: Vec<RoomStats>,
}

#[derive(Debug)]
struct ProducerInfo {
    id: String,
    user_id: String,
}

#[derive(Debug)]
enum Req {
    Join,
    CreateTransport,
    /// Carries the create-transport answer: ICE and DTLS start with the answer.
    ConnectTransport(Value),
    Produce,
    Consume(ProducerInfo),
    Resume(usize),
}

impl Req {
    fn name(&self) -> &'static str {
        match self {
            Req::Join => "join-room",
            Req::CreateTransport => "create-transport",
            Req::ConnectTransport(_) => "connect-transport",
            Req::Produce => "produce",
            Req::Consume(_) => "consume",
            Req::Resume(_) => "resume-consumer",
        }
    }

    /// Whether a failure ends the peer.
    fn fatal(&self) -> bool {
        !matches!(self, Req::Consume(_) | Req::Resume(_))
    }
}

struct Endpoint {
    client: Client,
    socket: UdpSocket,
    server: SocketAddr,
}

struct Track {
    producer: String,
    publisher: Option<u32>,
    window: SeqWindow,
    bytes: u64,
    resume_seq: Option<u64>,
}

struct Peer {
    plan: Plan,
    signal: Option<Signal>,
    requests: HashMap<u64, Req>,
    ep: Option<Endpoint>,
    transport: Option<String>,
    started: Instant,
    connected: bool,
    got_media: bool,
    dead: bool,
    // publisher
    producing: bool,
    ssrc: u32,
    seq: u64,
    rtp_ts: u32,
    next_send: Instant,
    last_key: Option<Instant>,
    key_wanted: bool,
    packets: u64,
    bytes: u64,
    keyframes: u64,
    // subscriber
    waiting: Vec<ProducerInfo>,
    consumed: HashSet<String>,
    tracks: Vec<Track>,
    by_ssrc: HashMap<u32, usize>,
    /// WHIP/WHEP state (SDP mode) instead of `signal`.
    sdp: Option<sdp::SdpPeer>,
}

impl Peer {
    fn new(plan: Plan, now: Instant) -> Peer {
        let ssrc = 0x1000_0000 + plan.id * 2;
        Peer {
            plan,
            signal: None,
            requests: HashMap::new(),
            ep: None,
            transport: None,
            started: now,
            connected: false,
            got_media: false,
            dead: false,
            producing: false,
            ssrc,
            seq: 0,
            rtp_ts: 0,
            next_send: now,
            last_key: None,
            key_wanted: true,
            packets: 0,
            bytes: 0,
            keyframes: 0,
            waiting: Vec::new(),
            consumed: HashSet::new(),
            tracks: Vec::new(),
            by_ssrc: HashMap::new(),
            sdp: None,
        }
    }

    fn is_publisher(&self) -> bool {
        self.plan.role != Role::Subscriber
    }

    fn can_send(&self) -> bool {
        self.producing && self.connected && !self.dead && self.ssrc != 0
    }
}

struct Stats {
    rooms: Vec<RoomStats>,
    interval: Hist,
    packets_out: u64,
    packets_in: u64,
    connected: u64,
    errors: u64,
}

impl Stats {
    fn error(&mut self, room: usize, kind: &str) {
        self.errors += 1;
        *self.rooms[room].errors.entry(kind.to_string()).or_default() += 1;
    }
}

fn token(peer: usize, udp: bool) -> u64 {
    ((peer as u64) << 1) | udp as u64
}

pub struct Worker {
    index: usize,
    cfg: Arc<RunConfig>,
    shared: Arc<Shared>,
    auth: Option<Authenticator>,
    plans: Vec<Plan>,
    next_plan: usize,
    peers: Vec<Peer>,
    publishers: Vec<usize>,
    poller: Poller,
    batch: RecvBatch,
    ready: Vec<u64>,
    incoming: Vec<Incoming>,
    buf: Vec<u8>,
    stats: Stats,
    next_deadline: Instant,
    next_media: Instant,
    /// Helper threads for WHIP/WHEP requests (only in that mode).
    http: Option<HttpPool>,
}

impl Worker {
    pub fn new(
        index: usize,
        plans: Vec<Plan>,
        cfg: Arc<RunConfig>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Worker> {
        let auth = match &cfg.tokens {
            Tokens::Mint(secret) => Some(Authenticator::new(secret.as_bytes())),
            Tokens::Fixed(_) => None,
        };
        let rooms = (0..cfg.rooms.len()).map(|_| RoomStats::new()).collect();
        let hard_end = cfg.hard_end;
        let http = if cfg.whip.is_some() || cfg.whep.is_some() {
            Some(HttpPool::new(&format!("load-{index}"), HTTP_THREADS)?)
        } else {
            None
        };
        Ok(Worker {
            index,
            auth,
            next_plan: 0,
            peers: Vec::with_capacity(plans.len()),
            publishers: Vec::new(),
            poller: Poller::new(256)?,
            batch: RecvBatch::default(),
            ready: Vec::with_capacity(256),
            incoming: Vec::new(),
            buf: Vec::with_capacity(media::MAX_PAYLOAD),
            stats: Stats {
                rooms,
                interval: new_hist(),
                packets_out: 0,
                packets_in: 0,
                connected: 0,
                errors: 0,
            },
            next_deadline: hard_end,
            next_media: hard_end,
            http,
            plans,
            cfg,
            shared,
        })
    }

    /// Runs until the end of the run; every wait is bounded by the run's end.
    pub fn run(mut self) -> WorkerResult {
        let cfg = self.cfg.clone();
        let mut next_house = Instant::now();
        let mut next_live = Instant::now();
        loop {
            let now = Instant::now();
            if now >= cfg.hard_end {
                break;
            }
            while let Some(plan) = self.plans.get(self.next_plan) {
                let at = cfg.t0 + plan.start;
                // Re-read the clock: each start may wait for a TCP connect.
                if at > now || at >= cfg.media_end || Instant::now() >= cfg.media_end {
                    break;
                }
                let plan = plan.clone();
                self.next_plan += 1;
                self.start_peer(plan, Instant::now());
            }
            if now >= self.next_media {
                self.send_due(now);
            }
            if now >= self.next_deadline {
                self.timeouts(now);
            }
            if now >= next_house {
                self.housekeeping(now);
                next_house = now + HOUSEKEEPING;
                if self.next_plan == self.plans.len() && self.peers.iter().all(|p| p.dead) {
                    break; // nothing left to run
                }
            }
            if now >= next_live {
                self.publish_live();
                next_live = now + LIVE_EVERY;
            }
            let mut wake = next_house.min(self.next_deadline).min(cfg.hard_end);
            if now < cfg.media_end {
                wake = wake.min(self.next_media);
            }
            if let Some(p) = self.plans.get(self.next_plan) {
                if cfg.t0 + p.start < cfg.media_end {
                    wake = wake.min(cfg.t0 + p.start);
                }
            }
            self.ready.clear();
            let timeout = wake.saturating_duration_since(Instant::now());
            if let Err(e) = self.poller.wait(timeout, &mut self.ready) {
                eprintln!("worker {}: epoll_wait: {e}", self.index);
                std::thread::sleep(Duration::from_millis(1));
            }
            for k in 0..self.ready.len() {
                let t = self.ready[k];
                let i = (t >> 1) as usize;
                if self.peers.get(i).is_none_or(|p| p.dead) {
                    continue;
                }
                if t & 1 == 1 {
                    self.on_udp(i);
                } else {
                    self.on_signal(i);
                }
            }
        }
        self.finish()
    }

    fn start_peer(&mut self, plan: Plan, now: Instant) {
        let cfg = self.cfg.clone();
        let room = &cfg.rooms[plan.room];
        let user = match plan.role {
            Role::Subscriber => format!("sub{}", plan.id),
            _ => format!("pub{}", plan.id),
        };
        let token_text = match (&self.auth, &cfg.tokens) {
            (Some(auth), _) => {
                let ttl = cfg.hard_end.saturating_duration_since(now) + Duration::from_secs(600);
                auth.mint(&Grant {
                    user_id: &user,
                    user_name: None,
                    room: Some(room),
                    ttl,
                })
                .0
            }
            (None, Tokens::Fixed(t)) => t.clone(),
            (None, Tokens::Mint(_)) => unreachable!("an authenticator exists when minting"),
        };
        let sdp_target = match plan.role {
            Role::Subscriber => cfg.whep.clone(),
            _ => cfg.whip.clone(),
        };
        if let Some(target) = sdp_target {
            return self.start_sdp_peer(plan, token_text, target, now);
        }
        let url = format!("ws://{}/ws?token={}", cfg.target.authority, token_text);
        let idx = self.peers.len();
        let mut peer = Peer::new(plan, now);
        let timeout = cfg.connect_timeout.min(Duration::from_secs(3));
        match Signal::start(cfg.target.addr, &url, timeout) {
            Ok(mut s) => match self.poller.add(s.fd(), token(idx, false)) {
                Ok(()) => {
                    let id = s.request("join-room", json!({ "roomId": room }));
                    peer.requests.insert(id, Req::Join);
                    peer.signal = Some(s);
                }
                Err(_) => {
                    self.stats.error(peer.plan.room, "epoll");
                    peer.dead = true;
                }
            },
            Err(kind) => {
                self.stats.error(peer.plan.room, &kind);
                peer.dead = true;
            }
        }
        if peer.is_publisher() {
            self.publishers.push(idx);
        }
        self.peers.push(peer);
    }

    fn on_signal(&mut self, i: usize) {
        let Some(s) = self.peers[i].signal.as_mut() else {
            return;
        };
        let mut msgs = std::mem::take(&mut self.incoming);
        s.poll(&mut msgs);
        let now = Instant::now();
        for m in msgs.drain(..) {
            if self.peers[i].dead {
                break;
            }
            self.on_incoming(i, m, now);
        }
        self.incoming = msgs;
    }

    fn on_incoming(&mut self, i: usize, msg: Incoming, now: Instant) {
        let room = self.peers[i].plan.room;
        match msg {
            Incoming::Opened => {}
            Incoming::Closed(kind) => self.fail(i, Some(&kind)),
            Incoming::Event { kind, data } => match kind.as_str() {
                "new-producer" if !self.peers[i].is_publisher() => {
                    if let Some(info) = producer_info(&data) {
                        self.peers[i].waiting.push(info);
                        self.consume_waiting(i);
                    }
                }
                "media-failed" => self.fail(i, Some("media_failed")),
                "error" => self.stats.error(room, "server_error_event"),
                _ => {}
            },
            Incoming::Response { id, result } => {
                let Some(req) = self.peers[i].requests.remove(&id) else {
                    return;
                };
                match result {
                    Err(code) => {
                        let kind = format!("request:{}:{}", req.name(), code);
                        if req.fatal() {
                            self.fail(i, Some(&kind));
                        } else {
                            self.stats.error(room, &kind);
                        }
                    }
                    Ok(data) => self.on_answer(i, req, data, now),
                }
            }
        }
    }

    fn request(&mut self, i: usize, kind: &str, data: Value, req: Req) {
        let peer = &mut self.peers[i];
        if let Some(s) = peer.signal.as_mut() {
            let id = s.request(kind, data);
            peer.requests.insert(id, req);
        }
    }

    fn on_answer(&mut self, i: usize, req: Req, data: Value, now: Instant) {
        match req {
            Req::Join => {
                let peer = &mut self.peers[i];
                let direction = if peer.is_publisher() {
                    "send"
                } else {
                    if let Some(list) = data["producers"].as_array() {
                        peer.waiting.extend(list.iter().filter_map(producer_info));
                    }
                    "recv"
                };
                self.request(
                    i,
                    "create-transport",
                    json!({ "direction": direction }),
                    Req::CreateTransport,
                );
            }
            Req::CreateTransport => self.open_transport(i, &data, now),
            Req::ConnectTransport(transport) => {
                let Some(ep) = self.peers[i].ep.as_mut() else {
                    return;
                };
                if ep.client.connect(now, &transport).is_err() {
                    return self.fail(i, Some("bad_transport"));
                }
                self.after_input(i, now);
                let peer = &mut self.peers[i];
                if !peer.is_publisher() {
                    return;
                }
                let (Some(ep), Some(t)) = (peer.ep.as_mut(), peer.transport.clone()) else {
                    return;
                };
                let (codec, rtx, kind) = match peer.plan.role {
                    Role::Video => (&VP8, Some(peer.ssrc + 1), "video"),
                    _ => (&OPUS, None, "audio"),
                };
                let params = ep.client.add_sender(codec, peer.ssrc, rtx);
                self.request(
                    i,
                    "produce",
                    json!({ "transportId": t, "kind": kind, "rtpParameters": params }),
                    Req::Produce,
                );
            }
            Req::Produce => {
                let peer = &mut self.peers[i];
                peer.producing = true;
                if let Some(s) = self.shared.pub_state.get(peer.plan.id as usize) {
                    s.store(PUB_READY, Ordering::Relaxed);
                }
                peer.next_send = now;
                if let Some(id) = data["id"].as_str() {
                    self.shared
                        .producers
                        .lock()
                        .expect("producer registry")
                        .insert((peer.plan.room, id.to_string()), peer.plan.id);
                }
                self.next_media = self.next_media.min(now);
            }
            Req::Consume(info) => {
                let registry_id = self.resolve_publisher(self.peers[i].plan.room, &info);
                let peer = &mut self.peers[i];
                let Some(ep) = peer.ep.as_mut() else {
                    return;
                };
                let kind = data["kind"].as_str().unwrap_or("video");
                match ep.client.add_receiver(kind, &data["rtpParameters"]) {
                    Ok(ssrc) => {
                        let idx = peer.tracks.len();
                        peer.tracks.push(Track {
                            producer: info.id,
                            publisher: registry_id,
                            window: SeqWindow::default(),
                            bytes: 0,
                            resume_seq: None,
                        });
                        peer.by_ssrc.insert(*ssrc, idx);
                        let consumer = data["id"].clone();
                        self.request(
                            i,
                            "resume-consumer",
                            json!({ "consumerId": consumer }),
                            Req::Resume(idx),
                        );
                    }
                    Err(_) => self.stats.error(peer.plan.room, "bad_consumer_parameters"),
                }
            }
            Req::Resume(idx) => {
                let peer = &mut self.peers[i];
                if peer.tracks[idx].publisher.is_none() {
                    let info = ProducerInfo {
                        id: peer.tracks[idx].producer.clone(),
                        user_id: String::new(),
                    };
                    let room = peer.plan.room;
                    let p = self.resolve_publisher(room, &info);
                    self.peers[i].tracks[idx].publisher = p;
                }
                let peer = &mut self.peers[i];
                let track = &mut peer.tracks[idx];
                if let Some(p) = track.publisher {
                    if let Some(sent) = self.shared.sent.get(p as usize) {
                        track.resume_seq = Some(sent.load(Ordering::Relaxed));
                    }
                }
            }
        }
    }

    /// Which publisher of this run a producer belongs to: from the registry, else (when
    /// tokens are minted here) from its user id `pubN`.
    fn resolve_publisher(&self, room: usize, info: &ProducerInfo) -> Option<u32> {
        let known = self
            .shared
            .producers
            .lock()
            .expect("producer registry")
            .get(&(room, info.id.clone()))
            .copied();
        known.or_else(|| match self.cfg.tokens {
            Tokens::Mint(_) => info
                .user_id
                .strip_prefix("pub")
                .and_then(|n| n.parse().ok())
                .filter(|&n: &u32| (n as usize) < self.shared.sent.len()),
            Tokens::Fixed(_) => None,
        })
    }

    fn open_transport(&mut self, i: usize, t: &Value, now: Instant) {
        let cand = &t["iceCandidates"][0];
        let server = cand["ip"]
            .as_str()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .zip(cand["port"].as_u64().and_then(|p| u16::try_from(p).ok()))
            .map(|(ip, port)| SocketAddr::new(ip, port));
        let Some(server) = server else {
            return self.fail(i, Some("bad_transport"));
        };
        let bind: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).and_then(|s| {
            s.connect(server)?;
            s.set_nonblocking(true)?;
            let _ = net::set_recv_buffer(s.as_raw_fd(), CLIENT_RECV_BUFFER);
            Ok(s)
        });
        let local = socket.as_ref().ok().and_then(|s| s.local_addr().ok());
        let (Ok(socket), Some(local)) = (socket, local) else {
            return self.fail(i, Some("udp_socket"));
        };
        // ICE and DTLS start once the server knows our fingerprint (the answer to
        // connect-transport): a DTLS ClientHello that reaches the server before it costs
        // a 1 s retransmission.
        let mut client = Client::new(now, local);
        if self.poller.add(socket.as_raw_fd(), token(i, true)).is_err() {
            return self.fail(i, Some("epoll"));
        }
        let Some(id) = t["id"].as_str().map(str::to_string) else {
            return self.fail(i, Some("bad_transport"));
        };
        let dtls = client.dtls_parameters();
        let peer = &mut self.peers[i];
        peer.transport = Some(id.clone());
        peer.ep = Some(Endpoint {
            client,
            socket,
            server,
        });
        self.request(
            i,
            "connect-transport",
            json!({ "transportId": id, "dtlsParameters": dtls }),
            Req::ConnectTransport(t.clone()),
        );
        self.consume_waiting(i);
    }

    fn consume_waiting(&mut self, i: usize) {
        let peer = &mut self.peers[i];
        let Some(t) = peer.transport.clone() else {
            return;
        };
        let waiting = std::mem::take(&mut peer.waiting);
        for info in waiting {
            if !self.peers[i].consumed.insert(info.id.clone()) {
                continue;
            }
            let data = json!({ "transportId": t, "producerId": info.id });
            self.request(i, "consume", data, Req::Consume(info));
        }
    }

    fn on_udp(&mut self, i: usize) {
        let mut now = Instant::now();
        for _ in 0..ROUNDS_PER_WAKE {
            let Some(ep) = self.peers[i].ep.as_mut() else {
                return;
            };
            let n = match self.batch.recv(ep.socket.as_raw_fd()) {
                Ok(n) => n,
                Err(_) => {
                    let room = self.peers[i].plan.room;
                    self.stats.error(room, "udp_recv");
                    break;
                }
            };
            if n == 0 {
                break;
            }
            now = Instant::now();
            for j in 0..n {
                ep.client.handle_datagram(now, ep.server, self.batch.get(j));
            }
            self.drain_events(i, now);
            if n < BATCH {
                break;
            }
        }
        self.after_input(i, now);
    }

    /// Handles what a client reported.
    fn drain_events(&mut self, i: usize, now: Instant) {
        let run_id = self.cfg.run_id;
        let peer = &mut self.peers[i];
        let Some(ep) = peer.ep.as_mut() else {
            return;
        };
        let room = peer.plan.room;
        let mut failed = false;
        let mut events = std::mem::take(&mut ep.client.events);
        while let Some(e) = events.pop_front() {
            match e {
                ClientEvent::Connected => {
                    if !peer.connected {
                        peer.connected = true;
                        self.stats.connected += 1;
                        self.stats.rooms[room].peers_connected += 1;
                        if peer.producing {
                            self.next_media = self.next_media.min(now);
                        }
                    }
                }
                ClientEvent::Disconnected => failed = true,
                ClientEvent::KeyframeRequest(_) => peer.key_wanted = true,
                ClientEvent::Rtp(p) => {
                    on_rtp(peer, &p, now, run_id, &mut self.stats);
                }
            }
        }
        // Give the (empty) queue back to keep its capacity.
        if let Some(ep) = peer.ep.as_mut() {
            ep.client.events = events;
            if let Some(s) = peer.sdp.as_ref() {
                sdp::resolve_ssrc(s, &mut peer.ssrc, &mut ep.client);
            }
        }
        if failed {
            self.fail(i, Some("ice_disconnected"));
        }
    }

    /// After input to a client: its events, its datagrams out, its next timer.
    fn after_input(&mut self, i: usize, now: Instant) {
        self.drain_events(i, now);
        let peer = &mut self.peers[i];
        let Some(ep) = peer.ep.as_mut() else {
            return;
        };
        let mut send_failed = false;
        for t in ep.client.outbox.drain(..) {
            let r = if t.destination == ep.server {
                ep.socket.send(&t.contents)
            } else {
                ep.socket.send_to(&t.contents, t.destination)
            };
            if let Err(e) = r {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    send_failed = true;
                }
            }
        }
        let d = ep.client.deadline.max(now + TIMER_FLOOR);
        self.next_deadline = self.next_deadline.min(d);
        if send_failed {
            self.stats.error(peer.plan.room, "udp_send");
        }
    }

    fn timeouts(&mut self, now: Instant) {
        let mut next = self.cfg.hard_end;
        for i in 0..self.peers.len() {
            let Some(ep) = self.peers[i].ep.as_mut() else {
                continue;
            };
            if ep.client.deadline <= now {
                ep.client.handle_timeout(now);
                self.after_input(i, now);
            }
            if let Some(ep) = self.peers[i].ep.as_ref() {
                next = next.min(ep.client.deadline.max(now + TIMER_FLOOR));
            }
        }
        self.next_deadline = next;
    }

    fn send_due(&mut self, now: Instant) {
        let cfg = self.cfg.clone();
        if now >= cfg.media_end {
            self.next_media = cfg.hard_end;
            return;
        }
        let mut next = cfg.hard_end;
        for k in 0..self.publishers.len() {
            let i = self.publishers[k];
            if !self.peers[i].can_send() {
                continue;
            }
            if self.peers[i].next_send <= now {
                match self.peers[i].plan.role {
                    Role::Video => self.send_frame(i, now),
                    _ => self.send_audio(i, now),
                }
                let interval = match self.peers[i].plan.role {
                    Role::Video => cfg.frame_interval,
                    _ => media::AUDIO_INTERVAL,
                };
                let peer = &mut self.peers[i];
                if now.saturating_duration_since(peer.next_send) > interval * 3 {
                    // Far behind (a stall): resume from now instead of bursting.
                    peer.next_send = now + interval;
                } else {
                    peer.next_send += interval;
                }
                if !peer.got_media && peer.packets > 0 {
                    peer.got_media = true;
                    let ms = now.duration_since(peer.started).as_millis() as u64;
                    let _ = self.stats.rooms[peer.plan.room].join_ms.record(ms.max(1));
                }
                self.shared.sent[peer.plan.id as usize].store(peer.seq, Ordering::Relaxed);
                self.after_input(i, now);
            }
            if let Some(p) = self.peers.get(i).filter(|p| p.can_send()) {
                next = next.min(p.next_send);
            }
        }
        self.next_media = next;
    }

    fn send_frame(&mut self, i: usize, now: Instant) {
        let cfg = &self.cfg;
        let peer = &mut self.peers[i];
        let Some(ep) = peer.ep.as_mut() else {
            return;
        };
        let key = peer.key_wanted
            || peer
                .last_key
                .is_none_or(|k| now.saturating_duration_since(k) >= cfg.keyframe_interval);
        if key {
            peer.key_wanted = false;
            peer.last_key = Some(now);
            peer.keyframes += 1;
        }
        let n = cfg.frame_sizes.len();
        for (j, &size) in cfg.frame_sizes.iter().enumerate() {
            let stamp = Stamp {
                run: cfg.run_id,
                publisher: peer.plan.id,
                seq: peer.seq,
                sent_ns: media::nanos_since_epoch(Instant::now()),
            };
            media::video_payload(&mut self.buf, j == 0, key, &stamp, size);
            ep.client.send_rtp(
                now,
                peer.ssrc,
                VP8.pt,
                peer.seq + 1,
                peer.rtp_ts,
                j + 1 == n,
                &self.buf,
            );
            peer.seq += 1;
            peer.packets += 1;
            peer.bytes += self.buf.len() as u64;
            self.stats.packets_out += 1;
        }
        peer.rtp_ts = peer.rtp_ts.wrapping_add(90_000 / cfg.fps);
    }

    fn send_audio(&mut self, i: usize, now: Instant) {
        let cfg = &self.cfg;
        let peer = &mut self.peers[i];
        let Some(ep) = peer.ep.as_mut() else {
            return;
        };
        let stamp = Stamp {
            run: cfg.run_id,
            publisher: peer.plan.id,
            seq: peer.seq,
            sent_ns: media::nanos_since_epoch(Instant::now()),
        };
        media::audio_payload(&mut self.buf, &stamp, media::AUDIO_PAYLOAD);
        ep.client.send_rtp(
            now,
            peer.ssrc,
            OPUS.pt,
            peer.seq + 1,
            peer.rtp_ts,
            false,
            &self.buf,
        );
        peer.seq += 1;
        peer.packets += 1;
        peer.bytes += self.buf.len() as u64;
        peer.rtp_ts = peer.rtp_ts.wrapping_add(media::AUDIO_TICKS);
        self.stats.packets_out += 1;
    }

    fn housekeeping(&mut self, now: Instant) {
        if self.http.is_some() {
            self.sdp_housekeeping(now);
        }
        let timeout = self.cfg.connect_timeout;
        for i in 0..self.peers.len() {
            let peer = &self.peers[i];
            if peer.dead {
                continue;
            }
            if !peer.connected && now.saturating_duration_since(peer.started) > timeout {
                self.fail(i, Some("connect_timeout"));
                continue;
            }
            if peer.signal.as_ref().is_some_and(Signal::wants_poll) {
                self.on_signal(i);
            }
        }
    }

    fn publish_live(&mut self) {
        let live = &self.shared.live[self.index];
        live.packets_out
            .store(self.stats.packets_out, Ordering::Relaxed);
        live.packets_in
            .store(self.stats.packets_in, Ordering::Relaxed);
        live.connected
            .store(self.stats.connected, Ordering::Relaxed);
        live.errors.store(self.stats.errors, Ordering::Relaxed);
        let (mut span, mut unique) = (0, 0);
        for p in &self.peers {
            for t in &p.tracks {
                span += t.window.span();
                unique += t.window.unique;
            }
        }
        live.span.store(span, Ordering::Relaxed);
        live.unique.store(unique, Ordering::Relaxed);
        if !self.stats.interval.is_empty() {
            let mut slot = live.latency.lock().expect("live latency");
            match slot.as_mut() {
                Some(h) => {
                    let _ = h.add(&self.stats.interval);
                }
                None => *slot = Some(self.stats.interval.clone()),
            }
            self.stats.interval.reset();
        }
    }

    /// Ends a peer: counts `kind`, closes its WebSocket and socket. Its figures stay.
    fn fail(&mut self, i: usize, kind: Option<&str>) {
        let peer = &mut self.peers[i];
        if peer.dead {
            return;
        }
        peer.dead = true;
        if peer.is_publisher() {
            if let Some(s) = self.shared.pub_state.get(peer.plan.id as usize) {
                let _ =
                    s.compare_exchange(PUB_PENDING, PUB_GONE, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
        if let Some(k) = kind {
            self.stats.error(peer.plan.room, k);
        }
        if peer.connected {
            self.stats.connected -= 1;
        }
        if let Some(mut s) = peer.signal.take() {
            self.poller.remove(s.fd());
            s.close();
        }
        if let Some(ep) = peer.ep.take() {
            self.poller.remove(ep.socket.as_raw_fd());
        }
    }

    fn finish(mut self) -> WorkerResult {
        for p in &mut self.peers {
            if let Some(s) = p.signal.as_mut() {
                s.close();
            }
        }
        self.delete_resources();
        self.publish_live();
        for plan in &self.plans[self.next_plan..] {
            self.stats.error(plan.room, "not_started");
        }
        let mut publishers = Vec::new();
        let mut tracks = Vec::new();
        for p in &self.peers {
            if p.is_publisher() {
                publishers.push(PubResult {
                    id: p.plan.id,
                    room: p.plan.room,
                    packets: p.packets,
                    bytes: p.bytes,
                    keyframes: p.keyframes,
                });
            }
            for t in &p.tracks {
                tracks.push(TrackResult {
                    subscriber: p.plan.id,
                    room: p.plan.room,
                    publisher: t.publisher,
                    unique: t.window.unique,
                    min_seq: t.window.min,
                    duplicates: t.window.duplicates,
                    reordered: t.window.reordered,
                    bytes: t.bytes,
                    resume_seq: t.resume_seq,
                });
            }
        }
        WorkerResult {
            publishers,
            tracks,
            rooms: self.stats.rooms,
        }
    }
}

fn producer_info(v: &Value) -> Option<ProducerInfo> {
    Some(ProducerInfo {
        id: v["producerId"].as_str()?.to_string(),
        user_id: v["userId"].as_str().unwrap_or("").to_string(),
    })
}

/// One received RTP packet of a subscriber.
fn on_rtp(peer: &mut Peer, p: &RtpPacket, now: Instant, run_id: u32, stats: &mut Stats) {
    let room = peer.plan.room;
    let video = *p.header.payload_type == VP8.pt;
    // By payload type first (the /ws dialect uses corelay's), else either layout (an SDP
    // answer may have chosen other payload types).
    let stamp =
        media::read_stamp(&p.payload, video).or_else(|| media::read_stamp(&p.payload, !video));
    let Some(stamp) = stamp else {
        return stats.error(room, "foreign_payload");
    };
    if stamp.run != run_id {
        return stats.error(room, "foreign_run");
    }
    let ssrc = *p.header.ssrc;
    let idx = peer.by_ssrc.get(&ssrc).copied().or_else(|| {
        let found = peer
            .tracks
            .iter()
            .position(|t| t.publisher == Some(stamp.publisher));
        if let Some(k) = found {
            peer.by_ssrc.insert(ssrc, k);
        }
        found
    });
    let Some(idx) = idx else {
        return stats.error(room, "unknown_track");
    };
    let track = &mut peer.tracks[idx];
    match track.publisher {
        None => track.publisher = Some(stamp.publisher),
        Some(pid) if pid != stamp.publisher => return stats.error(room, "stamp_mismatch"),
        Some(_) => {}
    }
    let seen = track.window.record(stamp.seq);
    if seen == Seen::Duplicate {
        return;
    }
    track.bytes += p.payload.len() as u64;
    stats.packets_in += 1;
    let lat_us = media::nanos_since_epoch(now).saturating_sub(stamp.sent_ns) / 1000;
    let _ = stats.rooms[room].latency_us.record(lat_us.max(1));
    let _ = stats.interval.record(lat_us.max(1));
    if !peer.got_media {
        peer.got_media = true;
        let ms = now.saturating_duration_since(peer.started).as_millis() as u64;
        let _ = stats.rooms[room].join_ms.record(ms.max(1));
    }
}
