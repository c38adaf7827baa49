//! The one-shot `/connect` dialect against the real binary: three audio-only str0m
//! clients join one conversation with `POST /join`, send one offer each over `/connect`,
//! and each hears the others over UDP after the signaling sockets closed. The framed form
//! (`offer::`, `answer::`, `ice::`, the socket kept open) and the identity rules of Beep's
//! server are checked here too.

use std::time::{Duration, Instant};

use corelay_testkit::client::ClientEvent;
use corelay_testkit::*;
use serde_json::json;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};

/// `POST /join/standup` for `user`; returns the user's token.
fn join_standup(port: u16, user: &str) -> String {
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
    t
}

/// A send-receive audio offer: (endpoint, offer SDP, pending change, mid).
fn audio_offer() -> (Endpoint, String, SdpPendingOffer, Mid) {
    let mut ep = Endpoint::new();
    let mut change = ep.client.rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    (ep, offer.to_sdp_string(), pending, mid)
}

/// Applies the server's answer; returns the client's audio SSRC.
fn accept(ep: &mut Endpoint, pending: SdpPendingOffer, answer: &str, mid: Mid) -> u32 {
    ep.client
        .rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(answer).unwrap())
        .unwrap();
    *ep.client
        .rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .unwrap()
        .ssrc()
}

/// The raw form: the offer in, the answer out, then the server closes.
fn connect(port: u16, user: &str) -> (Endpoint, u32) {
    let t = join_standup(port, user);
    let (mut ep, offer, pending, mid) = audio_offer();
    let mut ws = ws_connect(port, &format!("/connect?token={t}")).unwrap();
    send_text(&mut ws, &offer);
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
    let ssrc = accept(&mut ep, pending, &answer, mid);
    (ep, ssrc)
}

/// The next text message, or `None` when nothing arrives within `wait`.
fn text_within(ws: &mut Ws, wait: Duration) -> Option<String> {
    ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    let got = match ws.read() {
        Ok(tungstenite::Message::Text(t)) => Some(t.to_string()),
        Ok(other) => panic!("expected text or nothing, got {other:?}"),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("the socket failed: {e}"),
    };
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    got
}

/// The framed form as Beep's server speaks it, with a trickling client: `offer::` with no
/// candidate in the SDP, `answer::` back, then the candidate as `ice::`. The socket stays
/// open; returns it with the endpoint and its SSRC.
fn connect_framed(port: u16, user: &str) -> (Endpoint, u32, Ws) {
    let t = join_standup(port, user);
    let (mut ep, offer, pending, mid) = audio_offer();
    let candidates: Vec<String> = offer
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .map(|c| format!("candidate:{c}"))
        .collect();
    assert!(!candidates.is_empty(), "{offer}");
    let trickling: String = offer
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("a=candidate:"))
        .collect();
    let mut ws = ws_connect(port, &format!("/connect?token={t}")).unwrap();
    send_text(&mut ws, &format!("offer::{trickling}"));
    let answer = text_within(&mut ws, Duration::from_secs(10)).expect("the answer");
    let sdp = answer
        .strip_prefix("answer::")
        .unwrap_or_else(|| panic!("expected answer::<sdp>, got {answer}"));
    assert!(sdp.starts_with("v=0"), "{answer}");
    let ssrc = accept(&mut ep, pending, sdp, mid);
    // Trickle: a candidate line, and the same as browsers' RTCIceCandidateInit JSON.
    send_text(&mut ws, &format!("ice::{}", candidates[0]));
    let init = json!({"candidate": candidates[0], "sdpMid": "0", "sdpMLineIndex": 0});
    send_text(&mut ws, &format!("ice::{init}"));
    // No answer to a good candidate, and no close: the socket stays open.
    assert_eq!(text_within(&mut ws, Duration::from_millis(300)), None);
    (ep, ssrc, ws)
}

/// Pumps every endpoint until all are connected.
fn until_connected(eps: &mut [(Endpoint, u32)]) {
    let end = Instant::now() + Duration::from_secs(10);
    while !eps.iter().all(|(e, _)| e.client.is_connected()) {
        assert!(Instant::now() < end, "ICE/DTLS did not complete");
        for (e, _) in eps.iter_mut() {
            e.pump();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Everyone talks for `packets` x 20 ms from `*seq` on; returns the RTP packets each heard.
fn talk(eps: &mut [(Endpoint, u32)], seq: &mut u64, packets: u64) -> Vec<usize> {
    let mut heard = vec![0usize; eps.len()];
    for _ in 0..packets {
        *seq += 1;
        for (i, (e, ssrc)) in eps.iter_mut().enumerate() {
            let level = -10 - 20 * i as i8;
            e.client.send_audio(
                Instant::now(),
                *ssrc,
                *seq,
                *seq as u32 * 960,
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
    heard
}

#[test]
fn three_connect_clients_hear_each_other() {
    let server = Server::builder().shards(2).spawn();
    let mut eps: Vec<(Endpoint, u32)> = ["ann", "bob", "cid"]
        .iter()
        .map(|u| connect(server.port, u))
        .collect();
    until_connected(&mut eps);
    let heard = talk(&mut eps, &mut 0, 150);
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
    let server = Server::builder().shards(1).spawn();
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

#[test]
fn the_framed_form_trickles_keeps_the_socket_and_interoperates_with_the_raw_form() {
    let server = Server::builder().shards(2).spawn();
    let (ann, ann_ssrc, mut ann_ws) = connect_framed(server.port, "ann");
    let bob = connect(server.port, "bob");
    let mut eps = vec![(ann, ann_ssrc), bob];
    until_connected(&mut eps);
    let mut seq = 0;
    let heard = talk(&mut eps, &mut seq, 60);
    assert!(heard.iter().all(|n| *n >= 40), "heard {heard:?}");

    // Later messages on the open socket: a bad candidate, a second offer and an unknown
    // type are errors, and the session lives on.
    for (bad, says) in [
        ("ice::candidate:nonsense", "candidate"),
        ("ice::{\"candidate\": 5}", "string"),
        ("offer::v=0", "one offer"),
        ("bye::now", "unknown message type"),
    ] {
        send_text(&mut ann_ws, bad);
        let e: serde_json::Value =
            serde_json::from_str(&text_within(&mut ann_ws, Duration::from_secs(5)).unwrap())
                .unwrap();
        assert_eq!(e["type"], "error", "{bad}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{bad}: {e}");
    }
    send_text(&mut ann_ws, "ice::"); // end of candidates: accepted silently
    assert_eq!(text_within(&mut ann_ws, Duration::from_millis(200)), None);

    // The client closes: the close handshake completes, and the peer connection lives on.
    ann_ws
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
    match ann_ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected the server's Close(1000), got {other:?}"),
    }
    let heard = talk(&mut eps, &mut seq, 40);
    assert!(heard.iter().all(|n| *n >= 25), "after the close: {heard:?}");
    assert_eq!(server.health()["status"], "ok");
}

#[test]
fn a_framed_client_must_start_with_its_offer() {
    let server = Server::builder().shards(1).spawn();
    let t = token("early", None);
    let mut ws = ws_connect(server.port, &format!("/connect?token={t}&conversation=c9")).unwrap();
    send_text(&mut ws, "ice::candidate:1 1 udp 1 127.0.0.1 5000 typ host");
    let e = recv_json(&mut ws);
    assert_eq!(e["type"], "error");
    assert!(e["message"].as_str().unwrap().contains("offer::"), "{e}");
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected close 1008, got {other:?}"),
    }
}

/// The upgrade with headers; `Err` is the refusal's status.
fn ws_connect_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    use tungstenite::client::IntoClientRequest;
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[test]
fn a_user_claim_needs_both_userid_and_clientid() {
    let server = Server::builder()
        .shards(1)
        .args(["--trust-user-claim-header", "true"])
        .spawn();
    let path = "/connect?conversation=beep-1";
    for bad in [
        r#"{"userid": "carol"}"#,
        r#"{"userid": "carol", "clientid": null}"#,
        r#"{"userid": "carol", "clientid": ""}"#,
        r#"{"clientid": "phone"}"#,
    ] {
        assert_eq!(
            ws_connect_with(server.port, path, &[("X-User-Claim", bad)]).err(),
            Some(400),
            "{bad}"
        );
    }
    let claim = r#"{"userid": "carol", "clientid": "phone"}"#;
    let mut ws = ws_connect_with(server.port, path, &[("X-User-Claim", claim)]).unwrap();
    send_text(&mut ws, "offer::not sdp");
    let e = recv_json(&mut ws);
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["message"].as_str().unwrap().contains("SDP"), "{e}");
}
