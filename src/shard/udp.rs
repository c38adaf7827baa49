//! The UDP driver of a shard: receive -> engine -> send, and the one timer that serves
//! every transport's deadline.
//!
//! Sending is batched: each round's datagrams are grouped by destination and each group
//! goes out with one UDP GSO `sendmsg` (`UDP_SEGMENT`), or with `sendmmsg` where GSO is
//! refused. glommio has neither: the socket calls are in [`udp_io`](super::udp_io), all
//! non-blocking; on EAGAIN the rest waits in glommio's own `send_to`.

#![forbid(unsafe_code)]

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
use super::udp_io::{gso_runs, UdpIo};

/// At most this many datagrams are read before the engine's output is sent.
const RECV_BATCH: usize = 64;
/// Output waiting this long (in datagrams) is sent before more input is read.
const FLUSH_AT: usize = 64;
/// When no transport has a deadline.
const IDLE_WAKE: Duration = Duration::from_secs(1);

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
    let io = UdpIo::new(&**socket);
    let mut buf = vec![0u8; 2048];
    let pending = receive(socket.clone(), vec![0u8; 2048]).fuse();
    futures::pin_mut!(pending);
    let mut shutdown = shard.shutdown.clone();
    let mut gso = true;
    // One outbox buffer, exchanged with the engine's at every flush: no allocation.
    let mut out = Vec::new();
    loop {
        shard.engine.borrow_mut().poll_transmits(&mut out);
        if !out.is_empty() {
            send_all(socket, io, &out, &mut gso).await;
            out.clear();
        }
        let wait = shard
            .engine
            .borrow()
            .poll_timeout()
            .map_or(IDLE_WAKE, |t| t.saturating_duration_since(Instant::now()));
        let slept_from = Instant::now();
        futures::select! {
            (sock, first, r) = pending.as_mut() => {
                let mut batch = Batch::new(shard);
                if let Some((n, from)) = r {
                    batch.handle(shard, from, &first[..n]);
                }
                pending.set(receive(sock, first).fuse());
                // Drain what else is queued without waiting. Sending waits for a batch
                // (GSO wants several datagrams per destination), but never for long: a
                // large fan-out is sent as soon as it is ready.
                for _ in 1..RECV_BATCH {
                    if shard.engine.borrow().outbox_len() >= FLUSH_AT {
                        batch.flush(shard, socket, io, &mut gso, &mut out).await;
                    }
                    match io.try_recv_from(&mut buf) {
                        Ok((n, from)) => batch.handle(shard, from, &buf[..n]),
                        Err(_) => break,
                    }
                }
                batch.flush(shard, socket, io, &mut gso, &mut out).await;
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
    }
}

/// Datagrams handled but not yet sent, and since when.
struct Batch {
    oldest: Option<Instant>,
    forwarded_before: u64,
}

impl Batch {
    fn new(shard: &Shard) -> Batch {
        Batch {
            oldest: None,
            forwarded_before: shard.engine.borrow().counters().rtp_out,
        }
    }

    fn handle(&mut self, shard: &Shard, from: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        self.oldest.get_or_insert(now);
        shard.engine.borrow_mut().handle_datagram(now, from, data);
    }

    /// Sends what the engine produced and records, for every packet forwarded since the
    /// last flush, the time since the oldest datagram of the batch arrived.
    async fn flush(
        &mut self,
        shard: &Shard,
        socket: &UdpSocket,
        io: UdpIo<'_>,
        gso: &mut bool,
        out: &mut Vec<Transmit>,
    ) {
        shard.engine.borrow_mut().poll_transmits(out);
        if !out.is_empty() {
            send_all(socket, io, out, gso).await;
            out.clear();
        }
        let now_forwarded = shard.engine.borrow().counters().rtp_out;
        let forwarded = now_forwarded - self.forwarded_before;
        if let (Some(oldest), true) = (self.oldest, forwarded > 0) {
            shard.record_forward_latency(oldest.elapsed(), forwarded);
        }
        self.forwarded_before = now_forwarded;
        self.oldest = None;
    }
}

/// Sends a round's datagrams, each destination's in order: what the socket does not take
/// now waits for room through glommio, one by one.
async fn send_all(socket: &UdpSocket, io: UdpIo<'_>, outbox: &[Transmit], gso: &mut bool) {
    for (dest, run) in gso_runs(outbox) {
        let sent = io.send_run(dest, run.iter().map(|&i| &*outbox[i].contents), gso);
        for &i in &run[sent..] {
            let _ = socket.send_to(&outbox[i].contents, dest).await;
        }
    }
}
