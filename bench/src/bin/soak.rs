//! A churn soak: for N minutes, sessions of every dialect join and leave a corelay server
//! with bounded concurrency, and the server's memory, file descriptors and transports are
//! watched; at the end they must come back to where they started.
//!
//! Each of `--sessions` workers runs one scenario after another until the time is up,
//! cycling through the dialects, each scenario in a room of its own (so rooms churn too):
//! - `mediasoup`: `/ws`, a publisher produces VP8 over a send transport and a subscriber
//!   consumes it over a receive transport; media flows; both leave (or just drop the
//!   socket, every other time);
//! - `pubsub`: `/pubsub`, `auth`, a publish offer, a second session subscribes; media;
//! - `whip`: WHIP publish and WHEP view with media, both ended with `DELETE`;
//! - `connect`: two `/connect` clients in one conversation hear each other's audio (the
//!   media outlives the socket and ends with ICE consent once the clients go quiet);
//! - `p2p`: two `/p2p` relay sessions broadcast to each other;
//! - `sockjs`: the same over SockJS on a WebSocket.
//!
//! Every scenario has a deadline for each step and for itself; a failed one is counted
//! (with its last error) and the worker moves on. A sample (RSS and open fds of the server
//! from /proc, transports, producers, consumers, rooms and connections from /metrics) is
//! taken at the start, every `--report-every` seconds and at the end, after the churn
//! stopped and `--settle` seconds passed (consent expiry of `/connect` media included).
//! The report is JSON (`--json`, default `bench/results/soak-<unix time>.json`) and one
//! text line. Exit status 1 when RSS at the end is over the start by more than `--rss-slack`
//! (10 %), or transports, producers, consumers, rooms or fds are above their start, or no
//! scenario succeeded; 2 for bad flags.
//!
//! Run from the repository root (the server is started from the release build next to this
//! binary): `cargo build --release && cargo run --release -p corelay-bench --bin soak --
//! --minutes 30`. `--url http://127.0.0.1:3001 --secret S [--pid P]` soaks a server that is
//! already running (loopback only; without `--pid` there are no RSS and fd figures);
//! `--server-arg ARG` (repeatable) passes settings to the server it starts, e.g. limits.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corelay::auth::{Authenticator, Grant};
use corelay::sfu::ortc::VP8;
use corelay_testkit::client::ClientEvent;
use corelay_testkit::{Capture, Endpoint, Server};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use tungstenite::Message;

const DEFAULT_SECRET: &str = "soak-benchmark-secret-0123456789";
/// Every blocking step (connect, read, write) gives up after this long.
const STEP: Duration = Duration::from_secs(10);
const KINDS: [&str; 6] = ["mediasoup", "pubsub", "whip", "connect", "p2p", "sockjs"];

struct Opts {
    run: Duration,
    url: Option<String>,
    pid: Option<u32>,
    secret: String,
    sessions: usize,
    shards: usize,
    hold: Duration,
    every: Duration,
    settle: Duration,
    warmup: Duration,
    rss_slack: f64,
    json: PathBuf,
    /// Extra arguments for the server this soak starts (`--server-arg`, repeatable).
    server_args: Vec<String>,
}

fn usage(e: &str) -> ! {
    eprintln!(
        "soak: {e}\nusage: soak [--minutes M | --seconds S] [--sessions N] [--hold S] \
         [--report-every S] [--warmup S] [--settle S] [--rss-slack FRACTION] [--shards N] [--json FILE] [--server-arg ARG]... \
         [--url http://127.0.0.1:PORT --secret SECRET [--pid PID]]"
    );
    std::process::exit(2)
}

fn opts() -> Opts {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let mut o = Opts {
        run: Duration::from_secs(120),
        url: None,
        pid: None,
        secret: std::env::var("JWT_SECRET").unwrap_or_else(|_| DEFAULT_SECRET.into()),
        sessions: 24,
        shards: 2,
        hold: Duration::from_secs(4),
        every: Duration::from_secs(30),
        settle: Duration::from_secs(60),
        warmup: Duration::from_secs(60),
        rss_slack: 0.10,
        server_args: Vec::new(),
        json: Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "results/soak-{}.json",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        )),
    };
    while i < all.len() {
        let flag = all[i].as_str();
        let value = all
            .get(i + 1)
            .cloned()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| -> f64 {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .unwrap_or_else(|| usage(&format!("{flag} {v}: not a number")))
        };
        let secs = |v: &str| Duration::from_secs_f64(num(v));
        match flag {
            "--minutes" => o.run = Duration::from_secs_f64(num(&value) * 60.0),
            "--seconds" => o.run = secs(&value),
            "--url" => o.url = Some(value),
            "--pid" => o.pid = Some(num(&value) as u32),
            "--secret" => o.secret = value,
            "--sessions" => o.sessions = (num(&value) as usize).clamp(1, 200),
            "--shards" => o.shards = (num(&value) as usize).clamp(1, 64),
            "--hold" => o.hold = secs(&value),
            "--report-every" => o.every = secs(&value).max(Duration::from_secs(1)),
            "--settle" => o.settle = secs(&value),
            "--warmup" => o.warmup = secs(&value),
            "--rss-slack" => o.rss_slack = num(&value),
            "--json" => o.json = PathBuf::from(value),
            "--server-arg" => o.server_args.push(value),
            _ => usage(&format!("unknown flag {flag}")),
        }
        i += 2;
    }
    o
}

/// Where the server listens: loopback only (the soak never sends elsewhere).
fn parse_url(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| usage("--url must be http://127.0.0.1:PORT (no TLS)"));
    let authority = rest.split('/').next().unwrap_or("");
    let addr: SocketAddr = authority
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap_or_else(|_| usage(&format!("{url}: expected http://IP:PORT")));
    if !addr.ip().is_loopback() {
        usage("the soak only runs against a loopback address");
    }
    addr
}

/// The release build next to this binary (CARGO_TARGET_DIR respected).
fn server_binary() -> PathBuf {
    std::env::current_exe()
        .expect("this binary's path")
        .parent()
        .expect("a directory")
        .join("corelay")
}

// ------------------------------------------------------------------ figures

#[derive(Clone, Debug, Default)]
struct Sample {
    at_s: f64,
    rss_bytes: Option<u64>,
    fds: Option<u64>,
    metrics: BTreeMap<&'static str, u64>,
    live_sessions: usize,
    done: u64,
    failed: u64,
}

const GAUGES: [&str; 5] = [
    "corelay_transports",
    "corelay_producers",
    "corelay_consumers",
    "corelay_rooms",
    "corelay_connections",
];

impl Sample {
    fn json(&self) -> Value {
        json!({
            "at_s": (self.at_s * 10.0).round() / 10.0,
            "rss_bytes": self.rss_bytes,
            "fds": self.fds,
            "transports": self.metrics.get("corelay_transports"),
            "producers": self.metrics.get("corelay_producers"),
            "consumers": self.metrics.get("corelay_consumers"),
            "rooms": self.metrics.get("corelay_rooms"),
            "connections": self.metrics.get("corelay_connections"),
            "live_sessions": self.live_sessions,
            "scenarios_done": self.done,
            "scenarios_failed": self.failed,
        })
    }

    fn line(&self, label: &str) -> String {
        let mb = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6));
        let m = |k| {
            self.metrics
                .get(k)
                .map_or("-".into(), |v: &u64| v.to_string())
        };
        format!(
            "soak {label} t={:.0}s rss_mb={} fds={} transports={} producers={} consumers={} \
             rooms={} connections={} live={} done={} failed={}",
            self.at_s,
            mb(self.rss_bytes),
            self.fds.map_or("-".into(), |f| f.to_string()),
            m("corelay_transports"),
            m("corelay_producers"),
            m("corelay_consumers"),
            m("corelay_rooms"),
            m("corelay_connections"),
            self.live_sessions,
            self.done,
            self.failed,
        )
    }
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The gauges of /metrics, summed over shards.
fn metrics(addr: SocketAddr) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    let Ok(reply) = http(addr, "GET", "/metrics", &[], b"") else {
        return out;
    };
    for line in reply.body.lines() {
        for name in GAUGES {
            if let Some(rest) = line.strip_prefix(name).filter(|r| r.starts_with('{')) {
                if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) {
                    *out.entry(name).or_insert(0) += v;
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------ plain clients

struct Reply {
    status: u16,
    location: Option<String>,
    body: String,
}

/// One HTTP/1.1 request with `Connection: close`, every step bounded by [`STEP`].
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let mut s = TcpStream::connect_timeout(&addr, STEP).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    s.write_all(body).map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    // Bounded: a response over 4 MiB is not one of ours.
    s.take(4 << 20)
        .read_to_end(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {:?}", &text[..text.len().min(200)]))?;
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    Ok(Reply {
        status,
        location,
        body: body.to_string(),
    })
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws_open(addr: SocketAddr, path: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect_timeout(&addr, STEP).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(STEP))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(STEP))
        .map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}{path}");
    match tungstenite::client(url.as_str(), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(format!("upgrade {path} refused: {}", resp.status()))
        }
        Err(e) => Err(format!("upgrade {path}: {e}")),
    }
}

fn send(ws: &mut Ws, text: &str) -> Result<(), String> {
    ws.send(Message::text(text))
        .map_err(|e| format!("send: {e}"))
}

/// The next text frame before `deadline` (`None` when the socket closed or timed out).
fn next_text(ws: &mut Ws, deadline: Instant) -> Result<String, String> {
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => return Ok(t.as_str().to_string()),
            Ok(Message::Close(c)) => return Err(format!("closed by the server: {c:?}")),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Err("no message in time".into())
}

/// The next JSON text that `pred` accepts; others are skipped.
fn wait_json(ws: &mut Ws, mut pred: impl FnMut(&Value) -> bool) -> Result<Value, String> {
    let deadline = Instant::now() + STEP;
    loop {
        let text = next_text(ws, deadline)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if pred(&v) {
            return Ok(v);
        }
    }
}

fn close(mut ws: Ws) {
    let _ = ws.close(None);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if ws.read().is_err() {
            break;
        }
    }
}

/// Reads without waiting (the socket gets a short timeout for it); texts are returned.
fn drain(ws: &mut Ws) -> Vec<String> {
    let _ = ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(1)));
    let mut out = Vec::new();
    for _ in 0..1000 {
        match ws.read() {
            Ok(Message::Text(t)) => out.push(t.as_str().to_string()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = ws.get_mut().set_read_timeout(Some(STEP));
    out
}

// ------------------------------------------------------------------ media

fn pump(eps: &mut [&mut Endpoint]) {
    for e in eps.iter_mut() {
        e.pump();
    }
}

fn wait_connected(eps: &mut [&mut Endpoint]) -> Result<(), String> {
    let deadline = Instant::now() + STEP;
    while !eps.iter().all(|e| e.client.is_connected()) {
        if Instant::now() > deadline {
            return Err("ICE/DTLS did not complete".into());
        }
        pump(eps);
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn rtp_received(ep: &mut Endpoint) -> u64 {
    let mut n = 0;
    while let Some(e) = ep.client.events.pop_front() {
        n += matches!(e, ClientEvent::Rtp(_)) as u64;
    }
    n
}

/// Sends VP8 at 10 frames/s (2 packets of 600 bytes a frame, keyframes when asked) from the
/// first endpoint for `hold`, pumping every endpoint; returns the RTP packets the others
/// received.
fn video(eps: &mut [&mut Endpoint], ssrc: u32, pt: u8, hold: Duration) -> u64 {
    let end = Instant::now() + hold;
    let (mut seq, mut ts, mut frame, mut got) = (1u64, 0u32, 0u32, 0u64);
    while Instant::now() < end {
        let publisher = &mut *eps[0];
        let key = frame == 0
            || publisher
                .client
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::KeyframeRequest(_)));
        publisher.client.events.clear();
        for i in 0..2 {
            let mut payload = vec![if i == 0 { 0x10 } else { 0 }, if key { 0 } else { 1 }];
            payload.resize(600, 0x5a);
            publisher
                .client
                .send_rtp(Instant::now(), ssrc, pt, seq, ts, i == 1, &payload);
            seq += 1;
        }
        frame += 1;
        ts = ts.wrapping_add(9000);
        let frame_end = Instant::now() + Duration::from_millis(100);
        while Instant::now() < frame_end {
            pump(eps);
            std::thread::sleep(Duration::from_millis(5));
        }
        for e in eps.iter_mut().skip(1) {
            got += rtp_received(e);
        }
    }
    got
}

fn need_media(got: u64, what: &str) -> Result<(), String> {
    if got == 0 {
        return Err(format!("{what}: no RTP reached the subscriber"));
    }
    Ok(())
}

// ------------------------------------------------------------------ scenarios

struct Ctx {
    addr: SocketAddr,
    auth: Authenticator,
    hold: Duration,
}

impl Ctx {
    fn token(&self, user: &str, room: Option<&str>) -> String {
        self.auth
            .mint(&Grant {
                user_id: user,
                user_name: None,
                room,
                ttl: Duration::from_secs(3600),
            })
            .0
    }
}

/// A mediasoup-dialect request and its response's `data`.
fn request(ws: &mut Ws, id: &mut u64, kind: &str, data: Value) -> Result<Value, String> {
    *id += 1;
    let rid = *id;
    send(
        ws,
        &json!({"type": kind, "requestId": rid, "data": data}).to_string(),
    )?;
    let v = wait_json(ws, |v| v["type"] == "response" && v["requestId"] == rid)?;
    if let Some(e) = v.get("error") {
        return Err(format!("{kind}: {e}"));
    }
    Ok(v["data"].clone())
}

fn open_transport(
    ws: &mut Ws,
    id: &mut u64,
    ep: &mut Endpoint,
    direction: &str,
) -> Result<String, String> {
    let t = request(ws, id, "create-transport", json!({"direction": direction}))?;
    ep.client
        .connect(Instant::now(), &t)
        .map_err(|e| e.to_string())?;
    let tid = t["id"].as_str().ok_or("no transport id")?.to_string();
    let dtls = ep.client.dtls_parameters();
    request(
        ws,
        id,
        "connect-transport",
        json!({"transportId": tid, "dtlsParameters": dtls}),
    )?;
    Ok(tid)
}

fn mediasoup(cx: &Ctx, room: &str, polite: bool) -> Result<(), String> {
    let path = |u: &str| format!("/ws?token={}", cx.token(u, Some(room)));
    let mut pub_ws = ws_open(cx.addr, &path("pub"))?;
    let mut id = 0;
    request(&mut pub_ws, &mut id, "join-room", json!({"roomId": room}))?;
    let mut publisher = Endpoint::new();
    let send_t = open_transport(&mut pub_ws, &mut id, &mut publisher, "send")?;
    let ssrc = 5000 + (id as u32);
    let params = publisher.client.add_sender(&VP8, ssrc, Some(ssrc + 1));
    let producer = request(
        &mut pub_ws,
        &mut id,
        "produce",
        json!({"transportId": send_t, "kind": "video", "rtpParameters": params}),
    )?["id"]
        .as_str()
        .ok_or("no producer id")?
        .to_string();

    let mut sub_ws = ws_open(cx.addr, &path("sub"))?;
    let mut sid = 0;
    request(&mut sub_ws, &mut sid, "join-room", json!({"roomId": room}))?;
    let mut subscriber = Endpoint::new();
    let recv_t = open_transport(&mut sub_ws, &mut sid, &mut subscriber, "recv")?;
    let consumed = request(
        &mut sub_ws,
        &mut sid,
        "consume",
        json!({"transportId": recv_t, "producerId": producer}),
    )?;
    subscriber
        .client
        .add_receiver("video", &consumed["rtpParameters"])
        .map_err(|e| e.to_string())?;
    request(
        &mut sub_ws,
        &mut sid,
        "resume-consumer",
        json!({"consumerId": consumed["id"]}),
    )?;
    wait_connected(&mut [&mut publisher, &mut subscriber])?;
    let got = video(
        &mut [&mut publisher, &mut subscriber],
        ssrc,
        VP8.pt,
        cx.hold,
    );
    drain(&mut pub_ws);
    drain(&mut sub_ws);
    need_media(got, "mediasoup")?;
    if polite {
        request(&mut sub_ws, &mut sid, "leave-room", json!({}))?;
        request(
            &mut pub_ws,
            &mut id,
            "close-producer",
            json!({"producerId": producer}),
        )?;
        request(&mut pub_ws, &mut id, "leave-room", json!({}))?;
        close(sub_ws);
        close(pub_ws);
    }
    // Otherwise the sockets are just dropped: the server must clean up all the same.
    Ok(())
}

/// A sendonly video offer from an SDP-mode client.
fn video_offer(ep: &mut Endpoint) -> (String, SdpPendingOffer, Mid) {
    let mut change = ep.client.rtc.sdp_api();
    let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().expect("an offer");
    (offer.to_sdp_string(), pending, mid)
}

fn accept_answer(ep: &mut Endpoint, pending: SdpPendingOffer, answer: &str) -> Result<(), String> {
    let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| format!("answer: {e}"))?;
    ep.client
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| format!("answer: {e}"))
}

fn tx_ssrc(ep: &mut Endpoint, mid: Mid) -> Result<u32, String> {
    Ok(*ep
        .client
        .rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .ok_or("no send stream")?
        .ssrc())
}

fn pubsub(cx: &Ctx, room: &str) -> Result<(), String> {
    let mut pub_ws = ws_open(cx.addr, "/pubsub")?;
    send(
        &mut pub_ws,
        &json!({"type": "auth", "token": cx.token("pub", Some(room))}).to_string(),
    )?;
    wait_json(&mut pub_ws, |v| v["type"] == "auth-ok")?;
    let mut publisher = Endpoint::new();
    let (offer, pending, mid) = video_offer(&mut publisher);
    send(
        &mut pub_ws,
        &json!({"type": "publish-offer", "roomName": room, "offer": offer}).to_string(),
    )?;
    let answer = wait_json(&mut pub_ws, |v| {
        v["type"] == "publish-answer" || v["type"] == "error"
    })?;
    if answer["type"] == "error" {
        return Err(format!("publish-offer: {answer}"));
    }
    accept_answer(
        &mut publisher,
        pending,
        answer["answer"].as_str().unwrap_or(""),
    )?;
    let publisher_id = answer["publisherId"].clone();

    let mut sub_ws = ws_open(
        cx.addr,
        &format!("/pubsub?token={}", cx.token("sub", Some(room))),
    )?;
    send(
        &mut sub_ws,
        &json!({"type": "subscribe-request", "roomName": room, "publisherId": publisher_id})
            .to_string(),
    )?;
    let offer = wait_json(&mut sub_ws, |v| {
        v["type"] == "subscribe-offer" || v["type"] == "error"
    })?;
    if offer["type"] == "error" {
        return Err(format!("subscribe-request: {offer}"));
    }
    let mut subscriber = Endpoint::new();
    let sdp = SdpOffer::from_sdp_string(offer["offer"].as_str().unwrap_or(""))
        .map_err(|e| format!("subscribe offer: {e}"))?;
    let answer = subscriber
        .client
        .rtc
        .sdp_api()
        .accept_offer(sdp)
        .map_err(|e| format!("subscribe offer: {e}"))?;
    send(
        &mut sub_ws,
        &json!({"type": "subscribe-answer", "roomName": room, "publisherId": publisher_id,
                "answer": answer.to_sdp_string()})
        .to_string(),
    )?;
    wait_connected(&mut [&mut publisher, &mut subscriber])?;
    let ssrc = tx_ssrc(&mut publisher, mid)?;
    let got = video(&mut [&mut publisher, &mut subscriber], ssrc, 96, cx.hold);
    let errors: Vec<String> = drain(&mut pub_ws)
        .into_iter()
        .chain(drain(&mut sub_ws))
        .filter(|t| t.contains("\"error\""))
        .collect();
    if let Some(e) = errors.first() {
        return Err(format!("pubsub: {e}"));
    }
    need_media(got, "pubsub")?;
    close(sub_ws);
    close(pub_ws);
    Ok(())
}

fn post_sdp(cx: &Ctx, path: &str, token: &str, sdp: &str) -> Result<(String, String), String> {
    let auth = format!("Bearer {token}");
    let r = http(
        cx.addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/sdp"),
        ],
        sdp.as_bytes(),
    )?;
    if r.status != 201 {
        return Err(format!("POST {path}: {} {}", r.status, r.body));
    }
    let location = r.location.ok_or("no Location")?;
    Ok((location, r.body))
}

fn whip(cx: &Ctx, room: &str) -> Result<(), String> {
    let t = cx.token("pub", Some(room));
    let mut publisher = Endpoint::new();
    let (offer, pending, mid) = video_offer(&mut publisher);
    let (pub_res, answer) = post_sdp(cx, &format!("/whip/{room}"), &t, &offer)?;
    accept_answer(&mut publisher, pending, &answer)?;

    let v = cx.token("view", Some(room));
    let mut viewer = Endpoint::new();
    let mut change = viewer.client.rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().expect("an offer");
    let (view_res, answer) = post_sdp(cx, &format!("/whep/{room}"), &v, &offer.to_sdp_string())?;
    accept_answer(&mut viewer, pending, &answer)?;
    wait_connected(&mut [&mut publisher, &mut viewer])?;
    let ssrc = tx_ssrc(&mut publisher, mid)?;
    let got = video(&mut [&mut publisher, &mut viewer], ssrc, 96, cx.hold);
    for (res, token) in [(view_res, v), (pub_res, t)] {
        let auth = format!("Bearer {token}");
        let r = http(cx.addr, "DELETE", &res, &[("Authorization", &auth)], b"")?;
        if r.status != 200 {
            return Err(format!("DELETE {res}: {} {}", r.status, r.body));
        }
    }
    need_media(got, "whip/whep")
}

fn connect(cx: &Ctx, room: &str) -> Result<(), String> {
    let mut eps = Vec::new();
    for user in ["a", "b"] {
        let mut ep = Endpoint::new();
        let mut change = ep.client.rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");
        let mut ws = ws_open(
            cx.addr,
            &format!("/connect?token={}", cx.token(user, Some(room))),
        )?;
        send(&mut ws, &offer.to_sdp_string())?;
        let answer = next_text(&mut ws, Instant::now() + STEP)?;
        if !answer.starts_with("v=0") {
            return Err(format!("/connect: {answer}"));
        }
        accept_answer(&mut ep, pending, &answer)?;
        // The raw form: the server closes the socket after the answer.
        close(ws);
        let ssrc = tx_ssrc(&mut ep, mid)?;
        eps.push((ep, ssrc));
    }
    let (mut a, sa) = eps.remove(0);
    let (mut b, sb) = eps.remove(0);
    wait_connected(&mut [&mut a, &mut b])?;
    let end = Instant::now() + cx.hold;
    let (mut seq, mut got) = (1u64, 0u64);
    while Instant::now() < end {
        for (ep, ssrc) in [(&mut a, sa), (&mut b, sb)] {
            ep.client.send_audio(
                Instant::now(),
                ssrc,
                seq,
                seq as u32 * 960,
                -20,
                &[0xfc; 60],
            );
        }
        seq += 1;
        let tick = Instant::now() + Duration::from_millis(20);
        while Instant::now() < tick {
            pump(&mut [&mut a, &mut b]);
            std::thread::sleep(Duration::from_millis(5));
        }
        got += rtp_received(&mut a) + rtp_received(&mut b);
    }
    // The clients go quiet now; the server releases their media when consent expires.
    need_media(got, "/connect")
}

fn relay_packet(event: &str, user: &str, room: &str, payload: &str) -> String {
    json!({"Header": {"Event": event, "UserId": user, "RoomId": room}, "Payload": payload})
        .to_string()
}

/// Two relay members broadcast `count` packets each; each must hear the other's.
fn relay(cx: &Ctx, room: &str, path: impl Fn(&str) -> String, framed: bool) -> Result<(), String> {
    let wrap = |t: String| {
        if framed {
            serde_json::to_string(&[t]).expect("strings")
        } else {
            t
        }
    };
    let mut members = Vec::new();
    for user in ["a", "b"] {
        let mut ws = ws_open(cx.addr, &path(user))?;
        if framed {
            let open = next_text(&mut ws, Instant::now() + STEP)?;
            if open != "o" {
                return Err(format!("SockJS open frame: {open:?}"));
            }
        }
        send(&mut ws, &wrap(relay_packet("connect", user, room, "")))?;
        // Every member, the new one included, gets the connect packet: once it came, this
        // member is in the room and hears every broadcast from now on.
        let deadline = Instant::now() + STEP;
        while !next_text(&mut ws, deadline)?.contains("connect") {}
        members.push(ws);
    }
    // Up to 20 broadcasts each, spread over the hold time; each member must hear every one
    // the other sent.
    let most = 20u32;
    let end = Instant::now() + cx.hold;
    let mut heard = [0usize; 2];
    let mut sent = 0usize;
    for i in 0..most {
        for (m, user) in members.iter_mut().zip(["a", "b"]) {
            send(
                m,
                &wrap(relay_packet("broadcast", user, room, &format!("hello {i}"))),
            )?;
        }
        sent += 1;
        for (m, h) in members.iter_mut().zip(heard.iter_mut()) {
            *h += drain(m)
                .iter()
                .map(|t| t.matches("hello").count())
                .sum::<usize>();
        }
        if Instant::now() > end {
            break;
        }
        std::thread::sleep(cx.hold.min(Duration::from_secs(2)) / most);
    }
    let deadline = Instant::now() + STEP;
    while heard.iter().any(|h| *h < sent) && Instant::now() < deadline {
        for (m, h) in members.iter_mut().zip(heard.iter_mut()) {
            *h += drain(m)
                .iter()
                .map(|t| t.matches("hello").count())
                .sum::<usize>();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if heard.iter().any(|h| *h != sent) {
        return Err(format!("relay: heard {heard:?} of {sent} broadcasts each"));
    }
    for (mut m, user) in members.into_iter().zip(["a", "b"]) {
        send(&mut m, &wrap(relay_packet("disconnect", user, room, "")))?;
        close(m);
    }
    Ok(())
}

fn scenario(cx: &Ctx, kind: &str, room: &str, iteration: u64) -> Result<(), String> {
    match kind {
        "mediasoup" => mediasoup(cx, room, iteration.is_multiple_of(2)),
        "pubsub" => pubsub(cx, room),
        "whip" => whip(cx, room),
        "connect" => connect(cx, room),
        "p2p" => relay(
            cx,
            room,
            |u| format!("/p2p/soak?token={}", cx.token(u, None)),
            false,
        ),
        _ => relay(
            cx,
            room,
            |u| {
                format!(
                    "/sockjs/soak/000/{room}-{u}/websocket?token={}",
                    cx.token(u, None)
                )
            },
            true,
        ),
    }
}

#[derive(Default)]
struct Tally {
    done: u64,
    failed: u64,
    last_error: Option<String>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    live: AtomicUsize,
    done: AtomicU64,
    failed: AtomicU64,
    by_kind: Mutex<BTreeMap<&'static str, Tally>>,
}

fn worker(cx: Arc<Ctx>, shared: Arc<Shared>, slot: usize, end: Instant, phase: &str) {
    let mut iteration = 0u64;
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < end {
        let kind = KINDS[(slot + iteration as usize) % KINDS.len()];
        let room = format!("{phase}-{kind}-{slot}-{iteration}");
        shared.live.fetch_add(1, Ordering::Relaxed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario(&cx, kind, &room, iteration)
        }))
        .unwrap_or_else(|_| Err("the scenario panicked".into()));
        shared.live.fetch_sub(1, Ordering::Relaxed);
        let mut tally = shared.by_kind.lock().expect("tally");
        let t = tally.entry(kind).or_default();
        match result {
            Ok(()) => {
                t.done += 1;
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                t.failed += 1;
                t.last_error = Some(e);
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(tally);
        iteration += 1;
    }
}

fn main() {
    let o = opts();
    // The server: one given, or the release build started here.
    let (addr, pid, server) = match &o.url {
        Some(url) => (parse_url(url), o.pid, None),
        None => {
            let binary = server_binary();
            if !binary.exists() {
                usage(&format!(
                    "{} not found: build the server first (cargo build --release)",
                    binary.display()
                ));
            }
            let server = Server::builder()
                .binary(binary)
                .shards(o.shards)
                .args(["--log-level", "warn"])
                .args(&o.server_args)
                .env("JWT_SECRET", &o.secret)
                .stderr(Capture::Inherit)
                .spawn();
            let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
            let pid = server.child.id();
            (addr, Some(pid), Some(server))
        }
    };
    let cx = Arc::new(Ctx {
        addr,
        auth: Authenticator::new(o.secret.as_bytes()),
        hold: o.hold,
    });
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let sample = |shared: &Shared| Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_bytes: pid.and_then(rss),
        fds: pid.and_then(fds),
        metrics: metrics(addr),
        live_sessions: shared.live.load(Ordering::Relaxed),
        done: shared.done.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
    };

    // A warm-up round of every scenario first, so that the baseline is the server with its
    // buffers and caches in use, not one that never served a session.
    // A warm-up churn at full concurrency first, so that the baseline is the server with
    // its buffers, caches and allocator arenas at their working size, not one that never
    // served a session: what the end is compared with is growth over time.
    let warmup = Arc::new(Shared::default());
    let warm_end = Instant::now() + o.warmup;
    let warm: Vec<_> = (0..o.sessions)
        .map(|slot| {
            let (cx, shared) = (cx.clone(), warmup.clone());
            std::thread::spawn(move || worker(cx, shared, slot, warm_end, "warmup"))
        })
        .collect();
    for w in warm {
        let _ = w.join();
    }
    eprintln!(
        "soak: warm-up done ({} scenarios, {} failed)",
        warmup.done.load(Ordering::Relaxed),
        warmup.failed.load(Ordering::Relaxed)
    );
    settle_until_idle(addr, o.settle);
    let start = sample(&shared);
    println!("{}", start.line("start"));

    let end = Instant::now() + o.run;
    let workers: Vec<_> = (0..o.sessions)
        .map(|slot| {
            let (cx, shared) = (cx.clone(), shared.clone());
            std::thread::spawn(move || worker(cx, shared, slot, end, "soak"))
        })
        .collect();
    let mut samples = vec![start.clone()];
    let mut next = Instant::now() + o.every;
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        );
        if Instant::now() >= next {
            let s = sample(&shared);
            println!("{}", s.line("during"));
            samples.push(s);
            next += o.every;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let churn_ended = sample(&shared);
    println!("{}", churn_ended.line("churn-ended"));
    samples.push(churn_ended);
    settle_until_idle(addr, o.settle);
    let end_sample = sample(&shared);
    println!("{}", end_sample.line("end"));
    samples.push(end_sample.clone());

    // The verdict.
    let mut problems = Vec::new();
    if let (Some(a), Some(b)) = (start.rss_bytes, end_sample.rss_bytes) {
        if b as f64 > a as f64 * (1.0 + o.rss_slack) {
            problems.push(format!(
                "RSS {:.1} MB at the end, over {:.1} MB at the start by more than {:.0} %",
                b as f64 / 1e6,
                a as f64 / 1e6,
                o.rss_slack * 100.0
            ));
        }
    }
    if let (Some(a), Some(b)) = (start.fds, end_sample.fds) {
        if b > a {
            problems.push(format!("{b} open fds at the end, {a} at the start"));
        }
    }
    for name in &GAUGES[..4] {
        let (a, b) = (start.metrics.get(name), end_sample.metrics.get(name));
        match (a, b) {
            (Some(a), Some(b)) if b > a => {
                problems.push(format!("{name} {b} at the end, {a} at the start"))
            }
            (_, None) => problems.push(format!("{name}: no figure from /metrics at the end")),
            _ => {}
        }
    }
    if shared.done.load(Ordering::Relaxed) == 0 {
        problems.push("no scenario succeeded".into());
    }
    let by_kind: serde_json::Map<String, Value> = shared
        .by_kind
        .lock()
        .expect("tally")
        .iter()
        .map(|(k, t)| {
            (
                k.to_string(),
                json!({"done": t.done, "failed": t.failed, "last_error": t.last_error}),
            )
        })
        .collect();
    let report = json!({
        "bench": "soak",
        "server": o.url.clone().unwrap_or_else(|| format!("release build, {} shards", o.shards)),
        "minutes": o.run.as_secs_f64() / 60.0,
        "sessions": o.sessions,
        "hold_s": o.hold.as_secs_f64(),
        "settle_s": o.settle.as_secs_f64(),
        "warmup_s": o.warmup.as_secs_f64(),
        "warmup_scenarios": {"done": warmup.done.load(Ordering::Relaxed), "failed": warmup.failed.load(Ordering::Relaxed)},
        "rss_slack": o.rss_slack,
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "scenarios": by_kind,
        "problems": problems,
        "pass": problems.is_empty(),
    });
    if let Some(dir) = o.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &o.json,
        serde_json::to_string_pretty(&report).expect("json"),
    ) {
        Ok(()) => eprintln!("soak: report in {}", o.json.display()),
        Err(e) => eprintln!("soak: cannot write {}: {e}", o.json.display()),
    }
    let rss_change = match (start.rss_bytes, end_sample.rss_bytes) {
        (Some(a), Some(b)) if a > 0 => format!("{:+.1}%", (b as f64 / a as f64 - 1.0) * 100.0),
        _ => "-".into(),
    };
    println!(
        "soak {}: {:.1} min, {} sessions, {} scenarios done, {} failed, RSS {} -> {} ({rss_change}), \
         fds {} -> {}, transports {} -> {}",
        if problems.is_empty() { "PASS" } else { "FAIL" },
        o.run.as_secs_f64() / 60.0,
        o.sessions,
        shared.done.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        start.rss_bytes.map_or("-".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
        end_sample.rss_bytes.map_or("-".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
        start.fds.map_or("-".into(), |f| f.to_string()),
        end_sample.fds.map_or("-".into(), |f| f.to_string()),
        start.metrics.get("corelay_transports").map_or("-".into(), |v| v.to_string()),
        end_sample.metrics.get("corelay_transports").map_or("-".into(), |v| v.to_string()),
    );
    for p in &problems {
        println!("soak problem: {p}");
    }
    // Stops the server (exit skips destructors).
    drop(server);
    if !problems.is_empty() {
        std::process::exit(1);
    }
}

/// Waits until the server holds no transport, producer, consumer or room (or `limit`
/// passed): what clients left behind is released by its own timers (ICE consent).
fn settle_until_idle(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let m = metrics(addr);
        let idle = GAUGES[..4].iter().all(|g| m.get(g) == Some(&0));
        if idle || Instant::now() >= deadline {
            // A little longer, for memory the allocator gives back lazily.
            std::thread::sleep(Duration::from_secs(2).min(limit));
            return idle;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
