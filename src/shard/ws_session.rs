//! The socket side of every WebSocket dialect: the upgrade, the read/write loop, the
//! outbound queue, shutdown, and relocation to the shard that owns the session's room.
//! Each dialect plugs in through `signal::dialect::Dialect`.

use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use futures::{AsyncWriteExt, FutureExt, SinkExt, StreamExt};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role};
use tungstenite::{Error as WsError, Message};

use super::conn::Conn;
use super::fault;
use super::mesh::{Handover, MeshMsg};
use super::rate::{SenderLimit, BYTES_PER_TURN, MESSAGES_PER_TURN};
use super::state::{outbound_queue, Outbound, OutboundRx, Shard};
use super::timeout::within;
use crate::http::ws::{self, FrameBoundedStream};
use crate::http::Head;
use crate::signal::dialect::{
    BoxedDialect, CloseCode as DialectClose, Dialect, Step, REPLACED_CLOSE_CODE,
    REPLACED_CLOSE_REASON,
};
use crate::stats::ShardCounters;

pub type Ws = WebSocketStream<FrameBoundedStream<Conn>>;

/// How long the end of a session waits for the other side's part of the close handshake
/// (the client's answering Close after ours), and for the last bytes to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

fn close_code(code: DialectClose) -> CloseCode {
    match code {
        DialectClose::Normal => CloseCode::Normal,
        DialectClose::Policy => CloseCode::Policy,
    }
}

/// Completes the upgrade on the accepting shard and runs the session.
pub(super) async fn start(
    shard: Rc<Shard>,
    mut stream: Conn,
    head: &Head,
    leftover: Vec<u8>,
    dialect: BoxedDialect,
    peer: Option<std::net::SocketAddr>,
) {
    match ws::accept(head) {
        Err(resp) => {
            let _ = resp.write_to(&mut stream, false).await;
        }
        Ok(reply) => {
            let write_timeout = shard.config.limits.write_timeout;
            let upgrade = async {
                stream.write_all(&reply).await?;
                stream.flush().await
            };
            if !matches!(within(write_timeout, upgrade).await, Some(Ok(()))) {
                return;
            }
            let mut ws = websocket(&shard, stream, leftover).await;
            if let Some(text) = dialect.opening() {
                if !matches!(
                    within(write_timeout, ws.send(Message::text(text))).await,
                    Some(Ok(()))
                ) {
                    return;
                }
            }
            run(shard, ws, dialect, None, peer).await;
        }
    }
}

/// Continues a session relocated from another shard.
pub(super) async fn adopt(shard: Rc<Shard>, handover: Handover, dialect: BoxedDialect) {
    ShardCounters::add(&shard.counters.relocated_in, 1);
    let ws = websocket(&shard, Conn::attach(handover.conn), handover.leftover).await;
    run(shard, ws, dialect, Some(handover.pending), handover.peer).await;
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
    Heartbeat,
    Shutdown,
    /// No `auth` within `limits.auth_timeout_ms`.
    AuthTimeout,
    /// Half the idle timeout, or all of it, passed without a frame from the client.
    Idle,
}

/// Sleeps until `at`; never wakes for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await,
        None => futures::future::pending().await,
    }
}

enum End {
    Closed(&'static str),
    /// Cut loose for falling behind: it leaves its room first and is told afterwards.
    TooSlow,
    Relocate {
        owner: usize,
        pending: String,
    },
}

async fn run(
    shard: Rc<Shard>,
    mut ws: Ws,
    mut dialect: BoxedDialect,
    mut pending: Option<String>,
    peer: Option<std::net::SocketAddr>,
) {
    let conn = shard.next_id();
    ShardCounters::add(&shard.counters.connections, 1);
    let (tx, mut rx) = outbound_queue(&shard.config);
    shard.outbound.borrow_mut().insert(conn, tx);
    let mut shutdown = shard.shutdown.clone();
    let name = dialect.name();
    tracing::info!(
        shard = shard.id,
        conn,
        ?peer,
        dialect = name,
        "connection open"
    );

    // A dialect's keep-alive goes out when nothing else was sent for its interval.
    let heartbeat = dialect.heartbeat();
    let beat_after = |now: Instant| heartbeat.as_ref().map(|(every, _)| now + *every);
    let mut next_beat = beat_after(Instant::now());
    // What this client may send, and the work done since this task last yielded.
    let mut limit = SenderLimit::new(&shard.config, Instant::now());
    let (mut turn_messages, mut turn_bytes) = (0usize, 0usize);
    // Until it authenticates, a client sends small frames only, within a deadline.
    let limits = &shard.config.limits;
    let mut authenticated = dialect.authenticated();
    let mut auth_deadline = None;
    if !authenticated {
        ws.get_mut()
            .set_max_frame(limits.unauthenticated_message_bytes as u64);
        auth_deadline = Some(Instant::now() + limits.auth_timeout);
    }
    // Any frame from the client (pongs included) counts as life; a silent one is pinged
    // after half the idle timeout and closed after all of it.
    let mut heard_at = Instant::now();
    let mut pinged = false;

    // A panic while this session handles something (its dialect, the engine under a
    // command) is caught here: this session is closed with 1011 and leaves its room; the
    // shard and the other sessions go on.
    let served = AssertUnwindSafe(async {
        loop {
            let event = match pending.take() {
                Some(text) => Event::Incoming(Some(Ok(Message::text(text)))),
                None => {
                    let beat = sleep_until(next_beat).fuse();
                    let auth = sleep_until(auth_deadline).fuse();
                    let idle_at = if pinged {
                        heard_at + limits.idle_timeout
                    } else {
                        heard_at + limits.idle_timeout / 2
                    };
                    let idle = sleep_until(Some(idle_at)).fuse();
                    futures::pin_mut!(beat, auth, idle);
                    futures::select! {
                        m = ws.next() => Event::Incoming(m),
                        o = rx.next() => Event::Outgoing(o),
                        _ = beat => Event::Heartbeat,
                        _ = shutdown => Event::Shutdown,
                        _ = auth => Event::AuthTimeout,
                        _ = idle => Event::Idle,
                    }
                }
            };
            if let Event::Incoming(Some(_)) = &event {
                (heard_at, pinged) = (Instant::now(), false);
            }
            if let Event::Incoming(Some(Ok(m))) = &event {
                if !matches!(m, Message::Close(_)) {
                    let len = m.len();
                    if let Err(reason) = limit.admit(len, Instant::now()) {
                        // Over its rate: this client alone learns why and is closed.
                        let error = Message::text(dialect.error_text(&reason));
                        let _ = within(CLOSE_WAIT, ws.send(error)).await;
                        close(&mut ws, &*dialect, CloseCode::Policy, "rate limit").await;
                        break End::Closed("rate limit");
                    }
                    turn_messages += 1;
                    turn_bytes += len;
                    if turn_messages >= MESSAGES_PER_TURN || turn_bytes >= BYTES_PER_TURN {
                        // A burst read at once is handled a slice at a time, so the sessions
                        // it delivers to drain their queues in between.
                        glommio::executor().yield_now().await;
                        (turn_messages, turn_bytes) = (0, 0);
                    }
                }
            }
            let replies = match event {
                Event::Incoming(Some(Ok(Message::Text(text)))) => {
                    let step = shard.with_context(conn, |cx| {
                        fault::on_message(text.as_str());
                        dialect.on_text(cx, text.as_str())
                    });
                    match step {
                        Step::Reply(replies) => replies,
                        Step::Close(texts, code) => {
                            for t in texts {
                                let write_timeout = shard.config.limits.write_timeout;
                                let _ = within(write_timeout, ws.send(Message::text(t))).await;
                            }
                            close(&mut ws, &*dialect, close_code(code), "").await;
                            break End::Closed("closed by the dialect");
                        }
                        Step::Relocate { key } => {
                            let owner = shard.owner_of(&key);
                            break End::Relocate {
                                owner,
                                pending: text.as_str().to_string(),
                            };
                        }
                    }
                }
                Event::Incoming(Some(Ok(Message::Binary(_)))) => {
                    vec![dialect.error_text("binary messages are not supported; send JSON text")]
                }
                Event::Incoming(Some(Ok(Message::Close(_)))) => {
                    // RFC 6455 5.5.1: answer with a Close echoing the client's code.
                    // tungstenite queued that reply when it read the frame; a flush writes it
                    // (then the TCP connection is closed below).
                    let _ = within(CLOSE_WAIT, ws.flush()).await;
                    break End::Closed("client closed");
                }
                Event::Incoming(None) => {
                    break End::Closed("connection closed without a Close frame")
                }
                Event::Incoming(Some(Ok(_))) => Vec::new(), // ping/pong: tungstenite answers
                Event::Incoming(Some(Err(WsError::Capacity(e)))) => {
                    // The parser cannot resynchronise after an oversized frame, so the client
                    // learns why and is closed with 1009; nobody else is affected.
                    let reason = format!(
                        "message too large: {e} (limit {} bytes)",
                        shard.config.max_message_bytes
                    );
                    let error = Message::text(dialect.error_text(&reason));
                    let _ = within(CLOSE_WAIT, ws.send(error)).await;
                    if let Some(text) = dialect.closing(CloseCode::Size.into(), "message too large")
                    {
                        let _ = within(CLOSE_WAIT, ws.send(Message::text(text))).await;
                    }
                    // No wait for the client's Close: the rest of its frame cannot be parsed.
                    let _ = within(
                        CLOSE_WAIT,
                        send_close(&mut ws, CloseCode::Size, "message too large"),
                    )
                    .await;
                    break End::Closed("message too large");
                }
                Event::Incoming(Some(Err(WsError::Io(e)))) if ws::is_frame_too_large(&e) => {
                    // Refused from the frame's header: none of its payload was buffered.
                    let reason = format!(
                        "message too large before authentication (limit {} bytes, \
                     limits.unauthenticated_message_bytes): authenticate first",
                        limits.unauthenticated_message_bytes
                    );
                    let _ = within(
                        CLOSE_WAIT,
                        ws.send(Message::text(dialect.error_text(&reason))),
                    )
                    .await;
                    if let Some(text) = dialect.closing(CloseCode::Size.into(), "message too large")
                    {
                        let _ = within(CLOSE_WAIT, ws.send(Message::text(text))).await;
                    }
                    let _ = within(
                        CLOSE_WAIT,
                        send_close(&mut ws, CloseCode::Size, "message too large"),
                    )
                    .await;
                    break End::Closed("message too large before authentication");
                }
                Event::Incoming(Some(Err(_))) => break End::Closed("protocol error"),
                Event::Outgoing(Some(Outbound::Text(text))) => vec![dialect.delivery(&text)],
                Event::Outgoing(Some(Outbound::Notice(n))) => {
                    dialect.notice(&n).into_iter().collect()
                }
                Event::Outgoing(Some(Outbound::Close(reason))) => {
                    close(&mut ws, &*dialect, CloseCode::Error, &reason).await;
                    break End::Closed("closed by server");
                }
                Event::Outgoing(Some(Outbound::Replaced(reason))) => {
                    // A newer session of this user joined the room; this one holds nothing
                    // any more and ends, telling the client why.
                    let text = Message::text(dialect.replaced_text(&reason));
                    let _ = within(CLOSE_WAIT, ws.send(text)).await;
                    let code = CloseCode::from(REPLACED_CLOSE_CODE);
                    close(&mut ws, &*dialect, code, REPLACED_CLOSE_REASON).await;
                    break End::Closed("replaced by a newer session");
                }
                Event::Outgoing(None) => {
                    // Our queue was cut loose: this client fell too far behind (bytes or time
                    // waiting, limits.session_queue_bytes / limits.session_lag_ms).
                    break End::TooSlow;
                }
                Event::Heartbeat => heartbeat.iter().map(|(_, text)| text.clone()).collect(),
                Event::AuthTimeout => {
                    let reason = format!(
                        "not authenticated within {} ms (limits.auth_timeout_ms): send auth first",
                        limits.auth_timeout.as_millis()
                    );
                    let _ = within(
                        CLOSE_WAIT,
                        ws.send(Message::text(dialect.error_text(&reason))),
                    )
                    .await;
                    close(
                        &mut ws,
                        &*dialect,
                        CloseCode::Policy,
                        "authentication timeout",
                    )
                    .await;
                    break End::Closed("authentication timeout");
                }
                Event::Idle if Instant::now() >= heard_at + limits.idle_timeout => {
                    close(&mut ws, &*dialect, CloseCode::Away, "idle timeout").await;
                    break End::Closed("idle timeout");
                }
                Event::Idle => {
                    pinged = true;
                    let ping = ws.send(Message::Ping(Vec::new().into()));
                    if !matches!(within(limits.write_timeout, ping).await, Some(Ok(()))) {
                        break End::Closed("ping failed");
                    }
                    Vec::new()
                }
                Event::Shutdown => {
                    close(&mut ws, &*dialect, CloseCode::Away, "server shutting down").await;
                    break End::Closed("server shutdown");
                }
            };
            if !authenticated && dialect.authenticated() {
                authenticated = true;
                ws.get_mut().set_max_frame(u64::MAX);
                auth_deadline = None;
            }
            if !replies.is_empty() {
                next_beat = beat_after(Instant::now());
            }
            let mut failed = None;
            for text in replies {
                let write_timeout = shard.config.limits.write_timeout;
                if let Err(why) = deliver(&mut ws, &rx, Message::text(text), write_timeout).await {
                    failed = Some(why);
                    break;
                }
            }
            match failed {
                None => {}
                Some(Undelivered::Failed) => break End::Closed("send failed"),
                Some(Undelivered::Stalled) => {
                    // Its socket took nothing for limits.write_timeout_ms: the client is gone
                    // or reads nothing; the session ends and leaves its room.
                    close(&mut ws, &*dialect, CloseCode::Policy, "write timeout").await;
                    break End::Closed("write timeout");
                }
                Some(Undelivered::TooSlow) => break End::TooSlow,
            }
        }
    })
    .catch_unwind()
    .await;
    let end = match served {
        Ok(end) => end,
        Err(payload) => {
            let site = format!("WebSocket session {conn} ({name})");
            fault::contain(&shard, &site, payload.as_ref());
            // No dialect text: it is the dialect that may be in doubt.
            let _ = within(CLOSE_WAIT, async {
                if send_close(&mut ws, CloseCode::Error, "internal error")
                    .await
                    .is_ok()
                {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
            End::Closed("internal error")
        }
    };

    shard.outbound.borrow_mut().remove(&conn);
    let closed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        shard.with_context(conn, |cx| dialect.on_close(cx))
    }));
    if let Err(payload) = closed {
        let site = format!("WebSocket session {conn} ({name}) closing");
        fault::contain(&shard, &site, payload.as_ref());
    }
    ShardCounters::sub(&shard.counters.connections, 1);
    match end {
        End::Closed(reason) => {
            // Every byte out (TLS: close_notify too), then the TCP connection closes: the
            // server closes first, as RFC 6455 7.1.1 asks.
            let _ = within(CLOSE_WAIT, ws.get_mut().close()).await;
            tracing::info!(
                shard = shard.id,
                conn,
                dialect = name,
                reason,
                "connection closed"
            );
        }
        End::TooSlow => {
            // Already out of its room. Its socket is full of what it has not read, so the
            // Close frame goes in only as it reads: it gets limits.write_timeout_ms for
            // that, then learns why it was cut (1013) after the messages sent before.
            let write_timeout = shard.config.limits.write_timeout;
            let _ = within(write_timeout, async {
                if let Some(text) = dialect.closing(CloseCode::Again.into(), "too slow") {
                    let _ = ws.send(Message::text(text)).await;
                }
                if send_close(&mut ws, CloseCode::Again, "too slow")
                    .await
                    .is_ok()
                {
                    let _ = within(CLOSE_WAIT, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                }
            })
            .await;
            let _ = within(CLOSE_WAIT, ws.get_mut().close()).await;
            tracing::info!(
                shard = shard.id,
                conn,
                dialect = name,
                reason = "too slow",
                "connection closed"
            );
        }
        End::Relocate { owner, pending } => {
            relocate(&shard, ws, dialect, pending, owner, peer).await
        }
    }
}

/// Why a message did not go out.
enum Undelivered {
    Failed,
    /// The session was cut loose (too far behind) while the write waited.
    TooSlow,
    /// The write made no progress for `limits.write_timeout_ms`.
    Stalled,
}

/// Sends one message; a write still blocked when the session is cut loose as too slow
/// (its queue over its bytes or lag) gives up, so that a client which reads nothing cannot
/// hold its session, and its room membership, open; so does one whose socket takes no
/// byte for `write_timeout`.
async fn deliver(
    ws: &mut Ws,
    rx: &OutboundRx,
    msg: Message,
    write_timeout: Duration,
) -> Result<(), Undelivered> {
    let written_at = ws.get_ref().written_at();
    written_at.set(Instant::now());
    let send = ws.send(msg).fuse();
    let cut = rx.cut().fuse();
    // Stalled: no byte taken for `write_timeout` (a slow link that takes bytes is not).
    let stalled = async {
        loop {
            let deadline = written_at.get() + write_timeout;
            if Instant::now() >= deadline {
                break;
            }
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        }
    }
    .fuse();
    futures::pin_mut!(send, cut, stalled);
    futures::select! {
        r = send => r.map_err(|_| Undelivered::Failed),
        _ = cut => Err(Undelivered::TooSlow),
        _ = stalled => Err(Undelivered::Stalled),
    }
}

/// The server's side of a close it starts: the dialect's closing text if it has one, then
/// Close, then wait (up to [`CLOSE_WAIT`]) for the client's answering Close, discarding
/// what arrives before it, so the client sees a clean close rather than a reset.
async fn close(ws: &mut Ws, dialect: &dyn Dialect, code: CloseCode, reason: &str) {
    let handshake = async {
        if let Some(text) = dialect.closing(code.into(), reason) {
            let _ = ws.send(Message::text(text)).await;
        }
        if send_close(ws, code, reason).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = within(CLOSE_WAIT, handshake).await;
}

async fn send_close(ws: &mut Ws, code: CloseCode, reason: &str) -> Result<(), WsError> {
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
    session: BoxedDialect,
    pending: String,
    owner: usize,
    peer: Option<std::net::SocketAddr>,
) {
    if !matches!(
        within(shard.config.limits.write_timeout, ws.flush()).await,
        Some(Ok(()))
    ) {
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
        "relocating connection to the room's shard"
    );
    let msg = MeshMsg::Adopt(Box::new(Handover {
        conn,
        leftover,
        pending,
        peer,
        session: Some(session),
    }));
    if shard.mesh.send_to(owner, msg).await.is_err() {
        tracing::warn!(
            shard = shard.id,
            to = owner,
            "relocation failed: owner shard is gone"
        );
    }
}
