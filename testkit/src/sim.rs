//! An in-memory network for the media core: one [`Engine`], str0m [`Client`]s, a virtual
//! clock, and datagrams passed by hand. Scenario tests and the forward-path benchmark run
//! on it; nothing here sleeps or opens a socket.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{Client, ClientEvent, Numbering};
use corelay::sfu::engine::Engine;
use corelay::sfu::ortc::{Kind, RtpParameters, VP8};
use corelay::sfu::transport::Direction;
use str0m::net::Transmit;

pub const SERVER: &str = "10.0.0.1:40000";

/// The engine, its clients and the virtual time.
pub struct World {
    pub now: Instant,
    pub engine: Engine,
    pub clients: Vec<Client>,
    /// Client addresses cut off the network: their datagrams are lost both ways.
    pub offline: Vec<SocketAddr>,
    /// Where each client made by `add_client_with` sits in `clients` (checked before use,
    /// so clients moved or removed by hand are still found by their address).
    by_addr: HashMap<SocketAddr, usize>,
    /// The engine's outbox is drained into this, reused.
    out: Vec<Transmit>,
}

/// A subscribing peer: its client, its consumer id, its peer id.
pub struct Sub {
    pub client: usize,
    pub consumer: String,
    pub peer: u64,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> World {
        let now = Instant::now();
        World {
            now,
            engine: Engine::new(1 << 48, SERVER.parse().unwrap()).unwrap(),
            clients: Vec::new(),
            offline: Vec::new(),
            by_addr: HashMap::new(),
            out: Vec::new(),
        }
    }

    pub fn add_client(&mut self) -> usize {
        self.add_client_with(Numbering::router())
    }

    /// A client that sends with its own payload types and extension ids.
    pub fn add_client_with(&mut self, numbering: Numbering) -> usize {
        // 10.0.1.1, 10.0.1.2, ...; past 255 clients the third byte counts on.
        let n = self.clients.len() + 1;
        let ip = Ipv4Addr::new(10, 0, 1 + (n / 256) as u8, (n % 256) as u8);
        let addr = SocketAddr::from((ip, 5000));
        self.clients
            .push(Client::with_numbering(self.now, addr, numbering));
        self.by_addr.insert(addr, self.clients.len() - 1);
        self.clients.len() - 1
    }

    /// The client with this address.
    fn client_at(&mut self, addr: SocketAddr) -> Option<&mut Client> {
        let i = match self.by_addr.get(&addr) {
            Some(&i) if self.clients.get(i).is_some_and(|c| c.addr == addr) => i,
            _ => self.clients.iter().position(|c| c.addr == addr)?,
        };
        self.clients.get_mut(i)
    }

    /// Moves datagrams both ways until none are left.
    pub fn exchange(&mut self) {
        let server: SocketAddr = SERVER.parse().unwrap();
        for _ in 0..1000 {
            let mut moved = false;
            for c in self.clients.iter_mut() {
                for t in std::mem::take(&mut c.outbox) {
                    moved = true;
                    if self.offline.contains(&c.addr) {
                        continue;
                    }
                    self.engine.handle_datagram(self.now, c.addr, &t.contents);
                }
            }
            let mut out = std::mem::take(&mut self.out);
            self.engine.poll_transmits(&mut out);
            for t in out.drain(..) {
                moved = true;
                if self.offline.contains(&t.destination) {
                    continue;
                }
                let now = self.now;
                if let Some(c) = self.client_at(t.destination) {
                    c.handle_datagram(now, server, &t.contents);
                }
            }
            self.out = out;
            if !moved {
                return;
            }
        }
        panic!("datagrams kept bouncing");
    }

    pub fn step(&mut self, dt: Duration) {
        self.now += dt;
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.engine.handle_timeout(self.now);
        }
        for c in self.clients.iter_mut() {
            if c.deadline <= self.now {
                c.handle_timeout(self.now);
            }
        }
        self.exchange();
    }

    pub fn run(&mut self, total: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.step(Duration::from_millis(5));
        }
    }

    pub fn transport(&mut self, peer: u64, dir: Direction) -> (usize, String) {
        self.transport_with(peer, dir, Numbering::router())
    }

    /// A connected transport whose client numbers payload types and extensions its own way.
    pub fn transport_with(
        &mut self,
        peer: u64,
        dir: Direction,
        numbering: Numbering,
    ) -> (usize, String) {
        let t = self.engine.create_transport(self.now, peer, dir).unwrap();
        let c = self.add_client_with(numbering);
        let info = json!({
            "iceParameters": t.ice_parameters,
            "iceCandidates": t.ice_candidates,
            "dtlsParameters": t.dtls_parameters,
        });
        self.clients[c].connect(self.now, &info).unwrap();
        let dtls = self.clients[c].dtls();
        self.engine
            .connect_transport(self.now, peer, &t.id, &dtls)
            .unwrap();
        (c, t.id)
    }

    /// A peer that publishes VP8 on ssrc 1000+peer (RTX on 1500+peer) in "room".
    pub fn publisher(&mut self, peer: u64) -> (usize, String, u32) {
        self.publish(peer, "room", true)
    }

    /// A peer that publishes VP8 on ssrc 1000+peer in `room`, with RTX on 1500+peer if
    /// `rtx`. (A str0m sender with RTX keeps writing the mid into every packet: it takes a
    /// receiver report for its RTX SSRC only as acknowledgement. Without RTX it stops once
    /// the server's first receiver report acknowledges the SSRC, as browsers do; str0m
    /// reports a stream without RTX every 5 s, taking it for audio.)
    pub fn publish(&mut self, peer: u64, room: &str, rtx: bool) -> (usize, String, u32) {
        self.engine
            .join(self.now, peer, room, &format!("u{peer}"), "Pub", None)
            .unwrap();
        let (c, tid) = self.transport(peer, Direction::Send);
        let ssrc = 1000 + peer as u32;
        let rtx = rtx.then_some(ssrc + 500);
        let params = self.clients[c].add_sender(&VP8, ssrc, rtx);
        let params: RtpParameters = serde_json::from_value(params).unwrap();
        let pid = self
            .engine
            .produce(self.now, peer, &tid, Kind::Video, &params)
            .unwrap();
        (c, pid, ssrc)
    }

    pub fn subscriber(&mut self, peer: u64, producer: &str) -> Sub {
        self.engine
            .join(self.now, peer, "room", &format!("u{peer}"), "Sub", None)
            .unwrap();
        let (c, tid) = self.transport(peer, Direction::Recv);
        let info = self
            .engine
            .consume(self.now, peer, &tid, producer, None)
            .unwrap();
        self.clients[c]
            .add_receiver(
                "video",
                &serde_json::to_value(&info.rtp_parameters).unwrap(),
            )
            .unwrap();
        self.engine
            .set_consumer_paused(self.now, peer, &info.id, false)
            .unwrap();
        Sub {
            client: c,
            consumer: info.id,
            peer,
        }
    }

    pub fn connect_all(&mut self) {
        for _ in 0..400 {
            self.step(Duration::from_millis(5));
            if self.clients.iter().all(Client::is_connected) {
                return;
            }
        }
        panic!("clients did not connect");
    }

    /// Received RTP sequence numbers of a client so far (drains its events).
    pub fn received(&mut self, c: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(e) = self.clients[c].events.pop_front() {
            if let ClientEvent::Rtp(p) = e {
                out.push(*p.seq_no);
            }
        }
        out
    }

    pub fn keyframe_requests(&mut self, c: usize) -> usize {
        let mut n = 0;
        self.clients[c].events.retain(|e| {
            let hit = matches!(e, ClientEvent::KeyframeRequest(_));
            n += hit as usize;
            !hit
        });
        n
    }
}

/// A publisher's video: 3 packets per frame, VP8 descriptors marking keyframes.
pub struct Video {
    pub client: usize,
    pub ssrc: u32,
    pub seq: u64,
    pub ts: u32,
}

impl Video {
    pub fn frame(&mut self, w: &mut World, key: bool) {
        for i in 0..3u8 {
            let start = i == 0;
            let mut payload = vec![
                if start { 0x10 } else { 0x00 },
                if key { 0x00 } else { 0x01 },
            ];
            payload.extend(std::iter::repeat_n(0xab, 900));
            let (pt, _) = w.clients[self.client].numbering.pt(&VP8);
            w.clients[self.client].send_rtp(
                w.now,
                self.ssrc,
                pt,
                self.seq,
                self.ts,
                i == 2,
                &payload,
            );
            self.seq += 1;
        }
        self.ts = self.ts.wrapping_add(3000);
        w.step(Duration::from_millis(33));
    }

    /// Sends frames; a keyframe first and whenever the server asked for one.
    pub fn frames(&mut self, w: &mut World, n: usize) {
        for i in 0..n {
            let asked = w.keyframe_requests(self.client) > 0;
            self.frame(w, i == 0 || asked);
        }
    }
}
