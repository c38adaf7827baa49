//! The one-shot `/connect` dialect against the real binary: three audio-only str0m
//! clients join one conversation with `POST /join`, send one offer each over `/connect`,
//! and each hears the others over UDP after the signaling sockets closed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use corelay::client::ClientEvent;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};

fn connect(port: u16, user: &str) -> (Endpoint, u32) {
    let t = token(user, None);
    let auth = format!("Bearer {t}");
    let r = http_with_headers(
        port,
        "POST",
        "/join/standup",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.2);
    let mut ep = Endpoint::new();
    let mut change = ep.client.rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let mut ws = ws_connect(port, &format!("/connect?token={t}")).unwrap();
    send_text(&mut ws, &offer.to_sdp_string());
    let answer = match ws.read().unwrap() {
        tungstenite::Message::Text(a) => a.to_string(),
        other => panic!("expected the SDP answer, got {other:?}"),
    };
    assert!(answer.starts_with("v=0"), "{answer}");
    // The server may close the socket now: the peer connection lives on.
    match ws.read() {
        Ok(tungstenite::Message::Close(_)) | Err(_) => {}
        Ok(other) => panic!("unexpected {other:?}"),
    }
    ep.client
        .rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    let ssrc = *ep
        .client
        .rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .unwrap()
        .ssrc();
    (ep, ssrc)
}

#[test]
fn three_connect_clients_hear_each_other() {
    let server = Server::start(2, &[]);
    let mut eps: Vec<(Endpoint, u32)> = ["ann", "bob", "cid"]
        .iter()
        .map(|u| connect(server.port, u))
        .collect();
    let end = Instant::now() + Duration::from_secs(10);
    while !eps.iter().all(|(e, _)| e.client.is_connected()) {
        assert!(Instant::now() < end, "ICE/DTLS did not complete");
        for (e, _) in eps.iter_mut() {
            e.pump();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut heard = [0usize; 3];
    for seq in 1..=150u64 {
        for (i, (e, ssrc)) in eps.iter_mut().enumerate() {
            let level = [-10, -30, -50][i];
            e.client.send_audio(
                Instant::now(),
                *ssrc,
                seq,
                seq as u32 * 960,
                level,
                &[0xf8, i as u8, 0, 0],
            );
        }
        let tick = Instant::now() + Duration::from_millis(20);
        while Instant::now() < tick {
            for (e, _) in eps.iter_mut() {
                e.pump();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for (i, (e, _)) in eps.iter_mut().enumerate() {
            while let Some(ev) = e.client.events.pop_front() {
                heard[i] += matches!(ev, ClientEvent::Rtp(_)) as usize;
            }
        }
    }
    for (i, n) in heard.iter().enumerate() {
        assert!(*n >= 100, "client {i} heard {n} packets");
    }
    let h = server.health();
    let producers: u64 = h["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["producers"].as_u64().unwrap())
        .sum();
    assert_eq!(producers, 3, "{h}");
}

#[test]
fn connect_refusals_are_clear() {
    let server = Server::start(1, &[]);
    // no identity
    assert_eq!(ws_connect(server.port, "/connect").err(), Some(400));
    // a token but no conversation anywhere
    let t = token("lonely", None);
    assert_eq!(
        ws_connect(server.port, &format!("/connect?token={t}")).err(),
        Some(400)
    );
    // an offer that is not SDP: an error, then the socket closes
    let mut ws = ws_connect(server.port, &format!("/connect?token={t}&conversation=c1")).unwrap();
    send_text(&mut ws, "hello");
    let m = recv_json(&mut ws);
    assert_eq!(m["type"], "error");
    assert!(m["message"].as_str().unwrap().contains("SDP"), "{m}");
    assert_eq!(server.health()["status"], "ok");
}
