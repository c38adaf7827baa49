//! WHIP/WHEP signaling: plain HTTP/1.1 requests (`POST` an SDP offer, `DELETE` the
//! resource), each blocking, run on a few helper threads per worker so that the worker's
//! epoll loop never waits for the server. The worker submits [`Job`]s and collects
//! [`Done`]s from [`HttpPool::results`] on its housekeeping tick.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cli::parse_url;

/// A WHIP or WHEP endpoint prefix: `http://host:port/whip`; a room's endpoint is
/// `{prefix}/{room}`.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    /// host:port for the Host header.
    pub authority: String,
    /// The path of the flag's URL without a trailing `/` (may be empty).
    pub prefix: String,
}

impl HttpTarget {
    pub fn parse(url: &str) -> Result<HttpTarget, String> {
        let t = parse_url(url)?;
        let rest = url.split_once("://").map_or("", |x| x.1);
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        if path.contains(['?', '#']) {
            return Err(format!("{url}: no query or fragment, please"));
        }
        Ok(HttpTarget {
            addr: t.addr,
            authority: t.authority,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The path to POST a room's offer to.
    pub fn room_path(&self, room: &str) -> String {
        format!("{}/{room}", self.prefix)
    }

    /// The path of a `Location` (absolute path, absolute URL on this host, or relative to
    /// the room endpoint).
    pub fn resolve(&self, location: &str, room: &str) -> String {
        if location.starts_with('/') {
            location.to_string()
        } else if let Some(rest) = location
            .strip_prefix("http://")
            .or_else(|| location.strip_prefix("https://"))
        {
            rest.find('/').map_or("/".into(), |i| rest[i..].to_string())
        } else {
            format!("{}/{location}", self.room_path(room))
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

/// One blocking request with `Connection: close`; every step bounded by `timeout`.
pub fn request(
    t: &HttpTarget,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Reply, String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&t.addr, timeout).map_err(|_| "connect")?;
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(timeout)).map_err(|_| "io")?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        t.authority,
        body.map_or(0, str::len)
    );
    if body.is_some() {
        head.push_str("Content-Type: application/sdp\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|_| "io")?;
    if let Some(b) = body {
        s.write_all(b.as_bytes()).map_err(|_| "io")?;
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut parsed: Option<(usize, Option<usize>)> = None; // (body start, content length)
    loop {
        if let Some((start, Some(len))) = parsed {
            if buf.len() >= start + len {
                buf.truncate(start + len);
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timeout".into());
        }
        s.set_read_timeout(Some(left)).map_err(|_| "io")?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timeout".into())
            }
            Err(_) => return Err("io".into()),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if parsed.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = header(&head, "content-length").and_then(|v| v.parse().ok());
                parsed = Some((end + 4, len));
            }
        }
    }
    let Some((start, _)) = parsed else {
        return Err("bad_response".into());
    };
    let head = String::from_utf8_lossy(&buf[..start - 4]).to_string();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("bad_response")?;
    Ok(Reply {
        status,
        location: header(&head, "location").map(str::to_string),
        body: String::from_utf8_lossy(&buf[start..]).to_string(),
    })
}

/// The value of a header in a response head (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The first UDP host candidate of an SDP (the server's media address).
pub fn sdp_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find_map(|l| {
        let c = l.trim().strip_prefix("a=candidate:")?;
        let f: Vec<&str> = c.split_whitespace().collect();
        if f.len() < 6 || !f[2].eq_ignore_ascii_case("udp") || f[1] != "1" {
            return None;
        }
        let ip: std::net::IpAddr = f[4].parse().ok()?;
        Some(SocketAddr::new(ip, f[5].parse().ok()?))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Post,
    Delete,
}

pub struct Job {
    pub peer: usize,
    pub what: What,
    pub target: Arc<HttpTarget>,
    pub path: String,
    pub token: String,
    pub body: Option<String>,
    pub timeout: Duration,
}

pub struct Done {
    pub peer: usize,
    pub what: What,
    pub result: Result<Reply, String>,
}

/// A few threads that run [`Job`]s one at a time each.
pub struct HttpPool {
    jobs: Option<Sender<Job>>,
    pub results: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl HttpPool {
    pub fn new(name: &str, threads: usize) -> std::io::Result<HttpPool> {
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, results) = channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut handles = Vec::new();
        for k in 0..threads.max(1) {
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            let h = std::thread::Builder::new()
                .name(format!("{name}-http{k}"))
                .stack_size(256 << 10)
                .spawn(move || loop {
                    let job = { rx.lock().expect("job queue").recv() };
                    let Ok(job) = job else { return };
                    let method = match job.what {
                        What::Post => "POST",
                        What::Delete => "DELETE",
                    };
                    let result = request(
                        &job.target,
                        method,
                        &job.path,
                        &job.token,
                        job.body.as_deref(),
                        job.timeout,
                    );
                    let done = Done {
                        peer: job.peer,
                        what: job.what,
                        result,
                    };
                    if tx.send(done).is_err() {
                        return;
                    }
                })?;
            handles.push(h);
        }
        Ok(HttpPool {
            jobs: Some(jobs),
            results,
            threads: handles,
        })
    }

    pub fn submit(&self, job: Job) {
        if let Some(j) = &self.jobs {
            let _ = j.send(job);
        }
    }
}

impl Drop for HttpPool {
    fn drop(&mut self) {
        self.jobs.take();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_locations_and_candidates() {
        let t = HttpTarget::parse("http://127.0.0.1:3001/whip/").unwrap();
        assert_eq!(t.prefix, "/whip");
        assert_eq!(t.room_path("r-1"), "/whip/r-1");
        assert_eq!(t.resolve("/whip/r-1/abc", "r-1"), "/whip/r-1/abc");
        assert_eq!(t.resolve("http://h:1/x/y", "r-1"), "/x/y");
        assert_eq!(t.resolve("abc", "r-1"), "/whip/r-1/abc");
        assert_eq!(
            HttpTarget::parse("http://127.0.0.1:9")
                .unwrap()
                .room_path("r"),
            "/r"
        );
        let sdp = "v=0\r\na=candidate:1 2 udp 1 10.0.0.1 9 typ host\r\n\
                   a=candidate:2 1 UDP 2122260223 127.0.0.1 40001 typ host\r\n";
        assert_eq!(sdp_candidate(sdp), Some("127.0.0.1:40001".parse().unwrap()));
        let head = "HTTP/1.1 201 Created\r\nlocation: /a\r\nContent-Length: 3";
        assert_eq!(header(head, "Location"), Some("/a"));
        assert_eq!(header(head, "content-length"), Some("3"));
    }
}
