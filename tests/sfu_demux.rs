//! Demux by SSRC and the timer heap, on a virtual clock: publishers that stop sending the
//! mid once their SSRC is acknowledged (as browsers do), simulcast layers learnt by rid,
//! an SSRC used again by a new producer, and transports that leave no wake-up behind.
//!
//! A str0m sender stops writing the mid when a receiver report for the SSRC comes back.
//! The server's str0m sends those every 5 s for a stream without RTX (it takes such a
//! stream for audio) and the sim publishers here declare no RTX, so the media runs for
//! more than 5 s before the packets that matter.

use std::time::Duration;

use corelay::sfu::ortc::{Kind, RtpParameters, VP8};
use corelay::sfu::transport::Direction;
use corelay_testkit::client::ClientEvent;
use corelay_testkit::sim::{Sub, World};

/// The mid extension's id in the router numbering the sim clients send with.
const MID_EXT: u8 = 4;
/// The rid extension's id in the same numbering.
const RID_EXT: u8 = 10;

/// Whether an RTP datagram carries header extension `id` (SRTP leaves the header in the
/// clear). `None` for anything that is not RTP (RTCP, STUN, DTLS).
fn has_ext(datagram: &[u8], id: u8) -> Option<bool> {
    let (first, second) = (*datagram.first()?, *datagram.get(1)?);
    if first >> 6 != 2 || (64..96).contains(&(second & 0x7f)) {
        return None;
    }
    if first & 0x10 == 0 {
        return Some(false);
    }
    let at = 12 + 4 * (first & 0x0f) as usize;
    let profile = u16::from_be_bytes([*datagram.get(at)?, *datagram.get(at + 1)?]);
    let words = u16::from_be_bytes([*datagram.get(at + 2)?, *datagram.get(at + 3)?]) as usize;
    let ext = datagram.get(at + 4..at + 4 + 4 * words)?;
    let mut i = 0;
    while i < ext.len() {
        let (eid, len) = if profile == 0xbede {
            let b = ext[i];
            if b == 0 {
                i += 1;
                continue;
            }
            if b >> 4 == 15 {
                break;
            }
            i += 1;
            (b >> 4, (b & 0x0f) as usize + 1)
        } else {
            let eid = ext[i];
            if eid == 0 {
                i += 1;
                continue;
            }
            let len = *ext.get(i + 1)? as usize;
            i += 2;
            (eid, len)
        };
        if eid == id {
            return Some(true);
        }
        i += len;
    }
    Some(false)
}

/// What the publisher's packets carried, in the order sent: `true` with the extension.
struct Seen(Vec<bool>);

impl Seen {
    fn note(&mut self, w: &World, client: usize, ext: u8) {
        let pending = &w.clients[client].outbox;
        self.0
            .extend(pending.iter().filter_map(|t| has_ext(&t.contents, ext)));
    }
    /// Some packets with it first, then only packets without it (at least `min`).
    fn assert_stops(&self, min: usize) {
        let first_without = self.0.iter().position(|m| !m).expect("it never stops");
        assert!(
            first_without >= 1,
            "the first packets carry it: {:?}",
            self.0
        );
        let after = &self.0[first_without..];
        assert!(after.iter().all(|m| !m), "it came back: {:?}", self.0);
        assert!(after.len() >= min, "{} without it", after.len());
    }
}

/// One VP8 frame of three packets (a keyframe if `key`), noting the mid on the way out.
fn frame(w: &mut World, pc: usize, ssrc: u32, seq: &mut u64, key: bool, seen: &mut Seen) {
    for i in 0..3u8 {
        let mut payload = vec![
            if i == 0 { 0x10 } else { 0x00 },
            if key { 0x00 } else { 0x01 },
        ];
        payload.extend(std::iter::repeat_n(0xab, 600));
        w.clients[pc].send_rtp(
            w.now,
            ssrc,
            VP8.pt,
            *seq,
            *seq as u32 * 1000,
            i == 2,
            &payload,
        );
        *seq += 1;
    }
    seen.note(w, pc, MID_EXT);
    w.step(Duration::from_millis(33));
}

fn assert_contiguous(seqs: &[u64]) {
    assert!(!seqs.is_empty());
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "gap or reorder in {seqs:?}");
    }
}

#[test]
fn a_publisher_that_stops_sending_the_mid_reaches_every_subscriber_in_order() {
    let mut w = World::new();
    let (pc, pid, ssrc) = w.publish(1, "room", false);
    let subs: Vec<Sub> = (0..4).map(|i| w.subscriber(10 + i, &pid)).collect();
    w.connect_all();
    let mut seen = Seen(Vec::new());
    let mut seq = 100;
    for i in 0..240 {
        let key = i == 0 || w.keyframe_requests(pc) > 0;
        frame(&mut w, pc, ssrc, &mut seq, key, &mut seen);
    }
    w.run(Duration::from_millis(100));
    // The server's receiver report acknowledged the SSRC: the mid stopped.
    seen.assert_stops(200);
    for s in &subs {
        let got = w.received(s.client);
        assert_eq!(got.len(), 720, "subscriber {} got every packet", s.peer);
        assert_contiguous(&got);
    }
}

#[test]
fn simulcast_layers_learnt_by_rid_are_forwarded_without_mid() {
    let mut w = World::new();
    w.engine.join(w.now, 1, "room", "u1", "Pub", None).unwrap();
    let (pc, tid) = w.transport(1, Direction::Send);
    let params = w.clients[pc].add_simulcast_sender(&VP8, &[("l", 2000), ("h", 2001)]);
    let params: RtpParameters = serde_json::from_value(params).unwrap();
    let pid = w
        .engine
        .produce(w.now, 1, &tid, Kind::Video, &params)
        .unwrap();
    let sub = w.subscriber(10, &pid);
    w.connect_all();

    // Each packet carries its layer's name in the payload.
    let (mut mids, mut rids) = (Seen(Vec::new()), Seen(Vec::new()));
    let mut seq = [1u64, 1];
    for i in 0..240 {
        let key = i == 0 || w.keyframe_requests(pc) > 0;
        for (layer, (name, seq)) in b"lh".iter().zip(seq.iter_mut()).enumerate() {
            let payload = [0x10, if key { 0x00 } else { 0x01 }, *name, 0, 0, 0];
            let ssrc = 2000 + layer as u32;
            w.clients[pc].send_rtp(
                w.now,
                ssrc,
                VP8.pt,
                *seq,
                *seq as u32 * 3000,
                true,
                &payload,
            );
            *seq += 1;
        }
        mids.note(&w, pc, MID_EXT);
        rids.note(&w, pc, RID_EXT);
        w.step(Duration::from_millis(33));
    }
    w.run(Duration::from_millis(100));
    // Both layers were learnt from mid + rid; then both extensions stopped.
    mids.assert_stops(200);
    rids.assert_stops(200);
    let mut got = Vec::new();
    while let Some(e) = w.clients[sub.client].events.pop_front() {
        if let ClientEvent::Rtp(p) = e {
            got.push((p.payload[2], *p.seq_no));
        }
    }
    // The low layer may come first, until the high one's first packet.
    let first_high = got
        .iter()
        .position(|(l, _)| *l == b'h')
        .expect("high layer");
    assert!(first_high <= 2, "{got:?}");
    assert!(
        got[first_high..].iter().all(|(l, _)| *l == b'h'),
        "only the high layer once it is active: {got:?}"
    );
    let high: Vec<u64> = got[first_high..].iter().map(|(_, s)| *s).collect();
    assert_eq!(high.len(), 240, "every high packet: {high:?}");
    assert_contiguous(&high);
}

#[test]
fn a_closed_producers_ssrc_used_again_routes_to_the_new_producer() {
    let mut w = World::new();
    w.engine.join(w.now, 1, "room", "u1", "Pub", None).unwrap();
    let (pc, tid) = w.transport(1, Direction::Send);
    let ssrc = 1001;
    let params = w.clients[pc].add_sender(&VP8, ssrc, None);
    let params: RtpParameters = serde_json::from_value(params).unwrap();
    let old = w
        .engine
        .produce(w.now, 1, &tid, Kind::Video, &params)
        .unwrap();
    let first = w.subscriber(10, &old);
    w.connect_all();
    let mut seen = Seen(Vec::new());
    let mut seq = 1;
    for i in 0..200 {
        frame(&mut w, pc, ssrc, &mut seq, i == 0, &mut seen);
    }
    seen.assert_stops(100);
    assert_eq!(w.received(first.client).len(), 600);

    // The producer goes; the client produces again on the same mid with the same SSRC,
    // whose packets carry no mid any more.
    w.engine.close_producer(w.now, 1, &old).unwrap();
    let new = w
        .engine
        .produce(w.now, 1, &tid, Kind::Video, &params)
        .unwrap();
    assert_ne!(new, old);
    let second = w.subscriber(11, &new);
    w.connect_all();
    w.run(Duration::from_millis(100));
    let mut after = Seen(Vec::new());
    for i in 0..30 {
        let key = i == 0 || w.keyframe_requests(pc) > 0;
        frame(&mut w, pc, ssrc, &mut seq, key, &mut after);
    }
    w.run(Duration::from_millis(100));
    assert!(after.0.iter().all(|m| !m), "no mid: routed by SSRC alone");
    let got = w.received(second.client);
    assert_eq!(
        got.len(),
        90,
        "the new producer's subscriber got every packet"
    );
    assert_contiguous(&got);
    assert!(
        w.received(first.client).is_empty(),
        "nothing for the closed one"
    );
}

#[test]
fn transports_removed_leave_no_wake_up_behind() {
    let mut w = World::new();
    let (pc, pid, ssrc) = w.publish(1, "room", false);
    let subs: Vec<Sub> = (0..3).map(|i| w.subscriber(10 + i, &pid)).collect();
    w.connect_all();
    let mut seen = Seen(Vec::new());
    let mut seq = 1;
    for i in 0..30 {
        frame(&mut w, pc, ssrc, &mut seq, i == 0, &mut seen);
    }
    assert!(w.engine.poll_timeout().is_some());
    // One subscriber leaves: the others still wake up and receive.
    w.engine.leave(w.now, subs[0].peer);
    assert!(w.engine.poll_timeout().is_some());
    for _ in 0..10 {
        frame(&mut w, pc, ssrc, &mut seq, false, &mut seen);
    }
    assert!(w.received(subs[1].client).len() >= 30);
    for s in &subs[1..] {
        w.engine.leave(w.now, s.peer);
    }
    w.engine.leave(w.now, 1);
    assert_eq!(w.engine.transports(), 0);
    assert_eq!(
        w.engine.poll_timeout(),
        None,
        "no wake-up for transports gone"
    );
    // And nothing left to do at any time.
    w.engine.handle_timeout(w.now + Duration::from_secs(60));
    assert!(w.engine.outbox_is_empty());
}
