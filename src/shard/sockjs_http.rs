//! SockJS over HTTP (PROTOCOLS.md section 5) under `/echo` and `/sockjs/{namespace}`: the
//! greeting, `info`, CORS as sockjs-node sends it, the two WebSocket endpoints (as
//! dialects), and the requests of the HTTP transports (`xhr_streaming`, `xhr`,
//! `eventsource`, `xhr_send`), each served on the shard that has its session
//! (`sockjs_session`).
//!
//! Authentication is `/p2p`'s: the token comes as `?token=` on every request
//! (sockjs-client keeps the query string of the URL it was given), or none when
//! `p2p.allow_anonymous` is on.

use std::net::SocketAddr;
use std::rc::Rc;

use futures::channel::oneshot;

use super::conn::Conn;
use super::front_door::{self, rand_u32, relay_identity, relay_session, upgrade_required};
use super::sockjs_handle::{Cmd, Handle, Receiver};
use super::sockjs_session::{self, Located};
use super::state::Shard;
use crate::http::response::{chunk, LAST_CHUNK};
use crate::http::{ws, Head, Response};
use crate::signal::dialect::BoxedDialect;
use crate::signal::sockjs::{self, Receiving, Route, SockJs, Target, Transport};

/// `Cache-Control` of answers that must not be cached (sockjs-node's).
const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
/// How long a browser may keep a preflight's answer, in seconds (sockjs-node's year).
const PREFLIGHT_MAX_AGE: &str = "31536000";
const PLAIN: &str = "text/plain; charset=UTF-8";

/// The CORS headers of every SockJS answer, as sockjs-node sends them: the request's
/// `Origin` echoed with credentials allowed (sockjs-client's XHRs send credentials), or
/// `*` without one.
fn cors(head: &Head) -> Vec<(String, String)> {
    let mut h = Vec::new();
    match head
        .header("origin")
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        Some(origin) => {
            h.push(("Access-Control-Allow-Origin".into(), origin.to_string()));
            h.push(("Access-Control-Allow-Credentials".into(), "true".into()));
        }
        None => h.push(("Access-Control-Allow-Origin".into(), "*".into())),
    }
    h.push(("Vary".into(), "Origin".into()));
    if let Some(asked) = head.header("access-control-request-headers") {
        h.push(("Access-Control-Allow-Headers".into(), asked.to_string()));
    }
    h
}

fn with(mut resp: Response, headers: &[(String, String)]) -> Response {
    resp.headers.extend(headers.iter().cloned());
    resp
}

/// The answer to a preflight (`OPTIONS`).
fn preflight(head: &Head, methods: &str) -> Response {
    let resp = Response::new(204)
        .header("Access-Control-Allow-Methods", methods)
        .header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
        .header(
            "Cache-Control",
            &format!("public, max-age={PREFLIGHT_MAX_AGE}"),
        );
    with(resp, &cors(head))
}

fn plain(status: u16, text: &str, head: &Head) -> Response {
    let resp = Response::new(status)
        .header("Content-Type", PLAIN)
        .body(text.as_bytes().to_vec());
    with(resp, &cors(head))
}

/// The SockJS requests served like any other endpoint: the greeting, `info`, and the
/// WebSocket endpoints, which become sessions of the relay dialect (framed or not).
pub(super) fn route(
    shard: &Shard,
    head: &Head,
    route: Result<Route, String>,
) -> Result<BoxedDialect, Response> {
    let route = route.map_err(|m| with(Response::error(404, "not_found", &m), &cors(head)))?;
    let method = head.method.as_str();
    match route.target {
        Target::Greeting => Err(match method {
            "GET" | "HEAD" => plain(200, sockjs::GREETING, head),
            "OPTIONS" => preflight(head, "OPTIONS, GET"),
            _ => Response::method_not_allowed("GET"),
        }),
        Target::Info => Err(match method {
            "OPTIONS" => preflight(head, "OPTIONS, GET"),
            "GET" => match relay_identity(shard, head) {
                Ok(_) => {
                    let resp = Response::new(200)
                        .header("Content-Type", "application/json; charset=UTF-8")
                        .header("Cache-Control", NO_CACHE)
                        .body(sockjs::info(rand_u32()).to_string().into_bytes());
                    with(resp, &cors(head))
                }
                Err(resp) => with(resp, &cors(head)),
            },
            _ => Response::method_not_allowed("GET"),
        }),
        Target::RawWebsocket
        | Target::Session {
            transport: Transport::Websocket,
            ..
        } => {
            if method != "GET" {
                return Err(Response::method_not_allowed("GET"));
            }
            if !ws::is_upgrade(head) {
                return Err(upgrade_required(head));
            }
            let relay = Box::new(relay_session(route.namespace, relay_identity(shard, head)?));
            Ok(match route.target {
                Target::RawWebsocket => relay,
                _ => Box::new(SockJs::new(relay)),
            })
        }
        Target::Session { .. } => Err(Response::error(
            404,
            "not_found",
            "SockJS HTTP transports are served before routing",
        )),
    }
}

/// A request of an HTTP transport's session.
pub(super) struct SessionRoute {
    namespace: String,
    session: String,
    transport: Transport,
}

/// Whether the request belongs to a session of an HTTP transport (served by [`serve`]).
pub(super) fn session_route(head: &Head) -> Option<SessionRoute> {
    match sockjs::route(&head.path)?.ok()? {
        Route {
            namespace,
            target: Target::Session { session, transport },
        } if transport != Transport::Websocket => Some(SessionRoute {
            namespace,
            session,
            transport,
        }),
        _ => None,
    }
}

/// Serves one request of an HTTP transport on the shard that has its session: a message
/// to queue (`xhr_send`), or a receiving request whose connection the session takes over
/// until its answer ends. Returns the connection when it may serve its next request here.
pub(super) async fn serve(
    shard: &Rc<Shard>,
    mut stream: Conn,
    head: &Head,
    mut buf: Vec<u8>,
    peer: Option<SocketAddr>,
    route: SessionRoute,
) -> Option<(Conn, Vec<u8>)> {
    let keep_alive = head.keep_alive() && !shard.is_shutting_down();
    // EventSource can only GET; the XHR transports POST.
    let method = match route.transport {
        Transport::EventSource => "GET",
        _ => "POST",
    };
    if head.method == "OPTIONS" {
        let bodiless = head.content_length().ok() == Some(0) && !head.is_chunked();
        let resp = preflight(head, &format!("OPTIONS, {method}"));
        return answer(stream, buf, resp, keep_alive && bodiless).await;
    }
    // Until the body is read, an error answer closes the connection.
    if head.method != method {
        return answer(
            stream,
            buf,
            with(Response::method_not_allowed(method), &cors(head)),
            false,
        )
        .await;
    }
    let identity = match relay_identity(shard, head) {
        Ok(identity) => identity,
        Err(resp) => return answer(stream, buf, with(resp, &cors(head)), false).await,
    };
    let user = identity.as_ref().map(|i| i.user_id.clone());
    let body = match front_door::read_request_body(shard, &mut stream, &mut buf, head).await {
        Ok(body) => body,
        Err(resp) => return answer(stream, buf, with(resp, &cors(head)), false).await,
    };
    let key = format!("{}/{}", route.namespace, route.session);
    loop {
        match sockjs_session::locate(shard, &key).await {
            Located::There(owner) => {
                let mut raw = raw_request(head, &body);
                raw.extend_from_slice(&buf);
                front_door::relocate_request(shard, stream, raw, owner, peer).await;
                return None;
            }
            Located::Here(session) if session.user != user => {
                let resp = plain(403, "this SockJS session belongs to another user", head);
                return answer(stream, buf, resp, keep_alive).await;
            }
            Located::Here(session) if route.transport == Transport::XhrSend => {
                let resp = send(&session, &body, head).await;
                return answer(stream, buf, resp, keep_alive).await;
            }
            Located::Unknown if route.transport == Transport::XhrSend => {
                let resp = plain(404, "unknown SockJS session", head);
                return answer(stream, buf, resp, keep_alive).await;
            }
            found => {
                let kind = route
                    .transport
                    .receiving()
                    .expect("xhr_send is answered above");
                let rx = Box::new(Receiver {
                    conn: stream,
                    leftover: buf,
                    peer,
                    kind,
                    keep_alive,
                    headers: receiver_headers(head, kind),
                    raw: raw_request(head, &body),
                });
                let back = match found {
                    Located::Here(session) => match session.send(Cmd::Receive(rx)) {
                        Ok(()) => return None,
                        Err(Cmd::Receive(rx)) => rx,
                        Err(Cmd::Send { .. }) => unreachable!("a receive comes back"),
                    },
                    _ => {
                        // A new session: it counts against the rates of its address and
                        // its token subject.
                        let subject = identity
                            .as_ref()
                            .map(|i| front_door::token_subject(i, None));
                        if let Err(refusal) = shard.guard.admission.new_session(
                            peer.map(|p| p.ip()),
                            subject.as_deref(),
                            std::time::Instant::now(),
                        ) {
                            shard.counters.count_error("session_rate");
                            let resp = with(refusal.response(), &cors(head));
                            let rx = *rx;
                            return answer(rx.conn, rx.leftover, resp, keep_alive).await;
                        }
                        let dialect =
                            Box::new(relay_session(route.namespace.clone(), identity.clone()));
                        match sockjs_session::create(shard, key.clone(), user.clone(), dialect, rx)
                        {
                            Ok(()) => return None,
                            Err((_, rx)) => rx,
                        }
                    }
                };
                // The session ended or started elsewhere meanwhile: look again.
                let rx = *back;
                (stream, buf) = (rx.conn, rx.leftover);
            }
        }
    }
}

/// The request as received, its body included (a chunked one as one chunk), to hand to
/// another shard after the body was read.
fn raw_request(head: &Head, body: &[u8]) -> Vec<u8> {
    let mut raw = head.raw.clone();
    if head.is_chunked() {
        if !body.is_empty() {
            raw.extend(chunk(body));
        }
        raw.extend_from_slice(LAST_CHUNK);
    } else {
        raw.extend_from_slice(body);
    }
    raw
}

fn receiver_headers(head: &Head, kind: Receiving) -> Vec<(String, String)> {
    let mut h = vec![
        ("Content-Type".to_string(), kind.content_type().to_string()),
        ("Cache-Control".to_string(), NO_CACHE.to_string()),
    ];
    h.extend(cors(head));
    h
}

/// `xhr_send`: the body's messages go to the session, in order.
async fn send(session: &Handle, body: &[u8], head: &Head) -> Response {
    if body.is_empty() {
        return plain(500, "Payload expected.", head);
    }
    let messages = match std::str::from_utf8(body).map(sockjs::decode) {
        Ok(Ok(messages)) => messages,
        _ => return plain(500, "Broken JSON encoding.", head),
    };
    let (done, queued) = oneshot::channel();
    if session.send(Cmd::Send { messages, done }).is_err() || queued.await.is_err() {
        return plain(404, "unknown SockJS session", head);
    }
    with(
        Response::new(204).header("Content-Type", PLAIN),
        &cors(head),
    )
}

async fn answer(
    mut stream: Conn,
    buf: Vec<u8>,
    resp: Response,
    keep_alive: bool,
) -> Option<(Conn, Vec<u8>)> {
    let written = resp.write_to(&mut stream, keep_alive).await.is_ok();
    (written && keep_alive).then_some((stream, buf))
}
