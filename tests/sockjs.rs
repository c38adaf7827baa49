//! SockJS for the relay dialect (PROTOCOLS.md section 5) against the real binary with two
//! shards: `info`, the raw and the framed WebSocket, and the HTTP transports
//! (`xhr_streaming`, `xhr` polling, `xhr_send`) spoken by hand over TCP, with sessions that
//! move to the shard owning their room.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corelay::routing::owner_shard;
use corelay_testkit::*;
use serde_json::{json, Value};

fn pkt(event: &str, user: &str, room: &str, payload: &str) -> String {
    json!({"Header": {"Event": event, "UserId": user, "RoomId": room}, "Payload": payload})
        .to_string()
}

/// A room of namespace "" owned by `shard` (of 2).
fn room_on(shard: usize, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}{i}"))
        .find(|r| owner_shard(&format!("p2p:/{r}"), 2) == shard)
        .unwrap()
}

/// The shard holding the only connection or session of the server.
fn shard_of_only_session(server: &Server) -> usize {
    let h = server.health();
    let counts: Vec<u64> = h["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 1, "{h}");
    counts.iter().position(|&c| c == 1).unwrap()
}

fn relocations(server: &Server) -> u64 {
    server.health()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["relocatedIn"].as_u64().unwrap())
        .sum()
}

/// The messages of one SockJS frame: `a[...]` -> its strings.
fn messages(frame: &str) -> Vec<String> {
    let Some(array) = frame.strip_prefix('a') else {
        panic!("not a message frame: {frame:?}")
    };
    serde_json::from_str(array).unwrap()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

// ---- an HTTP/1.1 client, enough for SockJS ----------------------------------------------

struct Http {
    r: BufReader<TcpStream>,
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    fn connect(port: u16) -> Http {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Http {
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.r.get_mut().write_all(req.as_bytes()).unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .expect("a line before the timeout");
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    fn head(&mut self) -> Head {
        let status_line = self.line();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Head { status, headers }
    }

    /// The body of a response with Content-Length.
    fn body(&mut self, head: &Head) -> String {
        let len: usize = head.header("content-length").unwrap().parse().unwrap();
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }

    /// The next chunk of a chunked body; `None` at its end.
    fn chunk(&mut self) -> Option<String> {
        let size = usize::from_str_radix(&self.line(), 16).expect("a chunk size");
        let mut data = vec![0u8; size + 2];
        self.r.read_exact(&mut data).unwrap();
        data.truncate(size);
        (size > 0).then(|| String::from_utf8(data).unwrap())
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> (Head, String) {
        self.send(method, path, &[], body);
        let head = self.head();
        let body = self.body(&head);
        (head, body)
    }
}

// ---- SockJS clients over the HTTP transports ---------------------------------------------

/// A session's URL base and the texts it has received but not yet read.
struct Client {
    port: u16,
    base: String,
    query: String,
    inbox: VecDeque<String>,
    /// The open stream (`xhr_streaming` clients).
    stream: Option<Http>,
    streaming: bool,
    /// Streaming responses opened.
    streams: usize,
}

impl Client {
    fn new(port: u16, prefix: &str, session: &str, query: &str, streaming: bool) -> Client {
        Client {
            port,
            base: format!("{prefix}/000/{session}"),
            query: query.to_string(),
            inbox: VecDeque::new(),
            stream: None,
            streaming,
            streams: 0,
        }
    }

    fn url(&self, transport: &str) -> String {
        format!("{}/{transport}{}", self.base, self.query)
    }

    /// Opens a receiving request; returns its frames until it ended (polling) or the first
    /// chunk of frames (streaming).
    fn receive(&mut self) -> Vec<String> {
        if self.streaming {
            if self.stream.is_none() {
                let mut http = Http::connect(self.port);
                http.send("POST", &self.url("xhr_streaming"), &[], "");
                let head = http.head();
                assert_eq!(head.status, 200);
                assert_eq!(head.header("transfer-encoding"), Some("chunked"));
                let prelude = http.chunk().unwrap();
                assert_eq!(prelude, format!("{}\n", "h".repeat(2048)));
                self.stream = Some(http);
                self.streams += 1;
            }
            match self.stream.as_mut().unwrap().chunk() {
                Some(frames) => frames.lines().map(str::to_string).collect(),
                None => {
                    // The stream ended (streaming limit or relocation): open the next one.
                    self.stream = None;
                    Vec::new()
                }
            }
        } else {
            let mut http = Http::connect(self.port);
            let (head, body) = http.request("POST", &self.url("xhr"), "");
            assert_eq!(head.status, 200, "{body}");
            assert_eq!(
                head.header("content-type"),
                Some("application/javascript; charset=UTF-8")
            );
            body.lines().map(str::to_string).collect()
        }
    }

    fn open(&mut self) {
        assert_eq!(self.receive(), vec!["o".to_string()]);
    }

    /// The next relay packet for this client.
    fn recv(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.inbox.is_empty() {
            assert!(Instant::now() < deadline, "no message within 10 s");
            for frame in self.receive() {
                match frame.chars().next() {
                    Some('a') => self.inbox.extend(messages(&frame)),
                    Some('h') => {}
                    Some('c') => panic!("session closed: {frame}"),
                    _ => panic!("unexpected frame {frame:?}"),
                }
            }
        }
        json_of(&self.inbox.pop_front().unwrap())
    }

    fn send(&self, texts: &[String]) -> (u16, String) {
        let mut http = Http::connect(self.port);
        let body = serde_json::to_string(texts).unwrap();
        let (head, body) = http.request("POST", &self.url("xhr_send"), &body);
        (head.status, body)
    }

    fn send_ok(&self, texts: &[String]) {
        let (status, body) = self.send(texts);
        assert_eq!(status, 204, "{body}");
    }
}

fn framed_ws(port: u16, path: &str) -> Ws {
    let mut ws = ws_connect(port, path).unwrap();
    assert_eq!(text(&mut ws), "o");
    ws
}

fn text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a message before the timeout") {
            tungstenite::Message::Text(t) => return t.as_str().to_string(),
            tungstenite::Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// The next relay packet on a framed WebSocket.
fn framed_recv(ws: &mut Ws, inbox: &mut VecDeque<String>) -> Value {
    while inbox.is_empty() {
        let frame = text(ws);
        if frame != "h" {
            inbox.extend(messages(&frame));
        }
    }
    json_of(&inbox.pop_front().unwrap())
}

fn framed_send(ws: &mut Ws, texts: &[String]) {
    send_text(ws, &serde_json::to_string(texts).unwrap());
}

// ---- tests -------------------------------------------------------------------------------

#[test]
fn info_greeting_and_cors() {
    let server = Server::builder().shards(2).spawn();
    let t = token("ann", None);
    for prefix in ["/echo", "/sockjs/team-1"] {
        let mut http = Http::connect(server.port);
        http.send(
            "GET",
            &format!("{prefix}/info?token={t}&t=1"),
            &[("Origin", "http://page.test:8080")],
            "",
        );
        let head = http.head();
        let body = http.body(&head);
        assert_eq!(head.status, 200, "{body}");
        let info = json_of(&body);
        assert_eq!(info["websocket"], true);
        assert_eq!(info["cookie_needed"], false);
        assert_eq!(info["origins"], json!(["*:*"]));
        assert!(info["entropy"].is_u64(), "{info}");
        assert_eq!(
            head.header("access-control-allow-origin"),
            Some("http://page.test:8080")
        );
        assert_eq!(
            head.header("access-control-allow-credentials"),
            Some("true")
        );
        assert!(head.header("cache-control").unwrap().contains("no-store"));
        assert_eq!(
            head.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        // Without an Origin: any.
        let (head, _) = http.request("GET", &format!("{prefix}/info?token={t}"), "");
        assert_eq!(head.header("access-control-allow-origin"), Some("*"));
        // The preflight.
        http.send(
            "OPTIONS",
            &format!("{prefix}/info?token={t}"),
            &[
                ("Origin", "http://page.test:8080"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            "",
        );
        let head = http.head();
        assert_eq!(head.status, 204);
        assert_eq!(
            head.header("access-control-allow-methods"),
            Some("OPTIONS, GET")
        );
        assert_eq!(
            head.header("access-control-allow-headers"),
            Some("content-type")
        );
        // Preflights of the transports.
        for (transport, methods) in [
            ("xhr_send", "OPTIONS, POST"),
            ("xhr_streaming", "OPTIONS, POST"),
            ("eventsource", "OPTIONS, GET"),
        ] {
            let (head, _) = http.request("OPTIONS", &format!("{prefix}/1/s/{transport}"), "");
            assert_eq!(head.status, 204, "{transport}");
            assert_eq!(
                head.header("access-control-allow-methods"),
                Some(methods),
                "{transport}"
            );
        }
        // The greeting.
        let (head, body) = http.request("GET", prefix, "");
        assert_eq!((head.status, body.as_str()), (200, "Welcome to SockJS!\n"));
    }
    // Tokens: missing or bad -> 401 on info and on transport requests.
    for path in [
        "/echo/info".to_string(),
        "/echo/info?token=garbage".to_string(),
        "/echo/000/s1/xhr".to_string(),
        "/echo/000/s1/xhr_streaming?token=nope".to_string(),
        "/echo/000/s1/xhr_send".to_string(),
    ] {
        let method = if path.contains("info") { "GET" } else { "POST" };
        let (status, _) = http(server.port, method, &path, &[], b"[]").unwrap();
        assert_eq!(status, 401, "{path}");
    }
    assert_eq!(ws_connect(server.port, "/echo/websocket").err(), Some(401));
    assert_eq!(
        ws_connect(server.port, "/echo/000/s/websocket?token=bad").err(),
        Some(401)
    );
    // Transports that are not served, and a bad namespace.
    let (status, _) = http(server.port, "GET", "/echo/000/s1/htmlfile", &[], b"").unwrap();
    assert_eq!(status, 404);
    let (status, _) = http(server.port, "GET", "/sockjs/bad%20ns/info", &[], b"").unwrap();
    assert_eq!(status, 404);

    // Anonymous relay: no token needed.
    let anon = Server::builder()
        .shards(2)
        .args(["--p2p-allow-anonymous", "true"])
        .spawn();
    let (status, body) = http(anon.port, "GET", "/echo/info", &[], b"").unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn raw_websocket_speaks_the_relay_dialect() {
    let server = Server::builder().shards(2).spawn();
    let room = "raw-room";
    let mut a = ws_connect(
        server.port,
        &format!("/echo/websocket?token={}", token("a", None)),
    )
    .unwrap();
    send_text(&mut a, &pkt("connect", "a", room, ""));
    assert_eq!(recv_json(&mut a)["Payload"], "true");
    // The same room through /p2p: `/echo` is namespace "".
    let mut b = ws_connect(server.port, &format!("/p2p?token={}", token("b", None))).unwrap();
    send_text(&mut b, &pkt("connect", "b", room, ""));
    assert_eq!(recv_json(&mut b)["Payload"], "false");
    assert_eq!(recv_json(&mut a)["Header"]["UserId"], "b");
    let offer = pkt("broadcast", "a", room, "offer");
    send_text(&mut a, &offer);
    assert_eq!(recv_json(&mut b), json_of(&offer));
    // Namespaced: a different room of the same name.
    let mut c = ws_connect(
        server.port,
        &format!("/sockjs/other/websocket?token={}", token("c", None)),
    )
    .unwrap();
    send_text(&mut c, &pkt("connect", "c", room, ""));
    assert_eq!(recv_json(&mut c)["Payload"], "true");
}

#[test]
fn framed_websocket_moves_to_the_rooms_shard_and_frames_everything() {
    let server = Server::builder().shards(2).spawn();
    let ta = token("alice", None);
    let mut alice = framed_ws(
        server.port,
        &format!("/echo/123/sessa/websocket?token={ta}"),
    );
    let start = shard_of_only_session(&server);
    let room = room_on(1 - start, "framed");
    let mut alice_in = VecDeque::new();

    // A single JSON string is a frame too; the initiator flag is the string "true".
    send_text(
        &mut alice,
        &serde_json::to_string(&pkt("connect", "alice", &room, "")).unwrap(),
    );
    let own = framed_recv(&mut alice, &mut alice_in);
    assert_eq!(own["Header"]["Event"], "connect");
    assert_eq!(own["Payload"], "true");
    assert!(relocations(&server) >= 1, "alice moved to the room's shard");

    // Bob: connect and ping in one frame; the frame resumes on the room's shard in order.
    let tb = token("bob", None);
    let mut bob = framed_ws(
        server.port,
        &format!("/echo/456/sessb/websocket?token={tb}"),
    );
    let mut bob_in = VecDeque::new();
    framed_send(
        &mut bob,
        &[
            pkt("connect", "bob", &room, ""),
            pkt("ping", "bob", &room, ""),
        ],
    );
    let mut got = [
        framed_recv(&mut bob, &mut bob_in),
        framed_recv(&mut bob, &mut bob_in),
    ];
    got.sort_by_key(|p| p["Header"]["Event"].as_str().unwrap().to_string());
    assert_eq!(got[0]["Header"]["Event"], "connect");
    assert_eq!(got[0]["Payload"], "false");
    assert_eq!(got[1]["Header"]["Event"], "ping");
    assert_eq!(got[1]["Payload"], "[\"alice\",\"bob\"]");
    let seen = framed_recv(&mut alice, &mut alice_in);
    assert_eq!(seen["Header"]["UserId"], "bob");
    assert_eq!(seen["Payload"], "false");

    // Broadcasts both ways, unchanged.
    let offer = pkt("broadcast", "bob", &room, "{\"sdp\":\"v=0\"}");
    framed_send(&mut bob, std::slice::from_ref(&offer));
    assert_eq!(framed_recv(&mut alice, &mut alice_in), json_of(&offer));
    let answer = pkt("broadcast", "alice", &room, "answer");
    framed_send(&mut alice, std::slice::from_ref(&answer));
    assert_eq!(framed_recv(&mut bob, &mut bob_in), json_of(&answer));
    let h = server.health();
    assert_eq!(h["shards"][1 - start]["connections"], 2, "{h}");

    // Broken framing: an error packet for that client only; the session lives on.
    send_text(&mut bob, "[\"unterminated");
    let e = framed_recv(&mut bob, &mut bob_in);
    assert_eq!(e["Header"]["Event"], "error");
    assert!(
        e["Payload"]
            .as_str()
            .unwrap()
            .contains("broken SockJS framing"),
        "{e}"
    );

    // Closing alice's socket: bob hears `disconnect`.
    alice.close(None).unwrap();
    let _ = alice.flush();
    let gone = framed_recv(&mut bob, &mut bob_in);
    assert_eq!(gone["Header"]["Event"], "disconnect");
    assert_eq!(gone["Header"]["UserId"], "alice");

    // The server closes: `c[code,"reason"]`, then the WebSocket Close.
    server.sigterm();
    assert_eq!(text(&mut bob), r#"c[1001,"server shutting down"]"#);
    match bob.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

#[test]
fn oversized_framed_message_gets_an_error_and_a_close_frame() {
    let server = Server::builder()
        .shards(1)
        .args(["--max-message-bytes", "4096"])
        .spawn();
    let t = token("big", None);
    let mut ws = framed_ws(server.port, &format!("/sockjs/ns/1/s/websocket?token={t}"));
    let _ = ws.send(tungstenite::Message::text(format!(
        "[\"{}\"]",
        "x".repeat(8192)
    )));
    let e = json_of(&messages(&text(&mut ws))[0]);
    assert!(e["Payload"].as_str().unwrap().contains("too large"), "{e}");
    assert_eq!(text(&mut ws), r#"c[1009,"message too large"]"#);
}

#[test]
fn xhr_streaming_and_polling_relay_with_a_websocket_across_shards() {
    let server = Server::builder().shards(2).spawn();
    let q = |user: &str| format!("?token={}", token(user, None));

    // A streaming session; its room is owned by the other shard, so it moves.
    let mut sam = Client::new(server.port, "/echo", "stream1", &q("sam"), true);
    sam.open();
    let start = shard_of_only_session(&server);
    let room = room_on(1 - start, "xhr");
    sam.send_ok(&[pkt("connect", "sam", &room, "")]);
    let own = sam.recv();
    assert_eq!(own["Header"]["Event"], "connect");
    assert_eq!(own["Payload"], "true");
    let h = server.health();
    assert_eq!(h["shards"][1 - start]["connections"], 1, "sam moved: {h}");
    assert!(relocations(&server) >= 1, "{h}");

    // A WebSocket client joins the room.
    let mut wes = ws_connect(server.port, &format!("/p2p{}", q("wes"))).unwrap();
    send_text(&mut wes, &pkt("connect", "wes", &room, ""));
    assert_eq!(recv_json(&mut wes)["Payload"], "false");
    assert_eq!(sam.recv()["Header"]["UserId"], "wes");

    // A polling session joins the same room (it may move as well).
    let mut pat = Client::new(server.port, "/echo", "poll1", &q("pat"), false);
    pat.open();
    pat.send_ok(&[pkt("connect", "pat", &room, "")]);
    let own = pat.recv();
    assert_eq!(own["Payload"], "false");
    assert_eq!(own["Header"]["UserId"], "pat");
    assert_eq!(recv_json(&mut wes)["Header"]["UserId"], "pat");
    assert_eq!(sam.recv()["Header"]["UserId"], "pat");

    // Broadcasts every way.
    let from_wes = pkt("broadcast", "wes", &room, "from wes");
    send_text(&mut wes, &from_wes);
    assert_eq!(sam.recv(), json_of(&from_wes));
    assert_eq!(pat.recv(), json_of(&from_wes));
    let from_sam = pkt("broadcast", "sam", &room, "from sam");
    sam.send_ok(std::slice::from_ref(&from_sam));
    assert_eq!(recv_json(&mut wes), json_of(&from_sam));
    assert_eq!(pat.recv(), json_of(&from_sam));
    // Several messages in one xhr_send stay in order.
    let batch: Vec<String> = (0..5)
        .map(|i| pkt("broadcast", "pat", &room, &format!("pat {i}")))
        .collect();
    pat.send_ok(&batch);
    for b in &batch {
        assert_eq!(recv_json(&mut wes), json_of(b));
        assert_eq!(sam.recv(), json_of(b));
    }
    // Chunked xhr_send bodies (Node's http client sends them so), on fresh connections:
    // those accepted by the other shard move there with the body re-chunked.
    for i in 0..8 {
        let text = pkt("broadcast", "pat", &room, &format!("chunked {i}"));
        let body = serde_json::to_string(&[&text]).unwrap();
        let (left, right) = body.split_at(body.len() / 2);
        let mut http = Http::connect(server.port);
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{left}\r\n{:x}\r\n{right}\r\n0\r\n\r\n",
            pat.url("xhr_send"),
            left.len(),
            right.len()
        );
        http.r.get_mut().write_all(req.as_bytes()).unwrap();
        let head = http.head();
        assert_eq!(head.status, 204);
        assert_eq!(recv_json(&mut wes), json_of(&text));
        assert_eq!(sam.recv(), json_of(&text));
    }
    // ping through polling.
    pat.send_ok(&[pkt("ping", "pat", &room, "")]);
    let pong = pat.recv();
    assert_eq!(pong["Header"]["Event"], "ping");
    assert_eq!(pong["Payload"], "[\"sam\",\"wes\",\"pat\"]");

    // Everyone ended up on the room's shard.
    let h = server.health();
    assert_eq!(h["shards"][1 - start]["connections"], 3, "{h}");
    assert_eq!(h["shards"][start]["connections"], 0, "{h}");

    // A second receiving request while one is attached: c[2010, ...].
    let mut other = Http::connect(server.port);
    other.send("POST", &sam.url("xhr_streaming"), &[], "");
    assert_eq!(other.head().status, 200);
    let _prelude = other.chunk().unwrap();
    assert_eq!(
        other.chunk().unwrap(),
        "c[2010,\"Another connection still open\"]\n"
    );
    assert_eq!(other.chunk(), None);

    // Another user's token on sam's session.
    let (status, _) = Client::new(server.port, "/echo", "stream1", &q("eve"), false).send(&[pkt(
        "broadcast",
        "eve",
        &room,
        "x",
    )]);
    assert_eq!(status, 403);

    // disconnect through xhr_send: the others hear it.
    pat.send_ok(&[pkt("disconnect", "pat", &room, "")]);
    assert_eq!(recv_json(&mut wes)["Header"]["Event"], "disconnect");
    let gone = sam.recv();
    assert_eq!(gone["Header"]["Event"], "disconnect");
    assert_eq!(gone["Header"]["UserId"], "pat");
}

#[test]
fn eventsource_streams_frames_as_events() {
    let server = Server::builder().shards(2).spawn();
    let q = |user: &str| format!("?token={}", token(user, None));
    let mut wes = ws_connect(server.port, &format!("/p2p{}", q("wes"))).unwrap();
    send_text(&mut wes, &pkt("connect", "wes", "es-room", ""));
    let _ = recv_json(&mut wes);
    let eve = Client::new(server.port, "/echo", "es1", &q("eve"), false);
    let mut http = Http::connect(server.port);
    http.send(
        "GET",
        &eve.url("eventsource"),
        &[("Origin", "http://page.test")],
        "",
    );
    let head = http.head();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type"),
        Some("text/event-stream; charset=UTF-8")
    );
    assert_eq!(
        head.header("access-control-allow-origin"),
        Some("http://page.test")
    );
    assert_eq!(http.chunk().unwrap(), "\r\n", "the prelude");
    assert_eq!(http.chunk().unwrap(), "data: o\r\n\r\n");
    eve.send_ok(&[pkt("connect", "eve", "es-room", "")]);
    // The session may move to the room's shard: then this stream ends and the next one
    // carries on.
    let mut texts = VecDeque::new();
    while texts.is_empty() {
        match http.chunk() {
            Some(events) => {
                for event in events.split("\r\n\r\n").filter(|e| !e.is_empty()) {
                    let frame = event.strip_prefix("data: ").unwrap();
                    texts.extend(messages(frame));
                }
            }
            None => {
                http = Http::connect(server.port);
                http.send("GET", &eve.url("eventsource"), &[], "");
                assert_eq!(http.head().status, 200);
                assert_eq!(http.chunk().unwrap(), "\r\n");
            }
        }
    }
    let own = json_of(&texts.pop_front().unwrap());
    assert_eq!(own["Header"]["UserId"], "eve");
    assert_eq!(own["Payload"], "false");
    assert_eq!(recv_json(&mut wes)["Header"]["UserId"], "eve");
    // POST is not how EventSource asks.
    let (status, _) = http_status(server.port, "POST", &eve.url("eventsource"));
    assert_eq!(status, 405);
}

fn http_status(port: u16, method: &str, path: &str) -> (u16, String) {
    http(port, method, path, &[], b"").unwrap()
}

#[test]
fn a_streaming_response_ends_at_its_byte_limit_and_the_next_one_continues() {
    let server = Server::builder()
        .shards(1)
        .args(["--max-message-bytes", "65536"])
        .spawn();
    let q = |user: &str| format!("?token={}", token(user, None));
    let mut sam = Client::new(server.port, "/echo", "limit", &q("sam"), true);
    sam.open();
    sam.send_ok(&[pkt("connect", "sam", "big", "")]);
    assert_eq!(sam.recv()["Payload"], "true");
    let mut wes = ws_connect(server.port, &format!("/p2p{}", q("wes"))).unwrap();
    send_text(&mut wes, &pkt("connect", "wes", "big", ""));
    let _ = recv_json(&mut wes);
    assert_eq!(sam.recv()["Header"]["UserId"], "wes");
    // 200 KiB of broadcasts: more than one streaming response's 128 KiB.
    let payload = "p".repeat(20 * 1024);
    for i in 0..10 {
        send_text(
            &mut wes,
            &pkt("broadcast", "wes", "big", &format!("{i}:{payload}")),
        );
    }
    for i in 0..10 {
        let got = sam.recv();
        assert!(
            got["Payload"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{i}:")),
            "in order"
        );
    }
    // 200 KiB went out: the first response ended at its limit (128 KiB, after the frame
    // that crossed it), and a later one carries on.
    if sam.streams == 1 {
        assert_eq!(
            sam.stream.as_mut().unwrap().chunk(),
            None,
            "ended at the limit"
        );
        sam.stream = None;
    }
    send_text(&mut wes, &pkt("broadcast", "wes", "big", "after"));
    assert_eq!(sam.recv()["Payload"], "after");
    assert!(sam.streams >= 2, "the stream was renewed ({})", sam.streams);
}

#[test]
fn xhr_send_errors_are_sockjs_nodes() {
    let server = Server::builder().shards(2).spawn();
    let q = format!("?token={}", token("err", None));
    let mut http_conn = Http::connect(server.port);
    let (head, body) = http_conn.request("POST", &format!("/echo/000/nobody/xhr_send{q}"), "[]");
    assert_eq!(head.status, 404, "{body}");
    let mut pat = Client::new(server.port, "/echo", "errs", &q, false);
    pat.open();
    let mut http_conn = Http::connect(server.port);
    let (head, body) = http_conn.request("POST", &pat.url("xhr_send"), "[\"broken");
    assert_eq!((head.status, body.as_str()), (500, "Broken JSON encoding."));
    // The same keep-alive connection serves the next request.
    let (head, body) = http_conn.request("POST", &pat.url("xhr_send"), "");
    assert_eq!((head.status, body.as_str()), (500, "Payload expected."));
    let (head, _) = http_conn.request("POST", &pat.url("xhr_send"), "[1, 2]");
    assert_eq!(head.status, 500);
    // A bad packet inside good framing is the relay's error packet, for this client only.
    pat.send_ok(&["{not a packet".to_string()]);
    let e = pat.recv();
    assert_eq!(e["Header"]["Event"], "error");
    assert!(e["Payload"].as_str().unwrap().contains("malformed"), "{e}");
    // GET is not a transport method.
    let (status, _) = http(server.port, "GET", &pat.url("xhr"), &[], b"").unwrap();
    assert_eq!(status, 405);
}

#[test]
fn an_abandoned_session_times_out_and_releases_its_membership() {
    let server = Server::builder().shards(2).spawn();
    let q = |user: &str| format!("?token={}", token(user, None));
    let room = "timeout-room";
    let mut wes = ws_connect(server.port, &format!("/p2p{}", q("wes"))).unwrap();
    send_text(&mut wes, &pkt("connect", "wes", room, ""));
    assert_eq!(recv_json(&mut wes)["Payload"], "true");
    let mut pat = Client::new(server.port, "/echo", "gone", &q("pat"), false);
    pat.open();
    pat.send_ok(&[pkt("connect", "pat", room, "")]);
    assert_eq!(pat.recv()["Payload"], "false");
    assert_eq!(recv_json(&mut wes)["Header"]["UserId"], "pat");
    // pat stops polling: about 5 s later the session ends and wes hears `disconnect`.
    let stopped = Instant::now();
    let gone = recv_json(&mut wes);
    let waited = stopped.elapsed();
    assert_eq!(gone["Header"]["Event"], "disconnect");
    assert_eq!(gone["Header"]["UserId"], "pat");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(9),
        "{waited:?}"
    );
    // The session is gone.
    let (status, _) = pat.send(&[pkt("ping", "pat", room, "")]);
    assert_eq!(status, 404);
}

/// Issue 14, finding 1 over SockJS: an `xhr_send` over the client's message rate relays
/// nothing of that batch; the sender gets the error packet and `c[1008,"rate limit"]`,
/// and the room keeps working.
#[test]
fn a_flooding_xhr_send_is_rate_limited_alone() {
    let server = Server::builder()
        .shards(1)
        .env("CORELAY_MESSAGES_PER_S", "50")
        .env("CORELAY_MESSAGE_BURST", "100")
        .spawn();
    let q = |user: &str| format!("?token={}", token(user, None));
    let room = "sockjs-flood";
    let mut wes = ws_connect(server.port, &format!("/p2p{}", q("wes"))).unwrap();
    send_text(&mut wes, &pkt("connect", "wes", room, ""));
    assert_eq!(recv_json(&mut wes)["Payload"], "true");
    let mut pat = Client::new(server.port, "/echo", "flood", &q("pat"), false);
    pat.open();
    pat.send_ok(&[pkt("connect", "pat", room, "")]);
    assert_eq!(pat.recv()["Header"]["Event"], "connect");
    assert_eq!(recv_json(&mut wes)["Header"]["UserId"], "pat");
    let flood: Vec<String> = (0..500)
        .map(|i| pkt("broadcast", "pat", room, &format!("{i}")))
        .collect();
    let (status, _) = pat.send(&flood);
    assert_eq!(status, 204);
    let mut frames = Vec::new();
    while !frames.iter().any(|f: &String| f.starts_with('c')) {
        frames.extend(pat.receive());
    }
    let all = frames.join("\n");
    assert!(all.contains("limits.messages_per_s"), "{all}");
    assert!(all.contains(r#"c[1008,"rate limit"]"#), "{all}");
    // wes got none of the batch and keeps working.
    let mut other = ws_connect(server.port, &format!("/p2p{}", q("ann"))).unwrap();
    send_text(&mut other, &pkt("connect", "ann", room, ""));
    assert_eq!(recv_json(&mut other)["Header"]["Event"], "connect");
    let next = recv_json(&mut wes);
    assert_eq!(
        next["Header"]["Event"], "connect",
        "no broadcast of the flood: {next}"
    );
    assert_eq!(next["Header"]["UserId"], "ann");
}
