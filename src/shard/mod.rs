//! The only place that knows glommio: one pinned executor per shard, its sockets, its
//! tasks, the mesh between shards, and the process lifecycle.

mod admission;
mod conn;
mod executor;
mod fault;
mod front_door;
mod join;
mod mesh;
mod observe;
mod rate;
mod sockets;
mod sockjs_handle;
mod sockjs_http;
mod sockjs_session;
mod state;
mod timeout;
mod udp;
mod udp_io;
mod ws_session;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, LazyLock};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::notify;

pub use state::Shard;

/// Set by SIGTERM/SIGINT; every shard watches it.
static SHUTDOWN: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));
/// Set by SIGHUP, which corelay ignores (it reloads nothing): logged, then cleared.
static HANGUP: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// How often a shard looks at the shutdown flag. Signals cannot wake a glommio executor
/// directly, and a 50 ms look costs nothing.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// glommio's own floor for RLIMIT_MEMLOCK; each executor registers its rings and a small
/// I/O buffer in locked memory.
const MIN_MEMLOCK: u64 = 512 * 1024;
/// Locked memory each shard's io_uring rings and registered buffers take, kept small:
/// shards do network I/O only.
const IO_MEMORY_PER_SHARD: usize = 128 * 1024;
const RING_DEPTH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "locked-memory limit (RLIMIT_MEMLOCK) is {have} bytes; corelay needs at least {need} for {shards} shard(s). \
         Raise it: `ulimit -l unlimited` in the shell that starts corelay (as root), or LimitMEMLOCK=infinity in the systemd unit"
    )]
    MemLock { have: u64, need: u64, shards: usize },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind UDP port {port} for shard {shard}: {source} (set udp.port_base / CORELAY_UDP_PORT_BASE)")]
    Udp {
        port: u16,
        shard: usize,
        source: std::io::Error,
    },
    #[error("cannot start shard {shard}: {reason}")]
    Executor { shard: usize, reason: String },
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsSetupError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("shards did not become ready within 10 s")]
    NotReady,
}

/// What one shard is handed at start.
struct ShardInit {
    id: usize,
    core: usize,
    shards: usize,
    listener: OwnedFd,
    udp: OwnedFd,
    udp_port: u16,
    /// Slot `id` is this shard's liveness counter for the systemd watchdog.
    heartbeats: Arc<notify::Heartbeats>,
    heartbeat_period: Duration,
    /// This shard's handle on the control plane.
    control: crate::control::ControlHandle,
    /// Which shard has each SockJS session (shared by every shard).
    sockjs_directory: Arc<sockjs_handle::Directory>,
    /// Connections per address, session rates, descriptors (shared by every shard).
    admission: Arc<admission::Admission>,
}

/// CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Locked memory (bytes) the given number of shards needs; `tune-check` reports it too.
pub fn required_memlock(shards: usize) -> u64 {
    MIN_MEMLOCK.max(shards as u64 * 4 * IO_MEMORY_PER_SHARD as u64)
}

/// Raises the soft RLIMIT_MEMLOCK to the hard limit, then checks it is enough.
fn ensure_memlock(shards: usize) -> Result<(), StartError> {
    let need = required_memlock(shards);
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    let have = unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim);
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    if have < need {
        return Err(StartError::MemLock { have, need, shards });
    }
    Ok(())
}

/// Runs the server until SIGTERM/SIGINT. Returns once every shard has stopped.
pub fn serve(config: Config) -> Result<(), StartError> {
    let cpus = allowed_cpus();
    let shards = if config.shards == 0 {
        cpus.len().max(1)
    } else {
        config.shards
    };
    if shards > cpus.len() {
        tracing::warn!(
            shards,
            cores = cpus.len(),
            "more shards than allowed cores: shards will share cores"
        );
    }
    ensure_memlock(shards)?;
    fault::install_panic_hook();

    let listeners = sockets::tcp_listeners(config.listen, shards)?;
    let listen_addr = sockets::local_addr(&listeners[0]).unwrap_or(config.listen);
    let mut udp = Vec::with_capacity(shards);
    for i in 0..shards {
        udp.push(sockets::udp_socket(&config, i)?);
    }

    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, SHUTDOWN.clone()).map_err(|e| StartError::Executor {
            shard: 0,
            reason: format!("cannot install signal handler: {e}"),
        })?;
    }
    // SIGHUP (a closed terminal, `systemctl reload`, a stray `kill -HUP`) must not end the
    // server: it is logged and otherwise ignored.
    signal_hook::flag::register(signal_hook::consts::SIGHUP, HANGUP.clone()).map_err(|e| {
        StartError::Executor {
            shard: 0,
            reason: format!("cannot install the SIGHUP handler: {e}"),
        }
    })?;

    let tls = match &config.tls {
        Some(files) => Some(crate::http::tls::server_config(&files.cert, &files.key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = Arc::new(config);
    let auth = Arc::new(
        Authenticator::with_require_exp(config.jwt_secret.as_bytes(), config.require_exp)
            .with_max_ttl(config.max_token_ttl),
    );
    let admission = Arc::new(admission::Admission::new(&config.limits));
    let (fd_limit, fd_reserve) = admission.descriptor_limit();
    if fd_limit != usize::MAX {
        tracing::info!(
            limit = fd_limit,
            reserve = fd_reserve,
            "file descriptors (RLIMIT_NOFILE): the last {fd_reserve} are kept for /health, \
             /metrics and /latency"
        );
    }
    // The control plane (outbound calls: the permission service) runs on its own thread,
    // started before the shards; each shard gets a handle. It stops by itself once the
    // last handle is dropped, after the shards.
    let (control, _control_thread) = crate::control::start(&config)?;
    let mesh = glommio::channels::channel_mesh::MeshBuilder::full(shards, 1024);
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let started = Instant::now();
    let watchdog_timeout = notify::watchdog_timeout_from_env();
    let heartbeat_period = notify::heartbeat_period(watchdog_timeout);
    let heartbeats: Arc<notify::Heartbeats> = (0..shards).map(|_| AtomicU64::new(0)).collect();
    let sockjs_directory = Arc::new(sockjs_handle::Directory::default());

    let mut handles = Vec::with_capacity(shards);
    for (id, (listener, (udp_fd, udp_port))) in listeners.into_iter().zip(udp).enumerate() {
        let core = cpus[id % cpus.len()];
        let init = ShardInit {
            id,
            core,
            shards,
            listener,
            udp: udp_fd,
            udp_port,
            heartbeats: heartbeats.clone(),
            heartbeat_period,
            control: control.clone(),
            sockjs_directory: sockjs_directory.clone(),
            admission: admission.clone(),
        };
        let (config, auth, mesh, ready_tx, tls) = (
            config.clone(),
            auth.clone(),
            mesh.clone(),
            ready_tx.clone(),
            tls.clone(),
        );
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("shard{id}"))
            .io_memory(IO_MEMORY_PER_SHARD)
            .ring_depth(RING_DEPTH)
            .spawn(move || executor::run(init, config, auth, tls, mesh, ready_tx, started))
            .map_err(|e| StartError::Executor {
                shard: id,
                reason: memlock_hint(e.to_string()),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);

    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..shards {
        let left = deadline.saturating_duration_since(Instant::now());
        if ready_rx.recv_timeout(left).is_err() {
            return Err(StartError::NotReady);
        }
    }
    tracing::info!(
        "corelay {} ready: {scheme}://{listen_addr} with {shards} shard(s), started in {} ms",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_millis()
    );
    notify::ready(&format!(
        "serving {scheme}://{listen_addr} with {shards} shard(s)"
    ));
    // The shards' rings and sockets are open now: what is not a client connection.
    admission.recount_baseline();
    if config.dev_mode {
        print_dev_banner(&config, &auth, scheme, listen_addr);
    }
    let mut watchdog = watchdog_timeout
        .map(|t| notify::Watchdog::new(t, Instant::now(), notify::read(&heartbeats)));

    // Wait for the shards; they stop by themselves once SHUTDOWN is set. A shard that
    // overruns the grace period does not hold the process hostage.
    let hard_stop = config.shutdown_grace + Duration::from_secs(1);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for h in handles {
            if let Err(e) = h.join() {
                tracing::error!("shard ended with an error: {e}");
            }
        }
        let _ = done_tx.send(());
    });
    loop {
        if done_rx.recv_timeout(SHUTDOWN_POLL).is_ok() {
            // Shards may stop within one poll of a signal: still tell systemd it was asked.
            if SHUTDOWN.load(Ordering::SeqCst) {
                notify::stopping();
            }
            break;
        }
        if let Some(w) = watchdog.as_mut() {
            w.tick(Instant::now(), &heartbeats);
        }
        if HANGUP.swap(false, Ordering::SeqCst) {
            tracing::info!(
                "SIGHUP received and ignored: corelay reloads nothing while it runs; restart \
                 it (systemctl restart corelay) to apply configuration changes"
            );
        }
        if SHUTDOWN.load(Ordering::SeqCst) {
            notify::stopping();
            if done_rx.recv_timeout(hard_stop).is_err() {
                tracing::warn!("shards did not stop within the grace period; exiting");
            }
            break;
        }
    }
    tracing::info!("corelay stopped");
    Ok(())
}

fn memlock_hint(reason: String) -> String {
    if reason.to_lowercase().contains("memlock") || reason.contains("Cannot allocate memory") {
        format!("{reason}. Raise the locked-memory limit: `ulimit -l unlimited` (as root) or LimitMEMLOCK=infinity in the systemd unit")
    } else {
        reason
    }
}

fn print_dev_banner(
    config: &Config,
    auth: &Authenticator,
    scheme: &str,
    addr: std::net::SocketAddr,
) {
    let ws_scheme = if scheme == "https" { "wss" } else { "ws" };
    let (token, _) = auth.mint(&crate::auth::Grant {
        user_id: "demo",
        user_name: Some("Demo"),
        room: None,
        ttl: config.token_ttl,
    });
    let banner = "!".repeat(78);
    tracing::warn!("{banner}");
    tracing::warn!("DEV MODE: no JWT secret configured (JWT_SECRET or auth.jwt_secret).");
    tracing::warn!(
        "A random secret is in use, POST /login is enabled, and tokens die with the process."
    );
    tracing::warn!("Never run this way in production.");
    tracing::warn!("Demo page: {scheme}://{addr}/?token={token}&room=demo");
    tracing::warn!("Health:    {scheme}://{addr}/health");
    tracing::warn!("P2P relay: {ws_scheme}://{addr}/p2p?token={token}");
    tracing::warn!("{banner}");
}

/// Whether shutdown was requested.
pub(crate) fn shutting_down() -> bool {
    SHUTDOWN.load(Ordering::SeqCst)
}
