//! The media core on a virtual clock: one engine, str0m clients as publisher and
//! subscribers, datagrams passed in memory. No sockets, no sleeping.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corelay::client::{Client, ClientEvent};
use corelay::sfu::engine::Engine;
use corelay::sfu::ortc::{Kind, RtpParameters, VP8};
use corelay::sfu::transport::Direction;
use corelay::sfu::Notice;
use serde_json::json;

const SERVER: &str = "10.0.0.1:40000";

struct World {
    now: Instant,
    engine: Engine,
    clients: Vec<Client>,
}

struct Sub {
    client: usize,
    consumer: String,
    peer: u64,
}

impl World {
    fn new() -> World {
        let now = Instant::now();
        World {
            now,
            engine: Engine::new(1 << 48, SERVER.parse().unwrap()).unwrap(),
            clients: Vec::new(),
        }
    }

    fn add_client(&mut self) -> usize {
        let addr: SocketAddr = format!("10.0.1.{}:5000", self.clients.len() + 1)
            .parse()
            .unwrap();
        self.clients.push(Client::new(self.now, addr));
        self.clients.len() - 1
    }

    /// Moves datagrams both ways until none are left.
    fn exchange(&mut self) {
        let server: SocketAddr = SERVER.parse().unwrap();
        for _ in 0..1000 {
            let mut moved = false;
            for c in self.clients.iter_mut() {
                for t in std::mem::take(&mut c.outbox) {
                    moved = true;
                    self.engine.handle_datagram(self.now, c.addr, &t.contents);
                }
            }
            for t in self.engine.take_outbox() {
                moved = true;
                if let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination) {
                    c.handle_datagram(self.now, server, &t.contents);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("datagrams kept bouncing");
    }

    fn step(&mut self, dt: Duration) {
        self.now += dt;
        if self.engine.next_timeout().is_some_and(|t| t <= self.now) {
            self.engine.handle_timeout(self.now);
        }
        for c in self.clients.iter_mut() {
            if c.deadline <= self.now {
                c.handle_timeout(self.now);
            }
        }
        self.exchange();
    }

    fn run(&mut self, total: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.step(Duration::from_millis(5));
        }
    }

    fn transport(&mut self, peer: u64, dir: Direction) -> (usize, String) {
        let t = self.engine.create_transport(self.now, peer, dir).unwrap();
        let c = self.add_client();
        let info = json!({
            "iceParameters": t.ice_parameters,
            "iceCandidates": t.ice_candidates,
            "dtlsParameters": t.dtls_parameters,
        });
        self.clients[c].connect(self.now, &info).unwrap();
        let dtls = self.clients[c].dtls_parameters();
        self.engine
            .connect_transport(self.now, peer, &t.id, &dtls)
            .unwrap();
        (c, t.id)
    }

    /// A peer that publishes VP8 on ssrc 1000+peer.
    fn publisher(&mut self, peer: u64) -> (usize, String, u32) {
        self.engine
            .join(peer, "room", &format!("u{peer}"), "Pub", None)
            .unwrap();
        let (c, tid) = self.transport(peer, Direction::Send);
        let ssrc = 1000 + peer as u32;
        let params = self.clients[c].add_sender(&VP8, ssrc, Some(ssrc + 500));
        let params: RtpParameters = serde_json::from_value(params).unwrap();
        let pid = self
            .engine
            .produce(self.now, peer, &tid, Kind::Video, &params)
            .unwrap();
        (c, pid, ssrc)
    }

    fn subscriber(&mut self, peer: u64, producer: &str) -> Sub {
        self.engine
            .join(peer, "room", &format!("u{peer}"), "Sub", None)
            .unwrap();
        let (c, tid) = self.transport(peer, Direction::Recv);
        let info = self
            .engine
            .consume(self.now, peer, &tid, producer, None)
            .unwrap();
        self.clients[c]
            .add_receiver("video", &info.rtp_parameters)
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

    fn connect_all(&mut self) {
        for _ in 0..400 {
            self.step(Duration::from_millis(5));
            if self.clients.iter().all(Client::is_connected) {
                return;
            }
        }
        panic!("clients did not connect");
    }

    /// Received RTP sequence numbers of a client so far (drains its events).
    fn received(&mut self, c: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(e) = self.clients[c].events.pop_front() {
            if let ClientEvent::Rtp(p) = e {
                out.push(*p.seq_no);
            }
        }
        out
    }

    fn keyframe_requests(&mut self, c: usize) -> usize {
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
struct Video {
    client: usize,
    ssrc: u32,
    seq: u64,
    ts: u32,
}

impl Video {
    fn frame(&mut self, w: &mut World, key: bool) {
        for i in 0..3u8 {
            let start = i == 0;
            let mut payload = vec![
                if start { 0x10 } else { 0x00 },
                if key { 0x00 } else { 0x01 },
            ];
            payload.extend(std::iter::repeat_n(0xab, 900));
            w.clients[self.client].send_rtp(
                w.now,
                self.ssrc,
                VP8.pt,
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
    fn frames(&mut self, w: &mut World, n: usize) {
        for i in 0..n {
            let asked = w.keyframe_requests(self.client) > 0;
            self.frame(w, i == 0 || asked);
        }
    }
}

fn setup(subs: u64) -> (World, Video, String, Vec<Sub>) {
    let mut w = World::new();
    let (pc, pid, ssrc) = w.publisher(1);
    let subs: Vec<Sub> = (0..subs).map(|i| w.subscriber(10 + i, &pid)).collect();
    w.connect_all();
    let video = Video {
        client: pc,
        ssrc,
        seq: 5000,
        ts: 90_000,
    };
    (w, video, pid, subs)
}

fn assert_contiguous(seqs: &[u64]) {
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "gap or reorder in {seqs:?}");
    }
}

#[test]
fn every_subscriber_gets_every_packet_in_order() {
    let (mut w, mut video, _, subs) = setup(5);
    video.frames(&mut w, 60);
    w.run(Duration::from_millis(100));
    for s in &subs {
        let got = w.received(s.client);
        assert!(
            got.len() >= 170,
            "subscriber {} got {} packets",
            s.peer,
            got.len()
        );
        assert_contiguous(&got);
    }
    assert_eq!(w.engine.consumers(), 5);
    assert!(w.engine.counters().rtp_out >= 5 * 170);
}

#[test]
fn pause_and_resume_leave_no_sequence_gap_and_ask_for_a_keyframe() {
    let (mut w, mut video, _, subs) = setup(2);
    video.frames(&mut w, 20);
    let s = &subs[0];
    let before = w.received(s.client);
    w.engine
        .set_consumer_paused(w.now, s.peer, &s.consumer, true)
        .unwrap();
    video.frames(&mut w, 20);
    assert!(w.received(s.client).is_empty(), "nothing while paused");
    w.run(Duration::from_millis(600)); // past the keyframe debounce
    w.keyframe_requests(video.client);
    w.engine
        .set_consumer_paused(w.now, s.peer, &s.consumer, false)
        .unwrap();
    w.step(Duration::from_millis(5));
    assert_eq!(
        w.keyframe_requests(video.client),
        1,
        "resume asks the publisher for a keyframe"
    );
    // The publisher answers with a keyframe; frames after it are forwarded.
    video.frame(&mut w, true);
    video.frames(&mut w, 10);
    let after = w.received(s.client);
    assert!(after.len() >= 30, "{after:?}");
    let mut all = before;
    all.extend(after);
    assert_contiguous(&all);
}

#[test]
fn a_subscribers_pli_reaches_the_publisher() {
    let (mut w, mut video, _, subs) = setup(1);
    video.frames(&mut w, 10);
    w.run(Duration::from_millis(600));
    w.keyframe_requests(video.client);
    let ssrc = {
        let s = &subs[0];
        let ev = w.received(s.client);
        assert!(!ev.is_empty());
        // the consumer's SSRC as the client declared it
        let params = w.clients[s.client]
            .rtc
            .direct_api()
            .stream_rx_by_mid("0".into(), None)
            .map(|r| r.ssrc());
        params.unwrap()
    };
    w.clients[subs[0].client].request_keyframe(w.now, ssrc);
    w.run(Duration::from_millis(50));
    assert!(
        w.keyframe_requests(video.client) >= 1,
        "PLI forwarded to the publisher"
    );
}

#[test]
fn closing_a_producer_ends_its_consumers_with_notices() {
    let (mut w, mut video, pid, subs) = setup(3);
    video.frames(&mut w, 5);
    while w.engine.poll_notice().is_some() {}
    w.engine.close_producer(w.now, 1, &pid).unwrap();
    let mut closed = 0;
    let mut producer_closed = 0;
    while let Some((peer, n)) = w.engine.poll_notice() {
        match n {
            Notice::ConsumerClosed { consumer_id } => {
                assert!(subs
                    .iter()
                    .any(|s| s.peer == peer && s.consumer == consumer_id));
                closed += 1;
            }
            Notice::ProducerClosed { producer_id } => {
                assert_eq!(producer_id, pid);
                producer_closed += 1;
            }
            _ => {}
        }
    }
    assert_eq!(closed, 3);
    assert_eq!(
        producer_closed, 4,
        "every peer of the room, the publisher included"
    );
    assert_eq!(w.engine.consumers(), 0);
    assert_eq!(w.engine.producers(), 0);
    assert!(w.engine.consume(w.now, 10, "t1", &pid, None).is_err());
}

#[test]
fn garbage_is_counted_and_dropped_while_media_flows() {
    let (mut w, mut video, _, subs) = setup(1);
    video.frames(&mut w, 5);
    let dropped = w.engine.counters().datagrams_dropped;
    let from: SocketAddr = "10.9.9.9:999".parse().unwrap();
    for junk in [
        &b""[..],
        b"\x00\x01\x02",
        &[0xff; 1200],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        assert!(!w.engine.handle_datagram(w.now, from, junk));
    }
    // garbage from a known client's address is refused by its transport, not fatal
    let known = w.clients[subs[0].client].addr;
    w.engine
        .handle_datagram(w.now, known, &[0x80, 0x60, 0, 1, 0, 0, 0, 1]);
    assert!(w.engine.counters().datagrams_dropped >= dropped + 4);
    video.frames(&mut w, 10);
    assert!(w.received(subs[0].client).len() >= 40, "media still flows");
}

#[test]
fn leaving_releases_everything_and_removes_an_empty_room() {
    let (mut w, mut video, _, subs) = setup(2);
    video.frames(&mut w, 3);
    for s in &subs {
        w.engine.leave(w.now, s.peer);
    }
    assert_eq!(w.engine.consumers(), 0);
    w.engine.leave(w.now, 1);
    assert_eq!(w.engine.transports(), 0);
    assert_eq!(w.engine.rooms(), 0);
}

#[test]
fn unknown_ids_and_wrong_order_are_errors() {
    let mut w = World::new();
    assert!(
        w.engine
            .create_transport(w.now, 7, Direction::Send)
            .is_err(),
        "not joined"
    );
    w.engine.join(7, "r", "u7", "U", None).unwrap();
    assert!(w.engine.consume(w.now, 7, "tffff", "p1", None).is_err());
    let t = w
        .engine
        .create_transport(w.now, 7, Direction::Recv)
        .unwrap();
    let params: RtpParameters = serde_json::from_value(json!({
        "mid": "0", "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
        "encodings": [{"ssrc": 5}]
    }))
    .unwrap();
    assert!(
        w.engine
            .produce(w.now, 7, &t.id, Kind::Video, &params)
            .is_err(),
        "produce on a recv transport"
    );
    assert!(w
        .engine
        .connect_transport(w.now, 7, &t.id, &json!({"fingerprints": []}))
        .is_err());
    // another peer cannot use this peer's transport
    w.engine.join(8, "r", "u8", "V", None).unwrap();
    assert!(w.engine.restart_ice(w.now, 8, &t.id).is_err());
}
