//! corelay-load against the real server binary on loopback.
//!
//! The server is started with `corelay_testkit::Server::builder()`: its binary is
//! `target/<profile>/corelay` next to this test's own binary (built by
//! `cargo test --workspace`; with `cargo test -p corelay-load` alone, build it first with
//! `cargo build -p corelay --bin corelay`). `CORELAY_BIN` overrides the path. Tests run one
//! at a time (a lock) so that their timing figures do not disturb each other on small
//! machines.

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use corelay_testkit::{free_port, http, Server, SECRET};
use serde_json::Value;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running corelay on 2 shards, logging warnings only (killed when dropped).
fn start(extra: &[&str]) -> Server {
    Server::builder()
        .shards(2)
        .args(extra)
        .env("RUST_LOG", "warn")
        .health_timeout(Duration::from_secs(15))
        .spawn()
}

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
    json: Value,
}

/// Runs corelay-load against `server` with `args` (plus --url, --secret, --json).
fn load(server: &Server, args: &[&str]) -> Run {
    let dir = std::env::temp_dir().join(format!("corelay-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join(format!("{}.json", free_port()));
    let started = Instant::now();
    let out: Output = Command::new(env!("CARGO_BIN_EXE_corelay-load"))
        .args(["--url", &server.url(), "--secret", SECRET, "--threads", "2"])
        .arg("--json")
        .arg(&json_path)
        .args(args)
        .env_remove("JWT_SECRET")
        .output()
        .expect("corelay-load runs");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "corelay-load took {:?}",
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = std::fs::read_to_string(&json_path)
        .map(|t| serde_json::from_str(&t).expect("valid JSON"))
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_file(&json_path);
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout,
        stderr,
        json,
    }
}

fn u(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

fn f(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// Every figure the README documents, in totals and in each room.
fn assert_documented_fields(json: &Value) {
    let common = [
        "packetsSent",
        "packetsReceived",
        "packetsExpected",
        "packetsLost",
        "lossPercent",
        "tracksExpected",
        "tracksReceived",
        "bitrateSentBps",
        "bitrateReceivedBps",
        "latencyUs.p50",
        "latencyUs.p90",
        "latencyUs.p99",
        "latencyUs.max",
        "joinMs.p50",
        "joinMs.p99",
    ];
    let rooms = json["rooms"].as_array().expect("rooms[]");
    assert!(!rooms.is_empty());
    for scope in std::iter::once(&json["totals"]).chain(rooms) {
        for key in common {
            f(scope, key);
        }
        assert!(scope["errors"].is_object(), "errors in {scope:#}");
        assert!(scope["latencyUs"]["histogram"].is_string());
        assert!(scope["joinMs"]["histogram"].is_string());
    }
    for r in rooms {
        assert!(r["room"].is_string());
    }
}

fn context(run: &Run) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}\n--- json\n{:#}",
        run.status, run.stdout, run.stderr, run.json["totals"]
    )
}

/// Packets one publisher pair (1 Mbit/s VP8 at 30 fps = 4 packets/frame, Opus 50/s)
/// sends in `secs`.
fn pair_packets(secs: f64) -> f64 {
    (30.0 * 4.0 + 50.0) * secs
}

#[test]
fn five_subscribers_get_every_packet_and_the_json_has_every_field() {
    let _serial = serial();
    let server = start(&[]);
    let run = load(
        &server,
        &[
            "--video-publishers",
            "1",
            "--audio-publishers",
            "1",
            "--subscribers",
            "5",
            "--duration",
            "4s",
            "--max-loss",
            "0",
        ],
    );
    let ctx = context(&run);
    assert_eq!(run.status, 0, "{ctx}");
    let t = &run.json["totals"];
    assert_documented_fields(&run.json);
    assert_eq!(u(t, "tracksExpected"), 10, "{ctx}");
    assert_eq!(u(t, "tracksReceived"), 10, "{ctx}");
    assert_eq!(u(t, "packetsLost"), 0, "{ctx}");
    assert_eq!(f(t, "lossPercent"), 0.0, "{ctx}");
    assert_eq!(t["errors"], serde_json::json!({}), "{ctx}");
    // Publishers send for the 4 s less their own join (well under half a second).
    let sent = u(t, "packetsSent") as f64;
    let nominal = pair_packets(4.0);
    assert!(
        sent <= nominal * 1.01 && sent >= nominal * 0.88,
        "sent {sent}, nominal {nominal}\n{ctx}"
    );
    // Each subscriber gets (nearly) all of it: it starts within the first moments.
    let received = u(t, "packetsReceived") as f64;
    assert!(
        received <= 5.0 * sent && received >= 5.0 * sent * 0.9,
        "received {received} of 5 x {sent}\n{ctx}"
    );
    assert_eq!(u(t, "packetsExpected"), u(t, "packetsReceived"), "{ctx}");
    assert!(
        u(t, "latencyUs.p50") > 0 && u(t, "latencyUs.max") < 1_000_000,
        "{ctx}"
    );
    assert!(u(t, "joinMs.p99") < 3000, "{ctx}");
    assert_eq!(run.json["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(run.json["rooms"][0]["packetsSent"], t["packetsSent"]);
    assert_eq!(run.json["exitStatus"], 0);
    // The table: a row per room and the total.
    assert!(run.stdout.contains("TOTAL"), "{ctx}");
    assert!(run.stdout.contains("errors: none"), "{ctx}");
    // One progress line per second.
    assert!(run.stderr.matches("peers ").count() >= 3, "{ctx}");
}

#[test]
fn late_subscribers_get_every_track_from_the_join_answer() {
    let _serial = serial();
    let server = start(&[]);
    // 4 joins/s, publishers first: the 3 subscribers join at 0.5, 0.75 and 1 s, when both
    // producers already exist.
    let run = load(
        &server,
        &[
            "--subscribers",
            "3",
            "--ramp",
            "4",
            "--duration",
            "4s",
            "--max-loss",
            "0",
        ],
    );
    let ctx = context(&run);
    assert_eq!(run.status, 0, "{ctx}");
    let t = &run.json["totals"];
    assert_eq!(u(t, "tracksReceived"), 6, "{ctx}");
    assert_eq!(u(t, "packetsLost"), 0, "{ctx}");
    // Subscribers miss what was sent before they joined, no more.
    let sent = u(t, "packetsSent") as f64;
    let received = u(t, "packetsReceived") as f64;
    let late = pair_packets(0.5 + 0.75 + 1.0);
    assert!(
        received <= 3.0 * sent - late * 0.8 && received >= 3.0 * sent - late * 1.3,
        "received {received}, sent {sent}, missed by joining late about {late}\n{ctx}"
    );
}

#[test]
fn early_subscribers_get_every_track_from_new_producer_events() {
    let _serial = serial();
    let server = start(&[]);
    // Subscribers join first (0, 0.25, 0.5 s) and learn of the producers only from
    // new-producer events.
    let run = load(
        &server,
        &[
            "--subscribers",
            "3",
            "--subscribers-first",
            "--ramp",
            "4",
            "--duration",
            "4s",
            "--max-loss",
            "0",
        ],
    );
    let ctx = context(&run);
    assert_eq!(run.status, 0, "{ctx}");
    let t = &run.json["totals"];
    assert_eq!(u(t, "tracksReceived"), 6, "{ctx}");
    assert_eq!(u(t, "packetsLost"), 0, "{ctx}");
    let sent = u(t, "packetsSent") as f64;
    let received = u(t, "packetsReceived") as f64;
    assert!(
        received >= 3.0 * sent * 0.95,
        "received {received} of 3 x {sent}\n{ctx}"
    );
}

/// Real loss, provoked honestly: the server's UDP receive buffer is at its minimum
/// (64 KiB) and the server process is stopped (SIGSTOP) for 1.2 s mid-run, so the kernel
/// drops what does not fit in the buffer. Audio has no retransmission, so its loss stays.
#[test]
fn max_loss_sets_the_exit_status() {
    let _serial = serial();
    let server = start(&["--udp-recv-buffer", "65536"]);
    let stopper = {
        let pid = server.child.id() as i32;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2000));
            // SAFETY: kill(2) on the child we started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            std::thread::sleep(Duration::from_millis(1200));
            unsafe { libc::kill(pid, libc::SIGCONT) };
        })
    };
    let run = load(
        &server,
        &[
            "--subscribers",
            "2",
            "--duration",
            "5s",
            "--max-loss",
            "0.5",
        ],
    );
    stopper.join().unwrap();
    server.signal(libc::SIGCONT);
    let ctx = context(&run);
    let t = &run.json["totals"];
    assert!(f(t, "lossPercent") > 0.5, "{ctx}");
    assert_eq!(run.status, 1, "{ctx}");
    assert_eq!(run.json["exitStatus"], 1, "{ctx}");
    assert!(run.stderr.contains("exceeds --max-loss"), "{ctx}");
    // Every track still arrived: the loss is a gap, not a failure.
    assert_eq!(u(t, "tracksReceived"), 4, "{ctx}");
}

#[test]
fn whip_publishers_reach_whep_subscribers_and_the_resources_are_deleted() {
    let _serial = serial();
    let server = start(&[]);
    let (whip, whep) = (
        format!("{}/whip", server.url()),
        format!("{}/whep", server.url()),
    );
    let run = load(
        &server,
        &[
            "--whip",
            &whip,
            "--whep",
            &whep,
            "--video-publishers",
            "1",
            "--audio-publishers",
            "1",
            "--subscribers",
            "3",
            "--duration",
            "4s",
            "--max-loss",
            "0",
        ],
    );
    let ctx = context(&run);
    assert_eq!(run.status, 0, "{ctx}");
    let t = &run.json["totals"];
    assert_documented_fields(&run.json);
    assert_eq!(run.json["config"]["whip"].as_str(), Some(whip.as_str()));
    assert_eq!(run.json["config"]["whep"].as_str(), Some(whep.as_str()));
    assert_eq!(u(t, "peersConnected"), 5, "{ctx}");
    assert_eq!(u(t, "tracksExpected"), 6, "{ctx}");
    assert_eq!(u(t, "tracksReceived"), 6, "{ctx}");
    assert_eq!(u(t, "packetsLost"), 0, "{ctx}");
    assert_eq!(t["errors"], serde_json::json!({}), "{ctx}");
    let sent = u(t, "packetsSent") as f64;
    let nominal = pair_packets(4.0);
    assert!(
        sent <= nominal * 1.01 && sent >= nominal * 0.85,
        "sent {sent}, nominal {nominal}\n{ctx}"
    );
    let received = u(t, "packetsReceived") as f64;
    assert!(
        received <= 3.0 * sent && received >= 3.0 * sent * 0.9,
        "received {received} of 3 x {sent}\n{ctx}"
    );
    assert_eq!(u(t, "packetsExpected"), u(t, "packetsReceived"), "{ctx}");
    assert!(u(t, "keyframesSent") >= 2, "{ctx}");
    // Every WHIP and WHEP resource was DELETEd: nothing is left on the server.
    let m = metrics(&server);
    for name in [
        "corelay_producers",
        "corelay_consumers",
        "corelay_transports",
    ] {
        assert_eq!(sum(&m, name), 0.0, "{name} after the run\n{ctx}");
    }
}

#[test]
fn whep_with_subscribers_first_is_refused_with_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_corelay-load"))
        .args([
            "--secret",
            SECRET,
            "--whep",
            "http://127.0.0.1:1/whep",
            "--subscribers-first",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--subscribers-first"));
}

/// One HTTP GET on the server; the body.
fn get(server: &Server, path: &str) -> String {
    let (status, body) = http(server.port, "GET", path, &[], b"").unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Prometheus text: (name, labels, value) per sample line; comments and blank lines
/// skipped. Labels are kept as written (`{...}` without the braces, may be empty).
fn metrics(server: &Server) -> Vec<(String, String, f64)> {
    let text = get(server, "/metrics");
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("bad line {line:?}"));
                (
                    (line[..open].to_string(), line[open + 1..close].to_string()),
                    &line[close + 1..],
                )
            }
            None => {
                let (n, r) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad line {line:?}"));
                ((n.to_string(), String::new()), r)
            }
        };
        // The value, then an optional timestamp.
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        out.push((series.0, series.1, value));
    }
    out
}

/// A metric summed over its series (over shards).
fn sum(m: &[(String, String, f64)], name: &str) -> f64 {
    let hits: Vec<f64> = m.iter().filter(|x| x.0 == name).map(|x| x.2).collect();
    assert!(!hits.is_empty(), "no {name} in /metrics");
    hits.iter().sum()
}

#[test]
fn the_servers_metrics_and_latency_agree_with_what_the_tool_measured() {
    let _serial = serial();
    let server = start(&[]);
    let run = load(
        &server,
        &[
            "--rooms",
            "2",
            "--video-publishers",
            "1",
            "--audio-publishers",
            "1",
            "--subscribers",
            "3",
            "--duration",
            "3s",
        ],
    );
    let ctx = context(&run);
    assert_eq!(run.status, 0, "{ctx}");
    let t = &run.json["totals"];
    let (sent, received) = (u(t, "packetsSent") as f64, u(t, "packetsReceived") as f64);
    assert!(sent > 0.0 && received > 0.0, "{ctx}");

    let m = metrics(&server);
    let shards = m
        .iter()
        .filter(|x| x.0 == "corelay_rtp_packets_forwarded_total")
        .count();
    assert_eq!(shards, 2, "one series per shard");
    let forwarded = sum(&m, "corelay_rtp_packets_forwarded_total");
    let server_in = sum(&m, "corelay_rtp_packets_received_total");
    // Forwarded covers every packet a subscriber got; retransmissions may add a little.
    assert!(
        forwarded >= received && forwarded <= received * 1.03 + 10.0,
        "forwarded {forwarded}, subscribers received {received}\n{ctx}"
    );
    assert!(
        server_in >= sent * 0.99,
        "server received {server_in}, publishers sent {sent}\n{ctx}"
    );

    let latency: Value = serde_json::from_str(&get(&server, "/latency")).expect("JSON");
    let count = latency["merged"]["forwardUs"]["count"]
        .as_f64()
        .unwrap_or_else(|| panic!("merged.forwardUs.count in {latency:#}"));
    assert!(
        count >= received * 0.99,
        "forwardUs.count {count}, subscribers received {received}\n{latency:#}"
    );
}
