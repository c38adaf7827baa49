//! UDP socket tricks, in one place: non-blocking receive, UDP GSO (`UDP_SEGMENT`) and
//! `sendmmsg`, with libc on a socket's raw fd. glommio has none of these; every `unsafe`
//! block of the shard's UDP path is here, behind a small safe API that the driver loop
//! (`udp.rs`) uses.
//!
//! Every call is non-blocking (`MSG_DONTWAIT`): a full socket buffer, or nothing to read,
//! is [`io::ErrorKind::WouldBlock`]. Waiting is the driver's business.

use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;
use str0m::net::Transmit;

/// The kernel's limit on segments in one GSO send.
pub(super) const GSO_MAX_SEGMENTS: usize = 64;
/// At most this many bytes in one GSO send (below the 64 KiB of one UDP payload).
pub(super) const GSO_MAX_BYTES: usize = 65_000;

/// A UDP socket borrowed for non-blocking calls on its fd; the borrow keeps the socket,
/// and so the fd, open while this lives.
#[derive(Clone, Copy)]
pub(super) struct UdpIo<'a> {
    fd: RawFd,
    _socket: PhantomData<&'a ()>,
}

impl<'a> UdpIo<'a> {
    /// Borrows a UDP socket (glommio's or std's).
    pub(super) fn new<S: AsRawFd>(socket: &'a S) -> UdpIo<'a> {
        UdpIo {
            fd: socket.as_raw_fd(),
            _socket: PhantomData,
        }
    }

    /// One datagram if one is queued, into `buf` (a longer datagram is cut to its size):
    /// its length and source. [`io::ErrorKind::WouldBlock`] when nothing is queued.
    pub(super) fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // SAFETY: recvfrom writes at most `buf.len()` bytes into `buf` and at most `len`
        // bytes into `storage`, both alive and exclusively ours for the call.
        let (n, storage, len) = unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let n = libc::recvfrom(
                self.fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            );
            (n, storage, len)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled `storage` with a socket address of `len` bytes.
        let addr = unsafe { SockAddr::new(storage, len) };
        let addr = addr
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP source"))?;
        Ok((n as usize, addr))
    }

    /// Sends datagrams to one destination with one `sendmsg` and UDP GSO: the kernel cuts
    /// the concatenated payload into segments of the first datagram's size, so every
    /// datagram but the last must be that size and the last no longer
    /// ([`io::ErrorKind::InvalidInput`] otherwise, or beyond [`GSO_MAX_SEGMENTS`] or
    /// [`GSO_MAX_BYTES`]). All or nothing: [`io::ErrorKind::WouldBlock`] when the socket
    /// buffer is full; other errors mostly mean the socket or the kernel refuses GSO.
    pub(super) fn send_gso<'d>(
        &self,
        dest: SocketAddr,
        datagrams: impl IntoIterator<Item = &'d [u8]>,
    ) -> io::Result<()> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let mut datagrams = datagrams.into_iter();
        let mut payload = Vec::new();
        let mut seg = 0;
        let mut count = 0;
        let mut short = false;
        while let Some(d) = datagrams.next() {
            if count == 0 {
                seg = d.len();
                payload.reserve(seg * (1 + datagrams.size_hint().0));
            } else if short || d.len() > seg {
                return Err(invalid("GSO: only the last datagram may differ in size"));
            }
            short = d.len() < seg;
            count += 1;
            payload.extend_from_slice(d);
        }
        if count == 0 || seg == 0 {
            return Err(invalid("GSO: nothing to send"));
        }
        if count > GSO_MAX_SEGMENTS || payload.len() > GSO_MAX_BYTES {
            return Err(invalid("GSO: too many segments or bytes for one send"));
        }
        let seg = seg as u16; // at most GSO_MAX_BYTES
        let addr = SockAddr::from(dest);
        // A control buffer aligned for cmsghdr, larger than CMSG_SPACE(2) (24 bytes on
        // 64-bit Linux).
        let mut control = [0u64; 4];
        // SAFETY: one iovec over `payload`, and one cmsg carrying a u16 in `control`, whose
        // size is checked against CMSG_SPACE; `msg` points only at locals that outlive
        // the sendmsg call, and the kernel only reads them.
        let rc = unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
            assert!(space <= std::mem::size_of_val(&control));
            let mut iov = libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            };
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
            libc::sendmsg(self.fd, &msg, libc::MSG_DONTWAIT)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends each datagram to its destination, in order, with `sendmmsg` calls until all
    /// went out or the socket takes no more. Returns how many were sent: fewer than given
    /// when the socket buffer filled (or a send failed) part way; an error only when not
    /// even the first was sent ([`io::ErrorKind::WouldBlock`]: the buffer is full).
    pub(super) fn send_mmsg<'d>(
        &self,
        datagrams: impl IntoIterator<Item = (SocketAddr, &'d [u8])>,
    ) -> io::Result<usize> {
        let (addrs, mut iovs): (Vec<SockAddr>, Vec<libc::iovec>) = datagrams
            .into_iter()
            .map(|(dest, data)| {
                let iov = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                (SockAddr::from(dest), iov)
            })
            .unzip();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(&addrs)
            .map(|(iov, addr)| {
                // SAFETY: mmsghdr is plain data; all zeroes is a valid empty header.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = addr.len();
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            // SAFETY: each header points at one iovec of `iovs` (over a datagram borrowed
            // for 'd) and at one address of `addrs`, all alive and unmoved for the call;
            // the kernel only reads the buffers and writes `msg_len`.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd,
                    msgs[sent..].as_mut_ptr(),
                    (msgs.len() - sent) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                if sent == 0 && n < 0 {
                    return Err(io::Error::last_os_error());
                }
                break;
            }
            sent += n as usize;
        }
        Ok(sent)
    }

    /// Sends a run of datagrams to one destination without waiting: several at once with
    /// GSO while `gso` holds, else with `sendmmsg`. The first time GSO fails for another
    /// reason than a full buffer, `gso` is cleared (logged once) and the run goes out
    /// with `sendmmsg`: nothing is lost. Returns how many were sent; the rest wait for
    /// room in the socket buffer.
    pub(super) fn send_run<'d, I>(&self, dest: SocketAddr, datagrams: I, gso: &mut bool) -> usize
    where
        I: IntoIterator<Item = &'d [u8]>,
        I::IntoIter: Clone + ExactSizeIterator,
    {
        let datagrams = datagrams.into_iter();
        let mmsg = |d: I::IntoIter| self.send_mmsg(d.map(|d| (dest, d))).unwrap_or(0);
        if datagrams.len() > 1 && *gso {
            match self.send_gso(dest, datagrams.clone()) {
                Ok(()) => datagrams.len(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                // A run GSO cannot carry as given (never made by `gso_runs`).
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => mmsg(datagrams),
                Err(e) => {
                    tracing::info!("UDP GSO unavailable ({e}); falling back to sendmmsg");
                    *gso = false;
                    mmsg(datagrams)
                }
            }
        } else {
            mmsg(datagrams)
        }
    }
}

/// Splits datagrams into runs that one GSO send can carry: same destination, equal
/// segment sizes (only the last may be shorter), bounded count and bytes. Order per
/// destination is kept.
pub(super) fn gso_runs(outbox: &[Transmit]) -> Vec<(SocketAddr, Vec<usize>)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    fn addr(s: &UdpSocket) -> SocketAddr {
        s.local_addr().unwrap()
    }

    /// The next datagram (waiting up to the read timeout): its bytes and source.
    fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).expect("a datagram");
        (buf[..n].to_vec(), from)
    }

    fn nothing_queued(s: &UdpSocket) -> bool {
        let mut buf = [0u8; 16];
        let r = UdpIo::new(s).try_recv_from(&mut buf);
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Errors of a kernel or socket that does not do UDP GSO.
    fn gso_refused(e: &io::Error) -> bool {
        [libc::EIO, libc::EINVAL, libc::EOPNOTSUPP, libc::ENOPROTOOPT]
            .contains(&e.raw_os_error().unwrap_or(0))
    }

    #[test]
    fn a_gso_send_of_three_segments_arrives_as_three_datagrams() {
        let (tx, rx) = (socket(), socket());
        let (a, b, c) = (vec![1u8; 100], vec![2u8; 100], vec![3u8; 40]);
        let parts: [&[u8]; 3] = [&a, &b, &c];
        match UdpIo::new(&tx).send_gso(addr(&rx), parts) {
            Ok(()) => {}
            Err(e) if gso_refused(&e) => {
                eprintln!("UDP GSO refused here ({e}): nothing to check");
                return;
            }
            Err(e) => panic!("GSO send failed: {e}"),
        }
        for want in [&a, &b, &c] {
            let (got, from) = recv(&rx);
            assert_eq!(&got, want);
            assert_eq!(from, addr(&tx));
        }
        assert!(nothing_queued(&rx));
    }

    #[test]
    fn gso_refuses_runs_it_cannot_cut() {
        let (tx, rx) = (socket(), socket());
        let io = UdpIo::new(&tx);
        let bad: [&[u8]; 3] = [&[0; 100], &[0; 40], &[0; 100]];
        let e = io.send_gso(addr(&rx), bad).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = io.send_gso(addr(&rx), []).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let many = vec![&[0u8; 10][..]; GSO_MAX_SEGMENTS + 1];
        let e = io.send_gso(addr(&rx), many).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(nothing_queued(&rx));
    }

    #[test]
    fn sendmmsg_reaches_two_destinations_in_order() {
        let (tx, r1, r2) = (socket(), socket(), socket());
        let sent = UdpIo::new(&tx)
            .send_mmsg([
                (addr(&r1), &b"one-a"[..]),
                (addr(&r2), &b"two-a"[..]),
                (addr(&r1), &b"one-b"[..]),
            ])
            .unwrap();
        assert_eq!(sent, 3);
        assert_eq!(recv(&r1), (b"one-a".to_vec(), addr(&tx)));
        assert_eq!(recv(&r1), (b"one-b".to_vec(), addr(&tx)));
        assert_eq!(recv(&r2), (b"two-a".to_vec(), addr(&tx)));
        assert_eq!(UdpIo::new(&tx).send_mmsg([]).unwrap(), 0);
    }

    #[test]
    fn queued_datagrams_are_received_one_after_another_then_would_block() {
        let (tx, rx) = (socket(), socket());
        for i in 0..5u8 {
            tx.send_to(&[i; 10], addr(&rx)).unwrap();
        }
        let io = UdpIo::new(&rx);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < 5 && Instant::now() < deadline {
            match io.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, addr(&tx));
                    got.push(buf[..n].to_vec());
                }
                // Loopback delivery is all but immediate; allow for a slow machine.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("receive failed: {e}"),
            }
        }
        let want: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        assert_eq!(got, want);
        let e = io.try_recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_run_goes_out_with_or_without_gso() {
        let (tx, rx) = (socket(), socket());
        let io = UdpIo::new(&tx);
        let run: Vec<Vec<u8>> = vec![vec![7; 50], vec![8; 50], vec![9; 20]];
        for gso_first in [true, false] {
            let mut gso = gso_first;
            let sent = io.send_run(addr(&rx), run.iter().map(Vec::as_slice), &mut gso);
            assert_eq!(sent, 3);
            assert!(!gso || gso_first, "GSO is never turned on");
            for want in &run {
                assert_eq!(&recv(&rx).0, want);
            }
        }
        assert!(nothing_queued(&rx));
    }

    fn transmit(to: &str, len: usize) -> Transmit {
        Transmit {
            proto: str0m::net::Protocol::Udp,
            source: "10.0.0.1:40000".parse().unwrap(),
            destination: to.parse().unwrap(),
            contents: vec![0u8; len].into(),
        }
    }

    #[test]
    fn runs_keep_per_destination_order_and_split_where_gso_cannot_go_on() {
        let (a, b) = ("10.0.1.1:5000", "10.0.1.2:5000");
        let outbox = vec![
            transmit(a, 100), // 0
            transmit(b, 100), // 1
            transmit(a, 100), // 2
            transmit(a, 60),  // 3: shorter, ends the run
            transmit(a, 60),  // 4
            transmit(b, 120), // 5: longer than the run's segments
        ];
        let runs = gso_runs(&outbox);
        let dest = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            runs,
            vec![
                (dest(a), vec![0, 2, 3]),
                (dest(a), vec![4]),
                (dest(b), vec![1]),
                (dest(b), vec![5]),
            ]
        );
        let many: Vec<Transmit> = (0..GSO_MAX_SEGMENTS + 1).map(|_| transmit(a, 10)).collect();
        let sizes: Vec<usize> = gso_runs(&many).iter().map(|r| r.1.len()).collect();
        assert_eq!(sizes, vec![GSO_MAX_SEGMENTS, 1]);
    }
}
