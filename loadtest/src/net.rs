//! The few socket calls std does not have: epoll, recvmmsg and socket buffer sizes.
//! Every `unsafe` block of the crate lives here.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// A level-triggered epoll set; each fd is registered with a `u64` token.
pub struct Poller {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub fn new(capacity: usize) -> io::Result<Poller> {
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    /// Watches `fd` for readability.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (closing the fd also does it).
    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; errors (fd already gone) are irrelevant.
        unsafe {
            libc::epoll_ctl(self.fd, libc::EPOLL_CTL_DEL, fd, &mut ev);
        }
    }

    /// Waits up to `timeout` (rounded up to a millisecond) and appends the ready tokens.
    pub fn wait(&mut self, timeout: Duration, ready: &mut Vec<u64>) -> io::Result<()> {
        let ms = timeout.as_micros().div_ceil(1000).min(1000) as i32;
        // SAFETY: `events` holds `len` initialized entries the kernel may overwrite.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        ready.extend(self.events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// Datagrams per `recvmmsg` call.
pub const BATCH: usize = 16;
const SLOT: usize = 2048;

/// Reusable buffers for receiving up to [`BATCH`] datagrams in one syscall.
pub struct RecvBatch {
    data: Vec<u8>,
    lens: [usize; BATCH],
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            data: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
        }
    }
}

impl RecvBatch {
    /// Receives what is queued on a (connected, non-blocking) UDP socket, without waiting.
    /// Returns how many datagrams arrived; 0 when none was queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.data.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: slot i lies inside `data` (BATCH * SLOT bytes).
            iov[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
            iov[i].iov_len = SLOT;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live iovec describing a slot of `data`; no
        // name or control buffers are given. Nothing is kept after the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        for (i, h) in hdrs.iter().take(n as usize).enumerate() {
            self.lens[i] = (h.msg_len as usize).min(SLOT);
        }
        Ok(n as usize)
    }

    /// The i-th datagram of the last [`RecvBatch::recv`].
    pub fn get(&self, i: usize) -> &[u8] {
        &self.data[i * SLOT..i * SLOT + self.lens[i]]
    }
}

/// Asks for a socket receive buffer of `bytes` (the kernel caps it at rmem_max).
pub fn set_recv_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: `v` outlives the call and its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn recvmmsg_takes_what_is_queued_and_poller_sees_it() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        b.set_nonblocking(true).unwrap();
        set_recv_buffer(b.as_raw_fd(), 1 << 20).unwrap();
        let mut poller = Poller::new(8).unwrap();
        poller.add(b.as_raw_fd(), 42).unwrap();
        let mut batch = RecvBatch::default();
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 0);
        for i in 0..20u8 {
            a.send(&[i; 100]).unwrap();
        }
        let mut ready = Vec::new();
        poller.wait(Duration::from_millis(500), &mut ready).unwrap();
        assert_eq!(ready, vec![42]);
        let n = batch.recv(b.as_raw_fd()).unwrap();
        assert_eq!(n, BATCH);
        assert_eq!(batch.get(3), &[3u8; 100][..]);
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 20 - BATCH);
        assert_eq!(batch.get(0), &[BATCH as u8; 100][..]);
    }
}
