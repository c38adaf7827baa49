//! End-to-end capacity of one shard: the server on 1 shard pinned to one core, corelay-load
//! on another, one room with one 1 Mbit/s video + audio publisher and a growing number of
//! subscribers. Each step records server CPU (from /proc), forwarded packets (from
//! /metrics), loss (from the load tool), p99 forward latency (from /latency) and RSS.
//!
//! The load tool's own CPU is measured over the same window: a step where it used more
//! than [`LOAD_SATURATED`] of its core is marked invalid (the knee would be the tool's,
//! not the server's).
//!
//! Run from the repository root: `cargo run --release -p corelay-bench --bin capacity`
//! (`-- --steps 25,50,100 --seconds 10 --server-core 0 --load-core 1`; `--bin-dir DIR`
//! takes `corelay` and `corelay-load` from DIR instead of building them, to compare two
//! builds; `--label NAME` names the result files; `--all` runs every step even after one
//! failed). Writes `bench/results/capacity-<label or unix time>.json` and `.svg`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corelay_testkit::{Capture, Server};
use serde_json::{json, Value};

const SECRET: &str = "capacity-benchmark-secret-0123456789";

/// Share of one core above which the load tool, not the server, limits a step.
const LOAD_SATURATED: f64 = 0.9;

struct Args {
    steps: Vec<u32>,
    seconds: u64,
    server_core: usize,
    load_core: usize,
    bin_dir: Option<PathBuf>,
    label: Option<String>,
    all: bool,
}

fn args() -> Args {
    let all: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        all.iter()
            .position(|a| a == name)
            .and_then(|i| all.get(i + 1))
            .cloned()
    };
    Args {
        steps: get("--steps")
            .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![25, 50, 100, 200, 400, 800, 1200, 1600]),
        seconds: get("--seconds").and_then(|s| s.parse().ok()).unwrap_or(10),
        server_core: get("--server-core")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        load_core: get("--load-core").and_then(|s| s.parse().ok()).unwrap_or(1),
        bin_dir: get("--bin-dir").map(PathBuf::from),
        label: get("--label"),
        all: all.iter().any(|a| a == "--all"),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/release/ as cargo built this benchmark (CARGO_TARGET_DIR respected): the server
/// and the load tool are built next to it.
fn own_bin_dir() -> PathBuf {
    std::env::current_exe()
        .expect("this benchmark's path")
        .parent()
        .expect("a directory")
        .to_path_buf()
}

fn http_get(port: u16, path: &str) -> String {
    http_get_with(port, path, "")
}

/// A GET with extra header lines (each ending in CRLF).
fn http_get_with(port: u16, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("server reachable");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

/// (user + system CPU seconds, RSS bytes) of a process.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss_kb * 1024)
}

fn forwarded(port: u16) -> u64 {
    http_get(port, "/metrics")
        .lines()
        .filter(|l| l.starts_with("corelay_rtp_packets_forwarded_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The admin token the benchmark's server runs with: `/latency?reset=true` needs it.
const ADMIN_TOKEN: &str = "capacity-bench-admin-token";

/// corelay on 1 shard pinned to `core` (`taskset -c`), logging warnings only; its stderr
/// is this process's. Every client of the run comes from one loopback address: the
/// per-address connection cap and session rates are off.
fn start_server(bins: &Path, core: usize) -> Server {
    Server::builder()
        .binary(bins.join("corelay"))
        .shards(1)
        .taskset(core)
        .args(["--log-level", "warn"])
        // As environment (not flags) so that builds older than these settings run too.
        .env("CORELAY_CONNECTIONS_PER_IP", "0")
        .env("CORELAY_SESSIONS_PER_IP_PER_S", "0")
        .env("JWT_SECRET", SECRET)
        .env("CORELAY_ADMIN_TOKEN", ADMIN_TOKEN)
        .stderr(Capture::Inherit)
        .spawn()
}

#[derive(Clone)]
struct Step {
    subscribers: u32,
    cpu_seconds: f64,
    forwarded: u64,
    loss_percent: f64,
    /// Tracks the load tool expected and received (a missing track is worse than loss).
    tracks_expected: u64,
    tracks_received: u64,
    /// One-way latency publisher -> subscriber p99, from the load tool (same host).
    p99_end_to_end_us: u64,
    p99_forward_us: u64,
    rss_bytes: u64,
    /// RSS of the server before the load tool connected.
    rss_idle_bytes: u64,
    /// CPU seconds the load tool used in the window.
    load_cpu_seconds: f64,
    seconds: f64,
}

impl Step {
    /// Every track delivered with little loss.
    fn delivered(&self) -> bool {
        self.tracks_expected > 0
            && self.tracks_received == self.tracks_expected
            && self.loss_percent <= 1.0
    }

    /// The load tool used (nearly) all of its core: the step measures the tool.
    fn invalid(&self) -> bool {
        self.load_cpu_seconds / self.seconds > LOAD_SATURATED
    }

    /// Loss under 0.5 %, every track, p99 forward latency under 5 ms, measured validly.
    fn good(&self) -> bool {
        !self.invalid()
            && self.delivered()
            && self.loss_percent < 0.5
            && self.p99_forward_us < 5_000
    }

    fn rss_per_subscriber(&self) -> f64 {
        self.rss_bytes.saturating_sub(self.rss_idle_bytes) as f64 / self.subscribers.max(1) as f64
    }

    fn cpu_us_per_packet(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.forwarded.max(1) as f64
    }
    fn packets_per_second(&self) -> f64 {
        self.forwarded as f64 / self.seconds
    }
    fn json(&self) -> Value {
        json!({
            "subscribers": self.subscribers,
            "serverCpuSeconds": self.cpu_seconds,
            "forwardedPackets": self.forwarded,
            "forwardedPerSecond": self.packets_per_second(),
            "cpuMicrosPerForwardedPacket": self.cpu_us_per_packet(),
            "lossPercent": self.loss_percent,
            "tracksExpected": self.tracks_expected,
            "tracksReceived": self.tracks_received,
            "p99EndToEndLatencyUs": self.p99_end_to_end_us,
            "p99ForwardLatencyUs": self.p99_forward_us,
            "serverRssBytes": self.rss_bytes,
            "serverIdleRssBytes": self.rss_idle_bytes,
            "rssBytesPerSubscriber": self.rss_per_subscriber(),
            "loadToolCpuSeconds": self.load_cpu_seconds,
            "loadToolCoreShare": self.load_cpu_seconds / self.seconds,
            "invalid": self.invalid(),
        })
    }
}

fn run_step(a: &Args, bins: &Path, subscribers: u32, results: &Path) -> Step {
    let server = start_server(bins, a.server_core);
    let pid = server.child.id();
    let (_, rss_idle) = proc_usage(pid);
    let json_path = results.join(format!("load-{subscribers}.json"));
    let load_bin = bins.join("corelay-load");
    let mut load = Command::new("taskset")
        .args(["-c", &a.load_core.to_string()])
        .arg(&load_bin)
        .args([
            "--url",
            &format!("http://127.0.0.1:{}", server.port),
            "--secret",
            SECRET,
        ])
        .args([
            "--rooms",
            "1",
            "--video-publishers",
            "1",
            "--audio-publishers",
            "1",
        ])
        .args(["--subscribers", &subscribers.to_string()])
        .args(["--duration", &format!("{}s", a.seconds)])
        .args(["--ramp", "200", "--threads", "1"])
        .arg("--json")
        .arg(&json_path)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("corelay-load");
    let load_pid = load.id();
    // Measure the middle of the run, after everyone joined.
    let ramp = Duration::from_millis(subscribers as u64 * 5 + 1500);
    std::thread::sleep(ramp);
    let _ = http_get_with(
        server.port,
        "/latency?reset=true",
        &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
    );
    let (cpu0, _) = proc_usage(pid);
    let (load_cpu0, _) = proc_usage(load_pid);
    let fwd0 = forwarded(server.port);
    let t0 = Instant::now();
    let window = Duration::from_secs(a.seconds).saturating_sub(ramp + Duration::from_secs(1));
    std::thread::sleep(window.max(Duration::from_secs(2)));
    let (cpu1, rss) = proc_usage(pid);
    let (load_cpu1, _) = proc_usage(load_pid);
    let fwd1 = forwarded(server.port);
    let seconds = t0.elapsed().as_secs_f64();
    let latency: Value =
        serde_json::from_str(&http_get(server.port, "/latency")).unwrap_or(Value::Null);
    let _ = load.wait();
    let report: Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Step {
        subscribers,
        cpu_seconds: cpu1 - cpu0,
        forwarded: fwd1 - fwd0,
        loss_percent: report["totals"]["lossPercent"].as_f64().unwrap_or(100.0),
        tracks_expected: report["totals"]["tracksExpected"].as_u64().unwrap_or(0),
        tracks_received: report["totals"]["tracksReceived"].as_u64().unwrap_or(0),
        p99_end_to_end_us: report["totals"]["latencyUs"]["p99"].as_u64().unwrap_or(0),
        p99_forward_us: latency["merged"]["forwardUs"]["p99"].as_u64().unwrap_or(0),
        rss_bytes: rss,
        rss_idle_bytes: rss_idle,
        load_cpu_seconds: load_cpu1 - load_cpu0,
        seconds,
    }
}

/// A small SVG: CPU per packet (left axis) and p99 latency (right axis) against subscribers.
fn plot(steps: &[Step]) -> String {
    let (w, h, m) = (720.0, 400.0, 60.0);
    let xs: Vec<f64> = steps
        .iter()
        .map(|s| (s.subscribers as f64).log2())
        .collect();
    let (xmin, xmax) = (xs[0], xs[xs.len() - 1].max(xs[0] + 1.0));
    let cpu: Vec<f64> = steps.iter().map(Step::cpu_us_per_packet).collect();
    let p99: Vec<f64> = steps.iter().map(|s| s.p99_forward_us as f64).collect();
    let cmax = cpu.iter().cloned().fold(1.0, f64::max) * 1.2;
    let lmax = p99.iter().cloned().fold(1.0, f64::max) * 1.2;
    let px = |x: f64| m + (x - xmin) / (xmax - xmin) * (w - 2.0 * m);
    let py = |y: f64, max: f64| h - m - y / max * (h - 2.0 * m);
    let line = |ys: &[f64], max: f64, color: &str| {
        let pts: Vec<String> = xs
            .iter()
            .zip(ys)
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y, max)))
            .collect();
        let dots: String = xs
            .iter()
            .zip(ys)
            .map(|(x, y)| {
                format!(
                    "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{color}'/>",
                    px(*x),
                    py(*y, max)
                )
            })
            .collect();
        format!(
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>{dots}",
            pts.join(" ")
        )
    };
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/>\
         <text x='{}' y='20' text-anchor='middle' font-size='14'>corelay capacity, 1 shard: CPU per forwarded packet and p99 forward latency</text>\
         <line x1='{m}' y1='{}' x2='{}' y2='{}' stroke='black'/>\
         <line x1='{m}' y1='{m}' x2='{m}' y2='{}' stroke='black'/>\
         <line x1='{}' y1='{m}' x2='{}' y2='{}' stroke='black'/>\
         <text x='15' y='{}' transform='rotate(-90 15 {})' text-anchor='middle' fill='#1f77b4'>server CPU us per forwarded packet (max {:.2})</text>\
         <text x='{}' y='{}' transform='rotate(90 {} {})' text-anchor='middle' fill='#d62728'>p99 forward latency us (max {:.0})</text>\
         <text x='{}' y='{}' text-anchor='middle'>subscribers (log scale)</text>",
        w / 2.0, h - m, w - m, h - m, h - m, w - m, w - m, h - m,
        h / 2.0, h / 2.0, cmax / 1.2, w - 15.0, h / 2.0, w - 15.0, h / 2.0, lmax / 1.2,
        w / 2.0, h - 15.0,
    );
    for (x, s) in xs.iter().zip(steps) {
        svg += &format!(
            "<text x='{:.1}' y='{}' text-anchor='middle'>{}</text>",
            px(*x),
            h - m + 16.0,
            s.subscribers
        );
    }
    svg += &line(&cpu, cmax, "#1f77b4");
    svg += &line(&p99, lmax, "#d62728");
    svg += "</svg>\n";
    svg
}

fn main() {
    let a = args();
    let bins = match &a.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            let status = Command::new("cargo")
                .current_dir(root())
                .args(["build", "--release", "-p", "corelay", "-p", "corelay-load"])
                .status()
                .expect("cargo");
            assert!(status.success(), "release build failed");
            own_bin_dir()
        }
    };
    let results = root().join("bench/results");
    std::fs::create_dir_all(&results).unwrap();
    let mut steps = Vec::new();
    println!(
        "{:>11} {:>10} {:>12} {:>14} {:>8} {:>11} {:>10} {:>12} {:>10} {:>10} {:>9}",
        "subscribers",
        "cpu s",
        "forwarded/s",
        "cpu us/packet",
        "loss %",
        "tracks",
        "p99 fwd us",
        "p99 e2e us",
        "RSS MiB",
        "KiB/sub",
        "load cpu"
    );
    for &n in &a.steps {
        let s = run_step(&a, &bins, n, &results);
        println!(
            "{:>11} {:>10.2} {:>12.0} {:>14.2} {:>8.2} {:>11} {:>10} {:>12} {:>10.1} {:>10.0} {:>8.0}%{}",
            s.subscribers,
            s.cpu_seconds,
            s.packets_per_second(),
            s.cpu_us_per_packet(),
            s.loss_percent,
            format!("{}/{}", s.tracks_received, s.tracks_expected),
            s.p99_forward_us,
            s.p99_end_to_end_us,
            s.rss_bytes as f64 / (1 << 20) as f64,
            s.rss_per_subscriber() / 1024.0,
            100.0 * s.load_cpu_seconds / s.seconds,
            if s.invalid() { " invalid: load tool saturated" } else { "" }
        );
        let stop = !a.all && (!s.delivered() || s.invalid());
        steps.push(s);
        if stop {
            break;
        }
    }
    let knee = steps.iter().rfind(|s| s.good()).or(steps.first());
    let rss_per_sub = steps
        .iter()
        .filter(|s| !s.invalid())
        .map(Step::rss_per_subscriber)
        .fold(0.0, f64::max);
    let stamp = a.label.clone().unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string()
    });
    let report = json!({
        "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
        "largestGoodStep": knee.map(|s| s.subscribers),
        "cpuMicrosPerForwardedPacketAtKnee": knee.map(Step::cpu_us_per_packet),
        "forwardedPerSecondPerCoreAtKnee": knee.map(|s| s.packets_per_second() / (s.cpu_seconds / s.seconds).max(1e-9)),
        "rssBytesPerSubscriber": rss_per_sub,
        "criteria": "largest valid step (load tool below 90% of its core) with every track delivered, loss < 0.5% and p99 forward latency < 5 ms",
    });
    let json_path = results.join(format!("capacity-{stamp}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let svg_path = results.join(format!("capacity-{stamp}.svg"));
    std::fs::write(&svg_path, plot(&steps)).unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!("wrote {} and {}", json_path.display(), svg_path.display());
}
