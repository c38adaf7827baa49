//! Helpers for tests against the real binary on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corelay::auth::{Authenticator, Grant};

pub const SECRET: &str = "integration-test-secret-0123456789";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `corelay` process, killed when dropped.
pub struct Server {
    pub port: u16,
    pub child: Child,
}

impl Server {
    pub fn start(shards: usize, extra: &[&str]) -> Server {
        Self::start_with_env(shards, extra, &[("JWT_SECRET", SECRET)])
    }

    pub fn start_with_env(shards: usize, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corelay"));
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--shards",
            &shards.to_string(),
            "--udp-port-base",
            "0",
        ])
        .args(extra)
        .env_remove("JWT_SECRET")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("corelay binary runs");
        let server = Server { port, child };
        server.wait_healthy(Duration::from_secs(20));
        server
    }

    pub fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok((200, _)) = http(self.port, "GET", "/health", &[], b"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server on port {} not healthy within {limit:?}", self.port);
    }

    pub fn health(&self) -> serde_json::Value {
        let (status, body) = http(self.port, "GET", "/health", &[], b"").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::text(text)).unwrap();
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
    pub client: corelay_testkit::client::Client,
    pub socket: std::net::UdpSocket,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl Endpoint {
    pub fn new() -> Endpoint {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let client =
            corelay_testkit::client::Client::new(Instant::now(), socket.local_addr().unwrap());
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

/// Runs a check script of tests/ with this build's binary as its argument, in its own
/// process group (killed as a whole after `limit`), printing its output; panics unless it
/// exits 0.
pub fn run_check_script(script: &str, limit: Duration) {
    use std::os::unix::process::CommandExt;
    let root = env!("CARGO_MANIFEST_DIR");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("bash")
        .arg(format!("{root}/{script}"))
        .arg(env!("CARGO_BIN_EXE_corelay"))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            // SAFETY: kill(2) on the process group we created.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    match status {
        None => panic!("{script} ran over {limit:?}"),
        Some(s) => assert!(s.success(), "{script} failed ({s}); output above"),
    }
}
