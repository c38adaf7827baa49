//! The UDP driver of a shard: receive -> engine -> send, and the one timer that serves
//! every transport's deadline.
//!
//! Sending is batched: each round's datagrams are grouped by destination and each group
//! goes out with one UDP GSO `sendmsg` (`UDP_SEGMENT`), or with `sendmmsg` where GSO is
//! refused. glommio has neither, so both use libc on the socket's fd with MSG_DONTWAIT;
//! on EAGAIN the rest waits in glommio's own `send_to`.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::mpsc::Receiver;
use futures::{FutureExt, StreamExt};
use glommio::net::UdpSocket;
use str0m::net::Transmit;

use super::state::Shard;

/// At most this many datagrams are read before the engine's output is sent.
const RECV_BATCH: usize = 64;
/// Output waiting this long (in datagrams) is sent before more input is read.
const FLUSH_AT: usize = 64;
/// The kernel's limit on segments in one GSO send.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;
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

pub(super) async fn drive(shard: Rc<Shard>, socket: UdpSocket, mut woken: Receiver<()>) {
    let fd = socket.as_raw_fd();
    let socket = Rc::new(socket);
    let mut buf = vec![0u8; 2048];
    let pending = receive(socket.clone(), vec![0u8; 2048]).fuse();
    futures::pin_mut!(pending);
    let mut shutdown = shard.shutdown.clone();
    let mut gso = true;
    loop {
        let outbox = shard.engine.borrow_mut().take_outbox();
        if !outbox.is_empty() {
            send_all(&socket, fd, &outbox, &mut gso).await;
        }
        let wait = shard
            .engine
            .borrow()
            .next_timeout()
            .map_or(IDLE_WAKE, |t| t.saturating_duration_since(Instant::now()));
        let slept_from = Instant::now();
        futures::select! {
            (sock, first, r) = pending.as_mut() => {
                let mut batch = Batch::new(&shard);
                if let Some((n, from)) = r {
                    batch.handle(&shard, from, &first[..n]);
                }
                pending.set(receive(sock, first).fuse());
                // Drain what else is queued without waiting. Sending waits for a batch
                // (GSO wants several datagrams per destination), but never for long: a
                // large fan-out is sent as soon as it is ready.
                for _ in 1..RECV_BATCH {
                    if shard.engine.borrow().outbox_len() >= FLUSH_AT {
                        batch.flush(&shard, &socket, fd, &mut gso).await;
                    }
                    match recv_now(fd, &mut buf) {
                        Some((n, from)) => batch.handle(&shard, from, &buf[..n]),
                        None => break,
                    }
                }
                batch.flush(&shard, &socket, fd, &mut gso).await;
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
    async fn flush(&mut self, shard: &Shard, socket: &UdpSocket, fd: RawFd, gso: &mut bool) {
        let outbox = shard.engine.borrow_mut().take_outbox();
        if !outbox.is_empty() {
            send_all(socket, fd, &outbox, gso).await;
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

/// A non-blocking receive; `None` when nothing is queued.
fn recv_now(fd: RawFd, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    // SAFETY: recvfrom into our buffer and a sockaddr_storage of the right size.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let n = libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        );
        if n < 0 {
            return None;
        }
        let addr = socket2::SockAddr::new(storage, len).as_socket()?;
        Some((n as usize, addr))
    }
}

/// Splits datagrams into runs that one GSO send can carry: same destination, equal
/// segment sizes (only the last may be shorter), bounded count and bytes. Order per
/// destination is kept.
fn gso_runs(outbox: &[Transmit]) -> Vec<(SocketAddr, Vec<usize>)> {
    let mut order: Vec<usize> = (0..outbox.len()).collect();
    order.sort_by_key(|&i| outbox[i].destination); // stable: keeps per-destination order
    let mut runs: Vec<(SocketAddr, Vec<usize>)> = Vec::new();
    for i in order {
        let t = &outbox[i];
        let fits = runs.last().is_some_and(|(dest, run)| {
            let seg = outbox[run[0]].contents.len();
            let last = outbox[*run.last().expect("runs are never empty")]
                .contents
                .len();
            *dest == t.destination
                && last == seg
                && t.contents.len() <= seg
                && run.len() < GSO_MAX_SEGMENTS
                && (run.len() + 1) * seg <= GSO_MAX_BYTES
        });
        if fits {
            runs.last_mut().expect("checked").1.push(i);
        } else {
            runs.push((t.destination, vec![i]));
        }
    }
    runs
}

async fn send_all(socket: &UdpSocket, fd: RawFd, outbox: &[Transmit], gso: &mut bool) {
    for (dest, run) in gso_runs(outbox) {
        let sent = if run.len() > 1 && *gso {
            match send_gso(fd, dest, outbox, &run) {
                Ok(()) => run.len(),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
                Err(e) => {
                    tracing::info!("UDP GSO unavailable ({e}); falling back to sendmmsg");
                    *gso = false;
                    send_mmsg(fd, dest, outbox, &run)
                }
            }
        } else {
            send_mmsg(fd, dest, outbox, &run)
        };
        // The socket buffer is full: wait for room through glommio, one by one.
        for &i in &run[sent..] {
            let _ = socket.send_to(&outbox[i].contents, dest).await;
        }
    }
}

fn send_gso(
    fd: RawFd,
    dest: SocketAddr,
    outbox: &[Transmit],
    run: &[usize],
) -> std::io::Result<()> {
    let seg = outbox[run[0]].contents.len() as u16;
    let mut payload = Vec::with_capacity(run.len() * seg as usize);
    for &i in run {
        payload.extend_from_slice(&outbox[i].contents);
    }
    let addr = socket2::SockAddr::from(dest);
    // SAFETY: one iovec over `payload`, one cmsg of u16 in a buffer sized with CMSG_SPACE;
    // every pointer outlives the call.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
        let mut control = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg);
        if libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends with sendmmsg; returns how many datagrams went out (fewer on EAGAIN).
fn send_mmsg(fd: RawFd, dest: SocketAddr, outbox: &[Transmit], run: &[usize]) -> usize {
    let addr = socket2::SockAddr::from(dest);
    let mut iovs: Vec<libc::iovec> = run
        .iter()
        .map(|&i| libc::iovec {
            iov_base: outbox[i].contents.as_ptr() as *mut libc::c_void,
            iov_len: outbox[i].contents.len(),
        })
        .collect();
    // SAFETY: each mmsghdr points at one iovec of `iovs` and at `addr`, all alive for
    // the call; the kernel only reads the buffers.
    unsafe {
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = addr.len();
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            let n = libc::sendmmsg(
                fd,
                msgs[sent..].as_mut_ptr(),
                (msgs.len() - sent) as u32,
                libc::MSG_DONTWAIT,
            );
            if n <= 0 {
                break;
            }
            sent += n as usize;
        }
        sent
    }
}
