//! Every shard's front door: accept, read the request head within its limits, route.
//! Plain HTTP requests are answered here; WebSocket dialects become sessions.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{Either, FutureExt};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::admission::{self, Limbo, Permit, ShedSignal, Verdict};
use super::conn::Conn;
use super::fault;
use super::join;
use super::mesh::{Handover, MeshMsg};
use super::observe;
use super::sockjs_http;
use super::state::Shard;
use super::timeout::within;
use super::ws_session;
use crate::auth::{validate_id, AuthError, Grant, Identity};
use crate::http::api_docs::{self, LoginRequest, LoginResponse};
use crate::http::request::percent_decode;
use crate::http::tls::{TlsConn, TLS_HANDSHAKE_BYTE};
use crate::http::{
    read_body, read_chunked_body, read_head, ws, Head, HeadError, HeadLimits, Response,
};
use crate::signal::connect::ConnectDialect;
use crate::signal::dialect::BoxedDialect;
use crate::signal::mediasoup::MediasoupDialect;
use crate::signal::p2p;
use crate::signal::pubsub;
use crate::signal::whip;
use crate::stats::ShardCounters;

/// How long a connection that is refused (over `limits.connections_per_ip`) or served from
/// the descriptor reserve has for its TLS handshake and its request head.
const LIMBO_HEAD_WAIT: Duration = Duration::from_secs(1);
/// How long a connection from the descriptor reserve whose bytes were not there when it
/// was accepted waits for them before it is closed.
const RESERVE_FIRST_BYTE: Duration = Duration::from_millis(200);
/// Accepts that failed for want of a descriptor in a row before the spare one is spent to
/// accept and close a waiting connection (shedding did not free any).
const SPARE_AFTER: u32 = 3;

/// Accepts on `listener` (whose descriptor is `listener_fd`) until shutdown.
pub(super) async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    listener_fd: std::os::fd::RawFd,
) {
    let mut shutdown = shard.shutdown.clone();
    // One descriptor kept free, spent to accept and close a waiting client when the
    // process has none left, so that clients fail fast instead of waiting in the backlog.
    let mut spare = open_spare();
    let mut out_of_fds = 0u32;
    let mut warned = false;
    loop {
        let accepted = futures::select! {
            r = listener.accept().fuse() => r,
            _ = shutdown => break,
        };
        match accepted {
            Ok(stream) => {
                out_of_fds = 0;
                admit(&shard, stream);
            }
            Err(e) => {
                let e = std::io::Error::from(e);
                if admission::is_out_of_descriptors(&e) {
                    // Sheds the connections waiting for a request head (warned once a
                    // minute at most), then tries again.
                    shard.guard.admission.out_of_descriptors(shard.id);
                    shard.guard.sync();
                    shard.counters.count_error("out_of_descriptors");
                    out_of_fds += 1;
                    if out_of_fds >= SPARE_AFTER {
                        drop(spare.take());
                        admission::refuse_waiting(listener_fd);
                        spare = open_spare();
                    }
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                } else {
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            shard = shard.id,
                            "accept failed: {e} (logged once; check LimitNOFILE / ulimit -n)"
                        );
                    }
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A descriptor to keep in reserve.
fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Admission of an accepted connection (process-wide: connections per address, the
/// descriptor reserve), then its task.
fn admit(shard: &Rc<Shard>, stream: TcpStream) {
    let ip = stream.peer_addr().ok().map(|a| a.ip());
    let (permit, verdict) = shard.guard.admission.admit(ip, shard.id);
    shard.guard.sync();
    let (mode, limbo) = match verdict {
        Verdict::Admitted => (Mode::Normal, None),
        Verdict::OverIpCap(cap) => {
            shard.counters.count_error("connections_per_ip");
            (
                Mode::OverIpCap(cap),
                shard.guard.enter_limbo(verdict, false),
            )
        }
        Verdict::Reserve => {
            shard.counters.count_error("descriptor_reserve");
            let pending = admission::has_pending_bytes(stream.as_raw_fd());
            let limbo = shard.guard.enter_limbo(verdict, !pending);
            (Mode::Reserve { pending }, limbo)
        }
    };
    if mode != Mode::Normal && limbo.is_none() {
        // As many are being refused on this shard as it may hold: closed at once.
        return;
    }
    fault::spawn_guarded(
        shard.id,
        "HTTP connection",
        serve_connection(shard.clone(), stream, permit, mode, limbo),
    );
}

/// How [`serve_http`] treats a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Accepted here, or a connection that goes on after a request served elsewhere.
    Normal,
    /// Relocated from another shard, whose first request was admitted there.
    Relocated,
    /// Its address holds `limits.connections_per_ip` already: its request gets 429.
    OverIpCap(u32),
    /// Accepted from the descriptor reserve: /health, /metrics and /latency only;
    /// `pending`: its first bytes were there when it was accepted.
    Reserve { pending: bool },
}

impl Mode {
    fn limbo(self) -> bool {
        matches!(self, Mode::OverIpCap(_) | Mode::Reserve { .. })
    }
}

/// Runs `fut` unless this shard sheds its connections waiting for a request first
/// (`None`): under descriptor pressure.
async fn unless_shed<T>(shed: ShedSignal, fut: impl Future<Output = T>) -> Option<T> {
    futures::pin_mut!(fut);
    match futures::future::select(fut, shed).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// Whether a request opens a session: a WebSocket upgrade, or a WHIP/WHEP POST.
fn opens_session(head: &Head) -> bool {
    ws::is_upgrade(head) || (head.method == "POST" && whip::room_of(&head.path).is_some())
}

/// The token subject a new session counts against (`limits.sessions_per_token_*`): the
/// user id and the room (the token's scope, else the one the path names).
pub(super) fn token_subject(identity: &Identity, path_room: Option<&str>) -> String {
    let room = identity.room.as_deref().or(path_room).unwrap_or("");
    format!("{}\u{1f}{room}", identity.user_id)
}

/// Counts a new session against the rates of its address and its token subject; the
/// 429 answer when over.
fn session_rate(
    shard: &Shard,
    head: &Head,
    peer: Option<std::net::SocketAddr>,
) -> Option<Response> {
    let subject = head
        .token()
        .and_then(|t| shard.auth.verify(t).ok())
        .map(|id| token_subject(&id, whip::room_of(&head.path)));
    match shard.guard.admission.new_session(
        peer.map(|p| p.ip()),
        subject.as_deref(),
        Instant::now(),
    ) {
        Ok(()) => None,
        Err(refusal) => {
            shard.counters.count_error("session_rate");
            tracing::debug!(
                shard = shard.id,
                ?peer,
                per = refusal.per,
                "new session refused for its rate"
            );
            Some(refusal.response())
        }
    }
}

/// What a request turns into.
enum Routed {
    Respond(Response),
    /// A WebSocket dialect's session, to run once the upgrade is answered.
    Session(BoxedDialect),
}

async fn serve_connection(
    shard: Rc<Shard>,
    stream: TcpStream,
    permit: Permit,
    mode: Mode,
    _limbo: Option<Limbo>,
) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    if mode == (Mode::Reserve { pending: false }) {
        // From the reserve, a client gets a moment for its first bytes, no more.
        let mut byte = [0u8; 1];
        if !matches!(
            within(RESERVE_FIRST_BYTE, stream.peek(&mut byte)).await,
            Some(Ok(1..))
        ) {
            return;
        }
    }
    let conn = match &shard.tls {
        None => Conn::plain(stream, Some(permit)),
        Some(config) => {
            let wait = if mode.limbo() {
                LIMBO_HEAD_WAIT
            } else {
                shard.config.head_timeout
            };
            let tls = open_tls(&shard, stream, config.clone(), wait);
            match unless_shed(shard.guard.shed_signal(), tls).await.flatten() {
                Some(tls) => Conn::tls(tls, Some(permit)),
                None => return,
            }
        }
    };
    serve_http(shard, conn, Vec::new(), peer, mode).await;
}

/// Starts TLS on a fresh connection. A client that speaks plain HTTP to the TLS port gets
/// a plain-text 400 that says so, instead of a handshake failure it cannot read.
async fn open_tls(
    shard: &Shard,
    mut stream: TcpStream,
    config: std::sync::Arc<futures_rustls::rustls::ServerConfig>,
    wait: Duration,
) -> Option<Box<TlsConn<TcpStream>>> {
    let mut first = [0u8; 1024];
    let n = within(wait, stream.read(&mut first)).await?.ok()?;
    if n == 0 {
        return None;
    }
    if first[0] != TLS_HANDSHAKE_BYTE {
        let r = Response::error(
            400,
            "tls_required",
            "this port speaks HTTPS: use https:// or wss://",
        );
        let _ = r.write_to(&mut stream, false).await;
        return None;
    }
    match TlsConn::new(stream, config, &first[..n]) {
        Ok(tls) => Some(Box::new(tls)),
        Err(e) => {
            tracing::debug!(shard = shard.id, "TLS handshake failed: {e}");
            None
        }
    }
}

/// Serves HTTP on a connection; `buf` holds bytes already read (a relocated request).
pub(super) async fn serve_http(
    shard: Rc<Shard>,
    mut stream: Conn,
    mut buf: Vec<u8>,
    peer: Option<std::net::SocketAddr>,
    mode: Mode,
) {
    let limits = HeadLimits::default();
    let head_timeout = if mode.limbo() {
        LIMBO_HEAD_WAIT
    } else {
        shard.config.head_timeout
    };
    let mut first = true;
    loop {
        // Under descriptor pressure the shard sheds the connections waiting here.
        let reading = unless_shed(
            shard.guard.shed_signal(),
            read_head(&mut stream, &mut buf, limits),
        );
        let head = match within(head_timeout, reading).await {
            Some(None) => {
                shard.counters.count_error("shed_waiting_for_request");
                return;
            }
            None if mode.limbo() => return,
            None => {
                // An idle keep-alive connection just closes; a client that started (or
                // never sent) its first request learns why.
                if first || !buf.is_empty() {
                    let r =
                        Response::error(408, "request_timeout", "no complete request head in time");
                    let _ = r.write_to(&mut stream, false).await;
                }
                return;
            }
            Some(Some(Ok(head))) => head,
            Some(Some(Err(HeadError::TooLarge))) => {
                let r = Response::error(
                    431,
                    "headers_too_large",
                    "request head over 16 KiB or 64 headers",
                );
                let _ = r.write_to(&mut stream, false).await;
                return;
            }
            Some(Some(Err(HeadError::Malformed(m)))) => {
                let _ = Response::error(400, "bad_request", &m)
                    .write_to(&mut stream, false)
                    .await;
                return;
            }
            Some(Some(Err(_))) => return,
        };
        let was_first = std::mem::replace(&mut first, false);
        if mode.limbo() {
            let resp = match mode {
                Mode::OverIpCap(cap) => Response::error(
                    429,
                    "too_many_connections",
                    &format!(
                        "this address holds {cap} connections to the server already \
                         (limits.connections_per_ip); close some, then retry"
                    ),
                )
                .header("Retry-After", "1"),
                _ if is_operator_request(&head) => match route(&shard, &head, &[]).await {
                    Routed::Respond(resp) => resp,
                    Routed::Session(_) => unreachable!("operator routes answer"),
                },
                _ => Response::error(
                    503,
                    "busy",
                    "the server is at its file-descriptor limit (RLIMIT_NOFILE): only \
                     /health, /metrics and /latency are served until it eases; retry shortly",
                )
                .header("Retry-After", "1"),
            };
            let mut resp = resp;
            resp.omit_body = head.method == "HEAD";
            let _ = resp.write_to(&mut stream, false).await;
            if announces_body(&head) {
                discard_unread_body(&mut stream, &head, buf.len()).await;
            }
            return;
        }
        // Requests of SockJS HTTP transports are served by the shard that has the session.
        if let Some(route) = sockjs_http::session_route(&head) {
            match sockjs_http::serve(&shard, stream, &head, buf, peer, route).await {
                Some((s, b)) => {
                    (stream, buf) = (s, b);
                    continue;
                }
                None => return,
            }
        }
        let keep_alive = head.keep_alive() && !shard.is_shutting_down();
        // New sessions count against the rates of their address and token subject, once:
        // on the shard that read the request first.
        let admitted = mode == Mode::Relocated && was_first;
        if let Some(mut resp) = (!admitted && opens_session(&head))
            .then(|| session_rate(&shard, &head, peer))
            .flatten()
        {
            if whip::room_of(&head.path).is_some() {
                resp = resp.header("Access-Control-Allow-Origin", "*");
            }
            let bodiless = !announces_body(&head);
            let _ = resp.write_to(&mut stream, keep_alive && bodiless).await;
            if keep_alive && bodiless {
                continue;
            }
            discard_unread_body(&mut stream, &head, buf.len()).await;
            return;
        }
        // Requests for a room (WHIP/WHEP, /connect) are served by the shard that owns it.
        let room = match head.path.as_str() {
            "/connect" => join::connect_target(&shard, &head)
                .ok()
                .map(|t| t.conversation),
            path => whip::room_of(path).map(str::to_string),
        };
        if let Some(room) = room {
            let owner = shard.owner_of(&room);
            if owner != shard.id {
                let mut request = head.raw.clone();
                request.extend_from_slice(&buf);
                relocate_request(&shard, stream, request, owner, peer).await;
                return;
            }
        }
        // The route and the token are checked from the head: a body is read only for a
        // request that takes one and may send it. Otherwise the answer comes without
        // reading the body, and the connection then closes (its unread bytes with it).
        let refused = if takes_body(&shard, &head) {
            whip::room_of(&head.path).and_then(|_| whip::refuse_before_body(&shard.auth, &head))
        } else if announces_body(&head) {
            match route(&shard, &head, &[]).await {
                Routed::Respond(resp) => Some(resp),
                Routed::Session(_) => Some(Response::error(
                    400,
                    "bad_request",
                    "a WebSocket upgrade request carries no body",
                )),
            }
        } else {
            None
        };
        if let Some(mut resp) = refused {
            resp.omit_body = head.method == "HEAD";
            let _ = resp
                .write_to(&mut stream, keep_alive && !announces_body(&head))
                .await;
            if keep_alive && !announces_body(&head) {
                continue;
            }
            discard_unread_body(&mut stream, &head, buf.len()).await;
            return;
        }
        let body = match read_request_body(&shard, &mut stream, &mut buf, &head).await {
            Ok(body) => body,
            Err(resp) => {
                let _ = resp.write_to(&mut stream, false).await;
                return;
            }
        };
        match route(&shard, &head, &body).await {
            Routed::Respond(mut resp) => {
                resp.omit_body = head.method == "HEAD";
                if resp.write_to(&mut stream, keep_alive).await.is_err() || !keep_alive {
                    return;
                }
            }
            Routed::Session(dialect) => {
                let leftover = std::mem::take(&mut buf);
                ws_session::start(shard, stream, &head, leftover, dialect, peer).await;
                return;
            }
        }
    }
}

/// The requests a connection from the descriptor reserve may make.
fn is_operator_request(head: &Head) -> bool {
    matches!(head.method.as_str(), "GET" | "HEAD")
        && matches!(head.path.as_str(), "/health" | "/metrics" | "/latency")
}

/// Whether this request's route reads a body: `POST /login` and WHIP/WHEP.
fn takes_body(shard: &Shard, head: &Head) -> bool {
    (head.path == "/login" && shard.config.login_enabled) || whip::room_of(&head.path).is_some()
}

/// Whether the head announces a body (chunked, or a Content-Length that is not 0).
/// How long an early answer waits for the rest of a body it did not read.
const LINGER: Duration = Duration::from_secs(2);
/// The most body bytes an early answer reads and throws away before it closes.
const LINGER_BYTES: usize = 1024 * 1024;

/// After an answer sent without reading the request's body: reads and throws away what the
/// client still sends of it (bounded in bytes and time, into a small buffer, so nothing is
/// held), so that closing does not reset the connection before the client read the answer
/// (a close with unread data sends RST, which makes clients lose the response).
async fn discard_unread_body(stream: &mut Conn, head: &Head, already: usize) {
    let _ = stream.flush().await;
    let announced = head.content_length().unwrap_or(LINGER_BYTES);
    let mut left = announced.min(LINGER_BYTES).saturating_sub(already);
    if head.header("transfer-encoding").is_some() {
        left = LINGER_BYTES;
    }
    let mut scratch = [0u8; 4096];
    let _ = within(LINGER, async {
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

fn announces_body(head: &Head) -> bool {
    head.header("transfer-encoding").is_some() || head.content_length().map_or(true, |n| n > 0)
}

/// Request body bytes a shard holds while reading them, against
/// `limits.request_buffer_bytes`; released when dropped.
struct BodyReservation<'a> {
    shard: &'a Shard,
    bytes: usize,
}

impl<'a> BodyReservation<'a> {
    fn take(shard: &'a Shard, bytes: usize) -> Result<BodyReservation<'a>, Response> {
        let held = shard.request_bytes.get();
        let budget = shard.config.limits.request_buffer_bytes;
        if bytes > 0 && held.saturating_add(bytes) > budget {
            // Counted (errors by code in /health and /metrics) and logged at debug: under
            // a flood, a warning per refused request would be a flood of its own.
            shard.counters.count_error("request_buffer_full");
            tracing::debug!(
                shard = shard.id,
                held,
                wanted = bytes,
                budget,
                "request body refused: the shard's request buffer budget is spent"
            );
            return Err(Response::error(
                503,
                "busy",
                &format!(
                    "too many request bodies in flight on this shard \
                     (limits.request_buffer_bytes = {budget}); retry shortly"
                ),
            )
            .header("Retry-After", "1"));
        }
        shard.request_bytes.set(held + bytes);
        Ok(BodyReservation { shard, bytes })
    }
}

impl Drop for BodyReservation<'_> {
    fn drop(&mut self) {
        let held = self.shard.request_bytes.get();
        self.shard.request_bytes.set(held - self.bytes);
    }
}

pub(super) async fn read_request_body(
    shard: &Shard,
    stream: &mut Conn,
    buf: &mut Vec<u8>,
    head: &Head,
) -> Result<Vec<u8>, Response> {
    let too_large = || {
        Response::error(
            413,
            "payload_too_large",
            &format!("body over {} bytes", shard.config.max_message_bytes),
        )
    };
    if head.header("transfer-encoding").is_some() {
        if !head.is_chunked() {
            return Err(Response::error(
                411,
                "length_required",
                "the only transfer coding accepted is chunked; or send Content-Length",
            ));
        }
        if head.header("content-length").is_some() {
            return Err(Response::error(
                400,
                "bad_request",
                "Content-Length and Transfer-Encoding together",
            ));
        }
        // Node's http client (sockjs-client's XHR driver there) sends bodies chunked.
        let limit = shard.config.max_message_bytes;
        // Its length is not known: it holds the most it may grow to.
        let _held = BodyReservation::take(shard, limit)?;
        return match within(
            shard.config.head_timeout,
            read_chunked_body(stream, buf, limit),
        )
        .await
        {
            Some(Ok(body)) => Ok(body),
            Some(Err(HeadError::TooLarge)) => Err(too_large()),
            Some(Err(e)) => Err(Response::error(400, "bad_request", &e.to_string())),
            None => Err(Response::error(
                408,
                "request_timeout",
                "body not received in time",
            )),
        };
    }
    let len = head
        .content_length()
        .map_err(|e| Response::error(400, "bad_request", &e.to_string()))?;
    if len > shard.config.max_message_bytes {
        return Err(too_large());
    }
    let _held = BodyReservation::take(shard, len)?;
    match within(shard.config.head_timeout, read_body(stream, buf, len)).await {
        Some(Ok(body)) => Ok(body),
        Some(Err(e)) => Err(Response::error(400, "bad_request", &e.to_string())),
        None => Err(Response::error(
            408,
            "request_timeout",
            "body not received in time",
        )),
    }
}

async fn route(shard: &Rc<Shard>, head: &Head, body: &[u8]) -> Routed {
    let path = head.path.as_str();
    if let Some(sockjs) = crate::signal::sockjs::route(path) {
        return match sockjs_http::route(shard, head, sockjs) {
            Ok(dialect) => Routed::Session(dialect),
            Err(resp) => Routed::Respond(resp),
        };
    }
    let resp = match path {
        "/health" => match head.method.as_str() {
            "GET" | "HEAD" => observe::health(shard).await,
            _ => Response::method_not_allowed("GET"),
        },
        "/latency" => match head.method.as_str() {
            "GET" => observe::latency(shard, head).await,
            _ => Response::method_not_allowed("GET"),
        },
        "/metrics" => match head.method.as_str() {
            "GET" => observe::metrics(shard).await,
            _ => Response::method_not_allowed("GET"),
        },
        "/login" if shard.config.login_enabled => match head.method.as_str() {
            "POST" => login(shard, body),
            _ => Response::method_not_allowed("POST"),
        },
        "/login" => Response::error(
            404,
            "not_found",
            "login is disabled (auth.login): it is on in dev mode (no JWT secret) or with \
             auth.login = true (CORELAY_LOGIN, --login)",
        ),
        "/connect" => {
            if !ws::is_upgrade(head) {
                return Routed::Respond(upgrade_required(head));
            }
            return match join::connect_target(shard, head) {
                Ok(t) => Routed::Session(Box::new(ConnectDialect::new(t))),
                Err(resp) => Routed::Respond(resp),
            };
        }
        "/pubsub" => {
            if !ws::is_upgrade(head) {
                return Routed::Respond(upgrade_required(head));
            }
            // The token may come with the upgrade or as the first message (auth).
            return match head.token() {
                None => Routed::Session(Box::new(pubsub::Session::new(0, None))),
                Some(t) => match shard.auth.verify(t) {
                    Ok(identity) => {
                        Routed::Session(Box::new(pubsub::Session::new(0, Some(identity))))
                    }
                    Err(e) => Routed::Respond(Response::auth_error(&e)),
                },
            };
        }
        "/" | "/demo" | "/demo.js" | "/demo.css" if !ws::is_upgrade(head) => {
            match head.method.as_str() {
                "GET" | "HEAD" => demo_asset(path),
                _ => Response::method_not_allowed("GET"),
            }
        }
        // An upgrade on `/` without a token is the publish/subscribe dialect: Rheomesh's
        // client opens `ws://host:port` (no path) and sends `auth` first. With a token,
        // `/` is the mediasoup-client dialect, as `/ws`.
        "/" if head.token().is_none_or(|t| t.trim().is_empty()) => {
            return Routed::Session(Box::new(pubsub::Session::new(0, None)));
        }
        "/" | "/ws" => {
            if !ws::is_upgrade(head) {
                return Routed::Respond(upgrade_required(head));
            }
            return match shard.auth.verify(head.token().unwrap_or("")) {
                Ok(identity) => Routed::Session(Box::new(MediasoupDialect::new(identity))),
                Err(e) => Routed::Respond(Response::auth_error(&e)),
            };
        }
        "/openapi.json" | "/docs" | "/asyncapi" => match head.method.as_str() {
            "GET" => api_docs::document(path),
            _ => Response::method_not_allowed("GET"),
        },
        _ if path.starts_with(join::PREFIX) => join::handle(shard, head).await,
        _ if whip::room_of(path).is_some() => {
            shard.with_context(shard.next_id(), |cx| whip::handle(cx, head, body))
        }
        _ if path == "/p2p" || path.starts_with("/p2p/") => {
            return match p2p_request(shard, head) {
                Ok(session) => Routed::Session(Box::new(session)),
                Err(resp) => Routed::Respond(resp),
            };
        }
        _ => Response::error(404, "not_found", &format!("no route for {path}")),
    };
    Routed::Respond(resp)
}

fn login(shard: &Shard, body: &[u8]) -> Response {
    let req = match LoginRequest::from_body(body) {
        Ok(r) => r,
        Err(m) => return Response::error(400, "bad_request", &m),
    };
    let name = req.name();
    let user_id = format!("user-{:08x}", shard.next_id() as u32 ^ rand_u32());
    let (token, expires_at) = shard.auth.mint(&Grant {
        user_id: &user_id,
        user_name: Some(name),
        room: req.room_id.as_deref(),
        ttl: shard.config.token_ttl,
    });
    let body = LoginResponse {
        token,
        expires_at,
        user_id,
    };
    Response::json(200, &serde_json::to_value(&body).expect("login serializes"))
}

pub(super) fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// Hands a connection whose request belongs to another shard's room to that shard.
pub(super) async fn relocate_request(
    shard: &Shard,
    stream: Conn,
    request: Vec<u8>,
    owner: usize,
    peer: Option<std::net::SocketAddr>,
) {
    let conn = match stream.detach() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(shard = shard.id, "cannot relocate request: {e}");
            return;
        }
    };
    ShardCounters::add(&shard.counters.relocated_out, 1);
    let msg = MeshMsg::Adopt(Box::new(Handover {
        conn,
        leftover: request,
        pending: String::new(),
        peer,
        session: None,
    }));
    if shard.mesh.send_to(owner, msg).await.is_err() {
        tracing::warn!(
            shard = shard.id,
            to = owner,
            "relocation failed: owner shard is gone"
        );
    }
}

/// The built-in demo page (publish/subscribe dialect), embedded so it works offline.
fn demo_asset(path: &str) -> Response {
    let (body, content_type) = match path {
        "/demo.js" => (
            include_str!("../demo/demo.js"),
            "text/javascript; charset=utf-8",
        ),
        "/demo.css" => (include_str!("../demo/demo.css"), "text/css; charset=utf-8"),
        _ => (
            include_str!("../demo/index.html"),
            "text/html; charset=utf-8",
        ),
    };
    Response::new(200)
        .header("Content-Type", content_type)
        .header("Cache-Control", "no-cache")
        .body(body.as_bytes().to_vec())
}

/// A plain request to a WebSocket endpoint.
pub(super) fn upgrade_required(head: &Head) -> Response {
    if head.method != "GET" {
        return Response::method_not_allowed("GET");
    }
    Response::error(426, "upgrade_required", "this endpoint speaks WebSocket")
        .header("Upgrade", "websocket")
}

fn p2p_request(shard: &Shard, head: &Head) -> Result<p2p::Session, Response> {
    if head.method != "GET" {
        return Err(Response::method_not_allowed("GET"));
    }
    if !ws::is_upgrade(head) {
        return Err(upgrade_required(head));
    }
    let namespace = head.path.strip_prefix("/p2p").unwrap_or("");
    // Clients may percent-encode the segment (encodeURIComponent turns ':' into %3A).
    let namespace = percent_decode(namespace.strip_prefix('/').unwrap_or(namespace));
    if !namespace.is_empty() {
        validate_id("namespace", &namespace)
            .map_err(|m| Response::error(400, "bad_request", &m))?;
    }
    let identity = relay_identity(shard, head)?;
    Ok(relay_session(namespace.to_string(), identity))
}

/// Who a relay request (`/p2p`, SockJS) comes from: its token's identity, or nobody when
/// anonymous relay is allowed and it has no token.
pub(super) fn relay_identity(shard: &Shard, head: &Head) -> Result<Option<Identity>, Response> {
    match head.token() {
        Some(t) => Ok(Some(
            shard.auth.verify(t).map_err(|e| Response::auth_error(&e))?,
        )),
        None if shard.config.p2p_allow_anonymous => Ok(None),
        None => Err(Response::auth_error(&AuthError::Missing)),
    }
}

/// A fresh relay session in `namespace` for that identity.
pub(super) fn relay_session(namespace: String, identity: Option<Identity>) -> p2p::Session {
    p2p::Session {
        namespace,
        token_user: identity.as_ref().map(|i| i.user_id.clone()),
        token_room: identity.and_then(|i| i.room),
        joined: None,
    }
}
