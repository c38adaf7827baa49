//! The in-memory forward path: one publisher sending 1 Mbit/s of VP8 to 1, 10, 100 and
//! 1000 subscribers through one engine on a virtual clock. Reports the engine's time and
//! heap allocations per forwarded packet taking the publisher's packets (decrypt once,
//! rewrite + encrypt per subscriber, drain), and its time for everything per forwarded
//! packet: also the subscribers' RTCP (receiver reports, TWCC feedback) and the
//! timeouts. Client-side work (the subscribers' decryption) is not counted.
//!
//! With `--memory N` it measures memory instead: N subscriber transports (each with one
//! video consumer) connected in the sim world and idle, then the same with the video
//! flowing. It reports the RSS growth per subscriber (engine and client together, from
//! `/proc/self/status`), the engine's own live heap per transport (what is left when the
//! clients are dropped) and that heap by allocation size.
//!
//! Run: `cargo run --release -p corelay-bench --bin forward [-- --seconds 20]
//! [--subs 1,10,100,1000] [--idle-producers 500] [--no-rtx] [--memory 1000]`.
//! `--idle-producers` adds publishers nobody subscribes to; `--no-rtx` makes the publisher
//! stop sending the mid once acknowledged (as browsers do), so packets are demuxed by SSRC. Built with `--features system-alloc` it
//! allocates from the system allocator, for heap profilers that hook malloc (heaptrack);
//! `--exit-after idle` (or `active`) then ends the memory run with only the engine's heap
//! live, which such a profiler reports as leaked, by call stack.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corelay::sfu::ortc::VP8;
use corelay_testkit::sim::{Video, World, SERVER};

/// Counts allocations while `COUNTING` is set, and live heap by size while `TRACKING` is;
/// everything goes to mimalloc (or the system allocator, feature `system-alloc`).
struct Counting;
#[cfg(not(feature = "system-alloc"))]
use mimalloc::MiMalloc as Backing;
#[cfg(feature = "system-alloc")]
use std::alloc::System as Backing;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static TRACKING: AtomicBool = AtomicBool::new(false);
/// Live allocations and bytes by size class: class `b` holds sizes in (2^(b-1), 2^b].
static LIVE_COUNT: [AtomicI64; 48] = [const { AtomicI64::new(0) }; 48];
static LIVE_BYTES: [AtomicI64; 48] = [const { AtomicI64::new(0) }; 48];

fn class(size: usize) -> usize {
    (usize::BITS - size.max(1).saturating_sub(1).leading_zeros()) as usize
}

fn track(size: usize, sign: i64) {
    let b = class(size).min(47);
    LIVE_COUNT[b].fetch_add(sign, Ordering::Relaxed);
    LIVE_BYTES[b].fetch_add(sign * size as i64, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        if TRACKING.load(Ordering::Relaxed) {
            track(l.size(), 1);
        }
        unsafe { Backing.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if TRACKING.load(Ordering::Relaxed) {
            track(l.size(), -1);
        }
        unsafe { Backing.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        if TRACKING.load(Ordering::Relaxed) {
            track(l.size(), -1);
            track(n, 1);
        }
        unsafe { Backing.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// 1 Mbit/s in 1200-byte packets: about 104 packets a second.
const PACKET_BYTES: usize = 1200;
const PACKETS_PER_SECOND: u64 = 1_000_000 / (PACKET_BYTES as u64 * 8);

struct Result {
    subscribers: u64,
    forwarded: u64,
    ns_per_packet: f64,
    all_ns_per_packet: f64,
    allocs_per_packet: f64,
}

/// How the forwarding world is set up besides its subscribers.
#[derive(Clone, Copy)]
struct Setup {
    /// Other publishers of the shard (in another room, nobody subscribed), one producer
    /// each: what a demux that scans producers has to look through.
    idle_producers: u64,
    /// The publisher declares RTX. A str0m sender with RTX never stops writing the mid (it
    /// only takes a receiver report for its RTX SSRC as acknowledgement); without RTX it
    /// stops after the first receiver report, as browsers do.
    rtx: bool,
}

/// A world with one publisher and `subscribers` connected subscribers, the first frames
/// (a keyframe first) already forwarded.
fn world(subscribers: u64, setup: Setup) -> (World, Video) {
    let mut w = World::new();
    // The room of the 1000-subscriber case is larger than limits.members_per_room allows by
    // default: this bench measures the forward path, not the caps.
    w.engine.set_caps(corelay::sfu::Caps {
        members_per_room: 1_000_000,
        ..corelay::sfu::Caps::default()
    });
    let (pc, pid, ssrc) = w.publish(1, "room", setup.rtx);
    for i in 0..setup.idle_producers {
        w.publish(1_000_000 + i, "idle", true);
        forget_notices(&mut w);
    }
    for i in 0..subscribers {
        w.subscriber(10 + i, &pid);
        forget_notices(&mut w);
    }
    w.connect_all();
    let mut video = Video {
        client: pc,
        ssrc,
        seq: 1,
        ts: 0,
    };
    video.frames(&mut w, 3); // keyframe first: every consumer starts forwarding
    forget_events(&mut w);
    (w, video)
}

/// What the signaling sessions would take (peer joined, ...): every peer is told of each
/// joining one, so kept they grow with the square of the subscribers.
fn forget_notices(w: &mut World) {
    while w.engine.poll_notice().is_some() {}
}

/// The subscribers' received packets are not looked at: drop them as they come.
fn forget_events(w: &mut World) {
    for c in w.clients.iter_mut() {
        c.events.clear();
    }
}

/// What the engine spent while the video went out.
struct Spent {
    /// Taking the publisher's datagrams (the forward path).
    forward: Duration,
    /// Every engine call: those, the subscribers' datagrams and the timeouts.
    all: Duration,
    /// Packets forwarded.
    forwarded: u64,
    /// Allocations while taking the publisher's datagrams.
    allocs: u64,
}

/// `World::step`, timing every call into the engine (into `all`).
fn step_timed(
    w: &mut World,
    dt: Duration,
    by_addr: &HashMap<SocketAddr, usize>,
    all: &mut Duration,
) {
    w.now += dt;
    if w.engine.poll_timeout().is_some_and(|t| t <= w.now) {
        let start = Instant::now();
        w.engine.handle_timeout(w.now);
        *all += start.elapsed();
    }
    let now = w.now;
    for c in w.clients.iter_mut() {
        if c.deadline <= now {
            c.handle_timeout(now);
        }
    }
    // `World::exchange`: datagrams both ways until none are left.
    let server: SocketAddr = SERVER.parse().unwrap();
    loop {
        let mut moved = false;
        for i in 0..w.clients.len() {
            let addr = w.clients[i].addr;
            for t in std::mem::take(&mut w.clients[i].outbox) {
                moved = true;
                let start = Instant::now();
                w.engine.handle_datagram(now, addr, &t.contents);
                *all += start.elapsed();
            }
        }
        let mut out = Vec::new();
        w.engine.poll_transmits(&mut out);
        for t in out {
            moved = true;
            if let Some(&i) = by_addr.get(&t.destination) {
                w.clients[i].handle_datagram(now, server, &t.contents);
            }
        }
        if !moved {
            return;
        }
    }
}

/// Sends `packets` packets of 1 Mbit/s video, measuring the engine taking each of them,
/// and all it does meanwhile.
fn send_video(w: &mut World, video: &mut Video, packets: u64) -> Spent {
    let by_addr: HashMap<SocketAddr, usize> = w
        .clients
        .iter()
        .enumerate()
        .map(|(i, c)| (c.addr, i))
        .collect();
    let mut all = Duration::ZERO;
    let pc = video.client;
    let publisher_addr = w.clients[pc].addr;
    let gap = Duration::from_micros(1_000_000 / PACKETS_PER_SECOND);
    let mut busy = Duration::ZERO;
    let mut forwarded = 0;
    let mut allocs = 0;
    let payload = {
        let mut p = vec![0x10, 0x01];
        p.resize(PACKET_BYTES - 60, 0x33);
        p
    };
    for n in 0..packets {
        let marker = n % 4 == 3;
        w.clients[pc].send_rtp(
            w.now, video.ssrc, VP8.pt, video.seq, video.ts, marker, &payload,
        );
        video.seq += 1;
        if marker {
            video.ts = video.ts.wrapping_add(3000);
        }
        // Time only the engine handling the publisher's datagrams.
        for t in std::mem::take(&mut w.clients[pc].outbox) {
            let before = w.engine.counters().rtp_out;
            ALLOCS.store(0, Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            let start = Instant::now();
            w.engine.handle_datagram(w.now, publisher_addr, &t.contents);
            busy += start.elapsed();
            COUNTING.store(false, Ordering::Relaxed);
            let out = w.engine.counters().rtp_out - before;
            if out > 0 {
                forwarded += out;
                allocs += ALLOCS.load(Ordering::Relaxed);
            }
        }
        step_timed(w, gap, &by_addr, &mut all);
        forget_events(w);
    }
    Spent {
        forward: busy,
        all: all + busy,
        forwarded,
        allocs,
    }
}

fn run(subscribers: u64, seconds: u64, setup: Setup) -> Result {
    let (mut w, mut video) = world(subscribers, setup);
    let spent = send_video(&mut w, &mut video, PACKETS_PER_SECOND * seconds);
    let per = |x: f64| x / spent.forwarded.max(1) as f64;
    Result {
        subscribers,
        forwarded: spent.forwarded,
        ns_per_packet: per(spent.forward.as_nanos() as f64),
        all_ns_per_packet: per(spent.all.as_nanos() as f64),
        allocs_per_packet: per(spent.allocs as f64),
    }
}

// ---------------------------------------------------------------------- memory

/// VmRSS of this process, in KiB.
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Live heap by size class: (allocations, bytes).
#[derive(Clone)]
struct Heap([(i64, i64); 48]);

impl Heap {
    fn now() -> Heap {
        let mut h = [(0, 0); 48];
        for (b, e) in h.iter_mut().enumerate() {
            *e = (
                LIVE_COUNT[b].load(Ordering::Relaxed),
                LIVE_BYTES[b].load(Ordering::Relaxed),
            );
        }
        Heap(h)
    }
    fn bytes(&self) -> i64 {
        self.0.iter().map(|e| e.1).sum()
    }
    fn minus(&self, o: &Heap) -> Heap {
        let mut h = self.0;
        for (e, b) in h.iter_mut().zip(o.0.iter()) {
            e.0 -= b.0;
            e.1 -= b.1;
        }
        Heap(h)
    }
    /// The size classes that hold at least 1% of the bytes, per `n`.
    fn print(&self, n: i64) {
        let total = self.bytes().max(1);
        println!(
            "    {:>17} {:>14} {:>14}",
            "size class", "allocs/sub", "bytes/sub"
        );
        for (b, &(count, bytes)) in self.0.iter().enumerate() {
            if bytes * 100 < total {
                continue;
            }
            let lo = if b == 0 { 0 } else { (1u64 << (b - 1)) + 1 };
            println!(
                "    {:>17} {:>14.1} {:>14.0}",
                format!("{lo}..={}", 1u64 << b),
                count as f64 / n as f64,
                bytes as f64 / n as f64
            );
        }
    }
}

/// `n` subscriber transports, idle and then with video flowing: RSS and heap per
/// subscriber.
fn memory(n: u64, seconds: u64) {
    TRACKING.store(true, Ordering::Relaxed);
    println!(
        "memory per subscriber transport, {n} subscribers (one video consumer each); \
         size_of::<Transport>() = {} bytes",
        std::mem::size_of::<corelay::sfu::transport::Transport>()
    );

    // Idle: connected, no media.
    let mut w = World::new();
    let (_, pid, _) = w.publisher(1);
    w.connect_all();
    w.run(Duration::from_millis(200));
    let (rss0, heap0) = (rss_kib(), Heap::now());
    for i in 0..n {
        w.subscriber(10 + i, &pid);
        forget_notices(&mut w);
    }
    w.connect_all();
    w.run(Duration::from_secs(1));
    forget_events(&mut w);
    let (rss1, heap1) = (rss_kib(), Heap::now());
    w.clients.truncate(1); // only the publisher's client is left
    w.clients.shrink_to_fit();
    let heap2 = Heap::now();
    let per = |kib: i64| kib as f64 * 1024.0 / n as f64 / 1024.0;
    let engine = heap2.minus(&heap0);
    println!("idle:");
    println!(
        "  RSS growth per subscriber (engine + client): {:.1} KiB",
        per(rss1 - rss0)
    );
    println!(
        "  live heap per subscriber: engine {:.1} KiB, client {:.1} KiB",
        engine.bytes() as f64 / 1024.0 / n as f64,
        heap1.minus(&heap2).bytes() as f64 / 1024.0 / n as f64
    );
    println!("  engine heap by allocation size:");
    engine.print(n as i64);
    if arg("--exit-after").as_deref() == Some("idle") {
        // What is live now is the engine's: a heap profiler reports it as leaked.
        std::process::exit(0);
    }
    drop(w);

    // Active: the same with 1 Mbit/s of video for `seconds` (past str0m's 3 s RTX cache).
    let heap0 = Heap::now();
    let setup = Setup {
        idle_producers: 0,
        rtx: true,
    };
    let (mut w, mut video) = world(n, setup);
    send_video(&mut w, &mut video, PACKETS_PER_SECOND * seconds);
    let heap1 = Heap::now();
    w.clients.truncate(1);
    w.clients.shrink_to_fit();
    let heap2 = Heap::now();
    let engine = heap2.minus(&heap0);
    println!("active ({seconds} s of 1 Mbit/s video):");
    println!(
        "  live heap per subscriber: engine {:.1} KiB, client {:.1} KiB",
        engine.bytes() as f64 / 1024.0 / n as f64,
        heap1.minus(&heap2).bytes() as f64 / 1024.0 / n as f64
    );
    println!("  engine heap by allocation size:");
    engine.print(n as i64);
    if arg("--exit-after").as_deref() == Some("active") {
        std::process::exit(0);
    }
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn main() {
    let seconds = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(10);
    if let Some(n) = arg("--memory").and_then(|s| s.parse().ok()) {
        memory(n, seconds.max(4));
        return;
    }
    let subs: Vec<u64> = arg("--subs")
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 1000]);
    let setup = Setup {
        idle_producers: arg("--idle-producers")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        rtx: !std::env::args().any(|a| a == "--no-rtx"),
    };
    println!("forward path, 1 publisher at 1 Mbit/s VP8 ({PACKETS_PER_SECOND} packets/s), {seconds} s virtual time");
    if setup.idle_producers > 0 || !setup.rtx {
        println!(
            "  {} idle producers on the shard; publisher {}",
            setup.idle_producers,
            if setup.rtx {
                "with RTX (sends the mid in every packet)"
            } else {
                "without RTX (stops sending the mid after the first receiver report)"
            }
        );
    }
    println!(
        "{:>12} {:>12} {:>16} {:>20} {:>18}",
        "subscribers", "forwarded", "ns/packet", "all engine ns/pkt", "allocs/packet"
    );
    for subs in subs {
        let r = run(subs, seconds, setup);
        println!(
            "{:>12} {:>12} {:>16.0} {:>20.0} {:>18.2}",
            r.subscribers, r.forwarded, r.ns_per_packet, r.all_ns_per_packet, r.allocs_per_packet
        );
    }
}
