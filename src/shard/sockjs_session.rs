//! A SockJS session of the HTTP transports (`xhr_streaming`, `xhr` polling, `eventsource`,
//! with `xhr_send`).
//!
//! Such a session outlives every request, so it lives on one shard as a task that owns
//! its inner dialect, the messages waiting for it (`inbox`), the texts waiting for the
//! client (`outbox`), its relay queue (registered in `Shard::outbound`, so relay
//! deliveries reach it) and the receiving request currently attached, whose connection it
//! writes frames to. Requests reach it as [`Cmd`]s. A process-wide [`Directory`] says
//! which shard has each session; requests landing elsewhere move there with their raw
//! bytes. When the inner dialect asks for another shard (a relay `connect` to a room owned
//! elsewhere) the whole session moves there over the mesh as [`Moving`], its queues with it,
//! so nothing is lost or reordered; the attached receiving request is ended so that the
//! client's next one reaches the new owner.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};

use super::conn::Conn;
use super::fault;
use super::front_door;
use super::timeout::within;

use super::mesh::{MeshMsg, Moving};
use super::sockjs_handle::{Cmd, Handle, Receiver};
use super::state::{outbound_queue, Outbound, OutboundRx, Shard};
use crate::http::response::{chunk, LAST_CHUNK};
use crate::http::Response;
use crate::signal::dialect::BoxedDialect;
use crate::signal::dialect::{CloseCode, ConnId, REPLACED_CLOSE_CODE, REPLACED_CLOSE_REASON};
use crate::signal::sockjs::{self, Fed, HEARTBEAT, HEARTBEAT_EVERY, OPEN};
use crate::stats::ShardCounters;

/// A session ends this long after its last receiving request ended (sockjs-node's
/// `disconnect_delay`); its relay membership is released then.
pub const DISCONNECT_DELAY: Duration = Duration::from_secs(5);
/// A stream (`xhr_streaming`, `eventsource`) ends once this many bytes went out (sockjs-node's
/// `response_limit`); the client then opens the next one.
pub const STREAMING_LIMIT: usize = 128 * 1024;
/// What each text waiting for the client counts beyond its length against
/// `limits.session_queue_bytes`, the same bound as a WebSocket session's queue.
const OUTBOX_ENTRY_BYTES: usize = 64;
/// How long a request waits for a session the directory says is on its way to this shard.
pub const ARRIVAL_WAIT: Duration = Duration::from_secs(2);
/// A write to a receiving request that takes longer ends that request.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a client may send on a connection while it receives (pipelined requests) before
/// the connection is dropped.
const MAX_PIPELINED: usize = 64 * 1024;

/// Where a session is.
pub enum Located {
    Here(Handle),
    There(usize),
    Unknown,
}

/// Finds a session; waits up to [`ARRIVAL_WAIT`] for one on its way to this shard.
pub async fn locate(shard: &Shard, id: &str) -> Located {
    let started = Instant::now();
    loop {
        if let Some(h) = shard.sockjs.borrow().get(id) {
            return Located::Here(h.clone());
        }
        match shard.sockjs_directory.get(id) {
            None => return Located::Unknown,
            Some(owner) if owner != shard.id => return Located::There(owner),
            Some(_) if started.elapsed() >= ARRIVAL_WAIT => return Located::Unknown,
            Some(_) => glommio::timer::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Starts a session on this shard for its first receiving request; `Err` hands the
/// request back with the shard that started it meanwhile.
pub fn create(
    shard: &Rc<Shard>,
    id: String,
    user: Option<String>,
    dialect: BoxedDialect,
    first: Box<Receiver>,
) -> Result<(), (usize, Box<Receiver>)> {
    if let Err(owner) = shard.sockjs_directory.claim(&id, shard.id) {
        return Err((owner, first));
    }
    tracing::info!(shard = shard.id, session = %id, "SockJS session open");
    let moving = Moving {
        id,
        user,
        dialect,
        inbox: VecDeque::new(),
        outbox: VecDeque::new(),
    };
    let handle = spawn(shard, moving, true);
    let _ = handle.send(Cmd::Receive(first));
    Ok(())
}

/// Continues a session that moved here.
pub fn adopt(shard: &Rc<Shard>, moving: Moving) {
    ShardCounters::add(&shard.counters.relocated_in, 1);
    spawn(shard, moving, false);
}

fn spawn(shard: &Rc<Shard>, m: Moving, open_pending: bool) -> Handle {
    let (tx, rx) = mpsc::unbounded();
    let handle = Handle {
        cmds: tx,
        user: m.user.clone(),
    };
    let previous = shard
        .sockjs
        .borrow_mut()
        .insert(m.id.clone(), handle.clone());
    if previous.is_some() {
        tracing::warn!(shard = shard.id, session = %m.id, "SockJS session replaced a stale one");
    }
    let conn = shard.next_id();
    let (out_tx, out_rx) = outbound_queue(&shard.config);
    shard.outbound.borrow_mut().insert(conn, out_tx);
    ShardCounters::add(&shard.counters.connections, 1);
    let session = Session {
        shard: shard.clone(),
        id: m.id,
        user: m.user,
        dialect: m.dialect,
        inbox: m.inbox,
        outbox: m.outbox,
        conn,
        open_pending,
        closed: None,
        receiver: None,
        detached_at: Instant::now(),
        limit: super::rate::SenderLimit::new(&shard.config, Instant::now()),
    };
    fault::spawn_guarded(shard.id, "SockJS session", session.run(rx, out_rx));
    handle
}

/// A receiving request attached to the session.
struct Attached {
    rx: Box<Receiver>,
    /// Bytes of frames sent in this response.
    sent: usize,
    last_sent: Instant,
}

struct Session {
    shard: Rc<Shard>,
    id: String,
    user: Option<String>,
    dialect: BoxedDialect,
    inbox: VecDeque<String>,
    outbox: VecDeque<String>,
    conn: ConnId,
    /// `o` not sent yet.
    open_pending: bool,
    /// The close frame, once the session is closed (it answers receivers with it until
    /// it ends).
    closed: Option<String>,
    receiver: Option<Attached>,
    detached_at: Instant,
    /// What this client may send (the same limits as a WebSocket client's).
    limit: super::rate::SenderLimit,
}

enum Event {
    Cmd(Option<Cmd>),
    Out(Option<Outbound>),
    /// Bytes from the attached receiver's connection (`Ok(empty)`: it closed).
    Read(std::io::Result<Vec<u8>>),
    Heartbeat,
    Expired,
    Shutdown,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await,
        None => futures::future::pending().await,
    }
}

async fn read_some(receiver: &mut Option<Attached>) -> std::io::Result<Vec<u8>> {
    let Some(a) = receiver.as_mut() else {
        return futures::future::pending().await;
    };
    let mut buf = [0u8; 1024];
    let n = a.rx.conn.read(&mut buf).await?;
    Ok(buf[..n].to_vec())
}

impl Session {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>, mut out: OutboundRx) {
        // A panic while this session handles something closes it (1011) and ends it here;
        // the shard and the other sessions go on.
        let served = AssertUnwindSafe(self.serve(&mut cmds, &mut out))
            .catch_unwind()
            .await;
        match served {
            Ok(Some(owner)) => return self.relocate(owner, cmds, out).await,
            Ok(None) => {}
            Err(payload) => {
                let site = format!("SockJS session {}", self.id);
                fault::contain(&self.shard, &site, payload.as_ref());
                self.outbox.clear();
                self.close(1011, "internal error");
                let _ = AssertUnwindSafe(self.flush()).catch_unwind().await;
            }
        }
        self.end(cmds, out).await;
    }

    /// The session's loop, until it ends (`None`) or is to move to shard `Some(owner)`.
    async fn serve(
        &mut self,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        out: &mut OutboundRx,
    ) -> Option<usize> {
        let mut shutdown = self.shard.shutdown.clone();
        loop {
            if self.closed.is_none() && !self.inbox.is_empty() {
                let mut replies = Vec::new();
                let (dialect, inbox) = (&mut self.dialect, &mut self.inbox);
                let fed = self.shard.with_context(self.conn, |cx| {
                    inbox.iter().for_each(|m| fault::on_message(m));
                    sockjs::feed(dialect.as_mut(), cx, inbox, &mut replies)
                });
                self.outbox.extend(replies);
                match fed {
                    Fed::Done => {}
                    Fed::Relocate { key } => {
                        let owner = self.shard.owner_of(&key);
                        return Some(owner);
                    }
                    Fed::Close(code) => {
                        let code = match code {
                            CloseCode::Normal => 1000,
                            CloseCode::Policy => 1008,
                        };
                        self.close(code, "closed by the server");
                    }
                }
            }
            if self.closed.is_none()
                && self.outbox_bytes() > self.shard.config.limits.session_queue_bytes
            {
                self.outbox.clear();
                self.close(1013, "too slow");
            }
            self.flush().await;

            let beat_at = self
                .receiver
                .as_ref()
                .map(|a| a.last_sent + HEARTBEAT_EVERY);
            let expire_at = self
                .receiver
                .is_none()
                .then(|| self.detached_at + DISCONNECT_DELAY);
            let event = {
                let beat = sleep_until(beat_at).fuse();
                let expire = sleep_until(expire_at).fuse();
                let read = read_some(&mut self.receiver).fuse();
                futures::pin_mut!(beat, expire, read);
                futures::select! {
                    c = cmds.next() => Event::Cmd(c),
                    o = out.next() => Event::Out(o),
                    r = read => Event::Read(r),
                    _ = beat => Event::Heartbeat,
                    _ = expire => Event::Expired,
                    _ = shutdown => Event::Shutdown,
                }
            };
            match event {
                Event::Cmd(Some(Cmd::Send { messages, done })) => {
                    if self.closed.is_none() {
                        let now = Instant::now();
                        let over = messages
                            .iter()
                            .find_map(|m| self.limit.admit(m.len(), now).err());
                        match over {
                            None => self.inbox.extend(messages),
                            Some(reason) => {
                                // Over its rate: none of this batch is relayed; this
                                // client alone learns why and is closed.
                                self.outbox.push_back(self.dialect.error_text(&reason));
                                self.close(1008, "rate limit");
                            }
                        }
                        let _ = done.send(());
                    }
                }
                Event::Cmd(Some(Cmd::Receive(rx))) => self.attach(rx).await,
                Event::Cmd(None) => return None,
                Event::Out(Some(o)) => {
                    self.outgoing(o);
                    while let Ok(o) = out.try_recv() {
                        self.outgoing(o);
                    }
                }
                // The queue was dropped: this client fell too far behind.
                Event::Out(None) => self.close(1013, "too slow"),
                Event::Read(Ok(bytes)) if !bytes.is_empty() => {
                    let a = self
                        .receiver
                        .as_mut()
                        .expect("reading an attached receiver");
                    a.rx.leftover.extend_from_slice(&bytes);
                    if a.rx.leftover.len() > MAX_PIPELINED {
                        self.detach();
                    }
                }
                Event::Read(_) => self.detach(),
                Event::Heartbeat => self.heartbeat().await,
                Event::Expired => return None,
                Event::Shutdown => {
                    self.close(1001, "server shutting down");
                    self.flush().await;
                    return None;
                }
            }
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        if self.closed.is_none() {
            tracing::info!(shard = self.shard.id, session = %self.id, code, reason, "SockJS session closed");
            self.closed = Some(sockjs::close(code, reason));
        }
    }

    /// What the texts waiting for the client count against `limits.session_queue_bytes`.
    fn outbox_bytes(&self) -> usize {
        self.outbox
            .iter()
            .map(|t| t.len() + OUTBOX_ENTRY_BYTES)
            .sum()
    }

    fn outgoing(&mut self, o: Outbound) {
        match o {
            Outbound::Text(text) => self.outbox.push_back(self.dialect.delivery(&text)),
            Outbound::Notice(n) => self.outbox.extend(self.dialect.notice(&n)),
            Outbound::Close(reason) => self.close(1011, &reason),
            Outbound::Replaced(reason) => {
                self.outbox.push_back(self.dialect.replaced_text(&reason));
                self.close(REPLACED_CLOSE_CODE, REPLACED_CLOSE_REASON);
            }
        }
    }

    /// A receiving request arrives: it becomes the attached one, unless one is attached
    /// already (then it gets `c[2010,...]`, as sockjs-node answers).
    async fn attach(&mut self, rx: Box<Receiver>) {
        if self.receiver.is_some() {
            let c = sockjs::close(2010, "Another connection still open");
            let mut a = open_response(rx).await;
            if let Some(a) = a.as_mut() {
                let _ = write_frames(a, &[c]).await;
            }
            if let Some(a) = a {
                finish(&self.shard, a).await;
            }
            return;
        }
        self.receiver = open_response(rx).await;
        if self.receiver.is_none() {
            self.detached_at = Instant::now();
        }
    }

    /// Sends what waits (`o`, messages, the close frame) to the attached receiver. A poll
    /// ends after one answer; a stream at [`STREAMING_LIMIT`] or after the close frame.
    async fn flush(&mut self) {
        let Some(a) = self.receiver.as_mut() else {
            return;
        };
        let stream = a.rx.kind.is_stream();
        let mut frames = Vec::new();
        if self.open_pending {
            self.open_pending = false;
            frames.push(OPEN.to_string());
        }
        // A poll answers `o` alone, like sockjs-node; a stream goes on.
        if frames.is_empty() || stream {
            if !self.outbox.is_empty() {
                let texts: Vec<String> = self.outbox.drain(..).collect();
                frames.push(sockjs::messages(&texts));
            }
            // The close frame follows the messages on a stream; a poll gets it alone.
            if let Some(c) = &self.closed {
                if frames.is_empty() || stream {
                    frames.push(c.clone());
                }
            }
        }
        if frames.is_empty() {
            return;
        }
        let ok = write_frames(a, &frames).await;
        let done = !ok || !stream || a.sent >= STREAMING_LIMIT || self.closed.is_some();
        if done {
            self.end_receiver(ok).await;
        }
    }

    async fn heartbeat(&mut self) {
        let Some(a) = self.receiver.as_mut() else {
            return;
        };
        let ok = write_frames(a, &[HEARTBEAT.to_string()]).await;
        if !ok || !a.rx.kind.is_stream() {
            self.end_receiver(ok).await;
        }
    }

    /// Ends the attached response; the connection serves its next request (if it can).
    async fn end_receiver(&mut self, ok: bool) {
        if let Some(a) = self.receiver.take() {
            if ok {
                finish(&self.shard, a).await;
            }
        }
        self.detached_at = Instant::now();
    }

    /// The attached receiver's client went away.
    fn detach(&mut self) {
        self.receiver = None;
        self.detached_at = Instant::now();
    }

    /// Moves the session to `owner`, which handles the message that asked for it first.
    async fn relocate(
        mut self,
        owner: usize,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut out: OutboundRx,
    ) {
        let shard = self.shard.clone();
        // Nothing new reaches it here from now on; requests follow the directory.
        shard.sockjs.borrow_mut().remove(&self.id);
        cmds.close();
        shard.outbound.borrow_mut().remove(&self.conn);
        shard.sockjs_directory.set(&self.id, owner);
        // What reached it here goes with it, in order.
        out.close();
        while let Ok(o) = out.try_recv() {
            self.outgoing(o);
        }
        let mut receivers = Vec::new();
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Send { messages, done } => {
                    self.inbox.extend(messages);
                    let _ = done.send(());
                }
                Cmd::Receive(rx) => receivers.push(rx),
            }
        }
        ShardCounters::sub(&shard.counters.connections, 1);
        ShardCounters::add(&shard.counters.relocated_out, 1);
        tracing::info!(shard = shard.id, to = owner, session = %self.id, "relocating SockJS session to the room's shard");
        let attached = self.receiver.take();
        let moving = Moving {
            id: self.id,
            user: self.user,
            dialect: self.dialect,
            inbox: self.inbox,
            outbox: self.outbox,
        };
        if shard
            .mesh
            .send_to(owner, MeshMsg::AdoptSockjs(Box::new(moving)))
            .await
            .is_err()
        {
            tracing::warn!(
                shard = shard.id,
                to = owner,
                "SockJS relocation failed: owner shard is gone"
            );
        }
        // The receiving request ends (a poll with `h`), so the client's next one goes to
        // the new owner; requests queued here follow the session.
        if let Some(mut a) = attached {
            let ok = a.rx.kind.is_stream() || write_frames(&mut a, &[HEARTBEAT.to_string()]).await;
            if ok {
                finish(&shard, a).await;
            }
        }
        for rx in receivers {
            let mut raw = rx.raw;
            raw.extend_from_slice(&rx.leftover);
            front_door::relocate_request(&shard, rx.conn, raw, owner, rx.peer).await;
        }
    }

    /// The session ends here: its relay membership is released and requests still queued
    /// for it learn that it is gone.
    async fn end(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>, out: OutboundRx) {
        let shard = self.shard.clone();
        shard.sockjs.borrow_mut().remove(&self.id);
        cmds.close();
        shard.sockjs_directory.release(&self.id, shard.id);
        shard.outbound.borrow_mut().remove(&self.conn);
        drop(out);
        let dialect = &mut self.dialect;
        let closed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            shard.with_context(self.conn, |cx| dialect.on_close(cx))
        }));
        if let Err(payload) = closed {
            let site = format!("SockJS session {} closing", self.id);
            fault::contain(&shard, &site, payload.as_ref());
        }
        ShardCounters::sub(&shard.counters.connections, 1);
        tracing::info!(shard = shard.id, session = %self.id, "SockJS session ended");
        self.end_receiver(true).await;
        let gone = self
            .closed
            .take()
            .unwrap_or_else(|| sockjs::close(3000, "Go away!"));
        while let Ok(cmd) = cmds.try_recv() {
            // Dropping an unanswered `Send` tells its request the session is gone.
            if let Cmd::Receive(rx) = cmd {
                if let Some(mut a) = open_response(rx).await {
                    if write_frames(&mut a, std::slice::from_ref(&gone)).await {
                        finish(&shard, a).await;
                    }
                }
            }
        }
    }
}

/// Starts the answer to a receiving request: a stream's head and prelude now; a poll
/// writes its whole answer later.
async fn open_response(rx: Box<Receiver>) -> Option<Attached> {
    let mut a = Attached {
        rx,
        sent: 0,
        last_sent: Instant::now(),
    };
    if a.rx.kind.is_stream() {
        let mut head = Response::new(200);
        head.headers = a.rx.headers.clone();
        let mut bytes = head.chunked_head(a.rx.keep_alive);
        bytes.extend(chunk(a.rx.kind.prelude().as_bytes()));
        if !write(&mut a.rx.conn, &bytes).await {
            return None;
        }
    }
    Some(a)
}

/// Frames to a receiver, as its transport writes them: a chunk of a stream, or a poll's
/// answer.
async fn write_frames(a: &mut Attached, frames: &[String]) -> bool {
    let body: String = frames.iter().map(|f| a.rx.kind.frame(f)).collect();
    let bytes = if a.rx.kind.is_stream() {
        chunk(body.as_bytes())
    } else {
        let mut resp = Response::new(200).body(body.as_bytes().to_vec());
        resp.headers = a.rx.headers.clone();
        resp.to_bytes(a.rx.keep_alive)
    };
    a.sent += body.len();
    a.last_sent = Instant::now();
    write(&mut a.rx.conn, &bytes).await
}

async fn write(conn: &mut Conn, bytes: &[u8]) -> bool {
    let sent = within(SEND_TIMEOUT, async {
        conn.write_all(bytes).await?;
        conn.flush().await
    })
    .await;
    matches!(sent, Some(Ok(())))
}

/// Ends a receiving request's answer; a keep-alive connection goes on serving requests.
async fn finish(shard: &Rc<Shard>, mut a: Attached) {
    if a.rx.kind.is_stream() && !write(&mut a.rx.conn, LAST_CHUNK).await {
        return;
    }
    let rx = *a.rx;
    if rx.keep_alive && !shard.is_shutting_down() {
        super::fault::spawn_guarded(
            shard.id,
            "HTTP connection",
            front_door::serve_http(
                shard.clone(),
                rx.conn,
                rx.leftover,
                rx.peer,
                front_door::Mode::Normal,
            ),
        );
    } else {
        let mut conn = rx.conn;
        let _ = within(SEND_TIMEOUT, conn.close()).await;
    }
}
