//! WebSocket upgrade, and [`FrameBoundedStream`]: a stream adapter that never hands the
//! WebSocket parser bytes beyond the end of the frame it is reading.
//!
//! Why: a live session may have to move to another shard once a message names its room.
//! If the parser had buffered bytes of the next frame, they would be stranded on the old
//! shard. With this adapter, at every message boundary the parser's buffer is empty and
//! every byte read from the socket but not yet parsed is in [`FrameBoundedStream::leftover`],
//! which travels with the socket.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::{AsyncRead, AsyncWrite};

use super::{Head, Response};

/// Whether the head asks for a WebSocket upgrade.
pub fn is_upgrade(head: &Head) -> bool {
    head.method == "GET"
        && head.header_has_token("upgrade", "websocket")
        && head.header_has_token("connection", "upgrade")
}

/// The 101 response for a valid upgrade request, or the error response to send instead.
pub fn accept(head: &Head) -> Result<Vec<u8>, Response> {
    let key = head
        .header("sec-websocket-key")
        .ok_or_else(|| Response::error(400, "bad_request", "missing Sec-WebSocket-Key"))?;
    if !valid_key(key.trim()) {
        return Err(Response::error(
            400,
            "bad_request",
            "Sec-WebSocket-Key must be the base64 of 16 bytes",
        ));
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(
            Response::error(400, "bad_request", "Sec-WebSocket-Version must be 13")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes())
}

/// RFC 6455 4.2.1: the key is the base64 of 16 bytes (24 characters, canonical padding).
fn valid_key(key: &str) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// The WebSocket limits for a session.
pub fn config(max_message_bytes: usize) -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Total length of the frame starting at `b` (header + payload), if `b` holds its header.
fn frame_len(b: &[u8]) -> Option<u64> {
    if b.len() < 2 {
        return None;
    }
    let mask = if b[1] & 0x80 != 0 { 4 } else { 0 };
    let (ext, payload) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (2, u16::from_be_bytes([b[2], b[3]]) as u64)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            (8, u64::from_be_bytes(a))
        }
        n => (0, n as u64),
    };
    // A 64-bit length near u64::MAX must not wrap around to a short frame (the header is
    // refused by the frame limit, or by tungstenite, as too large).
    Some(((2 + ext + mask) as u64).saturating_add(payload))
}

pub struct FrameBoundedStream<S> {
    inner: S,
    buf: Vec<u8>,
    /// Bytes of the current frame not yet handed out; 0 at a frame boundary.
    frame_left: u64,
    /// When a write last took bytes (for the write timeout).
    written_at: Rc<Cell<Instant>>,
    /// Largest frame accepted; a larger one fails with [`FrameTooLarge`] from its header,
    /// before any of its payload is buffered.
    max_frame: u64,
    /// Bytes of the data frames of the message being received (fragments add up), held
    /// against `max_frame` too.
    message_bytes: u64,
}

/// A frame header announced more than [`FrameBoundedStream::set_max_frame`] allows.
#[derive(Debug)]
pub struct FrameTooLarge {
    pub limit: u64,
}

impl std::fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame over {} bytes", self.limit)
    }
}

impl std::error::Error for FrameTooLarge {}

/// Whether a read error is a [`FrameTooLarge`].
pub fn is_frame_too_large(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<FrameTooLarge>())
}

impl<S> FrameBoundedStream<S> {
    /// `already_read`: bytes read from the socket before, not yet parsed.
    pub fn new(inner: S, already_read: Vec<u8>) -> Self {
        FrameBoundedStream {
            inner,
            buf: already_read,
            frame_left: 0,
            written_at: Rc::new(Cell::new(Instant::now())),
            max_frame: u64::MAX,
            message_bytes: 0,
        }
    }

    /// Refuses frames whose payload is over `limit` bytes from their header on.
    pub fn set_max_frame(&mut self, limit: u64) {
        self.max_frame = limit;
    }

    /// When a write last took bytes, shared: the session watches it while it writes.
    pub fn written_at(&self) -> Rc<Cell<Instant>> {
        self.written_at.clone()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Takes the bytes read past the last frame handed out. Only meaningful at a message
    /// boundary, where the parser holds nothing.
    pub fn take_leftover(&mut self) -> Vec<u8> {
        debug_assert_eq!(self.frame_left, 0);
        std::mem::take(&mut self.buf)
    }
}

impl<S> FrameBoundedStream<S> {
    /// The bytes of the message so far with the frame of `len` starting at `buf[0]`; a
    /// data frame starts a message, a continuation adds to it, a control frame stands alone.
    fn message_total(&mut self, len: u64) -> u64 {
        match self.buf[0] & 0x0f {
            0x0 => self.message_bytes = self.message_bytes.saturating_add(len),
            op if op < 0x8 => self.message_bytes = len,
            _ => return len,
        }
        self.message_bytes
    }
}

impl<S: AsyncRead + Unpin> FrameBoundedStream<S> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; 4096];
        let n = futures::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut chunk))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameBoundedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.frame_left == 0 {
                match frame_len(&this.buf) {
                    Some(len)
                        if this.max_frame != u64::MAX
                            && this.message_total(len) > this.max_frame.saturating_add(14) =>
                    {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            FrameTooLarge {
                                limit: this.max_frame,
                            },
                        )));
                    }
                    Some(len) => this.frame_left = len,
                    None => {
                        if futures::ready!(this.poll_fill(cx))? == 0 {
                            // End of stream inside a header: hand over what there is and
                            // let the parser report the truncation.
                            let n = this.buf.len().min(out.len());
                            out[..n].copy_from_slice(&this.buf[..n]);
                            this.buf.drain(..n);
                            return Poll::Ready(Ok(n));
                        }
                        continue;
                    }
                }
            }
            if this.buf.is_empty() && futures::ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Ok(0));
            }
            let n = (this.buf.len() as u64)
                .min(this.frame_left)
                .min(out.len() as u64) as usize;
            out[..n].copy_from_slice(&this.buf[..n]);
            this.buf.drain(..n);
            this.frame_left -= n as u64;
            return Poll::Ready(Ok(n));
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameBoundedStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                this.written_at.set(Instant::now());
            }
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncReadExt;

    fn frame(payload: &[u8]) -> Vec<u8> {
        // A masked client text frame.
        let mut f = vec![0x81];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        f.extend([0, 0, 0, 0]);
        f.extend(payload);
        f
    }

    #[test]
    fn keys_are_base64_of_16_bytes() {
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZR==")); // non-zero trailing bits
        assert!(!valid_key("dGhlIHNhbXBsZSBub25j"));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZQ=!"));
        assert!(!valid_key(""));
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_len(&frame(b"abc")), Some(2 + 4 + 3));
        assert_eq!(frame_len(&frame(&[0; 300])), Some(4 + 4 + 300));
        assert_eq!(frame_len(&frame(&[0; 70_000])), Some(10 + 4 + 70_000));
        assert_eq!(frame_len(&[0x81]), None);
    }

    /// Found by the `websocket_frames` fuzz target: a 64-bit payload length of 2^64 - 1
    /// overflowed the frame length (a panic in debug builds, a wrapped 13-byte "frame" in
    /// release ones).
    #[test]
    fn the_largest_64_bit_length_does_not_wrap() {
        let mut header = vec![0x81, 0x80 | 127];
        header.extend([0xff; 8]);
        header.extend([1, 2, 3, 4]);
        assert_eq!(frame_len(&header), Some(u64::MAX));
        let mut s = FrameBoundedStream::new(futures::io::Cursor::new(header), Vec::new());
        s.set_max_frame(4096);
        let e = futures::executor::block_on(s.read(&mut [0u8; 64])).unwrap_err();
        assert!(is_frame_too_large(&e), "{e}");
    }

    #[test]
    fn a_frame_over_the_limit_fails_from_its_header() {
        let mut header = frame(&[0; 70_000]);
        header.truncate(14); // the header alone: no payload sent
        let mut s = FrameBoundedStream::new(futures::io::Cursor::new(header), Vec::new());
        s.set_max_frame(4096);
        let mut out = vec![0u8; 1024];
        let e = futures::executor::block_on(s.read(&mut out)).unwrap_err();
        assert!(is_frame_too_large(&e), "{e}");
        let mut s = FrameBoundedStream::new(futures::io::Cursor::new(frame(b"ok")), Vec::new());
        s.set_max_frame(4096);
        assert!(futures::executor::block_on(s.read(&mut out)).is_ok());
        // Fragments of one message add up: a text frame without FIN, then continuations.
        let mut fragments = Vec::new();
        for i in 0..3 {
            let mut f = frame(&[b'x'; 2000]);
            f[0] = if i == 0 { 0x01 } else { 0x00 };
            fragments.extend(f);
        }
        let mut s = FrameBoundedStream::new(futures::io::Cursor::new(fragments), Vec::new());
        s.set_max_frame(4096);
        let mut big = vec![0u8; 8192];
        let mut result = Ok(0);
        for _ in 0..3 {
            result = futures::executor::block_on(s.read(&mut big));
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err_and(|e| is_frame_too_large(&e)));
    }

    #[test]
    fn never_reads_past_a_frame_and_keeps_the_rest() {
        let mut bytes = frame(b"first");
        let second = frame(b"second");
        bytes.extend(&second);
        let mut s = FrameBoundedStream::new(futures::io::Cursor::new(bytes), Vec::new());
        let mut out = vec![0u8; 1024];
        let n = futures::executor::block_on(s.read(&mut out)).unwrap();
        assert_eq!(n, frame(b"first").len(), "one read stops at the frame end");
        let leftover = s.take_leftover();
        assert_eq!(
            leftover, second,
            "the next frame stays for whoever continues"
        );
    }
}
