//! systemd notifications from the real binary: the test plays systemd's part by owning the
//! NOTIFY_SOCKET datagram socket and setting WATCHDOG_USEC, as a `Type=notify` unit with
//! `WatchdogSec=` would.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http, SECRET};

/// Collects every datagram for `limit` or until `until` says stop.
fn collect(
    sock: &UnixDatagram,
    got: &mut Vec<String>,
    limit: Duration,
    until: impl Fn(&[String]) -> bool,
) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit && !until(got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn count(got: &[String], what: &str) -> usize {
    got.iter().filter(|m| m.lines().any(|l| l == what)).count()
}

/// Starts corelay with NOTIFY_SOCKET at `path`, and WATCHDOG_USEC when given.
fn spawn(path: &std::path::Path, port: u16, watchdog_usec: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corelay"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--shards",
        "2",
        "--udp-port-base",
        "0",
        "--shutdown-grace-ms",
        "500",
    ])
    .env("JWT_SECRET", SECRET)
    .env("NOTIFY_SOCKET", path)
    // No WATCHDOG_PID: a wrapper cannot know the pid in advance, and libsystemd allows it.
    .env_remove("WATCHDOG_PID")
    .env_remove("WATCHDOG_USEC")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec);
    }
    cmd.spawn().expect("corelay runs")
}

fn notify_socket(dir: &tempfile::TempDir) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (sock, path)
}

fn sigterm_and_wait(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corelay did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, path) = notify_socket(&dir);
    let port = free_port();
    // 1 s timeout: a ping every 0.5 s.
    let mut child = spawn(&path, port, Some("1000000"));

    let mut got = Vec::new();
    collect(&sock, &mut got, Duration::from_secs(20), |g| {
        count(g, "READY=1") > 0
    });
    assert_eq!(count(&got, "READY=1"), 1, "READY=1 once: {got:?}");
    // READY comes after every shard serves: /health answers at once.
    let (status, body) = http(port, "GET", "/health", &[], b"").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        got.iter().any(|m| m.contains("STATUS=serving")),
        "a STATUS line for systemctl status: {got:?}"
    );

    // About 2.5 s at one ping per 0.5 s: several, and not a flood.
    collect(&sock, &mut got, Duration::from_millis(2500), |_| false);
    let pings = count(&got, "WATCHDOG=1");
    assert!((3..=10).contains(&pings), "{pings} watchdog pings: {got:?}");
    assert_eq!(count(&got, "STOPPING=1"), 0, "not stopping yet");

    let status = sigterm_and_wait(&mut child);
    collect(&sock, &mut got, Duration::from_secs(2), |g| {
        count(g, "STOPPING=1") > 0
    });
    assert_eq!(
        count(&got, "STOPPING=1"),
        1,
        "STOPPING=1 after SIGTERM: {got:?}"
    );
    let stopping = got.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(
        got[stopping..].iter().all(|m| !m.contains("READY=1")),
        "nothing but the end after STOPPING: {got:?}"
    );
    assert_eq!(status.code(), Some(0), "clean exit");
}

#[test]
fn without_watchdog_usec_there_are_no_pings() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, path) = notify_socket(&dir);
    let mut child = spawn(&path, free_port(), None);
    let mut got = Vec::new();
    collect(&sock, &mut got, Duration::from_secs(20), |g| {
        count(g, "READY=1") > 0
    });
    assert_eq!(count(&got, "READY=1"), 1, "{got:?}");
    collect(&sock, &mut got, Duration::from_millis(1200), |_| false);
    assert_eq!(count(&got, "WATCHDOG=1"), 0, "{got:?}");
    assert_eq!(sigterm_and_wait(&mut child).code(), Some(0));
}
