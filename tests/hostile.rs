//! Hostile clients (issue 14): each test reproduces one attack at a small scale against
//! the real binary and checks that only the attacker suffers.

use std::io::Write;
use std::time::{Duration, Instant};

use corelay_testkit::*;
use serde_json::json;
use tungstenite::Message;

fn pkt(event: &str, user: &str, room: &str, payload: &str) -> String {
    json!({"Header": {"Event": event, "UserId": user, "RoomId": room}, "Payload": payload})
        .to_string()
}

/// A relay client of `room`, its own connect answer read, and any earlier members'
/// notices about it drained from `others`.
fn join(server: &Server, user: &str, room: &str, others: &mut [&mut Ws]) -> Ws {
    let mut ws = ws_connect(server.port, &format!("/p2p?token={}", token(user, None))).unwrap();
    send_text(&mut ws, &pkt("connect", user, room, ""));
    assert_eq!(recv_json(&mut ws)["Header"]["Event"], "connect");
    for o in others.iter_mut() {
        let n = recv_json(o);
        assert_eq!(n["Header"]["Event"], "connect", "{n}");
        assert_eq!(n["Header"]["UserId"], user, "{n}");
    }
    ws
}

/// One masked client text frame (mask key 0, so the payload goes as it is).
fn frame(payload: &str) -> Vec<u8> {
    let p = payload.as_bytes();
    let mut f = vec![0x81];
    match p.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend([0, 0, 0, 0]);
    f.extend(p);
    f
}

/// Writes `count` broadcasts of `alice` in one TCP write; returns how many bytes that was.
fn burst(ws: &mut Ws, user: &str, room: &str, count: usize) -> usize {
    let mut bytes = Vec::new();
    for i in 0..count {
        bytes.extend(frame(&pkt(
            "broadcast",
            user,
            room,
            &format!("m{i} {}", "x".repeat(20)),
        )));
    }
    ws.get_mut().write_all(&bytes).unwrap();
    bytes.len()
}

/// Finding 1: about 300 small broadcasts in a single TCP write (33 KB) made the server
/// close every other member of the room with 1013 "too slow", fast readers included,
/// because a 256-message queue filled within one turn. Now the queue is judged by bytes
/// and time, the burst is within the sender's rate, and every reader gets every message.
#[test]
fn one_burst_does_not_evict_the_room() {
    let server = Server::builder().shards(2).spawn();
    let room = "burst";
    let mut mallory = join(&server, "mallory", room, &mut []);
    let mut victims: Vec<Ws> = Vec::new();
    for i in 0..3 {
        let mut others: Vec<&mut Ws> = std::iter::once(&mut mallory)
            .chain(victims.iter_mut())
            .collect();
        let v = join(&server, &format!("v{i}"), room, &mut others);
        victims.push(v);
    }
    const COUNT: usize = 300;
    let bytes = burst(&mut mallory, "mallory", room, COUNT);
    assert!(bytes > 30_000, "the attack's size: {bytes} bytes");
    for (i, v) in victims.iter_mut().enumerate() {
        for n in 0..COUNT {
            let m = recv_json(v);
            assert_eq!(
                m["Header"]["Event"], "broadcast",
                "victim {i}, message {n}: {m}"
            );
            assert!(
                m["Payload"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("m{n} ")),
                "victim {i} in order: {m}"
            );
        }
    }
    // Everyone is still in the room and relays.
    send_text(&mut victims[0], &pkt("broadcast", "v0", room, "after"));
    for v in victims[1..].iter_mut().chain(std::iter::once(&mut mallory)) {
        assert_eq!(recv_json(v)["Payload"], "after");
    }
    send_text(&mut mallory, &pkt("ping", "mallory", room, ""));
    let ping = recv_json(&mut mallory);
    assert_eq!(ping["Header"]["Event"], "ping", "{ping}");
    let users = ping["Payload"].as_str().unwrap();
    for u in ["mallory", "v0", "v1", "v2"] {
        assert!(users.contains(u), "{u} still listed: {users}");
    }
}

/// Finding 1, the sender's side: a client over its message rate gets an error and is
/// closed with 1008 "rate limit"; the room hears it leave and keeps working.
#[test]
fn a_flooder_is_rate_limited_and_closed_alone() {
    let server = Server::builder()
        .shards(2)
        .env("CORELAY_MESSAGES_PER_S", "50")
        .env("CORELAY_MESSAGE_BURST", "100")
        .spawn();
    let room = "flood";
    let mut mallory = join(&server, "mallory", room, &mut []);
    let mut alice = join(&server, "alice", room, &mut [&mut mallory]);
    let mut bob = join(&server, "bob", room, &mut [&mut mallory, &mut alice]);
    burst(&mut mallory, "mallory", room, 1000);
    let (code, reason, texts) = close_code(&mut mallory);
    assert_eq!((code, reason.as_str()), (1008, "rate limit"));
    let error = texts
        .iter()
        .find(|t| t["Header"]["Event"] == "error")
        .expect("an error packet before the close");
    assert!(
        error["Payload"]
            .as_str()
            .unwrap()
            .contains("limits.messages_per_s"),
        "{error}"
    );
    // The victims got at most the burst, then mallory's disconnect; they keep working.
    for v in [&mut alice, &mut bob] {
        let mut got = 0;
        loop {
            let m = recv_json(v);
            match m["Header"]["Event"].as_str().unwrap() {
                "broadcast" => got += 1,
                "disconnect" => {
                    assert_eq!(m["Header"]["UserId"], "mallory");
                    break;
                }
                other => panic!("unexpected {other}: {m}"),
            }
        }
        assert!(got <= 101, "at most the burst went through: {got}");
    }
    send_text(&mut alice, &pkt("broadcast", "alice", room, "fine"));
    assert_eq!(recv_json(&mut bob)["Payload"], "fine");
    assert_eq!(server.health()["status"], "ok");
}

/// Finding 1, the reader's side: a client that stops reading is judged by the bytes
/// waiting for it (limits.session_queue_bytes), and closed with 1013 once over them.
#[test]
fn a_reader_behind_by_bytes_is_closed_as_too_slow() {
    let server = Server::builder()
        .shards(1)
        .env("CORELAY_SESSION_QUEUE_BYTES", "1048576")
        .env("CORELAY_BYTES_PER_S", "1073741824")
        .env("CORELAY_MESSAGE_BURST", "100000")
        .env("CORELAY_WRITE_TIMEOUT_MS", "600000")
        .spawn();
    let room = "laggard";
    let mut slow = join(&server, "slow", room, &mut []);
    let mut alice = join(&server, "alice", room, &mut [&mut slow]);
    let mut bob = join(&server, "bob", room, &mut [&mut slow, &mut alice]);
    // 16 KiB payloads: the slow reader's socket buffers fill, then its 1 MiB queue; bob,
    // who reads, is never that far behind.
    let payload = "x".repeat(16 * 1024);
    let started = Instant::now();
    let mut sent = 0;
    // alice keeps at most 32 messages (512 KiB) ahead of bob, so bob is never the one
    // behind by a queue's worth, however slowly this machine lets his thread read.
    let bob_got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bob_count = bob_got.clone();
    let reader = std::thread::spawn(move || {
        // bob reads everything until slow's disconnect.
        let mut got = 0;
        loop {
            let m = recv_json(&mut bob);
            match m["Header"]["Event"].as_str().unwrap() {
                "broadcast" => {
                    got += 1;
                    bob_count.store(got, std::sync::atomic::Ordering::Relaxed);
                }
                "disconnect" => {
                    assert_eq!(m["Header"]["UserId"], "slow");
                    return (got, bob);
                }
                other => panic!("unexpected {other}: {m}"),
            }
        }
    });
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(30) {
        if sent >= bob_got.load(std::sync::atomic::Ordering::Relaxed) + 32 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        send_text(&mut alice, &pkt("broadcast", "alice", room, &payload));
        sent += 1;
        // alice reads nothing back (her own broadcasts are not echoed).
    }
    let (got, mut bob) = reader.join().unwrap();
    assert!(got > 0 && got <= sent, "bob got {got} of {sent}");
    // The slow one is told why once it reads: its buffered messages, then 1013.
    let (code, reason, _) = close_code(&mut slow);
    assert_eq!((code, reason.as_str()), (1013, "too slow"));
    send_text(&mut alice, &pkt("broadcast", "alice", room, "fine"));
    loop {
        let m = recv_json(&mut bob);
        if m["Payload"] == "fine" {
            break;
        }
    }
}

/// Finding 2: a member that never reads stayed in its room as a ghost (ping listed it,
/// nobody was told) until it read. Now a write that makes no progress for
/// limits.write_timeout_ms ends the session, and the room hears the member leave.
#[test]
fn a_reader_that_never_reads_leaves_the_room() {
    let server = Server::builder()
        .shards(2)
        .env("CORELAY_WRITE_TIMEOUT_MS", "1000")
        // Neither its queue's bytes nor its lag would end it before the write timeout.
        .env("CORELAY_SESSION_QUEUE_BYTES", "1073741824")
        .env("CORELAY_SESSION_LAG_MS", "600000")
        .env("CORELAY_BYTES_PER_S", "1073741824")
        .spawn();
    let room = "ghost";
    let mut ghost = join(&server, "ghost", room, &mut []);
    let mut alice = join(&server, "alice", room, &mut [&mut ghost]);
    let mut bob = join(&server, "bob", room, &mut [&mut ghost, &mut alice]);
    // 32 MiB of broadcasts: more than the loopback socket buffers of the ghost hold.
    let payload = "x".repeat(64 * 1024);
    const COUNT: usize = 512;
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        let mut left_at = None;
        while got < COUNT || left_at.is_none() {
            let m = recv_json(&mut bob);
            match m["Header"]["Event"].as_str().unwrap() {
                "broadcast" => got += 1,
                "disconnect" => {
                    assert_eq!(m["Header"]["UserId"], "ghost");
                    left_at = Some(Instant::now());
                }
                other => panic!("unexpected {other}: {m}"),
            }
        }
        (bob, left_at.unwrap())
    });
    for _ in 0..COUNT {
        send_text(&mut alice, &pkt("broadcast", "alice", room, &payload));
    }
    let sent_at = Instant::now();
    let (mut bob, left_at) = reader.join().unwrap();
    assert!(
        left_at.saturating_duration_since(sent_at) < Duration::from_secs(8),
        "the ghost left within about the write timeout"
    );
    // alice heard it too, after her own broadcasts (none are echoed to her).
    let d = recv_json(&mut alice);
    assert_eq!(
        (
            d["Header"]["Event"].as_str(),
            d["Header"]["UserId"].as_str()
        ),
        (Some("disconnect"), Some("ghost"))
    );
    send_text(&mut bob, &pkt("ping", "bob", room, ""));
    let ping = recv_json(&mut bob);
    let users = ping["Payload"].as_str().unwrap();
    assert!(!users.contains("ghost"), "no ghost listed: {users}");
    send_text(&mut alice, &pkt("broadcast", "alice", room, "fine"));
    assert_eq!(recv_json(&mut bob)["Payload"], "fine");
}

/// Sends a request head announcing `len` body bytes (no body follows) on a fresh
/// connection; returns the status and how long the answer took.
fn head_only(port: u16, method: &str, path: &str, extra: &str, len: usize) -> (u16, Duration) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let started = Instant::now();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let (status, _) = read_response(&mut s).expect("an answer without the body");
    (status, started.elapsed())
}

/// Finding 3, HTTP: request bodies were read before the route was known or the token
/// checked (even for GET /health), so a client announcing 1 MiB pinned it unanswered.
/// Now a request that takes no body, or whose token is refused, is answered from its head.
#[test]
fn bodies_are_not_read_before_the_route_and_the_token() {
    let server = Server::builder().shards(2).spawn();
    let mib = 1 << 20;
    let quick = Duration::from_secs(3);
    for (method, path, extra, want) in [
        ("GET", "/health", "", 200),
        ("POST", "/nowhere", "", 404),
        ("POST", "/login", "", 404), // login is off with a JWT secret
        ("POST", "/whip/room1", "", 401),
        (
            "POST",
            "/whip/room1",
            "Authorization: Bearer garbage\r\n",
            401,
        ),
        ("POST", "/whep/room1", "", 401),
    ] {
        let (status, took) = head_only(server.port, method, path, extra, mib);
        assert_eq!(status, want, "{method} {path} {extra:?}");
        assert!(
            took < quick,
            "{method} {path} answered in {took:?}, body unread"
        );
    }
}

/// Finding 3, HTTP: a budget of buffered request body bytes per shard; a body beyond it
/// gets 503 with Retry-After, and the budget comes back when the holders go.
#[test]
fn request_bodies_beyond_the_shards_budget_get_503() {
    let server = Server::builder()
        .shards(1)
        .env("CORELAY_REQUEST_BUFFER_BYTES", "2097152")
        .spawn();
    let auth = format!("Authorization: Bearer {}\r\n", token("w", None));
    // Two slow uploads of 1 MiB each hold the whole budget.
    let holders: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            write!(
                s,
                "POST /whip/room1 HTTP/1.1\r\nHost: h\r\n{auth}Content-Type: application/sdp\r\n\
                 Content-Length: 1048576\r\n\r\nv=0\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, headers, body) = http_with_headers(
        server.port,
        "POST",
        "/whip/room1",
        &[
            ("Authorization", &format!("Bearer {}", token("w", None))),
            ("Content-Type", "application/sdp"),
        ],
        b"v=0\r\n",
    )
    .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        headers.iter().any(|(k, _)| k == "retry-after"),
        "{headers:?}"
    );
    assert!(body.contains("limits.request_buffer_bytes"), "{body}");
    // Requests without a body are served meanwhile.
    assert_eq!(server.health()["status"], "ok");
    drop(holders);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _, body) = http_with_headers(
        server.port,
        "POST",
        "/whip/room1",
        &[
            ("Authorization", &format!("Bearer {}", token("w", None))),
            ("Content-Type", "application/sdp"),
        ],
        b"v=0\r\n",
    )
    .unwrap();
    assert_ne!(status, 503, "the budget came back: {body}");
}

/// Finding 3, /pubsub before `auth`: a frame over limits.unauthenticated_message_bytes is
/// refused from its header (error, close 1009) instead of being buffered, and a client that
/// does not authenticate within limits.auth_timeout_ms gets an error and close 1008.
#[test]
fn unauthenticated_pubsub_sockets_hold_nothing_for_long() {
    let server = Server::builder()
        .shards(1)
        .env("CORELAY_AUTH_TIMEOUT_MS", "1000")
        .spawn();
    // A frame announcing 1 MiB, of which only a little is sent.
    let mut ws = ws_connect(server.port, "/pubsub").unwrap();
    let mut partial = vec![0x81, 0x80 | 127];
    partial.extend((1u64 << 20).to_be_bytes());
    partial.extend([0, 0, 0, 0]);
    partial.extend([b'x'; 100]);
    ws.get_mut().write_all(&partial).unwrap();
    let started = Instant::now();
    let (code, _, texts) = close_code(&mut ws);
    assert_eq!(code, 1009, "{texts:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        texts.iter().any(|t| t
            .to_string()
            .contains("limits.unauthenticated_message_bytes")),
        "{texts:?}"
    );

    // No auth at all: closed after the deadline.
    let mut idle = ws_connect(server.port, "/pubsub").unwrap();
    let started = Instant::now();
    let (code, _, texts) = close_code(&mut idle);
    let took = started.elapsed();
    assert_eq!(code, 1008, "{texts:?}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.to_string().contains("limits.auth_timeout_ms")),
        "{texts:?}"
    );

    // Authenticated in time: large messages are fine afterwards, and the deadline is off.
    let mut ok = ws_connect(server.port, "/pubsub").unwrap();
    send_text(
        &mut ok,
        &json!({"type": "auth", "token": token("p", None)}).to_string(),
    );
    assert_eq!(recv_json(&mut ok)["type"], "auth-ok");
    std::thread::sleep(Duration::from_millis(1500));
    let big = json!({"type": "nonsense", "pad": "x".repeat(64 * 1024)}).to_string();
    send_text(&mut ok, &big);
    let answer = recv_json(&mut ok);
    assert_eq!(answer["type"], "error", "{answer}");
    assert!(
        !answer.to_string().contains("too large"),
        "64 KiB is fine once authenticated: {answer}"
    );
}

/// Finding 3, every WebSocket: a client that sends no frame for limits.idle_timeout_ms is
/// closed with 1001; the server pings it every half of that, so a client that answers
/// pings (every browser does) stays.
#[test]
fn idle_websockets_are_pinged_and_closed_when_silent() {
    let server = Server::builder()
        .shards(1)
        .env("CORELAY_IDLE_TIMEOUT_MS", "1000")
        .spawn();
    let path = format!("/p2p?token={}", token("quiet", None));
    // A client that answers pings (tungstenite does when it reads) stays open.
    let mut live = ws_connect(server.port, &path).unwrap();
    let until = Instant::now() + Duration::from_millis(2500);
    let mut pings = 0;
    while Instant::now() < until {
        live.get_mut()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match live.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Close(c)) => panic!("a live client was closed: {c:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
        let _ = live.flush();
    }
    assert!(pings >= 2, "pinged every half idle timeout: {pings}");
    live.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send_text(&mut live, &pkt("connect", "quiet", "r", ""));
    assert_eq!(recv_json(&mut live)["Header"]["Event"], "connect");

    // A client that sends nothing, pongs included (raw reads: no pong goes back).
    let mut silent = ws_connect(server.port, &path).unwrap();
    let started = Instant::now();
    let mut bytes = Vec::new();
    let _ = std::io::Read::read_to_end(silent.get_mut(), &mut bytes);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "closed after the idle timeout: {took:?}"
    );
    // The close frame: 0x88, length, then 1001 (0x03e9).
    let close = bytes
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xe9);
    assert!(close, "a 1001 close frame in {bytes:?}");
}
