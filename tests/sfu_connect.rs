//! `/connect` on a virtual clock: audio-only clients, each with one receiving audio
//! section, hear the loudest other speaker; switching keeps each stream valid.

use std::time::Duration;

use corelay::sfu::ortc::{EXT_AUDIO_LEVEL, EXT_MID, EXT_TWCC, OPUS};
use corelay_testkit::client::{ClientEvent, Numbering};
use corelay_testkit::sim::World;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};

/// A client with one send-receive audio section; returns (client, its ssrc).
fn connect_client(w: &mut World, peer: u64) -> (usize, u32) {
    connect_client_with(w, peer, Numbering::router())
}

fn connect_client_with(w: &mut World, peer: u64, numbering: Numbering) -> (usize, u32) {
    w.engine
        .join(w.now, peer, "conv", &format!("u{peer}"), "U", None)
        .unwrap();
    let c = w.add_client_with(numbering);
    let mut change = w.clients[c].rtc.sdp_api();
    let mid: Mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let (_t, answer) = w
        .engine
        .connect_offer(w.now, peer, &offer.to_sdp_string())
        .unwrap();
    w.clients[c]
        .rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
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

/// 20 ms of audio from each client at its level; returns what each received (seq, ssrc, payload tag).
fn talk(
    w: &mut World,
    clients: &[(usize, u32)],
    levels: &[i8],
    seq: &mut u64,
    ms: u64,
) -> Vec<Vec<(u64, u32, u8)>> {
    let mut got = vec![Vec::new(); clients.len()];
    for _ in 0..ms / 20 {
        *seq += 1;
        for (i, (c, ssrc)) in clients.iter().enumerate() {
            let payload = [0xf8, i as u8, 1, 2, 3];
            w.clients[*c].send_audio(w.now, *ssrc, *seq, (*seq as u32) * 960, levels[i], &payload);
        }
        w.step(Duration::from_millis(20));
        for (i, (c, _)) in clients.iter().enumerate() {
            while let Some(e) = w.clients[*c].events.pop_front() {
                if let ClientEvent::Rtp(p) = e {
                    got[i].push((*p.seq_no, *p.header.ssrc, p.payload[1]));
                }
            }
        }
    }
    got
}

#[test]
fn three_clients_hear_each_other_and_the_switch_keeps_streams_valid() {
    let mut w = World::new();
    let clients: Vec<(usize, u32)> = (1..=3).map(|p| connect_client(&mut w, p)).collect();
    w.connect_all();
    let mut seq = 0;
    // Client 0 is loud, 1 medium, 2 quiet: 1 and 2 hear 0; 0 hears 1.
    let got = talk(&mut w, &clients, &[-10, -30, -80], &mut seq, 2000);
    let heard = |g: &Vec<(u64, u32, u8)>| g.last().map(|x| x.2);
    assert_eq!(
        heard(&got[0]),
        Some(1),
        "client 0 hears the loudest other (1)"
    );
    assert_eq!(heard(&got[1]), Some(0));
    assert_eq!(heard(&got[2]), Some(0));
    for g in &got {
        assert!(g.len() >= 50, "each hears audio: {}", g.len());
    }
    // Now 2 becomes the loudest: after the hold time, 0 and 1 switch to 2.
    let later = talk(&mut w, &clients, &[-60, -70, -5], &mut seq, 4000);
    assert_eq!(heard(&later[0]), Some(2), "client 0 switched to 2");
    assert_eq!(heard(&later[1]), Some(2), "client 1 switched to 2");
    // Across the switch each client's stream keeps one SSRC and contiguous sequence numbers.
    for i in 0..2 {
        let all: Vec<&(u64, u32, u8)> = got[i].iter().chain(later[i].iter()).collect();
        assert!(
            all.iter().any(|x| x.2 != all[0].2),
            "a switch happened for {i}"
        );
        for pair in all.windows(2) {
            assert_eq!(pair[1].1, pair[0].1, "one SSRC");
            assert_eq!(pair[1].0, pair[0].0 + 1, "no gap in sequence numbers");
        }
    }
}

#[test]
fn a_client_numbering_its_own_way_is_heard_by_its_audio_level() {
    // Firefox-like: Opus 109, the audio level at id 12. The loudest-speaker choice reads
    // that level, so it must be parsed at the client's id.
    let firefox = Numbering {
        codecs: vec![(OPUS, 109, None)],
        exts: vec![(12, EXT_AUDIO_LEVEL), (3, EXT_MID), (7, EXT_TWCC)],
    };
    let mut w = World::new();
    let clients = vec![
        connect_client_with(&mut w, 1, firefox),
        connect_client(&mut w, 2),
        connect_client(&mut w, 3),
    ];
    w.connect_all();
    let mut seq = 0;
    // The Firefox-numbered client is loud, 2 medium, 3 quiet: 2 and 3 hear client 1.
    let got = talk(&mut w, &clients, &[-10, -40, -80], &mut seq, 2000);
    let heard = |g: &Vec<(u64, u32, u8)>| g.last().map(|x| x.2);
    assert_eq!(
        heard(&got[1]),
        Some(0),
        "client 2 hears the Firefox-numbered client"
    );
    assert_eq!(
        heard(&got[2]),
        Some(0),
        "client 3 hears the Firefox-numbered client"
    );
    assert_eq!(heard(&got[0]), Some(1), "and it hears client 2");
}
