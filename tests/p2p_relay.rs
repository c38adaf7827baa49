//! The peer-to-peer relay dialect and the shard front door, against the real binary with
//! two shards on loopback.

use std::time::{Duration, Instant};

use corelay::routing::owner_shard;
use corelay_testkit::*;
use serde_json::{json, Value};

fn pkt(event: &str, user: &str, room: &str, payload: &str) -> String {
    json!({"Header": {"Event": event, "UserId": user, "RoomId": room}, "Payload": payload})
        .to_string()
}

/// Two room names whose owners are shard 0 and shard 1 (namespace "" keys).
fn rooms_on_each_shard() -> (String, String) {
    let mut on = [None, None];
    for i in 0.. {
        let room = format!("room{i}");
        let owner = owner_shard(&format!("p2p:/{room}"), 2);
        if on[owner].is_none() {
            on[owner] = Some(room);
        }
        if let [Some(a), Some(b)] = &on {
            return (a.clone(), b.clone());
        }
    }
    unreachable!()
}

fn connect(server: &Server, user: &str, room: &str) -> (Ws, Value) {
    let mut ws = ws_connect(server.port, &format!("/p2p?token={}", token(user, None))).unwrap();
    send_text(&mut ws, &pkt("connect", user, room, ""));
    let own = recv_json(&mut ws);
    (ws, own)
}

#[test]
fn health_lists_every_shard() {
    let server = Server::builder().shards(2).spawn();
    let h = server.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    let shards = h["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s["id"], i);
        assert!(s["udpPort"].as_u64().unwrap() > 0);
        for key in [
            "core",
            "rooms",
            "connections",
            "relocatedIn",
            "relocatedOut",
        ] {
            assert!(s[key].is_u64(), "{key} missing in {s}");
        }
    }
}

#[test]
fn relay_sessions_end_up_on_their_rooms_shard_and_relay_exactly() {
    let server = Server::builder().shards(2).spawn();
    let (room_a, room_b) = rooms_on_each_shard();
    // Enough clients that the kernel's SO_REUSEPORT spread lands some of each room on
    // the shard that does not own it (all on the owner by chance: 2^-16).
    const PER_ROOM: usize = 8;
    let mut clients: Vec<(String, String, Ws)> = Vec::new();
    for room in [&room_a, &room_b] {
        for i in 0..PER_ROOM {
            let user = format!("{room}-u{i}");
            let (mut ws, own) = connect(&server, &user, room);
            assert_eq!(own["Header"]["Event"], "connect");
            assert_eq!(own["Header"]["UserId"], user.as_str());
            assert_eq!(own["Header"]["RoomId"], room.as_str());
            let expect_initiator = if i == 0 { "true" } else { "false" };
            assert_eq!(own["Payload"], expect_initiator, "initiator flag of {user}");
            // What the original client does with it: JSON.parse(packet.Payload).
            let initiator: bool = serde_json::from_str(own["Payload"].as_str().unwrap()).unwrap();
            assert_eq!(initiator, i == 0, "{user}");
            // Everyone already in the room hears about the newcomer.
            for (_, r, other) in clients.iter_mut().filter(|(_, r, _)| r == room) {
                let seen = recv_json(other);
                assert_eq!(seen["Header"]["Event"], "connect", "in {r}");
                assert_eq!(seen["Header"]["UserId"], user.as_str());
                assert_eq!(seen["Payload"], "false");
            }
            let _ = &mut ws;
            clients.push((user, room.clone(), ws));
        }
    }

    let h = server.health();
    let shards = h["shards"].as_array().unwrap();
    assert_eq!(shards[0]["connections"], PER_ROOM as u64, "{h}");
    assert_eq!(shards[1]["connections"], PER_ROOM as u64, "{h}");
    assert_eq!(shards[0]["rooms"], 1);
    assert_eq!(shards[1]["rooms"], 1);
    let moved_in: u64 = shards
        .iter()
        .map(|s| s["relocatedIn"].as_u64().unwrap())
        .sum();
    let moved_out: u64 = shards
        .iter()
        .map(|s| s["relocatedOut"].as_u64().unwrap())
        .sum();
    assert_eq!(moved_in, moved_out, "{h}");
    assert!(
        moved_in >= 1,
        "some clients were accepted on the other shard: {h}"
    );
    assert!(moved_in <= 2 * PER_ROOM as u64);

    // broadcast: unchanged text to every other member of that room only.
    let offer = pkt("broadcast", &clients[0].0, &room_a, "{\"sdp\":\"v=0...\"}");
    send_text(&mut clients[0].2, &offer);
    for (user, room, ws) in clients.iter_mut().skip(1) {
        if *room != room_a {
            continue;
        }
        let got = recv_json(ws);
        assert_eq!(
            got,
            serde_json::from_str::<Value>(&offer).unwrap(),
            "at {user}"
        );
    }

    // ping: the sender gets the list of user ids.
    let first_b = PER_ROOM;
    let user_b = clients[first_b].0.clone();
    send_text(&mut clients[first_b].2, &pkt("ping", &user_b, &room_b, ""));
    let pong = recv_json(&mut clients[first_b].2);
    assert_eq!(pong["Header"]["Event"], "ping");
    let listed: Vec<String> = serde_json::from_str(pong["Payload"].as_str().unwrap()).unwrap();
    let expected: Vec<String> = (0..PER_ROOM).map(|i| format!("{room_b}-u{i}")).collect();
    assert_eq!(listed, expected);

    // disconnect packet: the others hear it.
    let (leaver, _, mut leaver_ws) = clients.remove(1);
    send_text(&mut leaver_ws, &pkt("disconnect", &leaver, &room_a, ""));
    for (_, room, ws) in clients.iter_mut().filter(|(_, r, _)| *r == room_a) {
        let got = recv_json(ws);
        assert_eq!(got["Header"]["Event"], "disconnect", "in {room}");
        assert_eq!(got["Header"]["UserId"], leaver.as_str());
    }

    // closing a socket: the others get a disconnect too.
    let (closer, _, mut closer_ws) = clients.remove(first_b - 1);
    closer_ws.close(None).unwrap();
    let _ = closer_ws.flush();
    for (_, _, ws) in clients.iter_mut().filter(|(_, r, _)| *r == room_b) {
        let got = recv_json(ws);
        assert_eq!(got["Header"]["Event"], "disconnect");
        assert_eq!(got["Header"]["UserId"], closer.as_str());
    }
    drop(leaver_ws);
}

#[test]
fn bad_packets_get_an_error_for_that_client_only() {
    let server = Server::builder()
        .shards(2)
        .args(["--max-message-bytes", "1048576"])
        .spawn();
    let room = "hostile";
    let (mut alice, _) = connect(&server, "alice", room);
    let (mut bob, _) = connect(&server, "bob", room);
    let _ = recv_json(&mut alice); // bob's connect

    // forged UserId
    send_text(&mut alice, &pkt("broadcast", "mallory", room, "x"));
    let e = recv_json(&mut alice);
    assert_eq!(e["Header"]["Event"], "error");
    assert!(e["Payload"].as_str().unwrap().contains("mallory"), "{e}");

    // malformed JSON
    send_text(&mut alice, "{\"Header\": ");
    let e = recv_json(&mut alice);
    assert_eq!(e["Header"]["Event"], "error");
    assert!(e["Payload"].as_str().unwrap().contains("malformed"), "{e}");

    // alice still relays fine, bob saw none of her bad packets
    send_text(&mut alice, &pkt("broadcast", "alice", room, "hello"));
    assert_eq!(recv_json(&mut bob)["Payload"], "hello");

    // a packet before connect, on a fresh connection
    let mut carol =
        ws_connect(server.port, &format!("/p2p?token={}", token("carol", None))).unwrap();
    send_text(&mut carol, &pkt("ping", "carol", room, ""));
    let e = recv_json(&mut carol);
    assert_eq!(e["Header"]["Event"], "error");
    assert!(
        e["Payload"].as_str().unwrap().contains("before connect"),
        "{e}"
    );
    // ... and carol's session lives on
    send_text(&mut carol, &pkt("connect", "carol", room, ""));
    assert_eq!(recv_json(&mut carol)["Payload"], "false");
    assert_eq!(recv_json(&mut bob)["Header"]["UserId"], "carol");

    // a 2 MiB frame: an error packet, then close 1009, for carol only
    let huge = "x".repeat(2 << 20);
    let _ = carol.send(tungstenite::Message::text(huge));
    let e = recv_json(&mut carol);
    assert_eq!(e["Header"]["Event"], "error");
    assert!(e["Payload"].as_str().unwrap().contains("too large"), "{e}");
    match carol.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // bob and alice hear carol leave, and keep working
    assert_eq!(recv_json(&mut bob)["Header"]["Event"], "disconnect");
    assert_eq!(recv_json(&mut alice)["Header"]["Event"], "connect");
    assert_eq!(recv_json(&mut alice)["Header"]["Event"], "disconnect");
    send_text(&mut bob, &pkt("broadcast", "bob", room, "still here"));
    assert_eq!(recv_json(&mut alice)["Payload"], "still here");
    assert_eq!(server.health()["status"], "ok");
}

#[test]
fn tokens_are_checked_before_the_upgrade() {
    let server = Server::builder().shards(1).spawn();
    assert_eq!(ws_connect(server.port, "/p2p").err(), Some(401), "no token");
    assert_eq!(
        ws_connect(server.port, "/p2p?token=garbage").err(),
        Some(401)
    );
    let expired = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        encode(
            &Header::default(),
            &json!({"userId": "u", "exp": 1_000_000}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(
        ws_connect(server.port, &format!("/p2p?token={expired}")).err(),
        Some(401)
    );
    // A room-scoped token may not connect elsewhere.
    let mut ws = ws_connect(
        server.port,
        &format!("/p2p/ns1?token={}", token("u", Some("r1"))),
    )
    .unwrap();
    send_text(&mut ws, &pkt("connect", "u", "r2", ""));
    assert_eq!(recv_json(&mut ws)["Header"]["Event"], "error");
    send_text(&mut ws, &pkt("connect", "u", "r1", ""));
    assert_eq!(recv_json(&mut ws)["Payload"], "true");
}

#[test]
fn namespaces_separate_rooms() {
    let server = Server::builder().shards(2).spawn();
    let mut a = ws_connect(server.port, &format!("/p2p/one?token={}", token("a", None))).unwrap();
    let mut b = ws_connect(server.port, &format!("/p2p/two?token={}", token("b", None))).unwrap();
    send_text(&mut a, &pkt("connect", "a", "same", ""));
    send_text(&mut b, &pkt("connect", "b", "same", ""));
    assert_eq!(recv_json(&mut a)["Payload"], "true");
    assert_eq!(
        recv_json(&mut b)["Payload"],
        "true",
        "a different namespace is a different room"
    );
}

#[test]
fn anonymous_relay_only_when_allowed() {
    let server = Server::builder()
        .shards(1)
        .args(["--p2p-allow-anonymous", "true"])
        .spawn();
    let mut ws = ws_connect(server.port, "/p2p").unwrap();
    send_text(&mut ws, &pkt("connect", "anon-1", "r", ""));
    let got = recv_json(&mut ws);
    assert_eq!(got["Header"]["UserId"], "anon-1");
}

#[test]
fn http_errors_are_json_and_precise() {
    let server = Server::builder()
        .shards(1)
        .args(["--head-timeout-ms", "500"])
        .spawn();
    let (s, body) = http(server.port, "GET", "/nowhere", &[], b"").unwrap();
    assert_eq!(s, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"] == "not_found");
    assert_eq!(
        http(server.port, "POST", "/health", &[], b"").unwrap().0,
        405
    );
    assert_eq!(http(server.port, "GET", "/p2p", &[], b"").unwrap().0, 426);
    // login is off outside dev mode, and the answer says so
    for method in ["POST", "GET"] {
        let (s, body) = http(server.port, method, "/login", &[], b"{}").unwrap();
        assert_eq!(s, 404, "{method} /login: {body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(e["error"]["code"], "not_found", "{body}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("login is disabled (auth.login)"),
            "{body}"
        );
    }
    // over 64 headers
    let many: Vec<(String, String)> = (0..70).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        http(server.port, "GET", "/health", &refs, b"").unwrap().0,
        431
    );
    // a head that never completes
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert_eq!(read_response(&mut s).unwrap().0, 408);
    // and the server is still fine
    assert_eq!(server.health()["status"], "ok");
}

#[test]
fn dev_mode_login_issues_working_tokens() {
    let server = Server::builder().env_remove("JWT_SECRET").spawn();
    let (s, body) = http(
        server.port,
        "POST",
        "/login",
        &[],
        br#"{"userName": "Ann", "roomId": "r1"}"#,
    )
    .unwrap();
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["expiresAt"].as_u64().unwrap() > 0);
    let t = v["token"].as_str().unwrap();
    let user = v["userId"].as_str().unwrap().to_string();
    let mut ws = ws_connect(server.port, &format!("/p2p?token={t}")).unwrap();
    send_text(&mut ws, &pkt("connect", &user, "r1", ""));
    assert_eq!(recv_json(&mut ws)["Payload"], "true");
    assert_eq!(
        http(server.port, "POST", "/login", &[], b"not json")
            .unwrap()
            .0,
        400
    );
}

#[test]
fn sigterm_closes_sessions_with_1001_and_exits_zero_quickly() {
    let mut server = Server::builder().shards(2).spawn();
    let (mut ws, _) = connect(&server, "stayer", "shutdown-room");
    let start = Instant::now();
    server.sigterm();
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still running after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
