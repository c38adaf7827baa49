//! The in-memory forward path: one publisher sending 1 Mbit/s of VP8 to 1, 10 and 100
//! subscribers through one engine on a virtual clock. Reports the engine's CPU time and
//! heap allocations per forwarded packet (decrypt once, rewrite + encrypt per
//! subscriber, drain). Client-side work (the subscribers' decryption) is not counted.
//!
//! Run: `cargo run --release -p corelay-bench --bin forward [-- --seconds 20]`

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corelay::sfu::ortc::VP8;
use corelay_testkit::sim::{Video, World};

/// Counts allocations while `COUNTING` is set; everything goes to mimalloc.
struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.realloc(p, l, n) }
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
    allocs_per_packet: f64,
}

fn run(subscribers: u64, seconds: u64) -> Result {
    let mut w = World::new();
    let (pc, pid, ssrc) = w.publisher(1);
    for i in 0..subscribers {
        w.subscriber(10 + i, &pid);
    }
    w.connect_all();
    let mut video = Video {
        client: pc,
        ssrc,
        seq: 1,
        ts: 0,
    };
    video.frames(&mut w, 3); // keyframe first: every consumer starts forwarding

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
    for n in 0..PACKETS_PER_SECOND * seconds {
        let marker = n % 4 == 3;
        w.clients[pc].send_rtp(w.now, ssrc, VP8.pt, video.seq, video.ts, marker, &payload);
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
        w.step(gap);
    }
    Result {
        subscribers,
        forwarded,
        ns_per_packet: busy.as_nanos() as f64 / forwarded.max(1) as f64,
        allocs_per_packet: allocs as f64 / forwarded.max(1) as f64,
    }
}

fn main() {
    let seconds = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("forward path, 1 publisher at 1 Mbit/s VP8 ({PACKETS_PER_SECOND} packets/s), {seconds} s virtual time");
    println!(
        "{:>12} {:>12} {:>16} {:>18}",
        "subscribers", "forwarded", "ns/packet", "allocs/packet"
    );
    for subs in [1, 10, 100] {
        let r = run(subs, seconds);
        println!(
            "{:>12} {:>12} {:>16.0} {:>18.2}",
            r.subscribers, r.forwarded, r.ns_per_packet, r.allocs_per_packet
        );
    }
}
