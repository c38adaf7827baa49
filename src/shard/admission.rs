//! Admission at the front door, shared by every shard of the process: how many TCP
//! connections each client address holds (`limits.connections_per_ip`), how fast each
//! address and each token subject opens new sessions (`limits.sessions_per_ip_*`,
//! `limits.sessions_per_token_*`), and the file-descriptor reserve that keeps `/health`,
//! `/metrics` and `/latency` answering when the process nears its RLIMIT_NOFILE.
//!
//! One [`Admission`] is made at start-up and handed to every shard (the shards are threads
//! of one process). Its tables sit behind one `Mutex`, taken once per accepted connection,
//! once per closed one and once per new session: never per message or packet, so the
//! shards hardly ever meet there. A per-shard count with the cap divided by the shard
//! count would be too strict (the kernel's SO_REUSEPORT spread is uneven) and wrong once
//! a connection moves to its room's shard; here a connection's [`Permit`] travels with it
//! and is released wherever it closes.
//!
//! Client addresses are keyed as they come, except that an IPv6 address counts by its
//! /64 prefix (one site, as the hosts behind one IPv4 NAT are) and an IPv4-mapped IPv6
//! address as the IPv4 address.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};

use super::rate::Bucket;
use crate::config::Limits;
use crate::http::Response;

/// Entries one rate table keeps at most; beyond, buckets that refilled are forgotten
/// first, then half the table (a client forgotten starts with a full burst again).
const MAX_RATE_ENTRIES: usize = 100_000;
/// The least and the most descriptors kept in reserve (1/16 of the limit in between).
const RESERVE_MIN: usize = 32;
const RESERVE_MAX: usize = 1024;
/// How often the descriptor warning may be logged.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How often the descriptors in use may be counted again (`/proc/self/fd`) after an
/// accept failed for want of one.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);
/// Connections one shard may hold at once while refusing them (over the per-address cap)
/// with an answer; beyond, they are closed at once.
const REFUSING_PER_SHARD: usize = 64;

/// How a client address is counted.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Token buckets by key, bounded in entries.
struct RateTable<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateTable<K> {
    fn new(rate: u32, burst: u32) -> RateTable<K> {
        RateTable {
            rate: rate as f64,
            burst: burst as f64,
            buckets: HashMap::new(),
        }
    }

    fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one token of `key`'s bucket; `Err` with how long until one is there.
    fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= MAX_RATE_ENTRIES {
            self.buckets.retain(|_, b| !b.is_full_at(now));
            if self.buckets.len() >= MAX_RATE_ENTRIES {
                let drop: Vec<K> = self
                    .buckets
                    .keys()
                    .take(MAX_RATE_ENTRIES / 2)
                    .cloned()
                    .collect();
                for k in drop {
                    self.buckets.remove(&k);
                }
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self
            .buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(rate, burst, now));
        if bucket.take(1.0, now) {
            Ok(())
        } else {
            Err(bucket.wait_for_one())
        }
    }

    fn refund(&mut self, key: &K) {
        if let Some(b) = self.buckets.get_mut(key) {
            b.refund(1.0);
        }
    }
}

struct Tables {
    /// Open connections by client address (only addresses with one or more).
    connections: HashMap<IpAddr, u32>,
    per_ip: RateTable<IpAddr>,
    per_token: RateTable<String>,
}

/// A new session refused for its rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRefusal {
    /// `"address"` or `"token"`.
    pub per: &'static str,
    pub rate_key: &'static str,
    pub burst_key: &'static str,
    pub rate: u32,
    pub burst: u32,
    /// Whole seconds until the client may try again (at least 1).
    pub retry_after_s: u64,
}

impl RateRefusal {
    /// The 429 answer: the setting named, `Retry-After` set.
    pub fn response(&self) -> Response {
        Response::error(
            429,
            "too_many_requests",
            &format!(
                "too many new sessions from this {}: over {}/s ({}) with a burst of {} ({}); \
                 retry in {} s",
                self.per, self.rate, self.rate_key, self.burst, self.burst_key, self.retry_after_s
            ),
        )
        .header("Retry-After", &self.retry_after_s.to_string())
    }
}

/// What admission decided for an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Served as usual.
    Admitted,
    /// Its address holds `limits.connections_per_ip` connections already: it gets a 429
    /// and is closed.
    OverIpCap(u32),
    /// The process is near its descriptor limit: it may ask for /health, /metrics or
    /// /latency, nothing else, and only if its request comes at once.
    Reserve,
}

/// The file-descriptor budget of the process.
struct Descriptors {
    /// RLIMIT_NOFILE (soft, raised to the hard limit at start); `usize::MAX` = none.
    limit: usize,
    reserve: usize,
    /// Descriptors open that are not client connections (listeners, UDP sockets,
    /// io_uring rings, logs...), counted at start and after an accept ran out.
    baseline: AtomicUsize,
    /// In use is within the reserve of the limit (until it drops two reserves below).
    pressure: AtomicBool,
    /// Bumped each time pressure starts: each shard then closes its connections that
    /// wait for a request head.
    epoch: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
    last_recount: Mutex<Option<Instant>>,
}

/// Admission for the whole process: see the [module documentation](self).
pub struct Admission {
    connections_per_ip: u32,
    token_rate: (u32, u32),
    ip_rate: (u32, u32),
    tables: Mutex<Tables>,
    /// Client connections open now, over every shard (each holds a descriptor).
    open: AtomicUsize,
    fds: Descriptors,
}

impl Admission {
    /// From the `limits.*` settings; raises the soft RLIMIT_NOFILE to the hard limit and
    /// counts the descriptors already open.
    pub fn new(limits: &Limits) -> Admission {
        let limit = raise_nofile_limit();
        Admission::with_fd_limit(limits, limit, count_open_fds().unwrap_or(64))
    }

    fn with_fd_limit(limits: &Limits, limit: usize, baseline: usize) -> Admission {
        let reserve = if limit == usize::MAX {
            0
        } else {
            (limit / 16).clamp(RESERVE_MIN, RESERVE_MAX)
        };
        Admission {
            connections_per_ip: limits.connections_per_ip,
            ip_rate: (limits.sessions_per_ip_per_s, limits.sessions_per_ip_burst),
            token_rate: (
                limits.sessions_per_token_per_s,
                limits.sessions_per_token_burst,
            ),
            tables: Mutex::new(Tables {
                connections: HashMap::new(),
                per_ip: RateTable::new(limits.sessions_per_ip_per_s, limits.sessions_per_ip_burst),
                per_token: RateTable::new(
                    limits.sessions_per_token_per_s,
                    limits.sessions_per_token_burst,
                ),
            }),
            open: AtomicUsize::new(0),
            fds: Descriptors {
                limit,
                reserve,
                baseline: AtomicUsize::new(baseline),
                pressure: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
                last_warning: Mutex::new(None),
                last_recount: Mutex::new(None),
            },
        }
    }

    /// The descriptor limit and the reserve kept below it.
    pub fn descriptor_limit(&self) -> (usize, usize) {
        (self.fds.limit, self.fds.reserve)
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while the lock was held cannot leave the counts worse than a little off.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the descriptors that are not client connections again (once the shards
    /// started, their rings and sockets are open).
    pub fn recount_baseline(&self) {
        if let Some(n) = count_open_fds() {
            let open = self.open.load(Ordering::SeqCst);
            self.fds
                .baseline
                .store(n.saturating_sub(open), Ordering::SeqCst);
        }
    }

    /// Descriptors in use by the estimate: the baseline plus the open connections.
    pub fn in_use(&self) -> usize {
        self.fds.baseline.load(Ordering::SeqCst) + self.open.load(Ordering::SeqCst)
    }

    /// Bumped each time descriptor pressure starts.
    pub fn pressure_epoch(&self) -> u64 {
        self.fds.epoch.load(Ordering::SeqCst)
    }

    /// A connection was accepted from `ip`: its permit (released when dropped) and what
    /// to do with it.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>, shard: usize) -> (Permit, Verdict) {
        self.open.fetch_add(1, Ordering::SeqCst);
        let mut permit = Permit {
            admission: self.clone(),
            ip: None,
        };
        if self.update_pressure(shard) {
            return (permit, Verdict::Reserve);
        }
        let (Some(ip), cap) = (ip, self.connections_per_ip) else {
            return (permit, Verdict::Admitted);
        };
        if cap == 0 {
            return (permit, Verdict::Admitted);
        }
        let key = client_key(ip);
        let mut t = self.tables();
        let n = t.connections.entry(key).or_insert(0);
        if *n >= cap {
            return (permit, Verdict::OverIpCap(cap));
        }
        *n += 1;
        permit.ip = Some(key);
        (permit, Verdict::Admitted)
    }

    /// Enters or leaves pressure by the estimate; true while under pressure.
    fn update_pressure(&self, shard: usize) -> bool {
        let (limit, reserve) = (self.fds.limit, self.fds.reserve);
        if limit == usize::MAX {
            return false;
        }
        let in_use = self.in_use();
        let was = self.fds.pressure.load(Ordering::SeqCst);
        if !was && in_use + reserve >= limit {
            self.start_pressure(shard, in_use, "nearly all in use");
            true
        } else if was && in_use + 2 * reserve < limit {
            if self.fds.pressure.swap(false, Ordering::SeqCst) {
                tracing::info!(
                    shard,
                    in_use,
                    limit,
                    "file descriptors: back below the reserve, connections are served again"
                );
            }
            false
        } else {
            was
        }
    }

    fn start_pressure(&self, shard: usize, in_use: usize, why: &str) {
        self.fds.pressure.store(true, Ordering::SeqCst);
        self.fds.epoch.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        let mut last = self
            .fds
            .last_warning
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(
                shard,
                in_use,
                limit = self.fds.limit,
                reserve = self.fds.reserve,
                "file descriptors {why}: closing connections that have sent no request, and \
                 until it eases new connections may only ask for /health, /metrics and \
                 /latency (503 otherwise); raise LimitNOFILE (systemd) or ulimit -n \
                 (logged at most once a minute)"
            );
        }
    }

    /// An accept failed with EMFILE or ENFILE: the estimate was short. Counts again (at
    /// most once a second) and starts pressure.
    pub fn out_of_descriptors(&self, shard: usize) {
        let now = Instant::now();
        let recount = {
            let mut last = self
                .fds
                .last_recount
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|at| now.duration_since(at) >= RECOUNT_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        if recount {
            let open = self.open.load(Ordering::SeqCst);
            let counted = count_open_fds().unwrap_or(self.fds.limit);
            // Whatever the count says, an accept just failed: the limit is reached.
            let baseline = counted
                .max(self.fds.limit.saturating_sub(self.fds.reserve))
                .saturating_sub(open);
            self.fds.baseline.store(baseline, Ordering::SeqCst);
        }
        let in_use = self.in_use();
        self.start_pressure(shard, in_use, "exhausted (accept failed)");
    }

    /// Counts one new session (a WebSocket upgrade, a WHIP/WHEP POST, a new SockJS
    /// session) of address `ip` and token subject `subject`; `Err` when either is over
    /// its rate (nothing is counted then).
    pub fn new_session(
        &self,
        ip: Option<IpAddr>,
        subject: Option<&str>,
        now: Instant,
    ) -> Result<(), RateRefusal> {
        let mut t = self.tables();
        let t = &mut *t;
        let ip = ip.map(client_key);
        if let (Some(ip), true) = (ip, t.per_ip.enabled()) {
            if let Err(wait) = t.per_ip.take(&ip, now) {
                return Err(self.refusal("address", wait));
            }
        }
        if let (Some(subject), true) = (subject, t.per_token.enabled()) {
            if let Err(wait) = t.per_token.take(&subject.to_string(), now) {
                if let (Some(ip), true) = (ip, t.per_ip.enabled()) {
                    t.per_ip.refund(&ip);
                }
                return Err(self.refusal("token", wait));
            }
        }
        Ok(())
    }

    fn refusal(&self, per: &'static str, wait: Duration) -> RateRefusal {
        let ((rate, burst), rate_key, burst_key) = if per == "address" {
            (
                self.ip_rate,
                "limits.sessions_per_ip_per_s",
                "limits.sessions_per_ip_burst",
            )
        } else {
            (
                self.token_rate,
                "limits.sessions_per_token_per_s",
                "limits.sessions_per_token_burst",
            )
        };
        RateRefusal {
            per,
            rate_key,
            burst_key,
            rate,
            burst,
            retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// One accepted connection's hold on the admission counts; dropped when the connection
/// closes, on whichever shard it is then.
pub struct Permit {
    admission: Arc<Admission>,
    /// The counted address, when it counts against `limits.connections_per_ip`.
    ip: Option<IpAddr>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("ip", &self.ip).finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::SeqCst);
        if let Some(ip) = self.ip {
            let mut t = self.admission.tables();
            if let Some(n) = t.connections.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    t.connections.remove(&ip);
                }
            }
        }
    }
}

/// Resolves when this shard sheds the connections waiting for a request head.
pub type ShedSignal = Shared<oneshot::Receiver<()>>;

/// One shard's side of admission: the shared [`Admission`], the shed signal, and the
/// connections being refused or served from the reserve.
pub struct FrontGuard {
    pub admission: Arc<Admission>,
    shards: usize,
    shed_tx: RefCell<Option<oneshot::Sender<()>>>,
    shed_rx: RefCell<ShedSignal>,
    /// The pressure epoch this shard last shed for.
    shed_epoch: Cell<u64>,
    /// Connections of this shard in [`Verdict::OverIpCap`] or [`Verdict::Reserve`].
    limbo: Rc<Cell<usize>>,
}

/// A connection counted in its shard's limbo until dropped.
pub struct Limbo(Rc<Cell<usize>>);

impl Drop for Limbo {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl FrontGuard {
    pub fn new(admission: Arc<Admission>, shards: usize) -> FrontGuard {
        let (tx, rx) = oneshot::channel();
        FrontGuard {
            shed_epoch: Cell::new(admission.pressure_epoch()),
            admission,
            shards: shards.max(1),
            shed_tx: RefCell::new(Some(tx)),
            shed_rx: RefCell::new(rx.shared()),
            limbo: Rc::new(Cell::new(0)),
        }
    }

    /// Resolves when this shard next sheds its connections waiting for a request head.
    pub fn shed_signal(&self) -> ShedSignal {
        self.shed_rx.borrow().clone()
    }

    /// Sheds now if pressure started since this shard last did.
    pub fn sync(&self) {
        let epoch = self.admission.pressure_epoch();
        if epoch != self.shed_epoch.get() {
            self.shed_epoch.set(epoch);
            let (tx, rx) = oneshot::channel();
            *self.shed_rx.borrow_mut() = rx.shared();
            if let Some(old) = self.shed_tx.replace(Some(tx)) {
                let _ = old.send(());
            }
        }
    }

    /// Counts a refused or reserve connection; `None` when this shard holds as many as
    /// it may (the connection is then closed at once). A reserve connection whose request
    /// is not there yet (`waiting`) may take half the places only, so that idle clients
    /// cannot crowd out the operator's requests, which come with their bytes.
    pub fn enter_limbo(&self, verdict: Verdict, waiting: bool) -> Option<Limbo> {
        let most = match verdict {
            Verdict::Admitted => return None,
            Verdict::OverIpCap(_) => REFUSING_PER_SHARD,
            // Half the reserve, shared by the shards.
            Verdict::Reserve => {
                let places = (self.admission.fds.reserve / 2 / self.shards).max(2);
                if waiting {
                    places / 2
                } else {
                    places
                }
            }
        };
        let n = self.limbo.get();
        if n >= most {
            return None;
        }
        self.limbo.set(n + 1);
        Some(Limbo(self.limbo.clone()))
    }
}

/// Sets the soft RLIMIT_NOFILE to the hard limit; returns the soft limit then in force
/// (`usize::MAX` for none).
fn raise_nofile_limit() -> usize {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    let cur = unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return usize::MAX;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    if cur == libc::RLIM_INFINITY {
        usize::MAX
    } else {
        usize::try_from(cur).unwrap_or(usize::MAX)
    }
}

/// Descriptors this process has open (`/proc/self/fd`, less the one reading it).
fn count_open_fds() -> Option<usize> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count().saturating_sub(1))
}

/// Whether bytes from the client wait on socket `fd` (a non-blocking peek).
pub fn has_pending_bytes(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local on a descriptor the caller owns.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// With a descriptor free (the spare one closed): accepts one waiting client on `listener`
/// without waiting (never an in-flight accept that could be lost), tells it 503 and closes.
pub fn refuse_waiting(listener: std::os::fd::RawFd) {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: a non-blocking accept on the shard's listening socket; a result is a fresh
    // descriptor owned here.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` was just returned by accept4 and nobody else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let busy = Response::error(
        503,
        "busy",
        "the server has no file descriptor left (RLIMIT_NOFILE); retry shortly",
    )
    .header("Retry-After", "1")
    .to_bytes(false);
    // SAFETY: a non-blocking send of a local buffer on the descriptor owned above.
    unsafe {
        libc::send(
            fd,
            busy.as_ptr().cast(),
            busy.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
    drop(owned);
}

/// Whether an accept error means the process or the system ran out of descriptors.
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(per_ip: u32, ip_rate: u32, ip_burst: u32, tok_rate: u32, tok_burst: u32) -> Limits {
        let mut l = Config::defaults().limits;
        l.connections_per_ip = per_ip;
        l.sessions_per_ip_per_s = ip_rate;
        l.sessions_per_ip_burst = ip_burst;
        l.sessions_per_token_per_s = tok_rate;
        l.sessions_per_token_burst = tok_burst;
        l
    }

    #[test]
    fn connections_are_capped_per_address_and_released_on_drop() {
        let a = Arc::new(Admission::with_fd_limit(
            &limits(2, 0, 1, 0, 1),
            usize::MAX,
            0,
        ));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let (p1, v1) = a.admit(Some(ip), 0);
        let (p2, v2) = a.admit(Some(ip), 1);
        let (p3, v3) = a.admit(Some(ip), 0);
        assert_eq!(
            (v1, v2, v3),
            (Verdict::Admitted, Verdict::Admitted, Verdict::OverIpCap(2))
        );
        assert_eq!(a.admit(Some(other), 0).1, Verdict::Admitted);
        drop(p3);
        assert_eq!(a.admit(Some(ip), 0).1, Verdict::OverIpCap(2));
        drop(p1);
        let (_p4, v4) = a.admit(Some(ip), 1);
        assert_eq!(v4, Verdict::Admitted, "a closed connection frees its place");
        drop(p2);
        assert_eq!(a.open.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a = Arc::new(Admission::with_fd_limit(
            &limits(1, 0, 1, 0, 1),
            usize::MAX,
            0,
        ));
        let (_p, v) = a.admit(Some("2001:db8:1:2::5".parse().unwrap()), 0);
        assert_eq!(v, Verdict::Admitted);
        let (_q, v) = a.admit(Some("2001:db8:1:2:ffff::9".parse().unwrap()), 0);
        assert_eq!(v, Verdict::OverIpCap(1), "same /64");
        let (_r, v) = a.admit(Some("2001:db8:1:3::5".parse().unwrap()), 0);
        assert_eq!(v, Verdict::Admitted, "another /64");
        let (_s, v) = a.admit(Some("192.0.2.7".parse().unwrap()), 0);
        assert_eq!(v, Verdict::Admitted);
        let (_t, v) = a.admit(Some("::ffff:192.0.2.7".parse().unwrap()), 0);
        assert_eq!(v, Verdict::OverIpCap(1));
    }

    #[test]
    fn new_sessions_are_rated_per_address_and_per_token() {
        let a = Admission::with_fd_limit(&limits(0, 1, 3, 1, 2), usize::MAX, 0);
        let t0 = Instant::now();
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        assert!(a.new_session(ip, Some("alice\0r"), t0).is_ok());
        assert!(a.new_session(ip, Some("alice\0r"), t0).is_ok());
        let e = a.new_session(ip, Some("alice\0r"), t0).unwrap_err();
        assert_eq!(e.per, "token");
        assert_eq!(e.rate_key, "limits.sessions_per_token_per_s");
        assert_eq!(e.retry_after_s, 1);
        // The refused one took nothing from the address: one more fits there.
        assert!(a.new_session(ip, Some("bob\0r"), t0).is_ok());
        let e = a.new_session(ip, Some("carol\0r"), t0).unwrap_err();
        assert_eq!(e.per, "address");
        let resp = e.response();
        assert_eq!(resp.status, 429);
        assert!(String::from_utf8_lossy(&resp.body).contains("limits.sessions_per_ip_per_s"));
        assert!(resp
            .headers
            .iter()
            .any(|(k, v)| k == "Retry-After" && v == "1"));
        // Another address is not affected, and time refills.
        let other: Option<IpAddr> = Some("10.0.0.9".parse().unwrap());
        assert!(a.new_session(other, None, t0).is_ok());
        assert!(a
            .new_session(ip, Some("carol\0r"), t0 + Duration::from_millis(1100))
            .is_ok());
    }

    #[test]
    fn a_rate_table_stays_bounded() {
        let mut t: RateTable<u32> = RateTable::new(1, 1);
        let t0 = Instant::now();
        for k in 0..(MAX_RATE_ENTRIES as u32 + 10) {
            let _ = t.take(&k, t0);
        }
        assert!(t.buckets.len() <= MAX_RATE_ENTRIES);
    }

    #[test]
    fn pressure_starts_within_the_reserve_and_ends_two_reserves_below() {
        let a = Arc::new(Admission::with_fd_limit(&limits(0, 0, 1, 0, 1), 256, 100));
        assert_eq!(a.descriptor_limit(), (256, 32));
        let mut held = Vec::new();
        // 100 + 123 = 223 in use: one more reaches the reserve (224 + 32 = 256).
        for _ in 0..123 {
            let (p, v) = a.admit(None, 0);
            assert_eq!(v, Verdict::Admitted);
            held.push(p);
        }
        let epoch = a.pressure_epoch();
        let (p, v) = a.admit(None, 0);
        assert_eq!(v, Verdict::Reserve);
        assert_eq!(a.pressure_epoch(), epoch + 1);
        held.push(p);
        // Still under pressure until in use is below 256 - 64 = 192.
        held.truncate(100);
        let (_p, v) = a.admit(None, 0);
        assert_eq!(v, Verdict::Reserve, "201 in use");
        held.truncate(60);
        let (_q, v) = a.admit(None, 0);
        assert_eq!(v, Verdict::Admitted);
        assert!(!a.fds.pressure.load(Ordering::SeqCst));
    }
}
