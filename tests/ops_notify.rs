//! systemd notifications from the real binary: the test plays systemd's part by owning the
//! NOTIFY_SOCKET datagram socket and setting WATCHDOG_USEC, as a `Type=notify` unit with
//! `WatchdogSec=` would.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use corelay_testkit::{http, Ready, Server};

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

/// Starts corelay with NOTIFY_SOCKET at `path`, and WATCHDOG_USEC when given. No readiness
/// check of its own: READY=1 on the socket is what the tests wait for.
fn spawn(path: &std::path::Path, watchdog_usec: Option<&str>) -> Server {
    let mut builder = Server::builder()
        .shards(2)
        .args(["--shutdown-grace-ms", "500"])
        .env("NOTIFY_SOCKET", path)
        // No WATCHDOG_PID: a wrapper cannot know the pid in advance, and libsystemd allows it.
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC")
        .ready(Ready::None);
    if let Some(usec) = watchdog_usec {
        builder = builder.env("WATCHDOG_USEC", usec);
    }
    builder.spawn()
}

fn notify_socket(dir: &tempfile::TempDir) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (sock, path)
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, path) = notify_socket(&dir);
    // 1 s timeout: a ping every 0.5 s.
    let mut server = spawn(&path, Some("1000000"));

    let mut got = Vec::new();
    collect(&sock, &mut got, Duration::from_secs(20), |g| {
        count(g, "READY=1") > 0
    });
    assert_eq!(count(&got, "READY=1"), 1, "READY=1 once: {got:?}");
    // READY comes after every shard serves: /health answers at once.
    let (status, body) = http(server.port, "GET", "/health", &[], b"").unwrap();
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

    let status = server.stop(Duration::from_secs(10));
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
    let mut server = spawn(&path, None);
    let mut got = Vec::new();
    collect(&sock, &mut got, Duration::from_secs(20), |g| {
        count(g, "READY=1") > 0
    });
    assert_eq!(count(&got, "READY=1"), 1, "{got:?}");
    collect(&sock, &mut got, Duration::from_millis(1200), |_| false);
    assert_eq!(count(&got, "WATCHDOG=1"), 0, "{got:?}");
    assert_eq!(server.stop(Duration::from_secs(10)).code(), Some(0));
}
