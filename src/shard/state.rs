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
}

/// How many messages may wait for a slow client before it is disconnected.
pub const OUTBOUND_QUEUE: usize = 256;

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
    pub outbound: RefCell<HashMap<ConnId, local_mpsc::Sender<Outbound>>>,
    /// The SockJS sessions (HTTP transports) on this shard, by `namespace/session id`.
    pub sockjs: RefCell<HashMap<String, super::sockjs_handle::Handle>>,
    /// Which shard has each SockJS session, for the whole process.
    pub sockjs_directory: Arc<super::sockjs_handle::Directory>,
    pub pending_stats:
        RefCell<HashMap<u64, futures::channel::oneshot::Sender<super::mesh::Answer>>>,
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

    /// Queues a text (or close) for one session; a session whose queue is full is cut
    /// loose (its queue dropped) rather than letting one slow client hold up a room.
    pub fn send_to_conn(&self, conn: ConnId, msg: Outbound) {
        let mut outbound = self.outbound.borrow_mut();
        if let Some(tx) = outbound.get_mut(&conn) {
            if tx.try_send(msg).is_err() {
                outbound.remove(&conn);
            }
        }
    }

    /// Lends the shard's state to a dialect for one call, then does what the call left to do:
    /// relay deliveries, error counts, engine notices and UDP, the request latency.
    pub fn with_context<R>(&self, conn: ConnId, f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        let shard = self;
        let started = Instant::now();
        let (result, deliveries, errors) = {
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
            (result, cx.deliveries, cx.errors)
        };
        for d in deliveries {
            shard.send_to_conn(d.to, Outbound::Text(d.text));
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
