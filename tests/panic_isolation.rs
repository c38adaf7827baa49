//! Panic isolation (issue 14): a panic while handling one session's message or one room's
//! packet ends that session or that room, never the shard or the process. Proven with the
//! fault injection of debug builds (`CORELAY_FAULT_INJECTION=1`): a message containing
//! `corelay-fault:panic` panics while its session handles it; a datagram for a room whose
//! id contains `corelay-fault-room` panics inside the media engine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corelay_testkit::*;
use serde_json::{json, Value};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use tungstenite::Message;

const MARKER: &str = "corelay-fault:panic";
const FAULT_ROOM: &str = "corelay-fault-room-1";

/// A server with fault injection on, its log in a file of `dir`.
fn faulty_server(shards: usize, dir: &tempfile::TempDir) -> Server {
    Server::builder()
        .shards(shards)
        .env("CORELAY_FAULT_INJECTION", "1")
        .stdout(Capture::File(dir.path().join("server.log")))
        .spawn()
}

/// Waits (up to 10 s) for a log line with every one of `words`; returns it.
fn logged(dir: &tempfile::TempDir, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {words:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pkt(event: &str, user: &str, room: &str, payload: &str) -> String {
    json!({"Header": {"Event": event, "UserId": user, "RoomId": room}, "Payload": payload})
        .to_string()
}

/// A relay client in `room`, its connect answer read.
fn p2p(port: u16, user: &str, room: &str) -> Ws {
    let mut ws = ws_connect(port, &format!("/p2p?token={}", token(user, None))).unwrap();
    send_text(&mut ws, &pkt("connect", user, room, ""));
    assert_eq!(recv_json(&mut ws)["Header"]["Event"], "connect");
    ws
}

/// The next message of `event`, skipping others.
fn next_event(ws: &mut Ws, event: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no {event}");
        let m = recv_json(ws);
        if m["Header"]["Event"] == event {
            return m;
        }
    }
}

/// The close frame's code and reason, skipping texts until it comes.
fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn errors(server: &Server, code: &str) -> u64 {
    server.health()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["errors"][code].as_u64().unwrap_or(0))
        .sum()
}

/// A session whose message panics is closed with 1011 and leaves its room (the others
/// hear it left); the other members of its room, the sessions of other rooms and new
/// sessions keep working, on the same shard.
#[test]
fn a_panicking_message_closes_only_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = faulty_server(1, &dir);
    let port = server.port;
    let mut mallory = p2p(port, "mallory", "calm");
    let mut bob = p2p(port, "bob", "calm");
    let _ = next_event(&mut mallory, "connect");
    let mut carol = p2p(port, "carol", "elsewhere");

    send_text(&mut mallory, &pkt("broadcast", "mallory", "calm", MARKER));
    assert_eq!(close_of(&mut mallory), (1011, "internal error".into()));
    logged(
        &dir,
        &["ERROR", "caught a panic", "WebSocket session", "p2p"],
    );
    let left = next_event(&mut bob, "disconnect");
    assert_eq!(left["Header"]["UserId"], "mallory", "{left}");

    // Its room goes on: a newcomer joins and hears bob.
    let mut dave = p2p(port, "dave", "calm");
    let _ = next_event(&mut bob, "connect");
    send_text(&mut bob, &pkt("broadcast", "bob", "calm", "still here"));
    assert_eq!(next_event(&mut dave, "broadcast")["Payload"], "still here");
    // Another room too.
    send_text(&mut carol, &pkt("ping", "carol", "elsewhere", ""));
    assert_eq!(next_event(&mut carol, "ping")["Header"]["UserId"], "carol");
    assert_eq!(server.health()["status"], "ok");
    assert_eq!(errors(&server, "internal_panic"), 1);

    // The mediasoup dialect the same way.
    let t = token("ms", None);
    let mut ms = ws_connect(port, &format!("/ws?token={t}")).unwrap();
    send_text(
        &mut ms,
        &json!({"type": "join-room", "data": {"roomId": "calm-media"}, "requestId": MARKER})
            .to_string(),
    );
    assert_eq!(close_of(&mut ms), (1011, "internal error".into()));
    send_text(&mut carol, &pkt("ping", "carol", "elsewhere", ""));
    assert_eq!(next_event(&mut carol, "ping")["Header"]["UserId"], "carol");
    assert_eq!(errors(&server, "internal_panic"), 2);
}

/// Without CORELAY_FAULT_INJECTION the marker is an ordinary payload.
#[test]
fn the_marker_does_nothing_without_fault_injection() {
    let server = Server::builder().spawn();
    let mut a = p2p(server.port, "a", "plain");
    let mut b = p2p(server.port, "b", "plain");
    let _ = next_event(&mut a, "connect");
    send_text(&mut a, &pkt("broadcast", "a", "plain", MARKER));
    assert_eq!(next_event(&mut b, "broadcast")["Payload"], MARKER);
    assert_eq!(errors(&server, "internal_panic"), 0);
}

/// Reads a SockJS stream's raw bytes until `want` shows up (or 10 s pass).
fn read_until(s: &mut TcpStream, seen: &mut String, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 8192];
    while !seen.contains(want) {
        assert!(Instant::now() < deadline, "no {want:?} in {seen:?}");
        match s.read(&mut buf) {
            Ok(0) => panic!("stream ended before {want:?}: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("{e}: {seen:?}"),
        }
    }
}

/// A SockJS session of the HTTP transports whose message panics: its open stream gets
/// `c[1011,"internal error"]`; its room's other member hears it left.
#[test]
fn a_panicking_sockjs_message_closes_only_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = faulty_server(1, &dir);
    let port = server.port;
    let q = format!("?token={}", token("sam", None));
    let url = |t: &str| format!("/echo/000/panicky/{t}{q}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        url("xhr_streaming")
    )
    .unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "o\n");
    let send = |texts: &[String]| {
        let body = serde_json::to_string(texts).unwrap();
        let (status, body) = http(port, "POST", &url("xhr_send"), &[], body.as_bytes()).unwrap();
        assert_eq!(status, 204, "{body}");
    };
    send(&[pkt("connect", "sam", "sockjs-room", "")]);
    read_until(&mut stream, &mut seen, "a[");
    let mut wes = p2p(port, "wes", "sockjs-room");
    send(&[pkt("broadcast", "sam", "sockjs-room", MARKER)]);
    read_until(&mut stream, &mut seen, "c[1011,\"internal error\"]");
    assert_eq!(
        next_event(&mut wes, "disconnect")["Header"]["UserId"],
        "sam"
    );
    send_text(&mut wes, &pkt("ping", "wes", "sockjs-room", ""));
    assert_eq!(next_event(&mut wes, "ping")["Header"]["UserId"], "wes");
    assert_eq!(server.health()["status"], "ok");
}

/// POSTs a WHIP offer of one video track from a fresh endpoint; the endpoint has the
/// answer.
fn whip_publish(port: u16, room: &str, user: &str) -> Endpoint {
    let mut ep = Endpoint::new();
    let mut change = ep.client.rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let auth = format!("Bearer {}", token(user, Some(room)));
    let (status, _, answer) = http_with_headers(
        port,
        "POST",
        &format!("/whip/{room}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/sdp"),
        ],
        offer.to_sdp_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 201, "{answer}");
    let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
    ep.client
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    ep
}

/// A mediasoup-dialect session joined to `room`.
fn media_session(port: u16, user: &str, room: &str) -> Ws {
    let mut ws = ws_connect(port, &format!("/ws?token={}", token(user, None))).unwrap();
    send_text(
        &mut ws,
        &json!({"type": "join-room", "data": {"roomId": room}, "requestId": "j"}).to_string(),
    );
    let r = recv_json(&mut ws);
    assert_eq!(r["type"], "response", "{r}");
    assert!(r.get("error").is_none(), "{r}");
    ws
}

/// A panic inside the media engine while it handles one room's datagram closes that
/// room: its signaling sessions are closed with 1011 and the reason; the UDP driver goes
/// on, so other rooms keep their media and new transports connect.
#[test]
fn a_panicking_packet_closes_only_its_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = faulty_server(1, &dir);
    let port = server.port;
    let mut victim = media_session(port, "in-faulty", FAULT_ROOM);
    let mut bystander = media_session(port, "in-safe", "safe-room");
    let before = server.health()["shards"][0]["rooms"].as_u64().unwrap();
    assert!(before >= 2);

    // A WHIP publisher in the faulty room: its first datagram (STUN) panics the engine.
    let mut ep = whip_publish(port, FAULT_ROOM, "publisher");
    let pump = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            ep.pump();
            std::thread::sleep(Duration::from_millis(5));
        }
        ep
    });
    let (code, reason) = close_of(&mut victim);
    assert_eq!(code, 1011);
    assert!(reason.contains("internal error"), "{reason}");
    let ep = pump.join().unwrap();
    logged(
        &dir,
        &["ERROR", "the room was closed", FAULT_ROOM, "UDP driver"],
    );
    assert!(
        !ep.client.is_connected(),
        "the faulty room's transport is gone"
    );
    assert!(errors(&server, "internal_panic") >= 1);

    // The other room's session still works.
    send_text(
        &mut bystander,
        &json!({"type": "create-transport", "data": {"direction": "recv"}, "requestId": "t"})
            .to_string(),
    );
    let r = recv_json(&mut bystander);
    assert_eq!(r["requestId"], "t", "{r}");
    assert!(r.get("error").is_none(), "{r}");
    let health = server.health();
    assert_eq!(health["status"], "ok");
    assert_eq!(
        health["shards"][0]["rooms"].as_u64().unwrap(),
        before - 1,
        "the faulty room is gone, the safe one stays: {health}"
    );

    // Media still flows on this shard: a publisher in another room connects.
    let mut fine = whip_publish(port, "safe-room", "safe-publisher");
    let end = Instant::now() + Duration::from_secs(10);
    while !fine.client.is_connected() {
        assert!(Instant::now() < end, "a new transport did not connect");
        fine.pump();
        std::thread::sleep(Duration::from_millis(5));
    }
}
