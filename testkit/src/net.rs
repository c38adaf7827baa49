//! Plain clients for a server on loopback: HTTP/1.1 requests, WebSocket sessions, tokens
//! minted with the tests' [`SECRET`], and [`Endpoint`], a str0m client on a UDP socket.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use corelay::auth::{Authenticator, Grant};

/// The JWT secret the servers of [`crate::Server::builder`] run with by default.
pub const SECRET: &str = "integration-test-secret-0123456789";

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A token for `user` (and `room`, when given) signed with [`SECRET`], valid 10 minutes.
pub fn token(user: &str, room: Option<&str>) -> String {
    Authenticator::new(SECRET.as_bytes())
        .mint(&Grant {
            user_id: user,
            user_name: None,
            room,
            ttl: Duration::from_secs(600),
        })
        .0
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut s)
}

/// Reads a `Connection: close` response to its end; returns status and body.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// A client WebSocket over plain TCP.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket; `Err` carries the HTTP status of a refused upgrade.
pub fn ws_connect(port: u16, path: &str) -> Result<Ws, u16> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}{path}");
    match tungstenite::client(url.as_str(), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// The next text message as JSON (skipping pings); panics after the read timeout.
pub fn recv_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.read().expect("a message before the timeout") {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// Sends one text message.
pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::text(text)).unwrap();
}

/// Reads until the server's close frame: its code (1005 when it has none) and reason, and
/// the texts (as JSON) that came before it. Panics when the stream ends without one.
pub fn close_code(ws: &mut Ws) -> (u16, String, Vec<serde_json::Value>) {
    use tungstenite::Message;
    let mut texts = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => texts.push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string(), texts),
            Ok(Message::Close(None)) => return (1005, String::new(), texts),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}; texts {texts:?}"),
        }
    }
}

/// POSTs an SDP offer as a WHIP/WHEP client does, with a token of `user` for `room`.
pub fn post_sdp(port: u16, path: &str, user: &str, room: &str, body: &str) -> FullResponse {
    let auth = format!("Bearer {}", token(user, Some(room)));
    let headers = [
        ("Content-Type", "application/sdp"),
        ("Authorization", auth.as_str()),
    ];
    http_with_headers(port, "POST", path, &headers, body.as_bytes()).unwrap()
}

/// The `Location` header of a response (a WHIP/WHEP resource).
pub fn location(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.clone())
        .expect("Location header")
}

/// A response: status, headers (names lower-cased), body.
pub type FullResponse = (u16, Vec<(String, String)>, String);

/// Like [`http`], also returning the response headers.
pub fn http_with_headers(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<FullResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// A str0m client on its own UDP socket on loopback.
pub struct Endpoint {
    /// The sans-IO client.
    pub client: crate::client::Client,
    /// Its non-blocking socket on 127.0.0.1.
    pub socket: std::net::UdpSocket,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl Endpoint {
    /// A client on a fresh socket.
    pub fn new() -> Endpoint {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let client = crate::client::Client::new(Instant::now(), socket.local_addr().unwrap());
        Endpoint { client, socket }
    }

    /// Moves datagrams both ways and serves timeouts; call in a loop.
    pub fn pump(&mut self) {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            self.client.handle_datagram(Instant::now(), from, &buf[..n]);
        }
        if self.client.deadline <= Instant::now() {
            self.client.handle_timeout(Instant::now());
        }
        for t in std::mem::take(&mut self.client.outbox) {
            let _ = self.socket.send_to(&t.contents, t.destination);
        }
    }
}
