//! The socket side of a relay session: WebSocket in and out, delivery to room members,
//! and relocation to the room's owner shard once `connect` names the room.

use std::rc::Rc;

use async_tungstenite::WebSocketStream;
use futures::{AsyncWriteExt, SinkExt, StreamExt};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role};
use tungstenite::{Error as WsError, Message};

use super::conn::Conn;
use super::mesh::{MeshMsg, P2pHandover};
use super::state::{Outbound, Shard, OUTBOUND_QUEUE};
use crate::http::ws::{self, FrameBoundedStream};
use crate::http::Head;
use crate::signal::p2p::{self, ConnId, Delivery, Request};
use crate::stats::ShardCounters;

type Ws = WebSocketStream<FrameBoundedStream<Conn>>;

/// Completes the upgrade on the accepting shard and runs the session.
pub(super) async fn start(
    shard: Rc<Shard>,
    mut stream: Conn,
    head: &Head,
    leftover: Vec<u8>,
    session: p2p::Session,
    peer: Option<std::net::SocketAddr>,
) {
    match ws::accept(head) {
        Err(resp) => {
            let _ = resp.write_to(&mut stream, false).await;
        }
        Ok(reply) => {
            if stream.write_all(&reply).await.is_err() {
                return;
            }
            let ws = websocket(&shard, stream, leftover).await;
            run(shard, ws, session, None, peer).await;
        }
    }
}

/// Continues a session relocated from another shard.
pub(super) async fn adopt(shard: Rc<Shard>, handover: P2pHandover) {
    ShardCounters::add(&shard.counters.relocated_in, 1);
    let ws = websocket(&shard, Conn::attach(handover.conn), handover.leftover).await;
    run(
        shard,
        ws,
        handover.session,
        Some(handover.pending),
        handover.peer,
    )
    .await;
}

async fn websocket(shard: &Shard, stream: Conn, leftover: Vec<u8>) -> Ws {
    let config = ws::config(shard.config.max_message_bytes);
    WebSocketStream::from_raw_socket(
        FrameBoundedStream::new(stream, leftover),
        Role::Server,
        Some(config),
    )
    .await
}

enum Event {
    Incoming(Option<Result<Message, WsError>>),
    Outgoing(Option<Outbound>),
    Shutdown,
}

/// Why a session loop ended.
enum End {
    Closed(&'static str),
    Relocate { owner: usize, pending: String },
}

async fn run(
    shard: Rc<Shard>,
    mut ws: Ws,
    mut session: p2p::Session,
    mut pending: Option<String>,
    peer: Option<std::net::SocketAddr>,
) {
    let conn = shard.next_id();
    ShardCounters::add(&shard.counters.connections, 1);
    let (tx, mut rx) = futures::channel::mpsc::channel(OUTBOUND_QUEUE);
    shard.outbound.borrow_mut().insert(conn, tx);
    let mut shutdown = shard.shutdown.clone();
    tracing::info!(shard = shard.id, conn, ?peer, dialect = "p2p", ns = %session.namespace, "connection open");

    let end = loop {
        let event = match pending.take() {
            Some(text) => Event::Incoming(Some(Ok(Message::text(text)))),
            None => {
                futures::select! {
                    m = ws.next() => Event::Incoming(m),
                    o = rx.next() => Event::Outgoing(o),
                    _ = shutdown => Event::Shutdown,
                }
            }
        };
        match event {
            Event::Incoming(Some(Ok(Message::Text(text)))) => {
                match handle_text(&shard, conn, &mut session, text.as_str()) {
                    Ok(Some(owner)) => {
                        break End::Relocate {
                            owner,
                            pending: text.as_str().to_string(),
                        }
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        if send_error(&mut ws, &session, &reason).await.is_err() {
                            break End::Closed("send failed");
                        }
                    }
                }
            }
            Event::Incoming(Some(Ok(Message::Binary(_)))) => {
                if send_error(
                    &mut ws,
                    &session,
                    "binary messages are not supported; send JSON text",
                )
                .await
                .is_err()
                {
                    break End::Closed("send failed");
                }
            }
            Event::Incoming(Some(Ok(Message::Close(_)))) | Event::Incoming(None) => {
                break End::Closed("client closed")
            }
            Event::Incoming(Some(Ok(_))) => {} // ping/pong: tungstenite answers pings itself
            Event::Incoming(Some(Err(WsError::Capacity(e)))) => {
                // The parser cannot resynchronise after an oversized frame, so the client
                // learns why and is closed with 1009; nobody else is affected.
                let reason = format!(
                    "message too large: {e} (limit {} bytes)",
                    shard.config.max_message_bytes
                );
                let _ = send_error(&mut ws, &session, &reason).await;
                let _ = close(&mut ws, CloseCode::Size, "message too large").await;
                break End::Closed("message too large");
            }
            Event::Incoming(Some(Err(_))) => break End::Closed("protocol error"),
            Event::Outgoing(Some(Outbound::Text(text))) => {
                if ws.send(Message::text(&*text)).await.is_err() {
                    break End::Closed("send failed");
                }
            }
            Event::Outgoing(None) => {
                // Our queue was dropped: this client fell too far behind.
                let _ = close(&mut ws, CloseCode::Again, "too slow").await;
                break End::Closed("too slow");
            }
            Event::Shutdown => {
                let _ = close(&mut ws, CloseCode::Away, "server shutting down").await;
                break End::Closed("server shutdown");
            }
        }
    };

    shard.outbound.borrow_mut().remove(&conn);
    leave_room(&shard, conn, &mut session);
    ShardCounters::sub(&shard.counters.connections, 1);
    match end {
        End::Closed(reason) => {
            tracing::info!(shard = shard.id, conn, reason, "connection closed");
        }
        End::Relocate { owner, pending } => {
            relocate(&shard, ws, session, pending, owner, peer).await
        }
    }
}

/// Handles one text; `Ok(Some(owner))` asks for relocation, `Err` is an error packet.
fn handle_text(
    shard: &Shard,
    conn: ConnId,
    session: &mut p2p::Session,
    text: &str,
) -> Result<Option<usize>, String> {
    match session.handle_text(text)? {
        Request::Connect { user_id, room } => {
            let owner = shard.owner_of(&room.shard_key());
            if owner != shard.id {
                return Ok(Some(owner));
            }
            let out = shard.p2p_rooms.borrow_mut().connect(&room, conn, &user_id);
            tracing::info!(shard = shard.id, conn, room = %room.room, ns = %room.namespace, user = %user_id, "joined relay room");
            session.joined = Some((user_id, room));
            deliver(shard, out);
        }
        Request::Broadcast => {
            let (_, room) = session.joined.as_ref().expect("validated: joined");
            let out = shard.p2p_rooms.borrow().broadcast(room, conn, text);
            deliver(shard, out);
        }
        Request::Ping => {
            let (user, room) = session.joined.as_ref().expect("validated: joined");
            let reply = shard.p2p_rooms.borrow().ping(room, user);
            deliver(
                shard,
                vec![Delivery {
                    to: conn,
                    text: reply.into(),
                }],
            );
        }
        Request::Disconnect => leave_room(shard, conn, session),
    }
    Ok(None)
}

fn leave_room(shard: &Shard, conn: ConnId, session: &mut p2p::Session) {
    if let Some((_, room)) = session.joined.take() {
        let out = shard.p2p_rooms.borrow_mut().disconnect(&room, conn);
        deliver(shard, out);
    }
}

/// Queues texts to their sessions. A session whose queue is full is cut loose (its
/// queue dropped) rather than letting one slow client hold up the room.
fn deliver(shard: &Shard, deliveries: Vec<Delivery>) {
    let mut outbound = shard.outbound.borrow_mut();
    for d in deliveries {
        let full = match outbound.get_mut(&d.to) {
            Some(tx) => tx.try_send(Outbound::Text(d.text)).is_err(),
            None => false,
        };
        if full {
            outbound.remove(&d.to);
        }
    }
}

async fn send_error(ws: &mut Ws, session: &p2p::Session, reason: &str) -> Result<(), WsError> {
    let (user, room) = match &session.joined {
        Some((u, r)) => (u.as_str(), r.room.as_str()),
        None => (session.token_user.as_deref().unwrap_or(""), ""),
    };
    ws.send(Message::text(p2p::packet("error", user, room, reason)))
        .await
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &str) -> Result<(), WsError> {
    ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
    .await
}

/// Hands the socket, the unparsed bytes and the session to the owner shard.
async fn relocate(
    shard: &Shard,
    mut ws: Ws,
    session: p2p::Session,
    pending: String,
    owner: usize,
    peer: Option<std::net::SocketAddr>,
) {
    if ws.flush().await.is_err() {
        return;
    }
    let leftover = ws.get_mut().take_leftover();
    let conn = match ws.into_inner().into_inner().detach() {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(shard = shard.id, "cannot relocate connection: {e}");
            return;
        }
    };
    ShardCounters::add(&shard.counters.relocated_out, 1);
    tracing::info!(
        shard = shard.id,
        to = owner,
        dialect = "p2p",
        "relocating connection to the room's shard"
    );
    let msg = MeshMsg::AdoptP2p(Box::new(P2pHandover {
        conn,
        leftover,
        session,
        pending,
        peer,
    }));
    if shard.mesh.send_to(owner, msg).await.is_err() {
        tracing::warn!(
            shard = shard.id,
            to = owner,
            "relocation failed: owner shard is gone"
        );
    }
}
