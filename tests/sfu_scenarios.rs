//! The media core on a virtual clock: one engine, str0m clients as publisher and
//! subscribers, datagrams passed in memory. No sockets, no sleeping.

use std::net::SocketAddr;
use std::time::Duration;

use corelay::sfu::ortc::{Kind, RtpParameters};
use corelay::sfu::transport::Direction;
use corelay::sfu::Notice;
use corelay_testkit::sim::{Sub, Video, World};
use serde_json::json;

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
    w.engine.join(w.now, 7, "r", "u7", "U", None).unwrap();
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
        .connect_transport(
            w.now,
            7,
            &t.id,
            &serde_json::from_value(json!({"fingerprints": []})).unwrap()
        )
        .is_err());
    // another peer cannot use this peer's transport
    w.engine.join(w.now, 8, "r", "u8", "V", None).unwrap();
    assert!(w.engine.restart_ice(w.now, 8, &t.id).is_err());
}

#[test]
fn a_subscriber_gone_silent_is_released_and_the_room_told() {
    let (mut w, mut video, _, subs) = setup(2);
    video.frames(&mut w, 5);
    while w.engine.poll_notice().is_some() {}
    let gone = &subs[0];
    w.offline.push(w.clients[gone.client].addr);
    // ICE consent lapses without the client's checks; keep the publisher's media going.
    for _ in 0..60 {
        video.frames(&mut w, 15);
        if w.engine.consumers() == 1 {
            break;
        }
    }
    assert_eq!(
        w.engine.consumers(),
        1,
        "the silent subscriber's consumer was released"
    );
    let notices: Vec<_> = std::iter::from_fn(|| w.engine.poll_notice()).collect();
    assert!(
        notices
            .iter()
            .any(|(p, n)| *p == gone.peer && matches!(n, Notice::MediaFailed { .. })),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|(p, n)| *p == 1
                && matches!(n, Notice::PeerLeft { user_id, .. } if user_id == "u10")),
        "{notices:?}"
    );
    // the other subscriber still receives
    w.received(subs[1].client);
    video.frames(&mut w, 5);
    assert!(w.received(subs[1].client).len() >= 15);
}

#[test]
fn simulcast_forwards_the_highest_active_layer_and_switches_down_on_a_keyframe() {
    use corelay::sfu::ortc::VP8;
    use corelay_testkit::client::ClientEvent;
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

    // Each layer's packets carry its name in the payload so the subscriber can tell.
    let mut seq = [1u64, 1];
    let mut send = |w: &mut World, layers: &[usize], key: bool| {
        for &l in layers {
            let payload = [0x10, if key { 0x00 } else { 0x01 }, b"lh"[l], 0, 0, 0];
            w.clients[pc].send_rtp(
                w.now,
                2000 + l as u32,
                VP8.pt,
                seq[l],
                seq[l] as u32 * 3000,
                true,
                &payload,
            );
            seq[l] += 1;
        }
        w.step(Duration::from_millis(33));
    };
    let layers_seen = |w: &mut World| {
        let mut out = Vec::new();
        while let Some(e) = w.clients[sub.client].events.pop_front() {
            if let ClientEvent::Rtp(p) = e {
                out.push((p.payload[2], *p.seq_no));
            }
        }
        out
    };
    for i in 0..30 {
        let key = i == 0 || w.keyframe_requests(pc) > 0;
        send(&mut w, &[0, 1], key);
    }
    let high = layers_seen(&mut w);
    // Until the high layer's first packet arrives only the low one is active.
    let first_high = high
        .iter()
        .position(|(l, _)| *l == b'h')
        .expect("high layer forwarded");
    assert!(first_high <= 2, "switched up at once: {high:?}");
    assert!(high.len() - first_high >= 20, "{high:?}");
    assert!(
        high[first_high..].iter().all(|(l, _)| *l == b'h'),
        "only the high layer: {high:?}"
    );

    // The high layer stops: after the idle window the low layer takes over at a keyframe.
    for _ in 0..90 {
        let key = w.keyframe_requests(pc) > 0;
        send(&mut w, &[0], key);
    }
    let low = layers_seen(&mut w);
    assert!(low.len() >= 20, "{low:?}");
    assert!(low.iter().all(|(l, _)| *l == b'l'));
    let mut all: Vec<u64> = high.iter().chain(low.iter()).map(|(_, s)| *s).collect();
    all.dedup();
    for pair in all.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "sequence continues across the switch");
    }
}

#[test]
fn a_lost_packet_is_recovered_by_nack_from_the_rtx_cache() {
    let (mut w, mut video, _, subs) = setup(1);
    let sub = w.clients[subs[0].client].addr;
    video.frames(&mut w, 10);
    let mut got = w.received(subs[0].client);
    // One frame's packets to the subscriber are lost on the way.
    w.offline.push(sub);
    video.frame(&mut w, false);
    w.offline.clear();
    video.frames(&mut w, 15);
    got.extend(w.received(subs[0].client));
    let first = got[0];
    let last = *got.iter().max().unwrap();
    got.sort_unstable();
    got.dedup();
    assert_eq!(
        got.len() as u64,
        last - first + 1,
        "every packet arrived in the end: {got:?}"
    );
}

#[test]
fn restart_ice_gives_fresh_credentials() {
    let (mut w, _video, _, subs) = setup(1);
    let t = w
        .engine
        .create_transport(w.now, subs[0].peer, Direction::Recv)
        .unwrap();
    let old = t.ice_parameters.username_fragment.clone();
    let fresh = w.engine.restart_ice(w.now, subs[0].peer, &t.id).unwrap();
    assert_ne!(fresh.username_fragment, old);
    assert_ne!(fresh.password, t.ice_parameters.password);
}
