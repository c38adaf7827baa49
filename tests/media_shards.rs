//! Real media through the real binary on loopback: 2 shards, str0m clients speaking the
//! mediasoup-client dialect over WebSocket and SRTP over UDP.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corelay::routing::owner_shard;
use corelay::sfu::ortc::VP8;
use corelay_testkit::client::ClientEvent;
use corelay_testkit::*;
use serde_json::{json, Value};

/// A signaling connection that sets events aside while waiting for answers.
struct Signal {
    ws: Ws,
    next: u64,
    events: VecDeque<Value>,
}

impl Signal {
    fn open(port: u16, user: &str, room: &str) -> Signal {
        let ws = ws_connect(port, &format!("/ws?token={}", token(user, Some(room)))).unwrap();
        Signal {
            ws,
            next: 0,
            events: VecDeque::new(),
        }
    }

    fn request(&mut self, kind: &str, data: Value) -> Value {
        self.next += 1;
        let id = format!("r{}", self.next);
        send_text(
            &mut self.ws,
            &json!({"type": kind, "data": data, "requestId": id}).to_string(),
        );
        loop {
            let msg = recv_json(&mut self.ws);
            if msg["type"] == "response" && msg["requestId"] == id.as_str() {
                assert!(msg.get("error").is_none(), "{kind} failed: {msg}");
                return msg["data"].clone();
            }
            self.events.push_back(msg);
        }
    }
}

/// Opens a transport for an endpoint through the signaling connection.
trait OpenTransport {
    fn open_transport(&mut self, sig: &mut Signal, direction: &str) -> (String, SocketAddr);
}

impl OpenTransport for Endpoint {
    fn open_transport(&mut self, sig: &mut Signal, direction: &str) -> (String, SocketAddr) {
        let t = sig.request("create-transport", json!({"direction": direction}));
        self.client.connect(Instant::now(), &t).unwrap();
        let id = t["id"].as_str().unwrap().to_string();
        let dtls = self.client.dtls_parameters();
        sig.request(
            "connect-transport",
            json!({"transportId": id, "dtlsParameters": dtls}),
        );
        let port = t["iceCandidates"][0]["port"].as_u64().unwrap() as u16;
        (id, SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

struct RoomRun {
    room: String,
    packets_per_frame: u32,
    sent: u64,
    received: u64,
    media_port: u16,
    /// Keeps both sessions open until the figures are read.
    _sessions: (Signal, Signal),
}

/// One publisher and one subscriber in `room`, sending `frames` video frames.
fn run_room(port: u16, room: String, packets_per_frame: u32, frames: u32) -> RoomRun {
    let mut pub_sig = Signal::open(port, &format!("{room}-pub"), &room);
    pub_sig.request("join-room", json!({}));
    let mut publisher = Endpoint::new();
    let (send_t, media) = publisher.open_transport(&mut pub_sig, "send");
    let ssrc = 4242;
    let params = publisher.client.add_sender(&VP8, ssrc, Some(ssrc + 1));
    let produced = pub_sig.request(
        "produce",
        json!({"transportId": send_t, "kind": "video", "rtpParameters": params}),
    );
    let producer = produced["id"].as_str().unwrap().to_string();

    let mut sub_sig = Signal::open(port, &format!("{room}-sub"), &room);
    let joined = sub_sig.request("join-room", json!({}));
    assert_eq!(joined["producers"][0]["producerId"], producer.as_str());
    let mut subscriber = Endpoint::new();
    let (recv_t, _) = subscriber.open_transport(&mut sub_sig, "recv");
    let consumed = sub_sig.request(
        "consume",
        json!({"transportId": recv_t, "producerId": producer}),
    );
    subscriber
        .client
        .add_receiver("video", &consumed["rtpParameters"])
        .unwrap();
    sub_sig.request("resume-consumer", json!({"consumerId": consumed["id"]}));

    let deadline = Instant::now() + Duration::from_secs(10);
    while !(publisher.client.is_connected() && subscriber.client.is_connected()) {
        assert!(Instant::now() < deadline, "ICE/DTLS did not complete");
        publisher.pump();
        subscriber.pump();
        std::thread::sleep(Duration::from_millis(2));
    }

    let (mut seq, mut ts, mut sent, mut received) = (1u64, 0u32, 0u64, 0u64);
    for frame in 0..frames {
        let key = frame == 0
            || publisher
                .client
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::KeyframeRequest(_)));
        publisher
            .client
            .events
            .retain(|e| !matches!(e, ClientEvent::KeyframeRequest(_)));
        for i in 0..packets_per_frame {
            let mut payload = vec![
                if i == 0 { 0x10 } else { 0x00 },
                if key { 0x00 } else { 0x01 },
            ];
            payload.extend(std::iter::repeat_n(0x5a, 1000));
            let last = i + 1 == packets_per_frame;
            publisher
                .client
                .send_rtp(Instant::now(), ssrc, VP8.pt, seq, ts, last, &payload);
            seq += 1;
            sent += 1;
        }
        ts = ts.wrapping_add(3000);
        let frame_end = Instant::now() + Duration::from_millis(20);
        while Instant::now() < frame_end {
            publisher.pump();
            subscriber.pump();
            std::thread::sleep(Duration::from_millis(1));
        }
        while let Some(e) = subscriber.client.events.pop_front() {
            received += matches!(e, ClientEvent::Rtp(_)) as u64;
        }
    }
    for _ in 0..100 {
        publisher.pump();
        subscriber.pump();
        std::thread::sleep(Duration::from_millis(2));
    }
    while let Some(e) = subscriber.client.events.pop_front() {
        received += matches!(e, ClientEvent::Rtp(_)) as u64;
    }
    RoomRun {
        room,
        packets_per_frame,
        sent,
        received,
        media_port: media.port(),
        _sessions: (pub_sig, sub_sig),
    }
}

#[test]
fn two_rooms_on_two_shards_forward_at_once_each_on_its_owner() {
    let server = Server::builder().shards(2).spawn();
    let mut rooms = [None, None];
    for i in 0.. {
        let room = format!("media{i}");
        let owner = owner_shard(&room, 2);
        rooms[owner].get_or_insert(room);
        if rooms.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(room0), Some(room1)] = rooms else {
        unreachable!()
    };
    let port = server.port;
    let a = std::thread::spawn(move || run_room(port, room0, 3, 90));
    let b = std::thread::spawn(move || run_room(port, room1, 2, 90));
    let runs = [a.join().unwrap(), b.join().unwrap()];

    let health = server.health();
    let shards = health["shards"].as_array().unwrap();
    for (owner, run) in runs.iter().enumerate() {
        let s = &shards[owner];
        assert_eq!(
            s["udpPort"], run.media_port,
            "ICE candidate is the owner's port ({})",
            run.room
        );
        assert!(
            run.received as f64 >= run.sent as f64 * 0.95,
            "{}: subscriber got {} of {} packets",
            run.room,
            run.received,
            run.sent
        );
        let packets_in = s["packetsIn"].as_u64().unwrap();
        let packets_out = s["packetsOut"].as_u64().unwrap();
        // Each shard saw exactly its own room: the rooms send 3 and 2 packets per frame,
        // so the other room's figures would not fit.
        assert!(
            packets_in <= run.sent && packets_in as f64 >= run.sent as f64 * 0.95,
            "shard {owner}: packetsIn {packets_in}, room {} sent {} ({} per frame)",
            run.room,
            run.sent,
            run.packets_per_frame
        );
        assert!(packets_out <= packets_in && packets_out as f64 >= run.received as f64 * 0.95);
        assert_eq!(s["producers"], 1);
        assert_eq!(s["consumers"], 1);
    }

    // /metrics and /latency agree with /health: every forwarded packet is counted and its
    // forward latency recorded, on its own shard.
    let forwarded: Vec<u64> = shards
        .iter()
        .map(|s| s["packetsOut"].as_u64().unwrap())
        .collect();
    let (status, metrics) = http(server.port, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(status, 200);
    for (id, n) in forwarded.iter().enumerate() {
        let line = format!("corelay_rtp_packets_forwarded_total{{shard=\"{id}\"}} ");
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
            .parse()
            .unwrap();
        assert!(value >= *n, "metrics {value} vs health {n}");
    }
    let (status, latency) = http(server.port, "GET", "/latency", &[], b"").unwrap();
    assert_eq!(status, 200);
    let latency: Value = serde_json::from_str(&latency).unwrap();
    for (id, n) in forwarded.iter().enumerate() {
        let count = latency["shards"][id]["forwardUs"]["count"]
            .as_u64()
            .unwrap();
        assert!(
            count >= *n,
            "shard {id}: {count} latencies for {n} forwarded packets"
        );
        assert!(latency["shards"][id]["joinMs"]["count"].as_u64().unwrap() >= 2);
        assert!(
            latency["shards"][id]["requestUs"]["count"]
                .as_u64()
                .unwrap()
                >= 5
        );
    }

    // Closing the WebSockets releases every transport, producer, consumer and room.
    drop(runs);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = server.health();
        let left: u64 = h["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["transports"].as_u64().unwrap() + s["rooms"].as_u64().unwrap())
            .sum();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not released: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
