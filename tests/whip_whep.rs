//! WHIP and WHEP against the real binary on loopback, with str0m clients in SDP mode, and
//! across dialects (a WHIP publisher consumed through the mediasoup dialect).

use std::time::{Duration, Instant};

use corelay::routing::owner_shard;
use corelay_testkit::client::ClientEvent;
use corelay_testkit::*;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};

fn post_sdp(
    port: u16,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = http_with_headers(port, "POST", path, &headers, body.as_bytes()).unwrap();
    (r.0, r.1, r.2)
}

/// Publishes one VP8 track over WHIP; returns the endpoint, its mid and the resource.
fn whip_publish(port: u16, room: &str, user: &str) -> (Endpoint, Mid, String) {
    let mut ep = Endpoint::new();
    let mut change = ep.client.rtc.sdp_api();
    let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let t = token(user, Some(room));
    let (status, headers, answer) = post_sdp(
        port,
        &format!("/whip/{room}"),
        Some(&t),
        "application/sdp",
        &offer.to_sdp_string(),
    );
    assert_eq!(status, 201, "{answer}");
    let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
    ep.client
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    (ep, mid, location(&headers))
}

fn whep_view(port: u16, room: &str, user: &str) -> (Endpoint, String) {
    let mut ep = Endpoint::new();
    let mut change = ep.client.rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let t = token(user, Some(room));
    let (status, headers, answer) = post_sdp(
        port,
        &format!("/whep/{room}"),
        Some(&t),
        "application/sdp",
        &offer.to_sdp_string(),
    );
    assert_eq!(status, 201, "{answer}");
    let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
    ep.client
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    (ep, location(&headers))
}

fn pump_until(
    eps: &mut [&mut Endpoint],
    limit: Duration,
    mut done: impl FnMut(&mut [&mut Endpoint]) -> bool,
) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        for e in eps.iter_mut() {
            e.pump();
        }
        if done(eps) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("condition not met within {limit:?}");
}

fn send_frames(
    publisher: &mut Endpoint,
    viewers: &mut [&mut Endpoint],
    mid: Mid,
    frames: u32,
) -> usize {
    let ssrc = *publisher
        .client
        .rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .unwrap()
        .ssrc();
    let mut received = 0;
    for f in 0..frames {
        let key = f == 0
            || publisher
                .client
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::KeyframeRequest(_)));
        publisher.client.events.clear();
        for i in 0..3u64 {
            let payload = [
                if i == 0 { 0x10 } else { 0x00 },
                if key { 0x00 } else { 0x01 },
                7,
                7,
                7,
            ];
            let seq = f as u64 * 3 + i + 1;
            publisher
                .client
                .send_rtp(Instant::now(), ssrc, 96, seq, f * 3000, i == 2, &payload);
        }
        let end = Instant::now() + Duration::from_millis(20);
        while Instant::now() < end {
            publisher.pump();
            for v in viewers.iter_mut() {
                v.pump();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for v in viewers.iter_mut() {
            while let Some(e) = v.client.events.pop_front() {
                received += matches!(e, ClientEvent::Rtp(_)) as usize;
            }
        }
    }
    received
}

#[test]
fn whip_publisher_reaches_whep_viewers_and_delete_ends_the_session() {
    let server = Server::builder().shards(2).spawn();
    let room = "whip-room";
    let (mut publisher, mid, resource) = whip_publish(server.port, room, "obs");
    assert!(
        resource.starts_with(&format!("/whip/{room}/")),
        "{resource}"
    );
    let (mut viewer, viewer_resource) = whep_view(server.port, room, "viewer");
    pump_until(
        &mut [&mut publisher, &mut viewer],
        Duration::from_secs(10),
        |eps| eps.iter().all(|e| e.client.is_connected()),
    );
    let got = send_frames(&mut publisher, &mut [&mut viewer], mid, 40);
    assert!(got >= 100, "viewer got {got} packets");
    let owner = owner_shard(room, 2);
    let h = server.health();
    assert_eq!(h["shards"][owner]["producers"], 1, "{h}");
    assert_eq!(h["shards"][owner]["consumers"], 1, "{h}");

    // PATCH trickle is accepted; DELETE ends each session.
    let t = format!("Bearer {}", token("obs", Some(room)));
    let frag = "a=ice-ufrag:abcd\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n";
    let r = http_with_headers(
        server.port,
        "PATCH",
        &resource,
        &[
            ("Authorization", &t),
            ("Content-Type", "application/trickle-ice-sdpfrag"),
        ],
        frag.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.0, 204, "{}", r.2);
    let other = format!("Bearer {}", token("mallory", Some(room)));
    let r = http_with_headers(
        server.port,
        "DELETE",
        &resource,
        &[("Authorization", &other)],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 403, "another user cannot end the session");
    let r = http_with_headers(
        server.port,
        "DELETE",
        &resource,
        &[("Authorization", &t)],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 200);
    let r = http_with_headers(
        server.port,
        "DELETE",
        &resource,
        &[("Authorization", &t)],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 404, "the resource is gone");
    let vt = format!("Bearer {}", token("viewer", Some(room)));
    let r = http_with_headers(
        server.port,
        "DELETE",
        &viewer_resource,
        &[("Authorization", &vt)],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 200);
    let h = server.health();
    assert_eq!(h["shards"][owner]["transports"], 0, "{h}");
}

#[test]
fn a_whip_publisher_is_consumed_through_the_mediasoup_dialect() {
    let server = Server::builder().shards(2).spawn();
    let room = "cross";
    let (mut publisher, mid, _) = whip_publish(server.port, room, "obs");
    let mut ws = ws_connect(
        server.port,
        &format!("/ws?token={}", token("msc", Some(room))),
    )
    .unwrap();
    let mut rid = 0;
    let mut request = |ws: &mut Ws, kind: &str, data: serde_json::Value| {
        rid += 1;
        let id = rid.to_string();
        send_text(
            ws,
            &serde_json::json!({"type": kind, "data": data, "requestId": id}).to_string(),
        );
        loop {
            let m = recv_json(ws);
            if m["requestId"] == id.as_str() {
                assert!(m.get("error").is_none(), "{kind}: {m}");
                return m["data"].clone();
            }
        }
    };
    let joined = request(&mut ws, "join-room", serde_json::json!({}));
    let producer = joined["producers"][0]["producerId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(joined["producers"][0]["kind"], "video");
    let mut sub = Endpoint::new();
    let t = request(
        &mut ws,
        "create-transport",
        serde_json::json!({"direction": "recv"}),
    );
    sub.client.connect(Instant::now(), &t).unwrap();
    let dtls = sub.client.dtls_parameters();
    request(
        &mut ws,
        "connect-transport",
        serde_json::json!({"transportId": t["id"], "dtlsParameters": dtls}),
    );
    let c = request(
        &mut ws,
        "consume",
        serde_json::json!({"transportId": t["id"], "producerId": producer}),
    );
    sub.client
        .add_receiver("video", &c["rtpParameters"])
        .unwrap();
    request(
        &mut ws,
        "resume-consumer",
        serde_json::json!({"consumerId": c["id"]}),
    );
    pump_until(
        &mut [&mut publisher, &mut sub],
        Duration::from_secs(10),
        |eps| eps.iter().all(|e| e.client.is_connected()),
    );
    let got = send_frames(&mut publisher, &mut [&mut sub], mid, 30);
    assert!(got >= 70, "mediasoup consumer got {got} packets");
}

#[test]
fn whip_and_whep_errors_have_their_codes() {
    let server = Server::builder().shards(2).spawn();
    let port = server.port;
    let good = token("u", Some("r1"));
    let offer = {
        let mut ep = Endpoint::new();
        let mut change = ep.client.rtc.sdp_api();
        change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        change.apply().unwrap().0.to_sdp_string()
    };
    // 415 wrong content type, 401 bad token, 403 no grant / other room, 400 bad SDP.
    assert_eq!(
        post_sdp(port, "/whip/r1", Some(&good), "text/plain", &offer).0,
        415
    );
    assert_eq!(
        post_sdp(port, "/whip/r1", None, "application/sdp", &offer).0,
        401
    );
    assert_eq!(
        post_sdp(
            port,
            "/whip/r1",
            Some("forged.token.x"),
            "application/sdp",
            &offer
        )
        .0,
        401
    );
    assert_eq!(
        post_sdp(port, "/whip/r2", Some(&good), "application/sdp", &offer).0,
        403
    );
    let no_publish = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let exp = corelay::auth::unix_now() + 600;
        encode(
            &Header::default(),
            &serde_json::json!({"userId": "u", "roomId": "r1", "exp": exp, "canPublish": false}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(
        post_sdp(
            port,
            "/whip/r1",
            Some(&no_publish),
            "application/sdp",
            &offer
        )
        .0,
        403
    );
    assert_eq!(
        post_sdp(
            port,
            "/whip/r1",
            Some(&good),
            "application/sdp",
            "v=0\r\ngarbage"
        )
        .0,
        400
    );
    assert_eq!(
        post_sdp(port, "/whip/r1", Some(&good), "application/sdp", "hello").0,
        400
    );
    // 404: unknown room for WHEP, unknown resource
    assert_eq!(
        post_sdp(port, "/whep/r1", Some(&good), "application/sdp", &offer).0,
        404
    );
    let t = format!("Bearer {good}");
    let r = http_with_headers(
        port,
        "DELETE",
        "/whip/r1/t123",
        &[("Authorization", &t)],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 404);
    // 413: a body over the limit
    // (the head announces the size; the body is never sent)
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST /whip/r1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\n\
             Content-Type: application/sdp\r\nContent-Length: 5000000\r\n\r\n"
        )
        .unwrap();
        assert_eq!(read_response(&mut s).unwrap().0, 413);
    }
    // CORS preflight
    let r = http_with_headers(
        port,
        "OPTIONS",
        "/whip/r1",
        &[("Origin", "https://example.org")],
        b"",
    )
    .unwrap();
    assert_eq!(r.0, 204);
    assert!(r
        .1
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("access-control-allow-origin") && v == "*"));
    // and the server is fine
    assert_eq!(server.health()["status"], "ok");
}
