//! One shard: its state, and the executor body that runs it from start to shutdown.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures::channel::mpsc as local_mpsc;
use futures::future::{FutureExt, Shared};
use futures_rustls::rustls::ServerConfig;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::{TcpListener, UdpSocket};

use super::mesh::MeshMsg;
use super::{ShardInit, SHUTDOWN_POLL};
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
    pub sockjs: RefCell<HashMap<String, super::sockjs_session::Handle>>,
    /// Which shard has each SockJS session, for the whole process.
    pub sockjs_directory: Arc<super::sockjs_session::Directory>,
    pub pending_stats:
        RefCell<HashMap<u64, futures::channel::oneshot::Sender<super::mesh::Answer>>>,
    next_id: Cell<u64>,
    shutdown_tx: RefCell<Option<futures::channel::oneshot::Sender<()>>>,
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

    fn begin_shutdown(&self) {
        if let Some(tx) = self.shutdown_tx.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_tx.borrow().is_none()
    }
}

/// The executor body of one shard.
pub(super) async fn run(
    init: ShardInit,
    config: Arc<Config>,
    auth: Arc<Authenticator>,
    tls: Option<Arc<ServerConfig>>,
    mesh: MeshBuilder<MeshMsg, Full>,
    ready: mpsc::Sender<usize>,
    started: Instant,
) {
    let (senders, receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(shard = init.id, "cannot join the shard mesh: {e}");
            return;
        }
    };
    assert_eq!(
        senders.peer_id(),
        init.id,
        "mesh peers are numbered in shard start order"
    );
    let (shutdown_tx, shutdown_rx) = futures::channel::oneshot::channel();
    let candidate = std::net::SocketAddr::new(config.announced_ip, init.udp_port);
    let engine = match Engine::new((init.id as u64) << 40, candidate) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(shard = init.id, "cannot start the media engine: {e}");
            return;
        }
    };
    let (udp_wake, udp_woken) = local_mpsc::channel(1);
    let shard = Rc::new(Shard {
        id: init.id,
        core: init.core,
        shards: init.shards,
        udp_port: init.udp_port,
        config,
        auth,
        tls,
        control: init.control,
        started,
        mesh: senders,
        counters: ShardCounters::default(),
        p2p_rooms: RefCell::default(),
        engine: RefCell::new(engine),
        udp_wake,
        latencies: RefCell::default(),
        outbound: RefCell::default(),
        sockjs: RefCell::default(),
        sockjs_directory: init.sockjs_directory,
        pending_stats: RefCell::default(),
        next_id: Cell::new(0),
        shutdown_tx: RefCell::new(Some(shutdown_tx)),
        shutdown: shutdown_rx.shared(),
    });
    // SAFETY: the fds were created for this shard and are owned by nobody else.
    let listener = unsafe { TcpListener::from_raw_fd(init.listener.into_raw_fd()) };
    let udp = unsafe { UdpSocket::from_raw_fd(init.udp.into_raw_fd()) };

    super::mesh::spawn_receivers(&shard, receivers);
    glommio::spawn_local(super::udp::drive(shard.clone(), udp, udp_woken)).detach();
    glommio::spawn_local(watch_shutdown(shard.clone())).detach();
    glommio::spawn_local(heartbeat(init.heartbeats, init.id, init.heartbeat_period)).detach();
    let _ = ready.send(init.id);
    tracing::debug!(shard = shard.id, core = shard.core, "shard serving");

    super::front_door::accept_loop(shard.clone(), listener).await;

    // Stop: sessions got the shutdown signal and close with 1001; give them the grace
    // period to finish.
    let deadline = Instant::now() + shard.config.shutdown_grace;
    while shard.counters.connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
    }
    shard.mesh.close();
    tracing::debug!(shard = shard.id, "shard stopped");
}

async fn watch_shutdown(shard: Rc<Shard>) {
    while !super::shutting_down() {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
    }
    tracing::info!(shard = shard.id, "shutting down");
    shard.begin_shutdown();
}

/// Bumps this shard's slot for the systemd watchdog (see `crate::notify`). It runs on
/// the shard's own timer, so it stops when the executor is stuck; it ends with the
/// executor.
async fn heartbeat(beats: Arc<crate::notify::Heartbeats>, id: usize, period: Duration) {
    loop {
        beats[id].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        glommio::timer::sleep(period).await;
    }
}

/// An owned fd for a relocation: a duplicate, so the original can be dropped with its
/// glommio stream while the socket lives on.
pub fn dup_fd(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: dup on a descriptor we currently own; the result is a new owned fd.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
