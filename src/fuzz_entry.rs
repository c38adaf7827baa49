//! Entry points for the fuzz targets in `fuzz/` (README "Development", *Fuzzing*): each
//! takes bytes an outside client controls and runs them through the same parsers and
//! translators the server runs them through, on a real media engine, with nothing stood
//! in but the socket and the clock. The server never calls these; they live in the
//! library so that the targets need nothing of its internals beyond this page.
//!
//! A panic in any of them is a bug. Beyond not panicking they check what must hold after
//! any input: once every session has closed, the engine holds no room, transport, producer
//! or consumer and the relay no room; a WebSocket read that moves to another shard after
//! any message reads the same messages as one that never moved.
//!
//! How the bytes are read (the seed corpora in `fuzz/corpus/` are written this way):
//! - Session targets ([`mediasoup`], [`pubsub`], [`p2p`], [`connect`], [`sockjs`]): text
//!   messages separated by NUL bytes. A message that starts with `#N ` (N = 0-3) goes to
//!   session N, else to session 0; `#N close` closes session N. In a message, `$token`
//!   becomes a valid token (every grant, no room scope), and `$t`, `$p`, `$c` the last
//!   transport, producer and consumer id any answer carried, `$mid0`-`$mid3` the mids of
//!   the last SDP the server sent: a fuzzer cannot guess any of them.
//!   Each session first asks to move to another shard at its room (as if another shard
//!   owned it) and is then replayed the same message, as the runtime does.
//! - [`whip`]: HTTP requests (head and body) separated by NUL bytes, with the same
//!   replacements.
//! - [`sdp`]: a selector byte (which offer/answer call, see [`sdp`]) and SDP text.
//! - [`produce`]: a selector byte, then NUL-separated JSON: the `rtpParameters` of two
//!   `produce` calls and the `rtpCapabilities` of a `consume`.
//! - [`datagrams`]: records of a header byte (bits 0-1: which of four client addresses
//!   sent it; bits 2-7: milliseconds to wait first), a big-endian 16-bit length and the
//!   datagram. The ufrags [`SEND_UFRAG`] and [`RECV_UFRAG`] become the two transports'
//!   ufrags, and a STUN MESSAGE-INTEGRITY is recomputed with that transport's password, so
//!   that requests get past the integrity check.
//! - [`http_request`]: request bytes as they come on a connection; [`websocket_frames`]: a
//!   read-size byte, then the bytes of a client's WebSocket stream.
//!
//! With `FUZZ_ENTRY_TRACE` set in the environment, the session, WHIP, SDP and datagram
//! targets print what the server answered to stderr: how to see what a seed reaches.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite, StreamExt};
use serde_json::Value;

use crate::auth::{Authenticator, Grant, Identity};
use crate::http::{self, ws, Head, HeadLimits};
use crate::sfu::ortc::{DtlsFingerprint, DtlsParameters, Kind, RtpCapabilities, RtpParameters};
use crate::sfu::transport::Direction;
use crate::sfu::Engine;
use crate::signal::connect::{ConnectDialect, Target};
use crate::signal::dialect::{BoxedDialect, ConnId, Context, Step};
use crate::signal::mediasoup::MediasoupDialect;
use crate::signal::p2p::Rooms;
use crate::signal::sockjs::SockJs;
use crate::signal::{identity, p2p, pubsub, sockjs, whip};

/// Sessions a session target drives at once.
const SESSIONS: usize = 4;
/// Messages (or requests, or datagrams) read from one input; the rest is ignored.
const MAX_MESSAGES: usize = 64;
/// The secret of the harness's tokens.
const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret";
/// In [`datagrams`], stands for the send transport's ICE ufrag (as long as one).
pub const SEND_UFRAG: &[u8; 16] = b"SENDUFRAGSENDUFR";
/// In [`datagrams`], stands for the receive transport's ICE ufrag.
pub const RECV_UFRAG: &[u8; 16] = b"RECVUFRAGRECVUFR";

/// The shard's state, kept between inputs (a fresh engine costs a DTLS certificate): every
/// input ends with everything closed, and the checks make sure it is.
struct Harness {
    engine: Engine,
    relay: Rooms,
    auth: Authenticator,
    token: String,
    /// Virtual time: only moves forward, a little with every message.
    now: Instant,
    /// The last transport, producer and consumer wire ids answered.
    ids: [String; 3],
    /// The mids of the last SDP the server sent.
    mids: Vec<String>,
    /// Reused for the datagrams the engine sends.
    transmits: Vec<str0m::net::Transmit>,
}

/// Whether `FUZZ_ENTRY_TRACE` is set.
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_ENTRY_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fn with_harness<R>(f: impl FnOnce(&mut Harness) -> R) -> R {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(|| {
            let auth = Authenticator::new(SECRET);
            let (token, _) = auth.mint(&Grant {
                user_id: "fuzzer",
                user_name: Some("Fuzzer"),
                room: None,
                ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            });
            Harness {
                engine: Engine::new(1 << 40, "127.0.0.1:40000".parse().expect("an address"))
                    .expect("an engine"),
                relay: Rooms::default(),
                auth,
                token,
                now: Instant::now(),
                ids: Default::default(),
                mids: Vec::new(),
                transmits: Vec::new(),
            }
        });
        h.ids = Default::default();
        h.mids.clear();
        f(h)
    })
}

impl Harness {
    /// Moves time on and lets the engine do what is due (timeouts, sends).
    fn tick(&mut self, by: Duration) {
        self.now += by;
        self.engine.handle_timeout(self.now);
        self.engine.poll_transmits(&mut self.transmits);
        self.transmits.clear();
    }

    /// `$token`, `$mid0`-`$mid3`, `$t`, `$p`, `$c` replaced.
    fn expand(&self, text: &str) -> String {
        if !text.contains('$') {
            return text.to_string();
        }
        let mut text = text.replace("$token", &self.token);
        for (i, mid) in self.mids.iter().enumerate() {
            text = text.replace(&format!("$mid{i}"), mid);
        }
        text.replace("$t", &self.ids[0])
            .replace("$p", &self.ids[1])
            .replace("$c", &self.ids[2])
    }

    /// Remembers the wire ids a server text carries (anywhere in its JSON).
    fn note_ids(&mut self, text: &str) {
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            self.note_value(&v, 0);
        }
    }

    fn note_value(&mut self, v: &Value, depth: usize) {
        match v {
            Value::String(s) if s.starts_with("v=0") => self.note_mids(s),
            Value::String(s) => self.note_id(s),
            Value::Array(a) if depth < 8 => a.iter().for_each(|v| self.note_value(v, depth + 1)),
            Value::Object(o) if depth < 8 => o.values().for_each(|v| self.note_value(v, depth + 1)),
            _ => {}
        }
    }

    /// Remembers the mids of an SDP the server sent (they are random).
    fn note_mids(&mut self, sdp: &str) {
        self.mids = sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .map(|m| m.trim().to_string())
            .take(4)
            .collect();
    }

    fn note_id(&mut self, s: &str) {
        let slot = match s.as_bytes().first() {
            Some(b't') => 0,
            Some(b'p') => 1,
            Some(b'c') => 2,
            _ => return,
        };
        // Ids are `1 << 40 | n` in hex: "1" and ten more digits.
        if s.len() == 12 && s[1..].bytes().all(|b| b.is_ascii_hexdigit()) {
            self.ids[slot] = s.to_string();
        }
    }

    /// After every session closed: nothing may be left.
    fn check_empty(&mut self, what: &str) {
        self.tick(Duration::from_millis(1));
        while self.engine.poll_notice().is_some() {}
        let e = &self.engine;
        let left = (e.rooms(), e.transports(), e.producers(), e.consumers());
        assert_eq!(
            left,
            (0, 0, 0, 0),
            "{what}: rooms, transports, producers, consumers left after every session closed"
        );
        assert!(self.relay.is_empty(), "{what}: relay rooms left");
        assert!(self.engine.outbox_is_empty());
    }
}

/// The NUL-separated messages of an input, at most [`MAX_MESSAGES`].
fn messages(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == 0).take(MAX_MESSAGES)
}

/// `#N ` at the start of a message: (session, rest).
fn addressed(text: &str) -> (usize, &str) {
    let b = text.as_bytes();
    if b.len() >= 3 && b[0] == b'#' && (b'0'..b'0' + SESSIONS as u8).contains(&b[1]) && b[2] == b' '
    {
        ((b[1] - b'0') as usize, &text[3..])
    } else {
        (0, text)
    }
}

fn identity_for(session: usize) -> Identity {
    Identity {
        user_id: format!("user{session}"),
        user_name: format!("User {session}"),
        // The last session's token is scoped to one room and may only subscribe.
        room: (session == SESSIONS - 1).then(|| "scoped".to_string()),
        can_publish: session != SESSIONS - 1,
        can_subscribe: true,
    }
}

/// One live session of a session target.
struct Live {
    conn: ConnId,
    dialect: BoxedDialect,
    /// Moved to "its room's shard" already: from then on this shard owns every room.
    relocated: bool,
}

/// Runs the messages of `data` through sessions made by `make`, as `ws_session` runs a
/// dialect: replies, relocation, deliveries to other sessions, engine notices, close.
fn run_sessions(what: &str, data: &[u8], make: impl Fn(usize) -> BoxedDialect) {
    with_harness(|h| {
        let mut live: Vec<Option<Live>> = (0..SESSIONS)
            .map(|i| {
                Some(Live {
                    conn: i as ConnId + 1,
                    dialect: make(i),
                    relocated: false,
                })
            })
            .collect();
        for raw in messages(data) {
            let text = String::from_utf8_lossy(raw);
            let (to, text) = addressed(&text);
            if text == "close" {
                if let Some(mut s) = live[to].take() {
                    close_session(h, &mut s);
                }
                continue;
            }
            let text = h.expand(text);
            let Some(s) = live[to].as_mut() else {
                continue;
            };
            let (step, deliveries) = on_text(h, s, &text);
            let step = match step {
                Step::Relocate { key } => {
                    assert!(!s.relocated, "{what}: asked to move again, to {key:?}");
                    s.relocated = true;
                    let (step, more) = on_text(h, s, &text);
                    deliver(h, &mut live, deliveries);
                    deliver(h, &mut live, more);
                    step
                }
                step => {
                    deliver(h, &mut live, deliveries);
                    step
                }
            };
            trace!("{what} #{to} <- {step:?}");
            match step {
                Step::Reply(texts) => texts.iter().for_each(|t| h.note_ids(t)),
                Step::Close(texts, _) => {
                    texts.iter().for_each(|t| h.note_ids(t));
                    if let Some(mut s) = live[to].take() {
                        close_session(h, &mut s);
                    }
                }
                Step::Relocate { key } => panic!("{what}: asked to move again, to {key:?}"),
            }
            notices(h, &mut live);
            h.tick(Duration::from_millis(1));
        }
        for s in live.iter_mut() {
            if let Some(mut s) = s.take() {
                close_session(h, &mut s);
            }
        }
        // Media sessions that outlive their socket (`/connect`) end with ICE consent; here,
        // at once.
        for conn in 1..=SESSIONS as ConnId {
            let now = h.now;
            h.engine.leave(now, conn);
        }
        h.check_empty(what);
    })
}

fn on_text(h: &mut Harness, s: &mut Live, text: &str) -> (Step, Vec<p2p::Delivery>) {
    let relocated = s.relocated;
    let owns = move |_: &str| relocated;
    let mut cx = Context::new(
        h.now,
        s.conn,
        0,
        &mut h.engine,
        &mut h.relay,
        &h.auth,
        &owns,
    );
    let step = s.dialect.on_text(&mut cx, text);
    (step, std::mem::take(&mut cx.deliveries))
}

fn close_session(h: &mut Harness, s: &mut Live) {
    let owns = |_: &str| true;
    let mut cx = Context::new(
        h.now,
        s.conn,
        0,
        &mut h.engine,
        &mut h.relay,
        &h.auth,
        &owns,
    );
    s.dialect.on_close(&mut cx);
    // The last words a framing sends before the close frame.
    let _ = s.dialect.closing(1000, "");
}

fn deliver(h: &mut Harness, live: &mut [Option<Live>], deliveries: Vec<p2p::Delivery>) {
    for d in deliveries {
        if let Some(s) = live.iter().flatten().find(|s| s.conn == d.to) {
            let text = s.dialect.delivery(&d.text);
            h.note_ids(&text);
        }
    }
}

fn notices(h: &mut Harness, live: &mut [Option<Live>]) {
    while let Some((peer, notice)) = h.engine.poll_notice() {
        if let Some(s) = live.iter_mut().flatten().find(|s| s.conn == peer) {
            if let Some(text) = s.dialect.notice(&notice) {
                h.note_ids(&text);
            }
        }
    }
}

/// The mediasoup-client dialect (`/ws`): `{type, data, requestId}` requests.
pub fn mediasoup(data: &[u8]) {
    run_sessions("mediasoup", data, |i| {
        Box::new(MediasoupDialect::new(identity_for(i)))
    });
}

/// The publish/subscribe SDP dialect (`/pubsub`): sessions 0 and 2 start without a token
/// (their first message must be `auth`), 1 and 3 with one.
pub fn pubsub(data: &[u8]) {
    run_sessions("pubsub", data, |i| {
        Box::new(pubsub::Session::new(
            0,
            (i % 2 == 1).then(|| identity_for(i)),
        ))
    });
}

fn relay_session(i: usize) -> p2p::Session {
    p2p::Session {
        namespace: "ns".into(),
        // Sessions 0 and 1 have a token (1 scoped to a room), 2 and 3 are anonymous.
        token_user: (i < 2).then(|| format!("user{i}")),
        token_room: (i == 1).then(|| "room".to_string()),
        joined: None,
    }
}

/// The peer-to-peer relay dialect (`/p2p/{namespace}`): JSON packets relayed.
pub fn p2p(data: &[u8]) {
    run_sessions("p2p", data, |i| Box::new(relay_session(i)));
}

/// The relay dialect inside SockJS framing (`/sockjs/{namespace}/.../websocket`): each
/// message is a SockJS frame, a JSON array of texts.
pub fn sockjs(data: &[u8]) {
    run_sessions("sockjs", data, |i| {
        Box::new(SockJs::new(Box::new(relay_session(i))))
    });
}

/// The one-shot SDP dialect (`/connect`): a raw SDP offer, or `offer::`/`ice::` frames.
pub fn connect(data: &[u8]) {
    run_sessions("connect", data, |i| {
        Box::new(ConnectDialect::new(Target {
            user_id: format!("user{i}"),
            user_name: format!("User {i}"),
            conversation: if i < 2 { "conv" } else { "other" }.to_string(),
        }))
    });
}

/// A byte stream that hands out `input` at most `chunk` bytes a read and swallows writes.
struct Wire<'a> {
    input: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.input.len().min(out.len()).min(self.chunk);
        out[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Request heads and bodies as a client sends them on one connection (pipelined requests
/// included): the head parser, the body readers (Content-Length and chunked), and what
/// the front door reads from a head (token, upgrade, routes, the caller's identity).
pub fn http_request(data: &[u8]) {
    with_harness(|h| {
        let mut wire = futures::io::Cursor::new(data);
        let mut buf = Vec::new();
        for _ in 0..8 {
            let head = match futures::executor::block_on(http::read_head(
                &mut wire,
                &mut buf,
                HeadLimits::default(),
            )) {
                Ok(head) => head,
                Err(_) => return,
            };
            look_at_head(h, &head);
            let body = if head.is_chunked() {
                futures::executor::block_on(http::read_chunked_body(&mut wire, &mut buf, 64 << 10))
            } else {
                match head.content_length() {
                    Ok(len) if len <= 64 << 10 => {
                        futures::executor::block_on(http::read_body(&mut wire, &mut buf, len))
                    }
                    _ => return,
                }
            };
            if body.is_err() || !head.keep_alive() {
                return;
            }
        }
    })
}

fn look_at_head(h: &Harness, head: &Head) {
    let token = head.token();
    if let Some(t) = token {
        let _ = h.auth.verify(t);
    }
    let _ = identity::identify(
        token,
        head.header(identity::USER_CLAIM_HEADER),
        true,
        &h.auth,
    );
    if ws::is_upgrade(head) {
        let _ = ws::accept(head);
    }
    let _ = sockjs::route(&head.path);
    let _ = whip::room_of(&head.path);
    let _ = whip::refuse_before_body(&h.auth, head);
    let _ = head.header_has_token("connection", "upgrade");
}

/// A client's WebSocket byte stream, read as a session reads it: tungstenite over
/// [`ws::FrameBoundedStream`] with the server's limits. The first byte sets the read size
/// (1-255 bytes, 0: 4 KiB) and, in its top bit, the frame limit of a client that has not
/// authenticated. The stream is read twice, once straight and once moving to a new parser
/// (as a relocation does) after every text message: both must read the same messages.
pub fn websocket_frames(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = match first & 0x7f {
        0 => 4096,
        n => n as usize,
    };
    let small = first & 0x80 != 0;
    let straight = read_frames(stream, chunk, small, false);
    let moved = read_frames(stream, chunk, small, true);
    assert_eq!(
        straight, moved,
        "a relocated WebSocket read other messages than one that stayed"
    );
}

/// The messages read (up to the first error, and whether there was one).
fn read_frames(
    stream: &[u8],
    chunk: usize,
    small: bool,
    relocate: bool,
) -> (Vec<tungstenite::Message>, bool) {
    use tungstenite::protocol::Role;
    futures::executor::block_on(async {
        let mut leftover = Vec::new();
        let mut wire = Wire {
            input: stream,
            chunk,
        };
        let mut read = Vec::new();
        for _ in 0..MAX_MESSAGES {
            let mut bounded = ws::FrameBoundedStream::new(wire, std::mem::take(&mut leftover));
            if small {
                bounded.set_max_frame(256);
            }
            let mut socket = async_tungstenite::WebSocketStream::from_raw_socket(
                bounded,
                Role::Server,
                Some(ws::config(64 << 10)),
            )
            .await;
            loop {
                if read.len() >= MAX_MESSAGES {
                    return (read, false);
                }
                match socket.next().await {
                    None => return (read, false),
                    Some(Err(_)) => return (read, true),
                    Some(Ok(m)) => {
                        let moves = relocate && m.is_text();
                        let closed = m.is_close();
                        read.push(m);
                        if closed {
                            return (read, false);
                        }
                        if moves {
                            break;
                        }
                    }
                }
            }
            leftover = socket.get_mut().take_leftover();
            wire = socket.into_inner().into_inner();
        }
        (read, false)
    })
}

/// WHIP and WHEP requests (`POST /whip/{room}`, `POST /whep/{room}[/{publisher}]`, `PATCH`
/// and `DELETE` of a resource, `OPTIONS`), each a head and its body, as the front door
/// hands them to `whip::handle` (after `refuse_before_body`).
pub fn whip(data: &[u8]) {
    with_harness(|h| {
        let mut conns = 0;
        for raw in messages(data).take(16) {
            let request = h.expand(&String::from_utf8_lossy(raw));
            let mut wire = futures::io::Cursor::new(request.as_bytes());
            let mut buf = Vec::new();
            let Ok(head) = futures::executor::block_on(http::read_head(
                &mut wire,
                &mut buf,
                HeadLimits::default(),
            )) else {
                continue;
            };
            let mut rest = buf;
            rest.extend_from_slice(&request.as_bytes()[wire.position() as usize..]);
            let body = match head.content_length() {
                Ok(len) if len <= rest.len() => rest[..len].to_vec(),
                _ => continue,
            };
            if whip::room_of(&head.path).is_none() {
                continue;
            }
            if let Some(refused) = whip::refuse_before_body(&h.auth, &head) {
                let _ = refused.to_bytes(false);
                continue;
            }
            conns += 1;
            let owns = |_: &str| true;
            let mut cx = Context::new(h.now, conns, 0, &mut h.engine, &mut h.relay, &h.auth, &owns);
            let resp = whip::handle(&mut cx, &head, &body);
            trace!(
                "whip {} {} <- {} {:?} {}",
                head.method,
                head.path,
                resp.status,
                resp.headers,
                String::from_utf8_lossy(&resp.body)
            );
            let _ = resp.to_bytes(head.keep_alive());
            if let Some((_, location)) = resp.headers.iter().find(|(k, _)| k == "Location") {
                if let Some(id) = location.rsplit('/').next() {
                    let id = id.to_string();
                    h.note_id(&id);
                }
            }
            while h.engine.poll_notice().is_some() {}
            h.tick(Duration::from_millis(1));
        }
        for conn in 1..=conns {
            let now = h.now;
            h.engine.leave(now, conn);
        }
        h.check_empty("whip");
    })
}

/// A sendonly audio and video offer from a str0m client, to publish what the SDP calls
/// need published.
fn canned_offer(now: Instant) -> String {
    use str0m::media::{Direction as MediaDirection, MediaKind};
    let mut rtc = str0m::Rtc::builder().build(now);
    let host = str0m::Candidate::host("127.0.0.1:5000".parse().expect("an address"), "udp")
        .expect("a candidate");
    rtc.add_local_candidate(host);
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, MediaDirection::SendOnly, None, None, None);
    change.add_media(MediaKind::Video, MediaDirection::SendOnly, None, None, None);
    let (offer, _) = change.apply().expect("an offer");
    offer.to_sdp_string()
}

thread_local! {
    static CANNED_OFFER: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The SDP the clients of the SDP dialects send. The first byte picks the call (its value
/// modulo 5), the rest is the SDP text:
/// 0. a publisher's offer (`publish_offer`: WHIP, `/pubsub` publish-offer);
/// 1. a `/connect` offer (`connect_offer`);
/// 2. a viewer's offer (`subscribe_offer`: WHEP) in a room where another peer publishes
///    audio and video;
/// 3. a subscriber's answer (`subscribe_answer`: `/pubsub` subscribe-answer) to the
///    server's offer of that peer's tracks (`$mid0`, `$mid1` become that offer's mids);
/// 4. trickled candidates (one a line) for a published transport (`add_ice_candidate`).
pub fn sdp(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    with_harness(|h| {
        let offer = CANNED_OFFER.with(|c| {
            c.borrow_mut()
                .get_or_insert_with(|| canned_offer(h.now))
                .clone()
        });
        let now = h.now;
        let e = &mut h.engine;
        let room = "sdp";
        let (publisher, peer) = (1, 2);
        e.join(now, publisher, room, "pub", "Pub", None)
            .expect("join");
        e.join(now, peer, room, "peer", "Peer", None).expect("join");
        match which % 5 {
            0 => {
                let r = e.publish_offer(now, peer, &text);
                trace!("publish_offer: {:?}", r.map(|r| r.0));
            }
            1 => {
                let r = e.connect_offer(now, peer, &text);
                trace!("connect_offer: {:?}", r.map(|r| r.0));
            }
            2 => {
                e.publish_offer(now, publisher, &offer)
                    .expect("the canned offer publishes");
                let producers: Vec<String> = e
                    .room_producers(peer)
                    .expect("joined")
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect();
                let r = e.subscribe_offer(now, peer, &text, &producers);
                trace!("subscribe_offer: {:?}", r.map(|r| r.0));
            }
            3 => {
                e.publish_offer(now, publisher, &offer)
                    .expect("the canned offer publishes");
                let producers = e.publisher_producers(peer, publisher).expect("joined");
                let (t, offer) = e
                    .subscribe_create_offer(now, peer, &producers)
                    .expect("a subscribe offer");
                h.note_mids(&offer);
                let text = h.expand(&text);
                let r = h.engine.subscribe_answer(now, peer, &t, &text);
                trace!("subscribe_answer: {r:?}");
            }
            _ => {
                let (t, _) = e
                    .publish_offer(now, peer, &offer)
                    .expect("the canned offer publishes");
                for line in text.lines().take(MAX_MESSAGES) {
                    let r = e.add_ice_candidate(now, peer, &t, line);
                    trace!("add_ice_candidate: {r:?}");
                }
            }
        }
        h.tick(Duration::from_millis(1));
        let now = h.now;
        h.engine.leave(now, peer);
        h.engine.leave(now, publisher);
        h.check_empty("sdp");
    })
}

/// A client's DTLS parameters (its fingerprint need not match anything: no handshake
/// completes here).
fn client_dtls() -> DtlsParameters {
    DtlsParameters {
        role: Some("client".into()),
        fingerprints: vec![DtlsFingerprint {
            algorithm: "sha-256".into(),
            value: vec!["AB"; 32].join(":"),
        }],
    }
}

/// mediasoup's `produce` and `consume` parameters, as the mediasoup dialect parses and
/// checks them. The first byte: bit 0 and 1, the kinds of the two producers (video when
/// set); bit 2, connect the send transport before producing (else after). Then, NUL-
/// separated: the first producer's `rtpParameters` JSON, the second's, and the consumer's
/// `rtpCapabilities`.
pub fn produce(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|b| *b == 0);
    let mut next = || {
        parts
            .next()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
    };
    let (first, second, caps) = (next(), next(), next());
    with_harness(|h| {
        let now = h.now;
        let e = &mut h.engine;
        let (publisher, viewer) = (1, 2);
        e.join(now, publisher, "produce", "pub", "Pub", None)
            .expect("join");
        e.join(now, viewer, "produce", "view", "View", None)
            .expect("join");
        let send = e
            .create_transport(now, publisher, Direction::Send)
            .expect("a transport")
            .id;
        let recv = e
            .create_transport(now, viewer, Direction::Recv)
            .expect("a transport")
            .id;
        let connect_first = flags & 4 != 0;
        if connect_first {
            e.connect_transport(now, publisher, &send, &client_dtls())
                .expect("connects");
        }
        let kind = |bit: u8| {
            if flags & bit != 0 {
                Kind::Video
            } else {
                Kind::Audio
            }
        };
        let mut produced = Vec::new();
        for (params, bit) in [(first, 1), (second, 2)] {
            let Some(params) = params else { continue };
            let Ok(params) = serde_json::from_value::<RtpParameters>(params) else {
                continue;
            };
            let r = e.produce(now, publisher, &send, kind(bit), &params);
            trace!("produce: {r:?}");
            produced.extend(r);
        }
        if !connect_first {
            let _ = e.connect_transport(now, publisher, &send, &client_dtls());
        }
        let caps = caps.and_then(|c| serde_json::from_value::<RtpCapabilities>(c).ok());
        for p in &produced {
            let r = e.consume(now, viewer, &recv, p, caps.as_ref());
            trace!("consume {p}: {:?}", r.map(|c| c.id));
        }
        h.tick(Duration::from_millis(1));
        let now = h.now;
        h.engine.leave(now, viewer);
        h.engine.leave(now, publisher);
        h.check_empty("produce");
    })
}

/// The STUN magic cookie.
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Recomputes a STUN message's MESSAGE-INTEGRITY (if it has one) with `password`.
fn fix_integrity(buf: &mut [u8], password: &[u8]) {
    if buf.len() < 20 || buf[4..8] != STUN_MAGIC {
        return;
    }
    let mut off = 20;
    while off + 4 <= buf.len() {
        let typ = u16::from_be_bytes([buf[off], buf[off + 1]]);
        let len = u16::from_be_bytes([buf[off + 2], buf[off + 3]]) as usize;
        if typ == 0x0008 {
            if len == 20 && off + 24 <= buf.len() {
                // The length field counts up to the end of MESSAGE-INTEGRITY.
                let covered = (off + 24 - 20) as u16;
                let provider = str0m::crypto::from_feature_flags().sha1_hmac_provider;
                let mac = provider.sha1_hmac(
                    password,
                    &[&buf[0..2], &covered.to_be_bytes(), &buf[4..off]],
                );
                buf[off + 4..off + 24].copy_from_slice(&mac);
            }
            return;
        }
        off += 4 + len.div_ceil(4) * 4;
    }
}

/// Replaces every occurrence of `from` in `buf` with `to` (of the same length).
fn replace_all(buf: &mut [u8], from: &[u8], to: &[u8]) -> bool {
    let mut found = false;
    let mut i = 0;
    while i + from.len() <= buf.len() {
        if &buf[i..i + from.len()] == from {
            buf[i..i + from.len()].copy_from_slice(to);
            found = true;
            i += from.len();
        } else {
            i += 1;
        }
    }
    found
}

/// Datagrams from clients into the engine's demux (by source address, else by the STUN
/// ufrag) and on into str0m (STUN, DTLS, SRTP/SRTCP), with a connected send transport that
/// has an audio and a video producer, and a receive transport not yet connected (whose
/// DTLS waits). See the [module documentation](self) for the records.
pub fn datagrams(data: &[u8]) {
    with_harness(|h| {
        let now = h.now;
        let e = &mut h.engine;
        let (publisher, viewer) = (1, 2);
        e.join(now, publisher, "demux", "pub", "Pub", None)
            .expect("join");
        e.join(now, viewer, "demux", "view", "View", None)
            .expect("join");
        let mut send = e
            .create_transport(now, publisher, Direction::Send)
            .expect("a transport");
        let mut recv = e
            .create_transport(now, viewer, Direction::Recv)
            .expect("a transport");
        e.connect_transport(now, publisher, &send.id, &client_dtls())
            .expect("connects");
        for (kind, params) in [
            (
                Kind::Audio,
                r#"{"codecs":[{"mimeType":"audio/opus","payloadType":111,"clockRate":48000,"channels":2}],"encodings":[{"ssrc":1111}],"headerExtensions":[{"uri":"urn:ietf:params:rtp-hdrext:sdes:mid","id":4}],"rtcp":{"cname":"fuzz"},"mid":"0"}"#,
            ),
            (
                Kind::Video,
                r#"{"codecs":[{"mimeType":"video/VP8","payloadType":96,"clockRate":90000},{"mimeType":"video/rtx","payloadType":97,"clockRate":90000,"parameters":{"apt":96}}],"encodings":[{"ssrc":2222,"rtx":{"ssrc":2223}}],"headerExtensions":[{"uri":"urn:ietf:params:rtp-hdrext:sdes:mid","id":4}],"rtcp":{"cname":"fuzz"},"mid":"1"}"#,
            ),
        ] {
            let params: RtpParameters = serde_json::from_str(params).expect("parameters");
            let p = e
                .produce(now, publisher, &send.id, kind, &params)
                .expect("produces");
            e.consume(now, viewer, &recv.id, &p, None)
                .expect("consumes");
        }
        let creds = [
            (
                SEND_UFRAG,
                send.ice_parameters.username_fragment.clone(),
                std::mem::take(&mut send.ice_parameters.password),
            ),
            (
                RECV_UFRAG,
                recv.ice_parameters.username_fragment.clone(),
                std::mem::take(&mut recv.ice_parameters.password),
            ),
        ];
        let mut rest = data;
        for _ in 0..MAX_MESSAGES {
            let [header, hi, lo, tail @ ..] = rest else {
                break;
            };
            let len = (u16::from_be_bytes([*hi, *lo]) as usize).min(tail.len());
            let mut datagram = tail[..len].to_vec();
            rest = &tail[len..];
            for (placeholder, ufrag, password) in &creds {
                if replace_all(&mut datagram, *placeholder, ufrag.as_bytes()) {
                    fix_integrity(&mut datagram, password.as_bytes());
                }
            }
            let source = SocketAddr::from(([127, 0, 0, 1], 5000 + (header & 3) as u16));
            h.tick(Duration::from_millis((header >> 2) as u64));
            let now = h.now;
            let taken = h.engine.handle_datagram(now, source, &datagram);
            trace!(
                "datagram of {} bytes from {source}: taken {taken}, {:?}",
                datagram.len(),
                h.engine.counters()
            );
            h.engine.poll_transmits(&mut h.transmits);
            h.transmits.clear();
            while h.engine.poll_notice().is_some() {}
        }
        let now = h.now;
        h.engine.leave(now, viewer);
        h.engine.leave(now, publisher);
        h.check_empty("datagrams");
    })
}

/// The seed corpora (`fuzz/corpus/<target>/`), each seed run through its entry point: they
/// are real messages, and every input a fuzzer once crashed on is kept among them.
#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> fn(&[u8]) {
        match name {
            "http_request" => http_request,
            "websocket_frames" => websocket_frames,
            "mediasoup" => mediasoup,
            "pubsub" => pubsub,
            "p2p" => p2p,
            "connect" => connect,
            "sockjs" => sockjs,
            "whip" => whip,
            "sdp" => sdp,
            "produce" => produce,
            "datagrams" => datagrams,
            other => panic!("fuzz/corpus/{other} belongs to no entry point"),
        }
    }

    #[test]
    fn every_seed_runs_through_its_entry_point() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus");
        let mut seen = 0;
        for dir in std::fs::read_dir(dir).expect("fuzz/corpus") {
            let dir = dir.unwrap().path();
            let run = target(dir.file_name().unwrap().to_str().unwrap());
            for seed in std::fs::read_dir(&dir).unwrap() {
                let seed = seed.unwrap().path();
                run(&std::fs::read(&seed).unwrap());
                seen += 1;
            }
        }
        assert!(seen >= 11, "only {seen} seeds");
    }
}
