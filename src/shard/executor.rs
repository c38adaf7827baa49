//! The executor body of one shard: builds its state, starts its tasks (the UDP driver,
//! the mesh receivers, the shutdown watch, the watchdog heartbeat), serves the front door
//! until shutdown, then gives sessions their grace period. This is the one module that
//! wires the runtime's parts together.

use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures::channel::mpsc as local_mpsc;
use futures::future::FutureExt;
use futures_rustls::rustls::ServerConfig;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers};
use glommio::net::{TcpListener, UdpSocket};

use super::conn::Conn;
use super::mesh::MeshMsg;
use super::observe::answer;
use super::state::Shard;
use super::{fault, front_door, sockjs_session, ws_session, ShardInit, SHUTDOWN_POLL};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::sfu::Engine;
use crate::stats::ShardCounters;

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
    let caps = config.limits.caps();
    let engine = match Engine::new((init.id as u64) << 40, candidate) {
        Ok(mut e) => {
            e.set_transport_limits(config.limits.transport_limits());
            e.set_caps(caps.clone());
            #[cfg(debug_assertions)]
            if super::fault::enabled() {
                e.set_fault_room(Some(super::fault::ROOM_MARKER.to_string()));
            }
            e
        }
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
        p2p_rooms: RefCell::new(crate::signal::p2p::Rooms::new(&caps)),
        engine: RefCell::new(engine),
        udp_wake,
        latencies: RefCell::default(),
        outbound: RefCell::default(),
        request_bytes: Cell::new(0),
        guard: super::admission::FrontGuard::new(init.admission, init.shards),
        sockjs: RefCell::default(),
        sockjs_directory: init.sockjs_directory,
        pending_stats: RefCell::default(),
        next_id: Cell::new(0),
        shutdown_tx: RefCell::new(Some(shutdown_tx)),
        shutdown: shutdown_rx.shared(),
    });
    let listener_fd = init.listener.into_raw_fd();
    // SAFETY: the fds were created for this shard and are owned by nobody else.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };
    let udp = unsafe { UdpSocket::from_raw_fd(init.udp.into_raw_fd()) };

    spawn_receivers(&shard, receivers);
    glommio::spawn_local(super::udp::drive(shard.clone(), udp, udp_woken)).detach();
    glommio::spawn_local(watch_shutdown(shard.clone())).detach();
    glommio::spawn_local(heartbeat(init.heartbeats, init.id, init.heartbeat_period)).detach();
    let _ = ready.send(init.id);
    tracing::debug!(shard = shard.id, core = shard.core, "shard serving");

    front_door::accept_loop(shard.clone(), listener, listener_fd).await;

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

pub(super) fn spawn_receivers(shard: &Rc<Shard>, receivers: Receivers<MeshMsg>) {
    let receivers = Rc::new(receivers);
    for peer in 0..shard.shards {
        if peer == shard.id {
            continue;
        }
        let shard = shard.clone();
        let receivers = receivers.clone();
        glommio::spawn_local(async move {
            while let Ok(Some(msg)) = receivers.recv_from(peer).await {
                handle(&shard, msg).await;
            }
        })
        .detach();
    }
}

async fn handle(shard: &Rc<Shard>, msg: MeshMsg) {
    match msg {
        MeshMsg::Adopt(handover) => {
            let mut handover = *handover;
            let shard = shard.clone();
            match handover.session.take() {
                Some(dialect) => fault::spawn_guarded(
                    shard.id,
                    "WebSocket session",
                    ws_session::adopt(shard, handover, dialect),
                ),
                None => {
                    ShardCounters::add(&shard.counters.relocated_in, 1);
                    let conn = Conn::attach(handover.conn);
                    fault::spawn_guarded(
                        shard.id,
                        "HTTP connection",
                        front_door::serve_http(
                            shard,
                            conn,
                            handover.leftover,
                            handover.peer,
                            front_door::Mode::Relocated,
                        ),
                    )
                }
            };
        }
        MeshMsg::AdoptSockjs(moving) => sockjs_session::adopt(shard, *moving),
        MeshMsg::Query { from, id, query } => {
            let answer = answer(shard, query);
            let _ = shard
                .mesh
                .send_to(from, MeshMsg::Answer { id, answer })
                .await;
        }
        MeshMsg::Answer { id, answer } => {
            if let Some(tx) = shard.pending_stats.borrow_mut().remove(&id) {
                let _ = tx.send(answer);
            }
        }
    }
}
