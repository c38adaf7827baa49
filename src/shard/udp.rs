//! The UDP driver of a shard: receive -> engine -> send, and the one timer that serves
//! every transport's deadline.
//!
//! Input is taken a burst at a time: what is queued is read with `recvmmsg` and handed to
//! the engine, and the engine's output is held meanwhile, so that one flush carries many
//! packets per destination. A flush groups its datagrams by destination and sends them all
//! with `sendmmsg`, each destination's equal-size datagrams joined into one UDP GSO
//! message (`UDP_SEGMENT`). Output is never held longer than [`BurstLimits::max_hold`]
//! (plus the handling of the one datagram in progress), nor beyond
//! [`BurstLimits::max_outbox`] datagrams, and a burst ends after
//! [`BurstLimits::max_datagrams`] or [`BurstLimits::max_turn`] so the shard's other tasks
//! get their turn. glommio has neither call: they are in [`udp_io`](super::udp_io), all
//! non-blocking; on EAGAIN the rest waits in glommio's own `send_to`.

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::mpsc::Receiver;
use futures::{FutureExt, StreamExt};
use glommio::net::UdpSocket;
use str0m::net::Transmit;

use super::fault;
use super::state::Shard;
use super::udp_io::{gso_refused, Received, SendPlan, UdpIo, RECV_SLOT};

/// When no transport has a deadline.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Datagrams one `recvmmsg` takes at most.
const RECV_CHUNK: usize = 64;

/// The bounds of one burst of input, and of the output held while it is handled.
#[derive(Clone, Copy, Debug)]
pub(super) struct BurstLimits {
    /// Datagrams read in one burst at most.
    pub max_datagrams: usize,
    /// Output is sent once it has been held this long.
    pub max_hold: Duration,
    /// Output is sent once this many datagrams wait.
    pub max_outbox: usize,
    /// No datagram is read once the burst has run this long.
    pub max_turn: Duration,
}

/// The driver's bounds: a packet waits at most 1 ms (and one datagram's handling) in the
/// outbox; a burst of input is at most 256 datagrams or 4 ms of work.
pub(super) const BURST: BurstLimits = BurstLimits {
    max_datagrams: 256,
    max_hold: Duration::from_millis(1),
    max_outbox: 4096,
    max_turn: Duration::from_millis(4),
};

/// What a burst needs from the driver; the shard's UDP socket and engine in
/// [`drive`], a virtual clock and a recording sink in the tests.
pub(super) trait BurstIo {
    /// The time now.
    fn now(&self) -> Instant;
    /// Reads up to `max` queued datagrams without waiting: how many.
    fn recv(&mut self, max: usize) -> usize;
    /// Hands the `i`-th datagram of the last `recv` to the engine.
    fn handle(&mut self, i: usize, now: Instant);
    /// Datagrams the engine has ready to send.
    fn outbox_len(&self) -> usize;
    /// Sends what the engine has ready; its oldest part has waited since `held_since`.
    async fn flush(&mut self, held_since: Instant);
}

/// Handles the rest of a burst whose first datagram was handled at `first_at`: reads what
/// is queued, a chunk at a time, hands each datagram to the engine, and sends whenever
/// the output has waited [`BurstLimits::max_hold`] or grown to
/// [`BurstLimits::max_outbox`]; sends the rest at the end.
pub(super) async fn burst<B: BurstIo>(io: &mut B, limits: &BurstLimits, first_at: Instant) {
    let mut held_since = Some(first_at);
    let mut read = 1;
    while read < limits.max_datagrams {
        // Read no more than the time left can handle, at the cost per datagram so far:
        // a datagram read must be handled, and a fan-out to many is costly.
        let spent = io.now().saturating_duration_since(first_at);
        let Some(left) = limits.max_turn.checked_sub(spent).filter(|l| !l.is_zero()) else {
            break;
        };
        let per_datagram = (spent / read as u32).max(Duration::from_nanos(1));
        let affordable = (left.as_nanos() / per_datagram.as_nanos()).max(1) as usize;
        let n = io.recv(
            (limits.max_datagrams - read)
                .min(RECV_CHUNK)
                .min(affordable),
        );
        if n == 0 {
            break;
        }
        read += n;
        for i in 0..n {
            let now = io.now();
            if let Some(since) = held_since {
                if now.saturating_duration_since(since) >= limits.max_hold
                    || io.outbox_len() >= limits.max_outbox
                {
                    io.flush(since).await;
                    held_since = None;
                }
            }
            let now = io.now();
            io.handle(i, now);
            held_since.get_or_insert(now);
        }
    }
    if let Some(since) = held_since {
        io.flush(since).await;
    }
}

/// One receive that lives across loop turns. When nothing is queued, glommio hands the
/// receive to io_uring, which then owns the datagram it takes: dropping the future (when
/// the timer wins the race) would lose that datagram.
async fn receive(
    socket: Rc<UdpSocket>,
    mut buf: Vec<u8>,
) -> (Rc<UdpSocket>, Vec<u8>, Option<(usize, SocketAddr)>) {
    let r = socket.recv_from(&mut buf).await.ok();
    (socket, buf, r)
}

/// Runs the driver until shutdown. A panic in it (the media engine's, most likely) is
/// contained: the room whose transport was being worked on is closed (see
/// [`fault::contain`]) and the driver starts again with the other rooms.
pub(super) async fn drive(shard: Rc<Shard>, socket: UdpSocket, mut woken: Receiver<()>) {
    let socket = Rc::new(socket);
    loop {
        match AssertUnwindSafe(run(&shard, &socket, &mut woken))
            .catch_unwind()
            .await
        {
            Ok(()) => return,
            Err(payload) => {
                fault::contain(&shard, "UDP driver", payload.as_ref());
                glommio::executor().yield_now().await;
            }
        }
    }
}

async fn run(shard: &Rc<Shard>, socket: &Rc<UdpSocket>, woken: &mut Receiver<()>) {
    let pending = receive(socket.clone(), vec![0u8; RECV_SLOT]).fuse();
    futures::pin_mut!(pending);
    let mut shutdown = shard.shutdown.clone();
    let mut driver = Driver {
        shard,
        socket,
        io: UdpIo::new(&**socket),
        received: Received::with_slots(RECV_CHUNK),
        plan: SendPlan::new(),
        out: Vec::new(),
        gso: true,
        forwarded_before: 0,
    };
    loop {
        driver.send_ready().await;
        let wait = shard
            .engine
            .borrow()
            .poll_timeout()
            .map_or(IDLE_WAKE, |t| t.saturating_duration_since(Instant::now()));
        let slept_from = Instant::now();
        futures::select! {
            (sock, first, r) = pending.as_mut() => {
                driver.forwarded_before = shard.engine.borrow().counters().rtp_out;
                let first_at = Instant::now();
                if let Some((n, from)) = r {
                    shard.engine.borrow_mut().handle_datagram(first_at, from, &first[..n]);
                }
                pending.set(receive(sock, first).fuse());
                burst(&mut driver, &BURST, first_at).await;
            }
            _ = glommio::timer::sleep(wait).fuse() => {
                let now = Instant::now();
                let planned = slept_from + wait;
                shard
                    .latencies
                    .borrow_mut()
                    .record_loop_lag(now.saturating_duration_since(planned).as_micros() as u64);
                shard.engine.borrow_mut().handle_timeout(now);
            }
            _ = woken.next() => {}
            _ = shutdown => return,
        }
        shard.after_engine_call();
        // A burst may have run for a while: let the shard's other tasks in.
        glommio::yield_if_needed().await;
    }
}

/// The shard's side of a burst: its socket, its engine, and the buffers reused from
/// flush to flush.
struct Driver<'a> {
    shard: &'a Shard,
    socket: &'a UdpSocket,
    io: UdpIo<'a>,
    received: Received,
    plan: SendPlan,
    /// One outbox buffer, exchanged with the engine's at every flush: no allocation.
    out: Vec<Transmit>,
    gso: bool,
    forwarded_before: u64,
}

impl Driver<'_> {
    /// Sends what the engine has ready (timer and signaling output, not a burst's).
    async fn send_ready(&mut self) {
        self.shard.engine.borrow_mut().poll_transmits(&mut self.out);
        if !self.out.is_empty() {
            self.send_out().await;
        }
    }

    /// Sends `out` as planned; a message the socket has no room for waits in glommio's
    /// `send_to`, one datagram at a time, then the fast path goes on.
    async fn send_out(&mut self) {
        self.plan.plan(&self.out, self.gso);
        let mut next = 0;
        while next < self.plan.len() {
            let (sent, err) = self.io.send_planned(&self.out, &mut self.plan, next);
            next += sent;
            let Some(err) = err else { break };
            if self.plan.is_gso(next) && gso_refused(&err) {
                tracing::info!("UDP GSO unavailable ({err}); falling back to sendmmsg");
                self.gso = false;
                // This flush's other GSO messages would be refused too.
                for m in next..self.plan.len() {
                    self.send_waiting(m).await;
                }
                break;
            }
            if err.kind() == io::ErrorKind::WouldBlock {
                self.send_waiting(next).await;
            } else {
                // A destination the socket refuses (unreachable, wrong family): its
                // datagrams are dropped, the others go on.
                tracing::debug!("UDP send refused: {err}");
            }
            next += 1;
        }
        self.out.clear();
    }

    async fn send_waiting(&self, m: usize) {
        let (dest, datagrams) = self.plan.message(m);
        for i in datagrams {
            let _ = self.socket.send_to(&self.out[i].contents, dest).await;
        }
    }
}

impl BurstIo for Driver<'_> {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn recv(&mut self, max: usize) -> usize {
        self.io.recv_batch(&mut self.received, max)
    }

    fn handle(&mut self, i: usize, now: Instant) {
        if let Some((from, data)) = self.received.get(i) {
            self.shard
                .engine
                .borrow_mut()
                .handle_datagram(now, from, data);
        }
    }

    fn outbox_len(&self) -> usize {
        self.shard.engine.borrow().outbox_len()
    }

    /// Sends and records, for every packet forwarded since the last flush, the time since
    /// the oldest of them was ready to go.
    async fn flush(&mut self, held_since: Instant) {
        self.shard.engine.borrow_mut().poll_transmits(&mut self.out);
        if !self.out.is_empty() {
            self.send_out().await;
        }
        let now_forwarded = self.shard.engine.borrow().counters().rtp_out;
        let forwarded = now_forwarded - self.forwarded_before;
        if forwarded > 0 {
            self.shard
                .record_forward_latency(held_since.elapsed(), forwarded);
        }
        self.forwarded_before = now_forwarded;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque};

    /// A virtual shard: datagrams queued with their arrival times, an engine that turns
    /// each into `fan_out` outputs (one per subscriber) after `cost` of virtual time, and
    /// a sink recording when each output was sent.
    struct Virtual {
        clock: Instant,
        queue: VecDeque<(Instant, u32)>,
        taken: Vec<u32>,
        fan_out: u32,
        cost: Duration,
        /// (subscriber, packet, produced at)
        outbox: Vec<(u32, u32, Instant)>,
        /// per subscriber: (packet, produced at, sent at)
        sent: HashMap<u32, Vec<(u32, Instant, Instant)>>,
        flushes: usize,
    }

    impl Virtual {
        fn new(packets: u32, gap: Duration, fan_out: u32, cost: Duration) -> Virtual {
            let start = Instant::now();
            Virtual {
                clock: start,
                queue: (0..packets).map(|p| (start + gap * p, p)).collect(),
                taken: Vec::new(),
                fan_out,
                cost,
                outbox: Vec::new(),
                sent: HashMap::new(),
                flushes: 0,
            }
        }

        /// Runs bursts as the driver does until every packet has been handled.
        fn run(&mut self, limits: &BurstLimits) {
            while let Some(&(at, p)) = self.queue.front() {
                self.clock = self.clock.max(at);
                self.queue.pop_front();
                self.taken = vec![p];
                let now = self.clock;
                self.handle(0, now);
                futures::executor::block_on(burst(self, limits, now));
            }
        }
    }

    impl BurstIo for Virtual {
        fn now(&self) -> Instant {
            self.clock
        }

        fn recv(&mut self, max: usize) -> usize {
            self.taken.clear();
            while self.taken.len() < max {
                match self.queue.front() {
                    Some(&(at, p)) if at <= self.clock => {
                        self.queue.pop_front();
                        self.taken.push(p);
                    }
                    _ => break,
                }
            }
            self.taken.len()
        }

        fn handle(&mut self, i: usize, _now: Instant) {
            self.clock += self.cost;
            let p = self.taken[i];
            for s in 0..self.fan_out {
                self.outbox.push((s, p, self.clock));
            }
        }

        fn outbox_len(&self) -> usize {
            self.outbox.len()
        }

        async fn flush(&mut self, _held_since: Instant) {
            self.flushes += 1;
            let now = self.clock;
            for (s, p, at) in self.outbox.drain(..) {
                self.sent.entry(s).or_default().push((p, at, now));
            }
        }
    }

    fn limits() -> BurstLimits {
        BurstLimits {
            max_datagrams: 64,
            max_hold: Duration::from_millis(1),
            max_outbox: 1000,
            max_turn: Duration::from_millis(4),
        }
    }

    /// A keyframe of 30 packets arriving at once, fanned out to 200 subscribers at 20 us
    /// a packet each (4 ms of work a packet): every output is sent, each subscriber's in
    /// order, none held past the bound.
    #[test]
    fn a_keyframe_burst_loses_nothing_keeps_order_and_holds_nothing_past_the_bound() {
        let cost = Duration::from_micros(200);
        let mut v = Virtual::new(30, Duration::ZERO, 200, cost);
        let l = limits();
        v.run(&l);
        assert_eq!(v.sent.len(), 200);
        for (s, got) in &v.sent {
            let order: Vec<u32> = got.iter().map(|g| g.0).collect();
            assert_eq!(order, (0..30).collect::<Vec<_>>(), "subscriber {s}");
            for &(p, made, sent) in got {
                assert!(
                    sent - made <= l.max_hold + cost,
                    "packet {p} held {:?}",
                    sent - made
                );
            }
        }
        // Batched: several packets per flush, not one flush per packet.
        assert!(v.flushes < 30, "{} flushes", v.flushes);
    }

    /// Cheap packets arriving together go out in one flush, bounded by the outbox size.
    #[test]
    fn cheap_packets_share_a_flush_until_the_outbox_bound() {
        let mut v = Virtual::new(60, Duration::ZERO, 50, Duration::from_micros(1));
        let l = limits();
        v.run(&l);
        let total: usize = v.sent.values().map(Vec::len).sum();
        assert_eq!(total, 60 * 50);
        // 60 x 50 = 3000 outputs, at most 1000 (+ one packet's 50) per flush.
        assert!((3..=4).contains(&v.flushes), "{} flushes", v.flushes);
    }

    /// A steady trickle (a packet each 5 ms) is sent at once: nothing waits for company.
    #[test]
    fn a_lone_packet_is_sent_as_soon_as_it_is_handled() {
        let mut v = Virtual::new(10, Duration::from_millis(5), 3, Duration::from_micros(10));
        v.run(&limits());
        for got in v.sent.values() {
            for &(_, made, sent) in got {
                assert_eq!(sent, made);
            }
        }
        assert_eq!(v.flushes, 10);
    }

    /// A burst ends at its count or its time even when more is queued, so the shard's
    /// other tasks run; what is left is read by the next burst.
    #[test]
    fn a_burst_ends_at_its_count_or_its_time() {
        let l = limits();
        let mut v = Virtual::new(1000, Duration::ZERO, 1, Duration::from_micros(1));
        let start = v.clock;
        v.queue.pop_front();
        v.taken = vec![0];
        v.handle(0, start);
        futures::executor::block_on(burst(&mut v, &l, start));
        assert_eq!(v.queue.len(), 1000 - l.max_datagrams, "count bound");

        let mut v = Virtual::new(1000, Duration::ZERO, 1, Duration::from_micros(500));
        let start = v.clock;
        v.queue.pop_front();
        v.taken = vec![0];
        v.handle(0, start);
        futures::executor::block_on(burst(&mut v, &l, start));
        let handled = 1000 - v.queue.len();
        assert!(handled < l.max_datagrams, "time bound: {handled} handled");
        // The turn ends within one datagram's handling of the bound.
        assert!(v.clock - start <= l.max_turn + Duration::from_micros(500));
    }
}
