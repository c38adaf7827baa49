//! A client connection on a shard: plain TCP or TLS over TCP. Both can be detached into
//! an owned fd (plus the TLS state) and attached again on another shard. Each carries its
//! admission [`Permit`] (the per-address count, the open-connection count), which goes
//! with it to another shard and is released when it closes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use futures_rustls::rustls::ServerConnection;
use glommio::net::TcpStream;

use super::admission::Permit;
use crate::http::tls::TlsConn;

pub struct Conn {
    /// Released with the connection; declared first, so dropped before the socket is
    /// closed: a client that saw the close never finds its connection still counted.
    permit: Option<Permit>,
    io: Io,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsConn<TcpStream>>),
}

/// What travels between shards for one connection.
pub struct Detached {
    pub fd: OwnedFd,
    pub tls: Option<Box<ServerConnection>>,
    pub permit: Option<Permit>,
}

impl Conn {
    /// A plain TCP connection.
    pub fn plain(stream: TcpStream, permit: Option<Permit>) -> Conn {
        Conn {
            io: Io::Plain(stream),
            permit,
        }
    }

    /// A TLS connection.
    pub fn tls(tls: Box<TlsConn<TcpStream>>, permit: Option<Permit>) -> Conn {
        Conn {
            io: Io::Tls(tls),
            permit,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(s) => s,
            Io::Tls(t) => t.get_ref(),
        }
    }

    /// Duplicates the fd and drops the glommio stream. glommio reads by readiness polls
    /// (never an in-flight receive into a buffer), so no byte is lost when the stream is
    /// dropped between reads.
    pub fn detach(self) -> io::Result<Detached> {
        let fd = dup_fd(self.tcp().as_raw_fd())?;
        let tls = match self.io {
            Io::Plain(_) => None,
            Io::Tls(t) => Some(Box::new(t.into_parts().1)),
        };
        Ok(Detached {
            fd,
            tls,
            permit: self.permit,
        })
    }

    /// Adopts a detached connection on this shard.
    pub fn attach(d: Detached) -> Conn {
        // SAFETY: the detached fd is owned and adopted exactly once.
        let stream = unsafe { TcpStream::from_raw_fd(d.fd.into_raw_fd()) };
        let io = match d.tls {
            None => Io::Plain(stream),
            Some(state) => Io::Tls(Box::new(TlsConn::resume(stream, *state))),
        };
        Conn {
            io,
            permit: d.permit,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_close(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_close(cx),
        }
    }
}

/// An owned fd for a relocation: a duplicate, so the original can be dropped with its
/// glommio stream while the socket lives on.
pub fn dup_fd(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: dup on a descriptor we currently own; the result is a new owned fd.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
