//! Creating the shards' sockets before any executor starts, so a port in use or a
//! refused option is a clear start-up error rather than a failed shard.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::StartError;
use crate::config::Config;

/// One listening socket per shard on the same address, with SO_REUSEPORT so the kernel
/// spreads new connections over the shards. Port 0 picks a free port once, for all.
pub fn tcp_listeners(addr: SocketAddr, shards: usize) -> Result<Vec<OwnedFd>, StartError> {
    let mut out = Vec::with_capacity(shards);
    let mut addr = addr;
    for _ in 0..shards {
        let err = |source| StartError::Listen { addr, source };
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        sock.set_reuse_address(true).map_err(err)?;
        sock.set_reuse_port(true).map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        sock.bind(&addr.into()).map_err(err)?;
        sock.listen(4096).map_err(err)?;
        if addr.port() == 0 {
            if let Some(bound) = sock.local_addr().ok().and_then(|a| a.as_socket()) {
                addr = bound;
            }
        }
        out.push(OwnedFd::from(sock));
    }
    Ok(out)
}

pub fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(fd);
    sock.local_addr().ok()?.as_socket()
}

/// Shard `i`'s UDP socket on `udp.port_base + i`, on the listen address's IP, with the
/// configured buffer sizes. Logs what the kernel granted: it silently caps requests at
/// net.core.rmem_max / wmem_max (see tuning/).
pub fn udp_socket(config: &Config, shard: usize) -> Result<(OwnedFd, u16), StartError> {
    let port = if config.udp_port_base == 0 {
        0
    } else {
        config
            .udp_port_base
            .checked_add(shard as u16)
            .ok_or(StartError::Udp {
                port: u16::MAX,
                shard,
                source: std::io::Error::other("udp.port_base + shard exceeds 65535"),
            })?
    };
    let addr = SocketAddr::new(config.listen.ip(), port);
    let err = |source| StartError::Udp {
        port,
        shard,
        source,
    };
    let sock =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    // Requests above the kernel maximum fail on some kernels and are capped on others;
    // either way the granted size is what counts and is logged below.
    let _ = sock.set_recv_buffer_size(config.udp_recv_buffer);
    let _ = sock.set_send_buffer_size(config.udp_send_buffer);
    sock.bind(&addr.into()).map_err(err)?;
    let bound = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(port, |a| a.port());
    // Linux reports twice the usable size (it counts bookkeeping); halve it back.
    let granted_recv = sock.recv_buffer_size().unwrap_or(0) / 2;
    let granted_send = sock.send_buffer_size().unwrap_or(0) / 2;
    if granted_recv < config.udp_recv_buffer || granted_send < config.udp_send_buffer {
        tracing::warn!(
            shard,
            udp_port = bound,
            requested_recv = config.udp_recv_buffer,
            granted_recv,
            requested_send = config.udp_send_buffer,
            granted_send,
            "UDP buffers smaller than requested: raise net.core.rmem_max/wmem_max (tuning/99-corelay.conf)"
        );
    } else {
        tracing::info!(
            shard,
            udp_port = bound,
            granted_recv,
            granted_send,
            "UDP socket ready"
        );
    }
    Ok((OwnedFd::from(sock), bound))
}
