//! One shard's state, lent to everything that runs on it (the executor body that builds it
//! lives in `executor.rs`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc as local_mpsc;
use futures::future::Shared;
use futures_rustls::rustls::ServerConfig;
use glommio::channels::channel_mesh::Senders;

use super::mesh::MeshMsg;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::control::ControlHandle;
use crate::sfu::Engine;
use crate::signal::dialect::{ConnId, Context};
use crate::signal::p2p::Rooms;
use crate::stats::{Latencies, ShardCounters, ShardSnapshot};

/// What a session's outbound queue carries.
#[derive(Debug, Clone)]
pub enum Outbound {
    Text(Rc<str>),
    /// Close the WebSocket with code 1011 and this reason.
    Close(String),
    /// A media-core notice; the session's dialect words it.
    Notice(Box<crate::sfu::Notice>),
    /// A newer session of this session's user joined its room: send the dialect's
    /// `replaced_text` with this reason, then close (`REPLACED_CLOSE_CODE`).
    Replaced(String),
}

/// Bytes a notice is counted as in a session's queue (its wording is the dialect's).
const NOTICE_BYTES: usize = 256;
/// What each queued message costs beyond its text (the queue entry itself).
const ENTRY_BYTES: usize = 64;

impl Outbound {
    /// What this message is counted as against `limits.session_queue_bytes`.
    fn cost(&self) -> usize {
        ENTRY_BYTES
            + match self {
                Outbound::Text(t) => t.len(),
                Outbound::Close(r) | Outbound::Replaced(r) => r.len(),
                Outbound::Notice(_) => NOTICE_BYTES,
            }
    }
}

#[derive(Default)]
struct Queue {
    /// Each message with when it was queued and its cost.
    items: std::collections::VecDeque<(Instant, usize, Outbound)>,
    bytes: usize,
    /// The session fell too far behind: its receiver ends now, dropping what waits.
    cut: bool,
    /// The sending side is gone (removed from `Shard::outbound`).
    sender_gone: bool,
    /// The receiving side closed: nothing more is queued.
    closed: bool,
    waker: Option<std::task::Waker>,
}

/// The sending half of a session's outbound queue, held in [`Shard::outbound`]. The queue
/// is bounded by bytes and by how long its oldest message has waited
/// (`limits.session_queue_bytes`, `limits.session_lag_ms`), not by a count of messages
/// that one burst could fill.
pub struct OutboundTx {
    queue: Rc<RefCell<Queue>>,
    max_bytes: usize,
    max_lag: Duration,
}

/// The receiving half, read by the session's task.
pub struct OutboundRx {
    queue: Rc<RefCell<Queue>>,
    /// It answered `None`: the stream is over.
    done: bool,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueFull {
    /// The session is too far behind (bytes or lag); it is to be cut loose.
    TooSlow,
    /// The receiver is gone.
    Closed,
}

/// A fresh outbound queue for one session with the shard's limits.
pub fn outbound_queue(config: &Config) -> (OutboundTx, OutboundRx) {
    let queue = Rc::new(RefCell::new(Queue::default()));
    (
        OutboundTx {
            queue: queue.clone(),
            max_bytes: config.limits.session_queue_bytes,
            max_lag: config.limits.session_lag,
        },
        OutboundRx { queue, done: false },
    )
}

impl OutboundTx {
    /// Queues `msg`, unless the session is too far behind: over the byte budget (an empty
    /// queue always takes one message) or its oldest message waited over the lag limit.
    pub fn push(&self, msg: Outbound, now: Instant) -> Result<(), QueueFull> {
        let mut q = self.queue.borrow_mut();
        if q.closed || q.cut {
            return Err(QueueFull::Closed);
        }
        let cost = msg.cost();
        if let Some((oldest, _, _)) = q.items.front() {
            if q.bytes + cost > self.max_bytes
                || now.saturating_duration_since(*oldest) > self.max_lag
            {
                return Err(QueueFull::TooSlow);
            }
        }
        q.bytes += cost;
        q.items.push_back((now, cost, msg));
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Ends the receiver now: the session is closed as too slow.
    pub fn cut(&self) {
        let mut q = self.queue.borrow_mut();
        q.cut = true;
        q.items.clear();
        q.bytes = 0;
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        let mut q = self.queue.borrow_mut();
        q.sender_gone = true;
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

/// The receiver found nothing queued.
#[derive(Debug)]
pub struct Empty;

impl OutboundRx {
    /// The next queued message without waiting (also after the sender is gone).
    pub fn try_recv(&mut self) -> Result<Outbound, Empty> {
        let mut q = self.queue.borrow_mut();
        match q.items.pop_front() {
            Some((_, cost, msg)) => {
                q.bytes -= cost;
                Ok(msg)
            }
            None => Err(Empty),
        }
    }

    /// Resolves once the session is cut loose as too slow (while its task is busy
    /// writing, so that a write blocked on a client that reads nothing ends too).
    pub async fn cut(&self) {
        futures::future::poll_fn(|cx| {
            let mut q = self.queue.borrow_mut();
            if q.cut {
                std::task::Poll::Ready(())
            } else {
                q.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Nothing more is queued; what waits can still be taken with [`Self::try_recv`].
    pub fn close(&mut self) {
        self.queue.borrow_mut().closed = true;
    }
}

impl futures::Stream for OutboundRx {
    type Item = Outbound;

    /// `None` once the session was cut loose (at once) or its sender is gone (after the
    /// queued messages).
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Outbound>> {
        let this = self.get_mut();
        let mut q = this.queue.borrow_mut();
        if q.cut {
            this.done = true;
            return std::task::Poll::Ready(None);
        }
        if let Some((_, cost, msg)) = q.items.pop_front() {
            q.bytes -= cost;
            return std::task::Poll::Ready(Some(msg));
        }
        if q.sender_gone {
            this.done = true;
            return std::task::Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

impl futures::stream::FusedStream for OutboundRx {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// Resolves when the shard begins shutting down.
pub type ShutdownSignal = Shared<futures::channel::oneshot::Receiver<()>>;

pub struct Shard {
    pub id: usize,
    pub core: usize,
    pub shards: usize,
    pub udp_port: u16,
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    /// Set when the HTTP port speaks TLS.
    pub tls: Option<Arc<ServerConfig>>,
    /// The control plane: outbound calls (permission service) and the state shared by
    /// every shard (each user's current conversation).
    pub control: ControlHandle,
    pub started: Instant,
    pub mesh: Senders<MeshMsg>,
    pub counters: ShardCounters,
    pub p2p_rooms: RefCell<Rooms>,
    /// The media core of this shard's rooms.
    pub engine: RefCell<Engine>,
    /// Wakes the UDP driver when commands left datagrams to send.
    pub udp_wake: local_mpsc::Sender<()>,
    pub latencies: RefCell<Latencies>,
    /// Outbound queues of the relay sessions on this shard.
    pub outbound: RefCell<HashMap<ConnId, OutboundTx>>,
    /// The SockJS sessions (HTTP transports) on this shard, by `namespace/session id`.
    pub sockjs: RefCell<HashMap<String, super::sockjs_handle::Handle>>,
    /// Which shard has each SockJS session, for the whole process.
    pub sockjs_directory: Arc<super::sockjs_handle::Directory>,
    pub pending_stats:
        RefCell<HashMap<u64, futures::channel::oneshot::Sender<super::mesh::Answer>>>,
    /// Request body bytes being read on this shard (`limits.request_buffer_bytes`).
    pub request_bytes: Cell<usize>,
    /// Admission (connections per address, session rates, descriptors) of this shard.
    pub(super) guard: super::admission::FrontGuard,
    pub(super) next_id: Cell<u64>,
    pub(super) shutdown_tx: RefCell<Option<futures::channel::oneshot::Sender<()>>>,
    pub shutdown: ShutdownSignal,
}

impl Shard {
    /// A fresh id, unique in the process (the shard id is in the top bits).
    pub fn next_id(&self) -> u64 {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        // 40 bits of counter leave ids below 2^53 for up to 8192 shards, so they stay
        // exact as JSON numbers (publisherId) in JavaScript clients.
        ((self.id as u64) << 40) | n
    }

    pub fn owner_of(&self, key: &str) -> usize {
        crate::routing::owner_shard(key, self.shards)
    }

    pub fn record_forward_latency(&self, elapsed: Duration, packets: u64) {
        self.latencies
            .borrow_mut()
            .record_forward(elapsed.as_micros() as u64, packets);
    }

    pub fn snapshot(&self) -> ShardSnapshot {
        let c = &self.counters;
        let engine = self.engine.borrow();
        let e = engine.counters();
        ShardSnapshot {
            id: self.id,
            core: self.core,
            udp_port: self.udp_port,
            rooms: (self.p2p_rooms.borrow().len() + engine.rooms()) as u64,
            connections: c.connections.get(),
            relocated_in: c.relocated_in.get(),
            relocated_out: c.relocated_out.get(),
            datagrams_dropped: c.datagrams_dropped.get() + e.datagrams_dropped,
            connect_timeouts: e.connect_timeouts,
            stun_forged: e.stun_forged,
            unbound_dropped: e.unbound_dropped,
            sources_refused: e.sources_refused,
            bound_sources: engine.bound_sources() as u64,
            transports: engine.transports() as u64,
            producers: engine.producers() as u64,
            consumers: engine.consumers() as u64,
            packets_in: e.rtp_in,
            packets_out: e.rtp_out,
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            errors: c
                .errors
                .borrow()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }

    /// Queues a text (or close) for one session; a session too far behind (by bytes or
    /// by time, see [`OutboundTx::push`]) is cut loose (closed with 1013) rather than
    /// letting one slow client hold up a room.
    pub fn send_to_conn(&self, conn: ConnId, msg: Outbound) {
        let mut outbound = self.outbound.borrow_mut();
        if let Some(tx) = outbound.get(&conn) {
            if tx.push(msg, Instant::now()).is_err() {
                tx.cut();
                outbound.remove(&conn);
            }
        }
    }

    /// Lends the shard's state to a dialect for one call, then does what the call left to do:
    /// relay deliveries, error counts, engine notices and UDP, the request latency.
    pub fn with_context<R>(&self, conn: ConnId, f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        let shard = self;
        let started = Instant::now();
        let (result, deliveries, errors, replaced) = {
            let mut engine = shard.engine.borrow_mut();
            let mut relay = shard.p2p_rooms.borrow_mut();
            let owns = |key: &str| shard.owner_of(key) == shard.id;
            let mut cx = Context::new(
                started,
                conn,
                shard.id,
                &mut engine,
                &mut relay,
                &shard.auth,
                &owns,
            );
            let result = f(&mut cx);
            (result, cx.deliveries, cx.errors, cx.replaced)
        };
        for d in deliveries {
            shard.send_to_conn(d.to, Outbound::Text(d.text));
        }
        for (conn, reason) in replaced {
            shard.send_to_conn(conn, Outbound::Replaced(reason));
        }
        for code in errors {
            shard.counters.count_error(code);
        }
        shard.after_engine_call();
        shard
            .latencies
            .borrow_mut()
            .record_request(started.elapsed().as_micros() as u64);
        result
    }

    /// After any engine call: deliver its notices, record join times, and let the UDP
    /// driver send.
    pub fn after_engine_call(&self) {
        for join in self.engine.borrow_mut().take_join_times() {
            self.latencies
                .borrow_mut()
                .record_join(join.as_millis() as u64);
        }
        let notices: Vec<_> = {
            let mut engine = self.engine.borrow_mut();
            std::iter::from_fn(|| engine.poll_notice()).collect()
        };
        for (peer, notice) in notices {
            let msg = match notice {
                crate::sfu::Notice::MediaFailed { reason } => Outbound::Close(reason),
                crate::sfu::Notice::Replaced { reason } => Outbound::Replaced(reason),
                n => Outbound::Notice(Box::new(n)),
            };
            self.send_to_conn(peer, msg);
        }
        if !self.engine.borrow().outbox_is_empty() {
            let _ = self.udp_wake.clone().try_send(());
        }
    }

    pub(super) fn begin_shutdown(&self) {
        if let Some(tx) = self.shutdown_tx.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_tx.borrow().is_none()
    }
}
