//! The SDP bridge on a virtual clock: publishers and subscribers negotiated with SDP
//! (str0m clients in SDP mode), media across them and across the mediasoup dialect.

use std::time::Duration;

use corelay::sfu::ortc::{EXT_AUDIO_LEVEL, EXT_MID, EXT_TWCC, OPUS, VP8};
use corelay_testkit::client::{ClientEvent, Numbering};
use corelay_testkit::sim::{Video, World};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind};

/// A client that publishes one VP8 track through an SDP offer; returns (client, ssrc).
fn sdp_publisher(w: &mut World, peer: u64) -> (usize, u32) {
    sdp_publisher_with(w, peer, Numbering::router())
}

fn sdp_publisher_with(w: &mut World, peer: u64, numbering: Numbering) -> (usize, u32) {
    w.engine
        .join(w.now, peer, "room", &format!("u{peer}"), "Pub", None)
        .unwrap();
    let c = w.add_client_with(numbering);
    let mut change = w.clients[c].rtc.sdp_api();
    let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let (_tid, answer) = w
        .engine
        .publish_offer(w.now, peer, &offer.to_sdp_string())
        .unwrap();
    let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
    w.clients[c]
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    let ssrc = *w.clients[c]
        .rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .unwrap()
        .ssrc();
    w.clients[c].handle_timeout(w.now);
    (c, ssrc)
}

/// A WHEP-style subscriber: its own recvonly offer, answered by the server.
fn whep_subscriber(w: &mut World, peer: u64) -> usize {
    w.engine
        .join(w.now, peer, "room", &format!("u{peer}"), "Whep", None)
        .unwrap();
    let producers: Vec<String> = w
        .engine
        .room_producers(peer)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let c = w.add_client();
    let mut change = w.clients[c].rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let (_tid, answer) = w
        .engine
        .subscribe_offer(w.now, peer, &offer.to_sdp_string(), &producers)
        .unwrap();
    let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
    w.clients[c]
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    w.clients[c].handle_timeout(w.now);
    c
}

/// A publish/subscribe-style subscriber: the server offers, the client answers.
fn offered_subscriber(w: &mut World, peer: u64, producers: &[String]) -> usize {
    w.engine
        .join(w.now, peer, "room", &format!("u{peer}"), "Sub", None)
        .unwrap();
    let (tid, offer) = w
        .engine
        .subscribe_create_offer(w.now, peer, producers)
        .unwrap();
    let c = w.add_client();
    let offer = SdpOffer::from_sdp_string(&offer).unwrap();
    let answer = w.clients[c].rtc.sdp_api().accept_offer(offer).unwrap();
    w.engine
        .subscribe_answer(w.now, peer, &tid, &answer.to_sdp_string())
        .unwrap();
    w.clients[c].handle_timeout(w.now);
    c
}

fn rtp_count(w: &mut World, c: usize) -> usize {
    let mut n = 0;
    while let Some(e) = w.clients[c].events.pop_front() {
        n += matches!(e, ClientEvent::Rtp(_)) as usize;
    }
    n
}

/// A WHEP, a server-offered and a mediasoup subscriber of the room's one producer, all
/// connected, after 40 frames of the publisher's video: (name, client) of each.
fn every_kind_of_subscriber_after_video(
    w: &mut World,
    pc: usize,
    ssrc: u32,
) -> [(&'static str, usize); 3] {
    let whep = whep_subscriber(w, 2);
    let producers: Vec<String> = w
        .engine
        .room_producers(2)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(producers.len(), 1);
    let offered = offered_subscriber(w, 3, &producers);
    let msc = w.subscriber(4, &producers[0]);
    w.connect_all();
    let mut video = Video {
        client: pc,
        ssrc,
        seq: 1,
        ts: 0,
    };
    video.frames(w, 40);
    w.run(Duration::from_millis(100));
    [
        ("whep", whep),
        ("offered", offered),
        ("mediasoup", msc.client),
    ]
}

#[test]
fn sdp_publisher_reaches_whep_offered_and_mediasoup_subscribers() {
    let mut w = World::new();
    let (pc, ssrc) = sdp_publisher(&mut w, 1);
    assert_eq!(w.engine.producers(), 1);
    let subscribers = every_kind_of_subscriber_after_video(&mut w, pc, ssrc);
    for (name, c) in subscribers {
        let n = rtp_count(&mut w, c);
        assert!(n >= 100, "{name} subscriber got {n} packets");
    }
    assert_eq!(w.engine.consumers(), 3);
}

#[test]
fn an_sdp_publisher_numbering_its_own_way_reaches_every_kind_of_subscriber() {
    // Firefox-like payload types and extension ids (WHIP, /pubsub and /connect offers
    // all take this path): the answer keeps them, consumers get the router's.
    let numbering = Numbering {
        codecs: vec![(OPUS, 109, None), (VP8, 120, Some(124))],
        exts: vec![(12, EXT_AUDIO_LEVEL), (9, EXT_MID), (7, EXT_TWCC)],
    };
    let mut w = World::new();
    let (pc, ssrc) = sdp_publisher_with(&mut w, 1, numbering);
    let subscribers = every_kind_of_subscriber_after_video(&mut w, pc, ssrc);
    let mut pts = Vec::new();
    for (name, c) in subscribers {
        let mut n = 0;
        while let Some(e) = w.clients[c].events.pop_front() {
            if let ClientEvent::Rtp(p) = e {
                n += 1;
                pts.push(*p.header.payload_type);
            }
        }
        assert!(n >= 100, "{name} subscriber got {n} packets");
    }
    assert!(
        pts.iter().all(|pt| *pt != 120),
        "no subscriber sees the publisher's 120"
    );
}

#[test]
fn mediasoup_publisher_reaches_an_sdp_subscriber() {
    let mut w = World::new();
    let (pc, pid, ssrc) = w.publisher(1);
    let sub = offered_subscriber(&mut w, 2, &[pid]);
    w.connect_all();
    let mut video = Video {
        client: pc,
        ssrc,
        seq: 1,
        ts: 0,
    };
    video.frames(&mut w, 30);
    assert!(rtp_count(&mut w, sub) >= 80);
}

#[test]
fn bad_sdp_is_a_clear_error() {
    let mut w = World::new();
    w.engine.join(w.now, 1, "room", "u1", "U", None).unwrap();
    let e = w
        .engine
        .publish_offer(w.now, 1, "v=0\r\nnot sdp")
        .unwrap_err();
    assert!(e.to_string().contains("invalid SDP"), "{e}");
    assert!(
        !e.to_string().contains("PointerOffset"),
        "no parser internals: {e}"
    );
    assert_eq!(w.engine.transports(), 0);
    // an offer with nothing corelay forwards (a data channel only)
    let c = w.add_client();
    let mut change = w.clients[c].rtc.sdp_api();
    change.add_channel("chat".into());
    let (offer, _) = change.apply().unwrap();
    let e = w
        .engine
        .publish_offer(w.now, 1, &offer.to_sdp_string())
        .unwrap_err();
    assert!(e.to_string().contains("no media"), "{e}");
    assert_eq!(w.engine.transports(), 0);
    assert!(w.engine.subscribe_answer(w.now, 1, "t123", "v=0").is_err());
    assert!(w
        .engine
        .subscribe_create_offer(w.now, 1, &["p999".into()])
        .is_err());
}
