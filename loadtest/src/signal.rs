//! A non-blocking client of corelay's request/response dialect (`/ws`): requests go out
//! with numeric `requestId`s, answers and events come back from [`Signal::poll`], which
//! the worker calls when the socket is readable. Nothing here ever blocks, except the TCP
//! connect (bounded by a timeout; immediate on a reachable host).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::MidHandshake;
use tungstenite::{HandshakeError, Message, WebSocket};

/// What came in.
#[derive(Debug)]
pub enum Incoming {
    /// The WebSocket handshake completed.
    Opened,
    /// An answer; `Err` carries the error code.
    Response {
        id: u64,
        result: Result<Value, String>,
    },
    Event {
        kind: String,
        data: Value,
    },
    /// The session ended; the text is an error kind for the report.
    Closed(String),
}

enum State {
    Handshake(MidHandshake<ClientHandshake<TcpStream>>),
    Open(Box<WebSocket<TcpStream>>),
    Done,
}

pub struct Signal {
    state: State,
    fd: RawFd,
    next_id: u64,
    /// Requests written before the handshake completed.
    queued: Vec<String>,
    /// Bytes wait in tungstenite's write buffer (the kernel's was full).
    unflushed: bool,
}

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

fn handshake_failure(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!("ws_refused_{}", resp.status().as_u16()),
        _ => "ws_handshake".into(),
    }
}

impl Signal {
    /// Connects to `addr` and starts the upgrade for `url` (`ws://host:port/ws?token=`).
    pub fn start(addr: SocketAddr, url: &str, timeout: Duration) -> Result<Signal, String> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|_| "ws_connect")?;
        stream
            .set_nodelay(true)
            .and_then(|_| stream.set_nonblocking(true))
            .map_err(|_| "ws_connect")?;
        let fd = stream.as_raw_fd();
        let state = match tungstenite::client(url, stream) {
            Ok((ws, _)) => State::Open(Box::new(ws)),
            Err(HandshakeError::Interrupted(mid)) => State::Handshake(mid),
            Err(HandshakeError::Failure(e)) => return Err(handshake_failure(&e)),
        };
        Ok(Signal {
            state,
            fd,
            next_id: 0,
            queued: Vec::new(),
            unflushed: false,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether [`Signal::poll`] has work even without new input: a handshake to
    /// advance or bytes to flush.
    pub fn wants_poll(&self) -> bool {
        self.unflushed || matches!(self.state, State::Handshake(_))
    }

    /// Sends a request (or queues it until the handshake is done); returns its id.
    pub fn request(&mut self, kind: &str, data: Value) -> u64 {
        self.next_id += 1;
        let text =
            json!({"type": kind, "data": data, "requestId": self.next_id.to_string()}).to_string();
        match &mut self.state {
            State::Open(ws) => {
                // A full kernel buffer leaves the frame in tungstenite's write buffer;
                // `poll` flushes it later. Other errors surface on the next read.
                if ws.write(Message::text(text)).is_ok() {
                    self.unflushed = ws.flush().is_err();
                }
            }
            State::Handshake(_) => self.queued.push(text),
            State::Done => {}
        }
        self.next_id
    }

    /// Advances the handshake, reads every complete message and flushes what is pending.
    pub fn poll(&mut self, out: &mut Vec<Incoming>) {
        if let State::Handshake(_) = self.state {
            let State::Handshake(mid) = std::mem::replace(&mut self.state, State::Done) else {
                unreachable!()
            };
            match mid.handshake() {
                Ok((ws, _)) => {
                    self.state = State::Open(Box::new(ws));
                    out.push(Incoming::Opened);
                    if let State::Open(ws) = &mut self.state {
                        for text in self.queued.drain(..) {
                            let _ = ws.write(Message::text(text));
                        }
                    }
                }
                Err(HandshakeError::Interrupted(mid)) => {
                    self.state = State::Handshake(mid);
                    return;
                }
                Err(HandshakeError::Failure(e)) => {
                    out.push(Incoming::Closed(handshake_failure(&e)));
                    return;
                }
            }
        }
        let State::Open(ws) = &mut self.state else {
            return;
        };
        let closed = loop {
            match ws.read() {
                Ok(Message::Text(t)) => out.push(parse(t.as_str())),
                Ok(Message::Close(_)) => break Some("ws_closed"),
                Ok(_) => {}
                Err(e) if is_would_block(&e) => break None,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    break Some("ws_closed")
                }
                Err(_) => break Some("ws_error"),
            }
        };
        match closed {
            Some(kind) => {
                self.state = State::Done;
                out.push(Incoming::Closed(kind.into()));
            }
            None => self.unflushed = ws.flush().is_err(),
        }
    }

    /// Starts a clean close (best effort, never waits).
    pub fn close(&mut self) {
        if let State::Open(ws) = &mut self.state {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
        self.state = State::Done;
    }
}

fn parse(text: &str) -> Incoming {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Incoming::Event {
            kind: "unparsable".into(),
            data: Value::Null,
        };
    };
    let kind = v["type"].as_str().unwrap_or("").to_string();
    if kind == "response" {
        let id = v["requestId"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["requestId"].as_u64())
            .unwrap_or(0);
        let result = match v.get("error") {
            Some(e) => Err(e["code"].as_str().unwrap_or("unknown").to_string()),
            None => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
        };
        return Incoming::Response { id, result };
    }
    Incoming::Event {
        kind,
        data: v.get("data").cloned().unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers_errors_and_events() {
        match parse(r#"{"type":"response","requestId":"7","data":{"id":"x"}}"#) {
            Incoming::Response {
                id: 7,
                result: Ok(v),
            } => assert_eq!(v["id"], "x"),
            other => panic!("{other:?}"),
        }
        match parse(
            r#"{"type":"response","requestId":"8","error":{"code":"unknown_id","message":"m"}}"#,
        ) {
            Incoming::Response {
                id: 8,
                result: Err(c),
            } => assert_eq!(c, "unknown_id"),
            other => panic!("{other:?}"),
        }
        match parse(r#"{"type":"new-producer","data":{"producerId":"p1"}}"#) {
            Incoming::Event { kind, data } => {
                assert_eq!(kind, "new-producer");
                assert_eq!(data["producerId"], "p1");
            }
            other => panic!("{other:?}"),
        }
    }
}
